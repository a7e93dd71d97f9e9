"""Shared helpers for the dataset readers: locating a layout, the cheap integrity check, and the split rules.

Split files (``datasets/splits/<name>.v<k>.yaml``) state a ``rule``; the kinds understood here are

- ``id_range``: ``train: [a, b]`` and ``test: [c, d]``, 1-based inclusive positions in the dataset's own class-id
  order (CUB ``classes.txt``, Cars ``class_names``);
- ``sorted_rank``: the same ranges over the class names sorted by Python's ``sorted`` (Unicode code-point order);
- ``class_lists``: explicit ``train_classes`` / ``test_classes`` name lists (for the generic readers).

Where a split file also lists ``train_classes`` / ``test_classes`` for a range rule, the loaded names are checked
against them, so a copy whose class numbering differs from the official archive cannot pass silently.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.data.base import DatasetError, DatasetSplits, SplitData, load_split_file


class LayoutNotFoundError(DatasetError):
    """The dataset's metadata files are not under the root at all (``prepare`` then fetches the archives)."""


#: how many missing files an error names before it summarises the rest as a count
MAX_NAMED = 10


def is_junk(name: str) -> bool:
    """macOS resource forks (``._x.jpg``) and Finder files, which copies made on a Mac carry."""
    return name.startswith("._") or name in {".DS_Store", "Thumbs.db"}


