"""Named checkpoints: names that resolve to a local checkpoint directory that this suite builds or caches itself
(e.g. ``attributes-supervisor``, the attributes world's trained tiny Qwen3-VL).

Backbones ask this registry before the Hugging Face hub; the modules that own such checkpoints register into it
(:func:`register_named_checkpoint`), so backbone code never imports an experiment. Providers are the built-in
modules in :data:`PROVIDERS` and the ``benchmark.checkpoints`` entry-point group, imported on first look-up (the
same discovery as the method registry's).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path

ENTRY_POINT_GROUP = "benchmark.checkpoints"
#: Built-in modules that register named checkpoints when imported.
PROVIDERS = ("benchmark.world.supervisor",)

_NAMED: dict[str, tuple[Callable[[], Path], str]] = {}
_DISCOVERED = False


def register_named_checkpoint(name: str, resolve: Callable[[], Path], description: str = "") -> None:
    """Register ``name``: ``resolve()`` returns its local checkpoint directory (building or fetching it if needed)."""
    if name in _NAMED and _NAMED[name][0] is not resolve:
        raise ValueError(f"Named checkpoint '{name}' is registered twice; rename one of them.")
    _NAMED[name] = (resolve, description)


def _discover() -> None:
    global _DISCOVERED
    if _DISCOVERED:
        return
    _DISCOVERED = True
    for module in PROVIDERS:
        importlib.import_module(module)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        ep.load()


def resolve_named_checkpoint(name: str) -> Path | None:
    """The local directory of the named checkpoint ``name``, or None when no provider knows that name."""
    _discover()
    entry = _NAMED.get(name)
    return entry[0]() if entry else None


def list_named_checkpoints() -> dict[str, str]:
    """Registered names and their one-line descriptions."""
    _discover()
    return {name: description for name, (_, description) in sorted(_NAMED.items())}
