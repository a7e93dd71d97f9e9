"""FGVC-Aircraft 2013b (Maji et al. 2013) at the variant level, split as in SAGA (App. A).

Layout: ``fgvc-aircraft-2013b/data/images/<id>.jpg``, ``data/images_variant_{trainval,test}.txt`` with lines
``<image_id> <variant name>`` (split on the FIRST space only: names hold spaces and ``/``, e.g. ``F/A-18``),
and ``data/variants.txt``. The official trainval and test images are pooled; the variant names are sorted with
Python's ``sorted`` (code-point order, so upper case sorts before lower case: ``ATR-72`` < ``An-12``); the first
50 are the training classes and the last 50 the test classes (``datasets/splits/aircraft.v1.yaml``).
The images keep their copyright banner (the SAGA protocol uses the full image).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from benchmark.data._common import is_junk, layout_hint, locate, name_some, require, standard_split
from benchmark.data.base import DatasetError, DatasetSplits, register_reader

LISTS = ("images_variant_trainval.txt", "images_variant_test.txt")


def read_variant_list(path: Path, card: dict[str, Any]) -> list[tuple[str, str]]:
    """``(image_id, variant)`` pairs; the line is split on its first space only."""
    pairs = []
    for number, line in enumerate(require(path, card).read_text(encoding="utf-8").splitlines(), start=1):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        image_id, sep, variant = line.partition(" ")
        if not sep or not variant.strip():
            raise DatasetError(f"{path}, line {number}: expected '<image_id> <variant>', got {line!r}.")
        pairs.append((image_id.strip(), variant.strip()))
    return pairs


@register_reader("aircraft")
def read_aircraft(card: dict[str, Any], root: Path | None, strict: bool, **options: Any) -> DatasetSplits:
    """Read FGVC-Aircraft; global class id = rank of the variant name in code-point order."""
    data = locate(Path(root), LISTS + ("variants.txt",), ["data", "fgvc-aircraft-2013b/data"], card)
    pairs = [pair for name in LISTS for pair in read_variant_list(data / name, card)]
    listed = [v.strip() for v in (data / "variants.txt").read_text(encoding="utf-8").splitlines() if v.strip()]
    class_names = sorted({variant for _, variant in pairs})
    unknown = sorted(set(class_names) - set(listed))
    if unknown:
        raise DatasetError(
            f"{data / 'variants.txt'} lists {len(listed)} variants, but the image lists use "
            f"{len(unknown)} more: {name_some(unknown)}. {layout_hint(card)}"
        )
    unused = sorted(set(listed) - set(class_names))
    if unused:
        # One archive README speaks of 102 variants: count variants.txt at load time and say what differs.
        warnings.warn(
            f"{data / 'variants.txt'} lists {len(listed)} variants; {len(unused)} have no image in "
            f"{' + '.join(LISTS)} and are ignored: {name_some(unused)}.",
            stacklevel=2,
        )
    index = {name: i for i, name in enumerate(class_names)}
    images, labels = [], []
    for image_id, variant in pairs:
        if is_junk(image_id):
            continue
        images.append(str(data / "images" / f"{image_id}.jpg"))
        labels.append(index[variant])
    return standard_split(card, strict, images, labels, class_names, kinds=("sorted_rank",))
