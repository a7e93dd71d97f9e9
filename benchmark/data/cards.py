"""Where dataset cards come from: the shipped ``datasets/``, the directories named by ``$DML_BENCHMARK_CARDS``
(``os.pathsep``-separated), and card files named on the command line (``dataset.card=/path/card.yaml``).

Every card, shipped or not, passes :func:`validate_card` (a card is data: YAML read with the safe loader, nothing in
it is executed). A card's split file (``split.file``) is relative to the card's own directory. A user card whose
name is a shipped card's loses, with a warning naming both files (``dataset.card=`` naming it is refused), so a
shipped protocol's data can never be replaced by accident.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Collection
from pathlib import Path
from typing import Any

import yaml

ENV_VAR = "DML_BENCHMARK_CARDS"
NAME = re.compile(r"[a-z0-9][a-z0-9_]*")
COUNT_KEYS = ("classes", "images", "train_classes", "test_classes", "train_images", "test_images")
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
#: Card files named with ``dataset.card=`` in this process (name -> path), on top of the discovered ones.
_NAMED: dict[str, Path] = {}


class CardError(ValueError):
    """A dataset card that is not valid; the message names the file and what to fix. (Not a DatasetError: this
    module stays below :mod:`benchmark.data.base`, which reads cards through it; the CLI shows both in one line.)"""


def validate_card(card: Any, path: Path, readers: Collection[str]) -> dict[str, Any]:
    """Check a card's fields (the same rules for shipped and user cards; ``readers``: the registered reader names);
    returns the card."""

    def bad(what: str) -> CardError:
        return CardError(f"Dataset card {path}: {what}. See datasets/*.yaml for complete examples.")

    if not isinstance(card, dict):
        raise bad("the file must hold a YAML mapping (name:, title:, reader:, ...)")
    name = card.get("name")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise bad(f"'name' must be lowercase letters, digits and underscores (a dataset= option), got {name!r}")
    for key in ("title", "reader"):
        if not isinstance(card.get(key), str) or not card[key].strip():
            raise bad(f"'{key}' must be a non-empty string")
    if card["reader"] not in readers:
        raise bad(f"unknown reader {card['reader']!r}; readers: {', '.join(sorted(readers))}")
    if not isinstance(card.get("needs_root", True), bool):
        raise bad("'needs_root' must be true or false")
    for key in ("defaults", "reader_options", "expected", "split", "protocols"):
        if card.get(key) is not None and not isinstance(card[key], dict):
            raise bad(f"'{key}' must be a mapping")
    expected = card.get("expected") or {}
    wrong = [k for k, v in expected.items() if k not in COUNT_KEYS or isinstance(v, bool) or not isinstance(v, int)]
    if wrong:
        raise bad(f"'expected' holds {wrong}: its keys are {', '.join(COUNT_KEYS)}, each an integer")
    split = card.get("split") or {}
    if split.get("file") is not None:
        file = Path(str(split["file"]))
        if file.is_absolute() or ".." in file.parts:
            raise bad(f"split.file {split['file']!r} must be a path inside the card's directory")
        if not (path.parent / file).is_file():
            raise bad(f"split.file {split['file']!r} is not a file next to the card ({path.parent / file})")
    if card.get("protocol") is not None:
        from benchmark.engine.protocols import list_protocols

        if card["protocol"] not in list_protocols():
            raise bad(f"unknown protocol {card['protocol']!r}; protocols: {', '.join(sorted(list_protocols()))}")
    return card


def read_card(path: str | os.PathLike, readers: Collection[str]) -> dict[str, Any]:
    """Read and validate one card file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CardError(f"Dataset card {path}: no such file (expected a YAML card, e.g. a copy of datasets/cub.yaml).")
    try:
        card = yaml.load(path.read_text(encoding="utf-8"), Loader=_LOADER)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CardError(f"Dataset card {path}: not readable YAML ({first}).") from None
    return validate_card(card, path.resolve(), readers)


def user_dirs() -> list[Path]:
    """The directories ``$DML_BENCHMARK_CARDS`` names (missing ones warned about and skipped)."""
    dirs = []
    for raw in filter(None, os.environ.get(ENV_VAR, "").split(os.pathsep)):
        d = Path(raw).expanduser()
        if d.is_dir():
            dirs.append(d)
        else:
            warnings.warn(f"${ENV_VAR} names {d}, which is not a directory: no cards read from it.", stacklevel=3)
    return dirs


def collect(
    shipped_dir: Path, readers: Collection[str]
) -> tuple[dict[str, dict[str, Any]], dict[str, tuple[str, Path]]]:
    """Every card by name and, by name, where it came from: ``("shipped" | "$DML_BENCHMARK_CARDS" |
    "dataset.card", path)``. Shipped cards are trusted as committed (their tests validate them); user cards are
    validated here and skipped, with a warning, when invalid or when their name is taken."""
    cards: dict[str, dict[str, Any]] = {}
    sources: dict[str, tuple[str, Path]] = {}
    for path in sorted(shipped_dir.glob("*.yaml")):
        card = yaml.load(path.read_text(), Loader=_LOADER)
        cards[card["name"]] = card
        sources[card["name"]] = ("shipped", path)
    user = [(f"${ENV_VAR}", p) for d in user_dirs() for p in sorted(d.glob("*.yaml"))]
    user += [("dataset.card", p) for p in _NAMED.values()]
    for origin, path in user:
        try:
            card = read_card(path, readers)
        except CardError as err:
            warnings.warn(f"{err} Skipped.", stacklevel=3)
            continue
        name = card["name"]
        if name in sources:
            if sources[name][1] != path.resolve():
                warnings.warn(
                    f"Dataset card {path} ({origin}) is ignored: the name '{name}' is already the card "
                    f"{sources[name][1]} ({sources[name][0]}). Give your card another name: line.",
                    stacklevel=3,
                )
            continue
        cards[name], sources[name] = card, (origin, path.resolve())
    return cards, sources


def use_card_file(overrides: list[str], shipped_dir: Path, readers: Collection[str]) -> list[str]:
    """``dataset.card=PATH`` on the command line: validate the card, make its name a ``dataset=`` option in this
    process, and select it (a ``dataset=`` naming another card is refused). Returns the overrides."""
    given = [o for o in overrides if o.partition("=")[0].lstrip("+~") == "dataset.card"]
    if not given:
        return overrides
    raw = given[-1].partition("=")[2].strip("'\"")
    if raw in ("", "null"):
        return overrides
    card = read_card(raw, readers)
    path, name = Path(raw).expanduser().resolve(), card["name"]
    taken = {c.get("name"): p for p in shipped_dir.glob("*.yaml") for c in [yaml.load(p.read_text(), Loader=_LOADER)]}
    if name in taken:
        raise CardError(
            f"dataset.card={raw}: its name '{name}' is the shipped card {taken[name]}, which wins. "
            "Give your card another name: line."
        )
    _NAMED[name] = path
    chosen = [o.partition("=")[2] for o in overrides if o.partition("=")[0].lstrip("+~") == "dataset"]
    if chosen and chosen[-1] != name:
        raise CardError(f"dataset={chosen[-1]} and dataset.card={raw} (a card named '{name}') disagree: give one.")
    return overrides if chosen else [f"dataset={name}", *overrides]