def name_some(items: Sequence[Any], limit: int = MAX_NAMED) -> str:
    """``a, b, c`` for up to ``limit`` items, then ``and N more``."""
    shown = ", ".join(str(item) for item in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def layout_hint(card: dict[str, Any]) -> str:
    name = card.get("name", "?")
    return (
        f"Expected the '{name}' layout: {card.get('layout', '?')}. "
        f"To fetch and check it: python -m benchmark prepare dataset={name} dataset.root=DIR"
    )


_HTML_START = (b"<!doctype html", b"<html", b"<head", b"<?xml version", b"<body")


def is_html_page(path: Path) -> bool:
    """True when ``path`` is a web page (what a failed download saves: a login, error or redirect page)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(1024)
    except OSError:
        return False
    head = head.removeprefix(b"\xef\xbb\xbf").lstrip().lower()
    return head.startswith(_HTML_START) and (b"<html" in head or b"<!doctype html" in head)


def check_not_html(path: Path, card: dict[str, Any]) -> Path:
    """``path``, unless it is an HTML page saved in place of a metadata file: then a :class:`DatasetError`."""
    if path.is_file() and is_html_page(path):
        raise DatasetError(
            f"{path} is an HTML web page, not the dataset's file: the download failed (an error, login or redirect "
            f"page was saved instead). Delete it and download the file again. {layout_hint(card)}"
        )
    return path


def locate(root: Path, markers: Sequence[str], subdirs: Sequence[str], card: dict[str, Any]) -> Path:
    """The directory under ``root`` (``root`` itself or one of ``subdirs``) that holds every file in ``markers``.

    Users point ``dataset.root`` either at the extracted folder or at its parent; both work.
    """
    candidates = [root] + [root / sub for sub in subdirs]
    for base in candidates:
        if all((base / marker).exists() for marker in markers):
            for marker in markers:
                check_not_html(base / marker, card)
            return base
    # Name what is missing in the most plausible candidate: the first one that has any marker, else root.
    best = next((b for b in candidates if any((b / m).exists() for m in markers)), root)
    missing = [str(best / m) for m in markers if not (best / m).exists()]
    raise LayoutNotFoundError(f"Missing {name_some(missing)} under dataset.root={root}. {layout_hint(card)}")


def require(path: Path, card: dict[str, Any]) -> Path:
    """``path`` if it exists, else a :class:`DatasetError` naming it and the expected layout."""
    if not path.exists():
        raise LayoutNotFoundError(f"Missing {path}. {layout_hint(card)}")
    return check_not_html(path, card)


def check_files(paths: Iterable[str], card: dict[str, Any]) -> None:
    """The cheap integrity check: every listed image exists and is non-empty (decoding is ``prepare``'s job)."""
    missing, empty = [], []
    for path in paths:
        try:
            if Path(path).stat().st_size == 0:
                empty.append(path)
        except OSError:
            missing.append(path)
    problems = []
    if missing:
        problems.append(f"{len(missing)} listed image(s) missing: {name_some(missing)}")
    if empty:
        problems.append(f"{len(empty)} empty image file(s): {name_some(empty)}")
    if problems:
        raise DatasetError(
            f"Dataset '{card.get('name', '?')}' is incomplete: {'; '.join(problems)}. "
            f"Re-extract the archive. {layout_hint(card)}"
        )


def split_spec(card: dict[str, Any]) -> dict[str, Any]:
    """The split file's content, or the card's inline ``split`` block (``rule``, class lists) without a file."""
    spec = load_split_file(card)
    if not spec:  # an inline split: rule (and class lists) in the card itself
        spec = dict(card.get("split") or {})
    if "rule" not in spec:
        raise DatasetError(f"The '{card.get('name', '?')}' card names no split rule (split.file or split.rule).")
    return spec


def _positions(bounds: Sequence[int], n: int, what: str, card: dict[str, Any]) -> range:
    first, last = int(bounds[0]), int(bounds[1])
    if not 1 <= first <= last:
        raise DatasetError(f"Split rule of '{card.get('name')}': bad {what} range {list(bounds)} (1-based, inclusive).")
    if last > n:  # a partial copy: the split would silently shrink (or vanish) and change which classes are unseen
        raise DatasetError(
            f"The split rule of '{card.get('name')}' puts classes {first}-{last} in {what}, but the copy under "
            f"dataset.root has only {n} classes: it is partial (a class folder or its annotations are missing). "
            f"Complete the copy; python -m benchmark prepare dataset={card.get('name')} dataset.root=DIR checks it."
        )
    return range(first - 1, last)


def assign_classes(
    spec: dict[str, Any], class_names: Sequence[str], card: dict[str, Any], kinds: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Global class ids (indices into ``class_names``) of the train and of the test classes, by the split rule.

    ``class_names`` is already in the order that the rule kind refers to (id order for ``id_range``, code-point
    order for ``sorted_rank``); the reader says which kinds it accepts.
    """
    rule = spec["rule"]
    kind = rule.get("kind")
    if kind not in kinds:
        raise DatasetError(
            f"Split rule kind '{kind}' is not understood by the '{card.get('reader')}' reader (accepts: {kinds})."
        )
    n = len(class_names)
    if kind in {"id_range", "sorted_rank"}:
        train = np.array(list(_positions(rule["train"], n, "train", card)), dtype=np.int64)
        test = np.array(list(_positions(rule["test"], n, "test", card)), dtype=np.int64)
    else:  # class_lists
        index = {name: i for i, name in enumerate(class_names)}
        unknown = [c for c in list(spec["train_classes"]) + list(spec["test_classes"]) if c not in index]
        if unknown:
            raise DatasetError(
                f"Split of '{card.get('name')}' names classes absent from the data: {name_some(unknown)}. "
                f"{layout_hint(card)}"
            )
        train = np.array([index[c] for c in spec["train_classes"]], dtype=np.int64)
        test = np.array([index[c] for c in spec["test_classes"]], dtype=np.int64)
    overlap = np.intersect1d(train, test)
    if overlap.size:
        raise DatasetError(
            f"Split of '{card.get('name')}' is not class-disjoint: {name_some([class_names[i] for i in overlap])} "
            "in both train and test."
        )
    return train, test


def check_class_names(
    spec: dict[str, Any], class_names: Sequence[str], train: np.ndarray, test: np.ndarray, card: dict, strict: bool
) -> None:
    """Compare the loaded train/test class names with the lists in the split file (where it has them)."""
    diffs = []
    for split, ids in (("train", train), ("test", test)):
        expected = spec.get(f"{split}_classes")
        if expected is None:
            continue
        found = [class_names[i] for i in ids]
        if list(found) != list(expected):
            extra = [c for c in found if c not in set(expected)]
            absent = [c for c in expected if c not in set(found)]
            detail = f"{split}: {len(found)} classes loaded, {len(expected)} in the split file"
            if extra:
                detail += f"; not in the split file: {name_some(extra, 5)}"
            if absent:
                detail += f"; missing from the data: {name_some(absent, 5)}"
            if not extra and not absent:
                detail += "; same names in a different order"
            diffs.append(detail)
    if not diffs:
        return
    message = (
        f"The class names of '{card.get('name')}' differ from the split file "
        f"{(card.get('split') or {}).get('file')} ({' | '.join(diffs)}). The copy is not the official archive, "
        "or its class numbering differs."
    )
    if strict:
        raise DatasetError(message + " Pass dataset.strict=false to use it anyway (the record says so).")
    warnings.warn(message + " Continuing because dataset.strict=false.", stacklevel=3)


def build_splits(
    card: dict[str, Any],
    images: Sequence[str],
    labels: Sequence[int],
    class_names: list[str],
    train_ids: np.ndarray,
    test_ids: np.ndarray,
) -> DatasetSplits:
    """Cut the pooled images into the class-disjoint train and test splits (images of other classes are dropped)."""
    labels = np.asarray(labels, dtype=np.int64)
    everything = SplitData(list(images), labels)
    splits = {
        "train": everything.subset(np.isin(labels, train_ids)),
        "test": everything.subset(np.isin(labels, test_ids)),
    }
    for split, ids in (("train", train_ids), ("test", test_ids)):
        if len(splits[split]) == 0:
            rule = (card.get("split") or {}).get("rule") or load_split_file(card).get("rule") or {}
            bounds = f" (positions {rule[split][0]}-{rule[split][1]}, rule {rule.get('kind')})" if split in rule else ""
            first = class_names[ids[0]] if len(ids) else "none"
            raise DatasetError(
                f"The {split} split of '{card.get('name', '?')}' is empty: the split rule expects {len(ids)} {split} "
                f"classes{bounds}, starting with {first}, and the copy holds no image of any of them (found 0 "
                f"images; its annotations list none for these classes). Check or re-extract the copy. "
                f"{layout_hint(card)}"
            )
    return DatasetSplits(
        name=card.get("name", "?"), train=splits["train"], test=splits["test"], class_names=class_names, card=card
    )


def standard_split(
    card: dict[str, Any],
    strict: bool,
    images: Sequence[str],
    labels: Sequence[int],
    class_names: list[str],
    kinds: Sequence[str],
) -> DatasetSplits:
    """Integrity check, split rule, class-name check and cut: the tail that every reader shares."""
    check_files(images, card)
    spec = split_spec(card)
    train, test = assign_classes(spec, class_names, card, kinds)
    check_class_names(spec, class_names, train, test, card, strict)
    return build_splits(card, images, labels, class_names, train, test)
