"""``python -m benchmark list``: methods, datasets and backbones, one line each."""

from __future__ import annotations

from benchmark.data.base import card_sources, list_cards
from benchmark.data.cards import ENV_VAR
from benchmark.engine.encoder import list_backbone_kinds
from benchmark.engine.protocols import describe_protocols
from benchmark.registry import list_methods


def listing_lines() -> list[str]:
    lines = ["methods:"]
    for name, cls in list_methods().items():
        year = f" ({cls.year})" if cls.year else ""
        lines.append(f"  {name:<20} {cls.paper}{year}")
        if getattr(cls, "protocol", None):
            lines.append(f"  {'':<20} protocol: {cls.protocol} (its runs use it unless protocol= says otherwise)")
        recommended = getattr(cls, "recommended", None)
        if recommended:
            lines.append(f"  {'':<20} recommended: {' '.join(f'{k}={v}' for k, v in recommended.items())}")
    lines.append("datasets:")
    sources = card_sources()
    for name, card in list_cards().items():
        counts = card.get("expected") or {}
        where = "embedded, no download" if card.get("needs_root") is False else "needs dataset.root"
        lines.append(
            f"  {name:<20} {card.get('title', '')} — {counts.get('classes', '?')} classes, "
            f"{counts.get('images', '?')} images ({where}; protocol {card.get('protocol', 'none')})"
        )
        origin, path = sources.get(name, ("?", None))
        lines.append(f"  {'':<20} card: {path} ({origin})")
    lines.append(f"  {'':<20} (your own cards: a directory named by ${ENV_VAR}, or dataset.card=FILE)")
    lines.append("protocols (protocol=NAME; sweeps/protocols/NAME.yaml):")
    lines += describe_protocols()
    lines.append("backbones:")
    for kind in list_backbone_kinds():
        if kind == "timm":
            lines.append(
                f"  {'timm':<20} any timm model: backbone.name=<timm name> (e.g. resnet50, "
                "vit_small_patch16_224), backbone.pretrained, backbone.checkpoint=<local file>"
            )
        else:
            lines.append(f"  {kind:<20} backbone.kind={kind}")
    from hydra.core.config_store import ConfigStore

    from benchmark.config import register_configs

    register_configs()
    for option in sorted(ConfigStore.instance().repo.get("backbone", {})):
        preset = option.removesuffix(".yaml")
        if preset != "timm":
            node = ConfigStore.instance().repo["backbone"][option].node
            lines.append(f"  backbone={preset:<11} preset: kind {node.kind}, name {node.name}")
    lines.append(
        "  backbone=mllm_vision backbone.name=attributes-supervisor  the attributes world's trained tiny Qwen3-VL "
        "(cached; built on first use or by `python -m benchmark supervisor build`)"
    )
    return lines


def print_listing() -> None:
    print("\n".join(listing_lines()))
