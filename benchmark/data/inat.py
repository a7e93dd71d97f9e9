"""iNaturalist-2021 ``train_mini``, restricted to one taxon (the SAGA iNat-Aves subset, App. A).

Layout: ``train_mini/<NNNNN_Kingdom_Phylum_Class_Order_Family_Genus_species>/*.jpg`` and ``train_mini.json``
(COCO style: ``images`` with ``file_name``, ``annotations`` with ``image_id``/``category_id``, ``categories``
with ``supercategory``, ``class``, ``image_dir_name``, …). The card's ``reader_options.select`` picks the
categories (``{class: Aves, supercategory: Birds}``); the species directories are sorted lexicographically (the
zero-padded id prefix makes this the category-id order); the split file gives the ranks (first 743 train, last
743 test). Only ``train_mini`` is read.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from typing import Any

from benchmark.data._common import is_junk, layout_hint, locate, standard_split
from benchmark.data.base import DatasetError, DatasetSplits, register_reader


def _dir_name(category: dict[str, Any], fallback: str | None) -> str:
    name = category.get("image_dir_name") or fallback
    if not name:
        raise DatasetError(f"Category {category.get('id')} has no image_dir_name and no image to infer it from.")
    return name


@register_reader("inat")
def read_inat(card: dict[str, Any], root: Path | None, strict: bool, **options: Any) -> DatasetSplits:
    """Read the selected taxon of iNat-2021 train_mini; global class id = rank of the species directory name."""
    reader_options = {**(card.get("reader_options") or {}), **options}
    split_name = reader_options.get("split", "train_mini")
    select = reader_options.get("select") or {}
    base = locate(Path(root), [f"{split_name}.json", split_name], ["inat2021", "iNat2021", "inat"], card)
    json_path = base / f"{split_name}.json"
    try:
        meta = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise DatasetError(f"Cannot read {json_path} as JSON ({error}). {layout_hint(card)}") from error
    missing = [key for key in ("images", "annotations", "categories") if key not in meta]
    if missing:
        raise DatasetError(f"{json_path} lacks the COCO key(s) {missing}. {layout_hint(card)}")

    chosen = {c["id"]: c for c in meta["categories"] if all(c.get(k) == v for k, v in select.items())}
    if not chosen:
        raise DatasetError(f"No category of {json_path} matches {select}. {layout_hint(card)}")
    files = {image["id"]: image["file_name"] for image in meta["images"]}
    members: dict[int, list[str]] = {cid: [] for cid in chosen}
    for annotation in meta["annotations"]:
        if annotation["category_id"] in members:
            members[annotation["category_id"]].append(files[annotation["image_id"]])

    def dir_of(cid: int) -> str:
        first = members[cid][0] if members[cid] else None
        return _dir_name(chosen[cid], PurePosixPath(first).parent.name if first else None)

    order = sorted(chosen, key=dir_of)
    class_names = [dir_of(cid) for cid in order]
    images, labels = [], []
    for label, cid in enumerate(order):
        for file_name in sorted(members[cid]):
            if is_junk(PurePosixPath(file_name).name):
                continue
            # file_name is "train_mini/<dir>/<uuid>.jpg" in the 2021 release (verify on a real copy); a name
            # without the split prefix is resolved inside the split directory.
            rel = Path(file_name)
            path = base / rel if rel.parts and rel.parts[0] == split_name else base / split_name / rel
            images.append(str(path))
            labels.append(label)
    return standard_split(card, strict, images, labels, class_names, kinds=("sorted_rank",))
