"""Cars-196 (Krause et al. 2013) in either layout found in the wild; the official download link is dead.

- *original*: ``car_ims/000001.jpg…`` and ``cars_annos.mat`` (struct ``annotations`` with ``relative_im_path``,
  ``bbox_x1..bbox_y2``, ``class`` 1..196 and the classification ``test`` flag; cell ``class_names``);
- *devkit*: ``cars_train/``, ``cars_test/``, ``devkit/cars_meta.mat`` (``class_names``),
  ``devkit/cars_train_annos.mat`` and ``cars_test_annos_withlabels.mat`` (``bbox_*``, ``class``, ``fname``).

The layout is auto-detected (``reader_options.layout`` or ``layout=`` forces one). Both give the same split,
re-derived from the class ids: 1–98 train, 99–196 test (``datasets/splits/cars.v1.yaml``); the classification
train/test flag of either layout is ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from benchmark.data._common import LayoutNotFoundError, is_junk, layout_hint, require, standard_split
from benchmark.data.base import DatasetError, DatasetSplits, register_reader

SUBDIRS = ("", "stanford_cars", "stanford-cars", "cars196", "cars")


def load_mat(path: Path, card: dict[str, Any]) -> dict[str, Any]:
    """A MATLAB file through scipy, with a clear error for a truncated or foreign file."""
    from scipy.io import loadmat

    try:
        return loadmat(str(require(path, card)), squeeze_me=True)
    except DatasetError:
        raise
    except Exception as error:  # scipy raises several types for a bad file
        raise DatasetError(f"Cannot read {path} as a MATLAB file ({error}). {layout_hint(card)}") from error


def mat_records(mat: dict[str, Any], key: str, fields: tuple[str, ...], path: Path, card: dict) -> dict[str, list]:
    """The requested fields of the struct array ``key`` as Python lists."""
    if key not in mat:
        raise DatasetError(f"{path} has no variable '{key}'. {layout_hint(card)}")
    records = np.atleast_1d(mat[key])
    names = records.dtype.names or ()
    absent = [field for field in fields if field not in names]
    if absent:
        raise DatasetError(f"{path}: struct '{key}' lacks field(s) {absent} (has {list(names)}). {layout_hint(card)}")
    return {field: [np.asarray(value).item() for value in records[field]] for field in fields}


def mat_class_names(mat: dict[str, Any], path: Path, card: dict[str, Any]) -> list[str]:
    if "class_names" not in mat:
        raise DatasetError(f"{path} has no variable 'class_names'. {layout_hint(card)}")
    return [str(np.asarray(name).item()).strip() for name in np.atleast_1d(mat["class_names"])]


def detect_layout(root: Path) -> tuple[str, Path] | None:
    """``("original" | "devkit", base directory)`` for the first layout found under ``root``."""
    for sub in SUBDIRS:
        base = root / sub if sub else root
        if (base / "cars_annos.mat").exists() and (base / "car_ims").is_dir():
            return "original", base
        if (base / "devkit" / "cars_meta.mat").exists():
            return "devkit", base
    return None


def _original(base: Path, card: dict[str, Any]) -> tuple[list[str], list[int], list[str]]:
    path = base / "cars_annos.mat"
    mat = load_mat(path, card)
    class_names = mat_class_names(mat, path, card)
    records = mat_records(mat, "annotations", ("relative_im_path", "class"), path, card)
    images = [str(base / rel) for rel in records["relative_im_path"]]
    return images, [int(c) for c in records["class"]], class_names


def _devkit(base: Path, card: dict[str, Any]) -> tuple[list[str], list[int], list[str]]:
    meta = base / "devkit" / "cars_meta.mat"
    class_names = mat_class_names(load_mat(meta, card), meta, card)
    test_annos = next(
        (
            p
            for p in (base / "cars_test_annos_withlabels.mat", base / "devkit" / "cars_test_annos_withlabels.mat")
            if p.exists()
        ),
        base / "cars_test_annos_withlabels.mat",
    )
    unlabelled = [p for p in (base / "cars_test_annos.mat", base / "devkit" / "cars_test_annos.mat") if p.exists()]
    if not test_annos.exists() and unlabelled:
        raise LayoutNotFoundError(
            f"{unlabelled[0]} is the devkit's unlabelled test annotation file (no 'class' field), and the split needs "
            f"the test labels: put cars_test_annos_withlabels.mat (the labelled version, distributed separately "
            f"from the devkit) in {base}. {layout_hint(card)}"
        )
    images: list[str] = []
    classes: list[int] = []
    for folder, path in (("cars_train", base / "devkit" / "cars_train_annos.mat"), ("cars_test", test_annos)):
        records = mat_records(load_mat(path, card), "annotations", ("fname", "class"), path, card)
        images += [str(base / folder / fname) for fname in records["fname"]]
        classes += [int(c) for c in records["class"]]
    return images, classes, class_names


@register_reader("cars")
def read_cars(card: dict[str, Any], root: Path | None, strict: bool, **options: Any) -> DatasetSplits:
    """Read Cars-196 from the original or the devkit layout; global class id = ``class`` − 1."""
    root = Path(root)
    forced = options.get("layout") or (card.get("reader_options") or {}).get("layout")
    found = detect_layout(root)
    if forced and (found is None or found[0] != forced):
        base = root
        found = (forced, base)
    if found is None:
        raise LayoutNotFoundError(
            f"No Cars-196 files under dataset.root={root}: expected either cars_annos.mat + car_ims/ (original) "
            f"or devkit/cars_meta.mat + cars_train/ + cars_test/ (devkit). {layout_hint(card)}"
        )
    layout, base = found
    if layout not in {"original", "devkit"}:
        raise DatasetError(f"Unknown Cars layout '{layout}': use 'original' or 'devkit'.")
    images, classes, class_names = (_original if layout == "original" else _devkit)(base, card)
    bad = sorted({c for c in classes if not 1 <= c <= len(class_names)})
    if bad:
        raise DatasetError(f"Cars annotations use class ids {bad[:5]} outside 1..{len(class_names)}.")
    keep = [i for i, path in enumerate(images) if not is_junk(Path(path).name)]
    images = [images[i] for i in keep]
    labels = [classes[i] - 1 for i in keep]
    return standard_split(card, strict, images, labels, class_names, kinds=("id_range",))
