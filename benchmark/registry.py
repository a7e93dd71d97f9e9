"""A small typed registry for method plugins (after lm-evaluation-harness ``lm_eval/api/registry.py``).

Methods live one per file in the top-level ``methods`` package and are found by importing every module there;
third-party packages add methods through the ``benchmark.methods`` entry-point group. Registering a method also
stores its config dataclass in Hydra's ConfigStore under the ``method`` group, so ``method=X method.<field>=...``
is validated when the config is composed.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Iterable
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from benchmark.method import Method

ENTRY_POINT_GROUP = "benchmark.methods"

_METHODS: dict[str, type[Method]] = {}
_DISCOVERED = False

M = TypeVar("M", bound="type[Method]")


class UnknownNameError(KeyError):
    """An unknown registry name; the message lists what exists and the nearest match."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly.
        return str(self.args[0])


#: Beyond this many names an error lists only the nearest ones (timm has over a thousand models).
MAX_LISTED = 40


def suggest(name: str, known: Iterable[str], kind: str, listing: str | None = None) -> str:
    """An error message for an unknown ``name`` that lists ``known`` and suggests the closest one.

    Long lists (more than :data:`MAX_LISTED`) are not printed: the nearest names are (difflib), with the total and
    ``listing``, the command that prints them all.
    """
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    if len(known) <= MAX_LISTED:
        return f"Unknown {kind} '{name}'.{hint} Available: {', '.join(known) or '(none)'}."
    nearest = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    shown = f" Nearest: {', '.join(nearest)}." if nearest else ""
    more = f" All {len(known)}: {listing}" if listing else f" ({len(known)} in all.)"
    return f"Unknown {kind} '{name}'.{hint}{shown}{more}"


def register_method(cls: M) -> M:
    """Class decorator: register a :class:`~benchmark.method.Method` subclass under ``cls.name``."""
    from benchmark.method import Method

    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise TypeError(f"@register_method expects a subclass of benchmark.method.Method, got {cls!r}")
    for attr in ("name", "paper", "year", "config_class"):
        if getattr(cls, attr, None) in (None, ""):
            raise TypeError(f"Method {cls.__name__} must set the class attribute '{attr}'")
    if cls.name in _METHODS and _METHODS[cls.name] is not cls:
        other = _METHODS[cls.name]
        raise ValueError(
            f"Method name '{cls.name}' is registered twice: by {other.__module__}.{other.__name__} "
            f"and by {cls.__module__}.{cls.__name__}. Rename one of them."
        )
    _METHODS[cls.name] = cls
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(group="method", name=cls.name, node=cls.config_class)
    return cls


def discover_methods() -> None:
    """Import every module of the ``methods`` package and every ``benchmark.methods`` entry point (once)."""
    global _DISCOVERED
    if _DISCOVERED:
        return
    _DISCOVERED = True
    import methods

    for info in sorted(pkgutil.iter_modules(methods.__path__), key=lambda i: i.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"methods.{info.name}")
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        ep.load()


def get_method(name: str) -> type[Method]:
    """The method class registered as ``name``; an unknown name lists the methods and the nearest one."""
    discover_methods()
    if name not in _METHODS:
        raise UnknownNameError(suggest(name, _METHODS, "method"))
    return _METHODS[name]


def list_methods() -> dict[str, type[Method]]:
    """All registered methods by name, sorted."""
    discover_methods()
    return dict(sorted(_METHODS.items()))
