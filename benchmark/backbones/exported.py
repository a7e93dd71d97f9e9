"""``backbone=exported backbone.checkpoint=DIR``: an encoder exported by ``python -m benchmark export`` as a backbone.

The directory (Hugging Face Hub layout: ``model.safetensors``, ``config.json``, ``README.md``) holds the run's trained
encoder (backbone, pooling, head) and the method modules its retrieval embedding uses (SAGA: the attention pooler;
never a language model). Loading rebuilds that architecture from ``config.json`` (plain JSON) and the registered
method's code, then reads the tensors with ``safetensors`` (weights only: nothing in the directory is executed).
The backbone's output is the run's embedding as one token, so ``method=pretrained`` with ``backbone.pooling=mean
backbone.embedding_dim=null`` evaluates exactly what the run evaluated.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn

from benchmark.engine.encoder import BackboneOutput, BackboneWeightsError, register_backbone

FORMAT = "dml-benchmark-encoder"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"


class ExportedEmbedder(nn.Module):
    """The run's encoder and the method modules its ``embed`` uses; ``forward`` gives the embedding as ``B×1×D``."""

    def __init__(self, encoder: nn.Module, method: nn.Module) -> None:
        super().__init__()
        self.encoder, self.method = encoder, method

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """The run's retrieval embedding (L2-normalised), exactly as its evaluation computed it."""
        return self.method.embed(images, self.encoder)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.embed(images)[:, None, :]


def build_model(config: dict[str, Any]) -> ExportedEmbedder:
    """The architecture ``config`` describes (an export's ``config.json``), with freshly initialised weights."""
    from benchmark.data.base import list_cards
    from benchmark.engine.encoder import Encoder
    from benchmark.method import TaskInfo
    from benchmark.registry import get_method

    with warnings.catch_warnings():  # the run's own warnings at build time (e.g. freeze_bn) were shown to the run
        warnings.simplefilter("ignore", UserWarning)
        encoder = Encoder(OmegaConf.create(config["backbone"]))
    task = config["task"]
    card = list_cards().get(task["dataset"], {})  # methods may read a card (SAGA's prompt); {} when not installed
    method = get_method(config["method"])(
        OmegaConf.create(config["method_config"]),
        TaskInfo(
            num_classes=int(task["num_classes"]),
            embedding_dim=encoder.embedding_dim,
            dataset=task["dataset"],
            class_names=[f"class {i}" for i in range(int(task["num_classes"]))],
            card=card,
            feature_dim=encoder.feature_dim,
        ),
    )
    return ExportedEmbedder(encoder, method).eval()


def read_config(directory: Path) -> dict[str, Any]:
    """``config.json`` of an export, or :class:`BackboneWeightsError` saying what the directory should hold."""
    path = directory / CONFIG
    expected = f"expected a directory written by `python -m benchmark export RUN_DIR --out DIR` ({WEIGHTS}, {CONFIG})"
    if not directory.is_dir() or not path.is_file() or not (directory / WEIGHTS).is_file():
        raise BackboneWeightsError(f"backbone.checkpoint={directory}: not an exported encoder; {expected}.")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BackboneWeightsError(
            f"backbone.checkpoint={directory}: {CONFIG} cannot be read ({err}); {expected}."
        ) from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise BackboneWeightsError(f"backbone.checkpoint={directory}: {CONFIG} is not this suite's; {expected}.")
    if config.get("format_version") != FORMAT_VERSION:
        raise BackboneWeightsError(
            f"backbone.checkpoint={directory}: format version {config.get('format_version')!r}, this suite reads "
            f"{FORMAT_VERSION}: update the benchmark, or export the run again."
        )
    return config


def load_exported(directory: str | Path) -> tuple[ExportedEmbedder, dict[str, Any]]:
    """Rebuild and load an export (weights only, through safetensors); every stored tensor must fit the model."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory).expanduser()
    config = read_config(directory)
    model = build_model(config)
    try:
        state = load_file(directory / WEIGHTS)
    except (SafetensorError, OSError) as err:
        raise BackboneWeightsError(f"backbone.checkpoint={directory}: {WEIGHTS} cannot be read ({err}).") from None
    encoder = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    method = {k.removeprefix("method."): v for k, v in state.items() if k.startswith("method.")}
    try:
        model.encoder.load_state_dict(encoder, strict=True)
        missing, unexpected = model.method.load_state_dict(method, strict=False)
    except RuntimeError as err:
        raise BackboneWeightsError(
            f"backbone.checkpoint={directory}: the weights do not fit the architecture of {CONFIG} "
            f"({str(err).splitlines()[0]}). Export the run again."
        ) from None
    if unexpected or len(encoder) + len(method) != len(state):
        raise BackboneWeightsError(f"backbone.checkpoint={directory}: {WEIGHTS} holds tensors the model has not.")
    return model.eval(), config


def _preflight(cfg: Any) -> None:
    """Before any data is read: the directory is an export of this suite."""
    if not cfg.checkpoint:
        raise BackboneWeightsError(
            "backbone=exported needs backbone.checkpoint=DIR, a directory written by `python -m benchmark export`."
        )
    read_config(Path(cfg.checkpoint).expanduser())


@register_backbone("exported", preflight=_preflight)
def build_exported_backbone(cfg: Any) -> BackboneOutput:
    """``backbone.checkpoint`` names the export directory."""
    _preflight(cfg)
    model, config = load_exported(cfg.checkpoint)
    data = config["data"]
    return BackboneOutput(
        module=model,
        feature_dim=int(config["embedding_dim"]),
        num_prefix_tokens=0,
        mean=tuple(data["mean"]),
        std=tuple(data["std"]),
        interpolation=data["interpolation"],
        source=f"exported:{config['run_id']} ({cfg.checkpoint})",
    )


def _store_preset() -> None:
    from hydra.core.config_store import ConfigStore

    from benchmark.config import BackboneConfig

    node = BackboneConfig(kind="exported", name="exported", pretrained=False, pooling="mean", embedding_dim=None,
                          freeze_bn=False)  # fmt: skip
    ConfigStore.instance().store(group="backbone", name="exported", node=node)


_store_preset()
