"""Protocols (``protocol=``): what a published table holds fixed for all of its methods, as data in ``sweeps/protocols/``.

A protocol file names a backbone preset (``backbone: mllm_vision``) and ``settings``: config values every method
gets (backbone pooling and head, image size and transforms, optimiser recipe, epochs, batch and sampler, the
model-selection rule), each with the source it comes from; ``backbones:`` holds what changes with the preset
(InternVL's 448-px tiles). A dataset card says which protocol its runs default to (``protocol:``) and may scale a
protocol to itself under ``protocols: {<name>: {backbone, settings, methods}}`` (e.g. the ``saga`` setting on the
embedded ``attributes`` dataset uses the attributes world's supervisor at 64 px); ``methods`` there holds method
hyperparameters for that scale (SAGA's K and answer length on a CPU), never a budget.

Which protocol a run uses: ``protocol=`` on the command line, else the one the method declares (``Method.protocol``,
e.g. SAGA's ``saga``), else the dataset card's, else ``none``. Precedence of values, lowest first: the schema
defaults, the protocol, the dataset's scaling of it, the backbone preset's row, then every ``key=value`` the
command line gives (an explicit ``train.lr=...`` always wins). A ``backbone=`` preset on the command line replaces
the protocol's backbone, and then the protocol's identity keys (``backbone.kind/name/pretrained/checkpoint``) are
not applied. The composition itself is Hydra's: the result is stored as the ``protocol`` group's option (package
``_global_``) just before the config is composed (:func:`benchmark.config.compose_config`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from benchmark.registry import UnknownNameError, suggest

PROTOCOLS_DIR = Path(__file__).resolve().parents[2] / "sweeps" / "protocols"
#: A protocol's values for these keys describe *which* backbone it is; they give way to a ``backbone=`` choice.
IDENTITY_KEYS = ("backbone.kind", "backbone.name", "backbone.pretrained", "backbone.checkpoint")
NO_PROTOCOL = "none"


class ProtocolError(ValueError):
    """A protocol file or a dataset card's protocol section that cannot be used."""


def list_protocols() -> dict[str, dict[str, Any]]:
    """Every protocol in ``sweeps/protocols/`` by name."""
    found = {}
    for path in sorted(PROTOCOLS_DIR.glob("*.yaml")):
        data = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}
        if data.get("name") != path.stem:
            raise ProtocolError(f"{path}: 'name' must be the file's name ({path.stem}), got {data.get('name')!r}.")
        found[path.stem] = data
    return found


def load_protocol(name: str) -> dict[str, Any]:
    """The protocol ``name``; an unknown name lists the protocols and the nearest one."""
    protocols = list_protocols()
    if name not in protocols:
        raise UnknownNameError(suggest(name, protocols, "protocol"))
    return protocols[name]


def choose_protocol(explicit: str | None, method_cls: type | None, card: dict[str, Any]) -> str:
    """The run's protocol: the command line's, else the method's own, else the dataset card's, else ``none``."""
    for name in (explicit, getattr(method_cls, "protocol", None), card.get("protocol")):
        if name:
            return str(name)
    return NO_PROTOCOL


def _settings(block: dict[str, Any] | None, where: str) -> dict[str, Any]:
    values = (block or {}).get("settings") or {}
    if not isinstance(values, dict) or not all(isinstance(k, str) and "." in k for k in values):
        raise ProtocolError(f"{where}: 'settings' must map dotted config keys (e.g. train.lr) to values.")
    return dict(values)


def resolve_protocol(
    name: str, card: dict[str, Any], method: str, backbone_choice: str | None
) -> tuple[str | None, dict[str, Any]]:
    """The backbone preset to select (None: keep the command line's or the schema's) and the protocol's values for
    this dataset, backbone preset and method as a flat ``{dotted key: value}`` mapping (lowest precedence first)."""
    protocol = load_protocol(name)
    scaled = ((card.get("protocols") or {}).get(name)) or {}
    where = f"dataset card '{card.get('name')}', protocols.{name}"
    preset = backbone_choice or scaled.get("backbone") or protocol.get("backbone")
    values = _settings(protocol, f"sweeps/protocols/{name}.yaml")
    values |= _settings(scaled, where)
    method_values = (scaled.get("methods") or {}).get(method) or {}
    if not all(k.startswith("method.") for k in method_values):
        raise ProtocolError(f"{where}: methods.{method} may only set method.* keys.")
    values |= method_values
    if backbone_choice:  # the command line chose the backbone: the protocol does not rename it
        values = {k: v for k, v in values.items() if k not in IDENTITY_KEYS}
    values |= _settings({"settings": (protocol.get("backbones") or {}).get(preset)}, f"sweeps/protocols/{name}.yaml")
    return (None if backbone_choice else preset), values


def nest(flat: dict[str, Any]) -> dict[str, Any]:
    """``{"train.lr": 1}`` -> ``{"train": {"lr": 1}}``."""
    tree: dict[str, Any] = {}
    for dotted, value in flat.items():
        node = tree
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def expected_training_classes(card: dict[str, Any], val_fraction: float, selection: str) -> int | None:
    """Training classes left after the validation carve-out (the rule of ``carve_validation``), from the card's
    expected counts; None where the card gives none."""
    total = (card.get("expected") or {}).get("train_classes")
    if not total:
        return None
    if selection != "val":
        return int(total)
    n_val = int(round(total * val_fraction))
    if val_fraction > 0 and n_val == 0:
        n_val = 1
    return int(total) - n_val


def describe_protocols() -> list[str]:
    """One line per protocol for ``python -m benchmark list``."""
    return [f"  {name:<22} {p.get('title', '')}" for name, p in list_protocols().items()]
