"""The dataset contract: readers turn a dataset root (or nothing, for embedded data) into class-disjoint splits.

A dataset is described by a *card* (``datasets/<name>.yaml``: data, not code) that names its *reader*, its split
file, the expected counts, its citation and its attribute vocabulary. Readers are registered here by name, so a new
dataset in a supported layout (``image_folder``, ``list_file``) is a new card and no code.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from benchmark.registry import UnknownNameError, suggest

#: ``datasets/`` at the repository root: cards and split files (never a Python package).
DATASETS_DIR = Path(__file__).resolve().parents[2] / "datasets"


class DatasetError(RuntimeError):
    """A dataset that is missing, in the wrong layout, or with counts that differ from the card."""


@dataclass
class SplitData:
    """One split. ``labels`` are dataset-global class ids indexing :attr:`DatasetSplits.class_names`.

    ``images`` holds either file paths (read lazily, converted to RGB) or a uint8 array ``N×H×W×3`` for embedded
    datasets that are generated in memory.
    """

    images: Sequence[str] | np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def classes(self) -> np.ndarray:
        """The sorted global class ids present in this split."""
        return np.unique(self.labels)

    def subset(self, mask: np.ndarray) -> SplitData:
        idx = np.flatnonzero(mask)
        images = self.images[idx] if isinstance(self.images, np.ndarray) else [self.images[i] for i in idx]
        return SplitData(images, self.labels[idx])


@dataclass
class DatasetSplits:
    """The zero-shot splits of one dataset: ``train`` holds every training class, ``test`` the unseen classes."""

    name: str
    train: SplitData
    test: SplitData
    class_names: list[str]
    card: dict[str, Any] = field(default_factory=dict)
    #: per-class attribute values, where the dataset knows them (the procedural attribute dataset does)
    class_attributes: dict[str, dict[str, str]] | None = None

    def summary(self) -> dict[str, dict[str, int]]:
        return {
            split: {"classes": int(len(data.classes)), "images": int(len(data))}
            for split, data in (("train", self.train), ("test", self.test))
        }


Reader = Callable[..., DatasetSplits]
_READERS: dict[str, Reader] = {}


def register_reader(name: str) -> Callable[[Reader], Reader]:
    """Register a reader ``fn(card, root, strict, **options) -> DatasetSplits`` under ``name``."""

    def wrap(fn: Reader) -> Reader:
        if name in _READERS and _READERS[name] is not fn:
            raise ValueError(f"Dataset reader '{name}' is registered twice")
        _READERS[name] = fn
        return fn

    return wrap


def get_reader(name: str) -> Reader:
    import benchmark.data.readers  # noqa: F401  (registers the built-in readers)

    if name not in _READERS:
        raise UnknownNameError(suggest(name, _READERS, "dataset reader"))
    return _READERS[name]


#: libyaml's safe loader where PyYAML was built with it (every config composition reads the cards; ~10x faster).
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def list_cards() -> dict[str, dict[str, Any]]:
    """Every dataset card by name: ``datasets/``, then the user's (:mod:`benchmark.data.cards`)."""
    from benchmark.data.cards import collect

    return collect(DATASETS_DIR, reader_names())[0]


def card_sources() -> dict[str, tuple[str, Path]]:
    """Where each card came from, by name: ``(origin, path)``, origin ``shipped``, ``$DML_BENCHMARK_CARDS`` or
    ``dataset.card``."""
    from benchmark.data.cards import collect

    return collect(DATASETS_DIR, reader_names())[1]


def reader_names() -> list[str]:
    """The registered reader names (what a card's ``reader:`` may say)."""
    import benchmark.data.readers  # noqa: F401  (registers the built-in readers)

    return sorted(_READERS)


