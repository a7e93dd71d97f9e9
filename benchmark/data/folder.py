"""Generic readers, so that a new dataset in a common layout is a new card and no code.

- ``image_folder``: ``root/<class>/<image>`` with the class directories sorted (code-point order); the global class
  id is the rank of the directory name. Options (card ``reader_options``): ``subdir`` (a folder under the root),
  ``extensions`` (default: common image suffixes).
- ``list_file``: text files of ``<relpath> <label>`` lines (the path may hold spaces: the label is the last
  field), paths relative to the root. The global class id is the rank of the integer label; class names are the
  labels as text unless ``names_file`` (lines ``<label> <name>``) is given. Options: ``files`` (list of list
  files, relative to the root), ``names_file``.

The split rule comes from the card (``split.file`` or an inline ``split.rule``): ``sorted_rank`` / ``id_range``
position ranges over the class order above, or ``class_lists`` with explicit ``train_classes``/``test_classes``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmark.data._common import is_junk, layout_hint, require, standard_split
from benchmark.data.base import DatasetError, DatasetSplits, register_reader

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
KINDS = ("sorted_rank", "id_range", "class_lists")


def _options(card: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    return {**(card.get("reader_options") or {}), **options}


@register_reader("image_folder")
def read_image_folder(card: dict[str, Any], root: Path | None, strict: bool, **options: Any) -> DatasetSplits:
    """Read ``root/<class>/*.<image suffix>``; ``._*`` and hidden entries are skipped."""
    opts = _options(card, options)
    base = Path(root) / opts["subdir"] if opts.get("subdir") else Path(root)
    require(base, card)
    suffixes = tuple(s.lower() for s in opts.get("extensions", IMAGE_SUFFIXES))
    class_dirs = sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".") and not is_junk(p.name))
    if not class_dirs:
        raise DatasetError(f"No class directories under {base}. {layout_hint(card)}")
    class_names = [p.name for p in class_dirs]
    images, labels = [], []
    for label, folder in enumerate(class_dirs):
        for path in sorted(folder.iterdir()):
            if path.is_file() and not is_junk(path.name) and path.suffix.lower() in suffixes:
                images.append(str(path))
                labels.append(label)
    return standard_split(card, strict, images, labels, class_names, kinds=KINDS)


@register_reader("list_file")
def read_list_file(card: dict[str, Any], root: Path | None, strict: bool, **options: Any) -> DatasetSplits:
    """Read ``<relpath> <label>`` list files; the label is the last whitespace-separated field."""
    opts = _options(card, options)
    root = Path(root)
    files = opts.get("files")
    if not files:
        raise DatasetError(f"The '{card.get('name')}' card must list its list files under reader_options.files.")
    rows: list[tuple[str, int]] = []
    for name in files:
        path = require(root / name, card)
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            parts = line.strip().rsplit(maxsplit=1)
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                raise DatasetError(f"{path}, line {number}: expected '<relpath> <integer label>', got {line!r}.")
            if not is_junk(Path(parts[0]).name):
                rows.append((parts[0], int(parts[1])))
    if not rows:
        raise DatasetError(f"The list files {files} under {root} are empty. {layout_hint(card)}")
    label_values = sorted({label for _, label in rows})
    names = {value: str(value) for value in label_values}
    if opts.get("names_file"):
        for line in require(root / opts["names_file"], card).read_text(encoding="utf-8").splitlines():
            if line.strip():
                value, _, name = line.strip().partition(" ")
                names[int(value)] = name.strip()
    rank = {value: i for i, value in enumerate(label_values)}
    class_names = [names[value] for value in label_values]
    images = [str(root / rel) for rel, _ in rows]
    labels = [rank[label] for _, label in rows]
    return standard_split(card, strict, images, labels, class_names, kinds=KINDS)
