"""Miniature copies of the four paper datasets in their OFFICIAL layouts, for tests (no tests in this file).

Every class is kept (the real class names, read from the split files in ``datasets/splits/``), with a few tiny
random JPEGs per class, so the readers, the split rules and the name checks run exactly as on the real archives;
only the image counts differ (load with ``strict=False``). The iNat species names are synthetic (the real list is
not shipped), in the real directory-name pattern. Metadata follows protocol.md section 1; fields marked
"uncertain" are reconstructed from public loaders, not from a real archive.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from benchmark.data.base import DATASETS_DIR


def split_class_names(name: str) -> list[str]:
    """The train + test class names of a shipped split file, in its order."""
    spec = yaml.safe_load((DATASETS_DIR / "splits" / f"{name}.v1.yaml").read_text())
    return list(spec["train_classes"]) + list(spec["test_classes"])


_POOL: dict[int, list[bytes]] = {}


def _jpeg_pool(size: int) -> list[bytes]:
    """32 encoded random-colour JPEGs per size, reused so that thousands of files are written quickly."""
    if size not in _POOL:
        rng = np.random.default_rng(1234)
        pool = []
        for _ in range(32):
            base = rng.integers(0, 256, size=3)
            pixels = np.clip(base + rng.integers(-20, 21, size=(size, size, 3)), 0, 255).astype(np.uint8)
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="JPEG", quality=85)
            pool.append(buffer.getvalue())
        _POOL[size] = pool
    return _POOL[size]


def write_jpeg(path: Path, rng: np.random.Generator, size: int = 16) -> None:
    """A small random-colour JPEG (one of a pool of encoded images, picked with ``rng``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pool = _jpeg_pool(size)
    path.write_bytes(pool[int(rng.integers(len(pool)))])


def make_cub(root: Path, per_class: int = 2, seed: int = 0) -> Path:
    """``root/CUB_200_2011`` with the official text files; returns that folder."""
    rng = np.random.default_rng(seed)
    base = Path(root) / "CUB_200_2011"
    names = split_class_names("cub")
    images, labels, split, boxes = [], [], [], []
    image_id = 0
    for class_id, name in enumerate(names, start=1):
        species = name.split(".", 1)[1]
        for k in range(per_class):
            image_id += 1
            rel = f"{name}/{species}_{k + 1:04d}_{100000 + image_id}.jpg"
            write_jpeg(base / "images" / rel, rng)
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {class_id}")
            split.append(f"{image_id} {k % 2}")  # the classification split: present in the archive, never used
            boxes.append(f"{image_id} 1.0 1.0 14.0 14.0")
    (base / "classes.txt").write_text("".join(f"{i} {n}\n" for i, n in enumerate(names, start=1)))
    for file, lines in (
        ("images.txt", images),
        ("image_class_labels.txt", labels),
        ("train_test_split.txt", split),
        ("bounding_boxes.txt", boxes),
    ):
        (base / file).write_text("\n".join(lines) + "\n")
    return base


def _save_struct_mat(path: Path, records: list[dict], extra: dict | None = None) -> None:
    """A MATLAB struct array ``annotations`` (1×N, one cell per field) like the Stanford files (uncertain dtypes)."""
    from scipy.io import savemat

    fields = list(records[0])
    array = np.zeros((1, len(records)), dtype=[(field, "O") for field in fields])
    for i, record in enumerate(records):
        for field in fields:
            value = record[field]
            array[0, i][field] = value if isinstance(value, str) else np.array([[value]], dtype=np.uint16)
    content = {"annotations": array}
    content.update(extra or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(str(path), content)


def _cell(strings: list[str]) -> np.ndarray:
    cell = np.empty((1, len(strings)), dtype=object)
    for i, text in enumerate(strings):
        cell[0, i] = text
    return cell


def make_cars(root: Path, layout: str = "original", per_class: int = 2, seed: int = 0) -> Path:
    """Cars-196 in the ``original`` (car_ims + cars_annos.mat) or ``devkit`` layout; returns ``root``.

    Both layouts hold the same images per class (image k of a class is a classification-train image when k is
    even), so they must give identical splits.
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    names = split_class_names("cars")
    box = {"bbox_x1": 1, "bbox_y1": 1, "bbox_x2": 14, "bbox_y2": 14}
    if layout == "original":
        records = []
        for class_id in range(1, len(names) + 1):
            for k in range(per_class):
                rel = f"car_ims/{len(records) + 1:06d}.jpg"
                write_jpeg(root / rel, rng)
                records.append({"relative_im_path": rel, **box, "class": class_id, "test": k % 2})
        _save_struct_mat(root / "cars_annos.mat", records, {"class_names": _cell(names)})
    elif layout == "devkit":
        train, test = [], []
        for class_id in range(1, len(names) + 1):
            for k in range(per_class):
                folder, records = ("cars_test", test) if k % 2 else ("cars_train", train)
                fname = f"{len(records) + 1:05d}.jpg"
                write_jpeg(root / folder / fname, rng)
                records.append({**box, "class": class_id, "fname": fname})
        (root / "devkit").mkdir(parents=True, exist_ok=True)
        from scipy.io import savemat

        savemat(str(root / "devkit" / "cars_meta.mat"), {"class_names": _cell(names)})
        _save_struct_mat(root / "devkit" / "cars_train_annos.mat", train)
        _save_struct_mat(root / "cars_test_annos_withlabels.mat", test)
    else:
        raise ValueError(f"layout must be 'original' or 'devkit', not {layout!r}")
    return root


def make_aircraft(root: Path, per_class: int = 2, seed: int = 0, extra_variants: tuple[str, ...] = ()) -> Path:
    """``root/fgvc-aircraft-2013b/data`` with images/, the images_variant_*.txt lists and variants.txt.

    Half of each variant's images go to the official test list, the rest to train/val (trainval = train + val).
    ``extra_variants`` are listed in variants.txt without images. Returns the ``data`` folder.
    """
    rng = np.random.default_rng(seed)
    data = Path(root) / "fgvc-aircraft-2013b" / "data"
    variants = split_class_names("aircraft")
    shuffled = variants[:]
    random.Random(seed).shuffle(shuffled)  # the lists are not grouped by variant
    lists: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    image_id = 1000000
    for variant in shuffled:
        for k in range(per_class):
            image_id += 7
            write_jpeg(data / "images" / f"{image_id:07d}.jpg", rng)
            part = "test" if k % 2 else ("train" if k % 4 == 0 else "val")
            lists[part].append(f"{image_id:07d} {variant}")
    lists["trainval"] = lists["train"] + lists["val"]
    for part, lines in lists.items():
        (data / f"images_variant_{part}.txt").write_text("\n".join(lines) + "\n")
    (data / "variants.txt").write_text("\n".join(variants + list(extra_variants)) + "\n")
    return data


def make_inat_aves(root: Path, aves: int = 1486, others: int = 4, per_class: int = 2, seed: int = 0) -> Path:
    """``root/train_mini/<dir>/*.jpg`` and ``root/train_mini.json`` (COCO style, 2021 field names).

    ``aves`` bird species (class Aves, supercategory Birds) plus ``others`` insect species whose ids lie before
    and after the birds; categories and images are listed in shuffled order so the reader must sort. Species names
    are synthetic. ``file_name`` carries the ``train_mini/`` prefix (uncertain: verify on a real copy).
    """
    rng = np.random.default_rng(seed)
    shuffle = random.Random(seed)
    root = Path(root)
    categories = []
    for i in range(aves + others):
        is_bird = others // 2 <= i < others // 2 + aves
        taxon = (
            ("Animalia", "Chordata", "Aves", "Passeriformes")
            if is_bird
            else ("Animalia", "Arthropoda", "Insecta", "Coleoptera")
        )
        family, genus, epithet = f"Familia{i}", f"Genus{i}", f"species{i}"
        categories.append(
            {
                "id": i,
                "name": f"{genus} {epithet}",
                "common_name": f"Synthetic {i}",
                "supercategory": "Birds" if is_bird else "Insects",
                "kingdom": taxon[0],
                "phylum": taxon[1],
                "class": taxon[2],
                "order": taxon[3],
                "family": family,
                "genus": genus,
                "specific_epithet": epithet,
                "image_dir_name": f"{i:05d}_{'_'.join(taxon)}_{family}_{genus}_{epithet}",
            }
        )
    images, annotations = [], []
    for category in categories:
        for k in range(per_class):
            image_id = len(images)
            file_name = f"train_mini/{category['image_dir_name']}/{image_id:08x}-{k}.jpg"
            write_jpeg(root / file_name, rng)
            images.append({"id": image_id, "width": 16, "height": 16, "file_name": file_name})
            annotations.append({"id": image_id, "image_id": image_id, "category_id": category["id"]})
    shuffle.shuffle(categories)
    shuffle.shuffle(images)
    meta = {"info": {"year": 2021}, "images": images, "annotations": annotations, "categories": categories}
    (root / "train_mini.json").write_text(json.dumps(meta))
    return root


def make_image_folder(root: Path, classes: int = 6, per_class: int = 2, seed: int = 0) -> Path:
    """``root/<class>/*.jpg`` with class names that do not sort in creation order, plus macOS ``._`` junk."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    for c in range(classes):
        folder = root / f"class_{(c * 7) % classes}_{chr(ord('z') - c)}"
        for k in range(per_class):
            write_jpeg(folder / f"img{k}.jpg", rng)
        (folder / "._img0.jpg").write_bytes(b"\x00\x05\x16\x07 resource fork")
    (root / "._hidden_class").mkdir(exist_ok=True)
    return root