def load_card(name: str) -> dict[str, Any]:
    cards = list_cards()
    if name not in cards:
        raise UnknownNameError(suggest(name, cards, "dataset"))
    return cards[name]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_split_file(card: dict[str, Any]) -> dict[str, Any]:
    """The card's versioned split file, after checking its checksum against the card."""
    spec = card.get("split") or {}
    if "file" not in spec:
        return {}
    origin = card_sources().get(card["name"])
    card_path = origin[1] if origin else DATASETS_DIR / f"{card['name']}.yaml"
    path = card_path.parent / spec["file"]  # a split file lies beside its card
    if not path.exists():
        raise DatasetError(f"Split file {path} named by the '{card['name']}' card ({card_path}) is missing.")
    if spec.get("sha256") and sha256_file(path) != spec["sha256"]:
        raise DatasetError(
            f"Split file {path} does not match the checksum in {card_path}: the split was edited. "
            "Splits are versioned: add a new split file with a new version instead of editing one."
        )
    return yaml.safe_load(path.read_text())


def check_counts(card: dict[str, Any], splits: DatasetSplits, strict: bool) -> None:
    """Compare the loaded counts with the card's ``expected`` block; raise (strict) or warn on a difference."""
    expected = card.get("expected") or {}
    found = {
        "classes": len(splits.class_names),
        "images": len(splits.train) + len(splits.test),
        "train_classes": len(splits.train.classes),
        "test_classes": len(splits.test.classes),
        "train_images": len(splits.train),
        "test_images": len(splits.test),
    }
    diffs = [
        f"{key}: expected {expected[key]}, found {found[key]}"
        for key in found
        if key in expected and expected[key] != found[key]
    ]
    if not diffs:
        return
    message = (
        f"Dataset '{card['name']}' does not have the expected counts ({'; '.join(diffs)}). "
        "The copy has missing or extra images, or the wrong archive."
    )
    if strict:
        raise DatasetError(
            message + " Check the copy (python -m benchmark prepare dataset=...), or pass "
            "dataset.strict=false to use a miniature or partial copy anyway (the record says so)."
        )
    warnings.warn(message + " Continuing because dataset.strict=false.", stacklevel=2)


def load_dataset(name: str, root: str | None = None, strict: bool = True, **options: Any) -> DatasetSplits:
    """Load dataset ``name`` through the reader its card names, and check its counts."""
    card = load_card(name)
    reader = get_reader(card["reader"])
    if card.get("needs_root", True):
        if not root:
            raise DatasetError(
                f"Dataset '{name}' needs its files: pass dataset.root=DIR (expected layout: {card.get('layout', '?')}). "
                f"To fetch and check them: python -m benchmark prepare dataset={name} dataset.root=DIR"
            )
        if not Path(root).is_dir():
            raise DatasetError(
                f"dataset.root={root} is not a directory. Expected the '{name}' layout: {card.get('layout', '?')}. "
                f"To fetch and check it: python -m benchmark prepare dataset={name} dataset.root={root}"
            )
    splits = reader(card=card, root=Path(root) if root else None, strict=strict, **options)
    splits.card = card
    check_counts(card, splits, strict)
    return splits


def carve_validation(train: SplitData, fraction: float) -> tuple[SplitData, SplitData]:
    """Split the training classes into (train, val), class-disjoint: the last ``fraction`` of the sorted class ids.

    Deterministic and independent of the seed, so every method selects on the same validation classes.
    """
    classes = train.classes
    n_val = int(round(len(classes) * fraction))
    if fraction > 0 and n_val == 0:
        n_val = 1
    if n_val < 2 or n_val >= len(classes) - 1:
        raise DatasetError(
            f"dataset.val_fraction={fraction} gives {n_val} validation classes out of {len(classes)} training "
            "classes; class-disjoint selection needs at least 2 validation classes and 2 training classes. "
            "Change dataset.val_fraction, or select the last epoch with eval.selection=last."
        )
    val_classes = classes[len(classes) - n_val :]
    is_val = np.isin(train.labels, val_classes)
    return train.subset(~is_val), train.subset(is_val)
