"""CUB-200-2011 (Wah et al. 2011) in the official archive layout.

``CUB_200_2011/images/<NNN.Class_Name>/*.jpg`` with ``images.txt`` (``<img_id> <rel_path>``),
``image_class_labels.txt`` (``<img_id> <class_id 1..200>``) and ``classes.txt`` (``<class_id> <NNN.Name>``).
The zero-shot split (classes 1–100 train, 101–200 test) is stated in ``datasets/splits/cub.v1.yaml``; the
archive's ``train_test_split.txt`` is the classification split and is never read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmark.data._common import is_junk, layout_hint, locate, standard_split
from benchmark.data.base import DatasetError, DatasetSplits, register_reader

MARKERS = ("images.txt", "image_class_labels.txt", "classes.txt")


def read_id_table(path: Path, card: dict[str, Any]) -> dict[int, str]:
    """``<int id> <value>`` lines (the value may hold spaces) as a dict; a malformed line names its number."""
    table: dict[int, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.strip().split(maxsplit=1)
        if len(parts) != 2 or not parts[0].isdigit():
            raise DatasetError(f"{path}, line {number}: expected '<id> <value>', got {line!r}. {layout_hint(card)}")
        table[int(parts[0])] = parts[1].strip()
    return table


@register_reader("cub")
def read_cub(card: dict[str, Any], root: Path | None, strict: bool, **options: Any) -> DatasetSplits:
    """Read CUB-200-2011; class ids are ``classes.txt`` order (global id = class_id − 1)."""
    base = locate(Path(root), MARKERS, ["CUB_200_2011"], card)
    classes = read_id_table(base / "classes.txt", card)
    ids = sorted(classes)
    if ids != list(range(1, len(ids) + 1)):
        raise DatasetError(f"{base / 'classes.txt'}: class ids are not 1..{len(ids)}. {layout_hint(card)}")
    class_names = [classes[i] for i in ids]
    paths = read_id_table(base / "images.txt", card)
    labels_by_image = read_id_table(base / "image_class_labels.txt", card)
    unlabelled = sorted(set(paths) - set(labels_by_image))
    if unlabelled:
        raise DatasetError(
            f"{len(unlabelled)} image id(s) of images.txt have no line in image_class_labels.txt "
            f"(first: {unlabelled[:5]}). {layout_hint(card)}"
        )
    images, labels = [], []
    for image_id in sorted(paths):
        rel = paths[image_id]
        if is_junk(Path(rel).name):
            continue
        class_id = int(labels_by_image[image_id])
        if class_id not in classes:
            raise DatasetError(f"image_class_labels.txt: image {image_id} has unknown class id {class_id}.")
        images.append(str(base / "images" / rel))
        labels.append(class_id - 1)
    return standard_split(card, strict, images, labels, class_names, kinds=("id_range",))
