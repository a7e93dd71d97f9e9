"""Composing many configs that share most of their choices (a sweep's cells) without composing each from scratch.

A full Hydra composition (defaults tree, every config node merged, the overrides applied) costs about 0.2 s on a
small machine, and composing a sweep's cells one by one re-reads every dataset card three times per cell. Cells of a
sweep differ in a few values (seed, learning rate, ...) and share their *group* choices (``method=``, ``dataset=``,
``backbone=``, ``protocol=``). :class:`ComposeCache` composes each distinct set of group choices once with Hydra,
then gives each cell a copy with its other overrides applied by Hydra's own override code
(``ConfigLoaderImpl._apply_overrides_to_config``, the step that follows the defaults merge inside every Hydra
composition), so every override still goes through the schema's type checks. Anything the shortcut does not cover
(a parse error, a sweep value ``a,b``, a ``hydra.`` key, an override Hydra refuses) falls back to the full
composition, whose error the user sees as before. ``tests/test_bad_inputs_take3.py`` checks that both paths give
identical configs. (Hand-written: Hydra has no public API for "compose these once, vary those".)
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig


class ComposeCache:
    """What the cells of one sweep share: registered configs, dataset cards, and one base config per group choice.

    ``hydra_compositions`` counts the full Hydra compositions made (one per distinct set of group choices when the
    cells compose cleanly); tests assert on it.
    """

    def __init__(self) -> None:
        self.registered = False
        self.cards: dict[str, dict[str, Any]] = {}
        self._bases: dict[tuple[str, ...], tuple[list[str], dict[str, Any], DictConfig | None]] = {}
        self.hydra_compositions = 0
        self._parsed: dict[str, Any] = {}  # override text -> Hydra's parsed Override (cells repeat the spec's)

    def card(self, name: str) -> dict[str, Any]:
        """A dataset card, read once."""
        if name not in self.cards:
            from benchmark.data.base import load_card

            self.cards[name] = load_card(name)
        return self.cards[name]

    def compose(
        self,
        overrides: list[str],
        groups: dict[str, str],
        apply_protocol: Callable[[list[str]], tuple[list[str], dict[str, Any]]],
        full: Callable[[list[str]], DictConfig],
    ) -> tuple[DictConfig, dict[str, Any]]:
        """The config of ``overrides`` (already prepared) and its dataset card.

        ``apply_protocol`` and ``full`` are the config module's protocol step and full Hydra composition.
        """
        group = [o for o in overrides if o.partition("=")[0].lstrip("+~") in groups]
        rest = [o for o in overrides if o.partition("=")[0].lstrip("+~") not in groups]
        key = tuple(group)
        if key not in self._bases:
            selected, card = apply_protocol(group)  # stores this choice's protocol values, then composes on them
            base = None
            try:
                base = full(selected)
                self.hydra_compositions += 1
            except Exception:  # noqa: BLE001 - the full composition below raises the error the user sees
                base = None
            self._bases[key] = (selected, card, base)
        selected, card, base = self._bases[key]
        cfg = self._apply(base, rest) if base is not None else None
        if cfg is None:  # the full composition, with this choice's protocol values stored again
            selected, card = apply_protocol(group)
            self.hydra_compositions += 1
            cfg = full(selected + rest)
        return cfg, card

    def _apply(self, base: DictConfig, rest: list[str]) -> DictConfig | None:
        """A copy of ``base`` with the config overrides ``rest`` applied as Hydra applies them, or None where the
        full composition must decide (its error is the one to show)."""
        from hydra._internal.config_loader_impl import ConfigLoaderImpl
        from hydra.core.override_parser.overrides_parser import OverridesParser

        missing = [o for o in rest if o not in self._parsed]
        if missing:
            try:
                self._parsed.update(zip(missing, OverridesParser.create().parse_overrides(missing), strict=True))
            except Exception:  # noqa: BLE001 - a parse error: Hydra's own message comes from the full composition
                return None
        parsed = [self._parsed[o] for o in rest]
        if any(o.is_sweep_override() or o.is_hydra_override() or o.package is not None for o in parsed):
            return None
        cfg = copy.deepcopy(base)
        try:
            ConfigLoaderImpl._apply_overrides_to_config(parsed, cfg)
        except Exception:  # noqa: BLE001 - e.g. an unknown key or a value of the wrong type
            return None
        return cfg
