"""The encoder every method trains: a backbone, a pooling, an optional linear embedding head, L2 normalisation.

Backbones are built by *kind*: ``timm`` (any timm model name, pretrained or from a local checkpoint file) is
built in; other kinds (e.g. a multimodal LLM's vision tower) register a builder with :func:`register_backbone`.
A builder returns a module mapping images to a token sequence ``B×N×C`` (CNN feature maps are flattened to
tokens) plus the number of prefix tokens (CLS, registers) and the preprocessing the backbone was trained with, so
normalisation always comes from the backbone's own configuration.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.registry import UnknownNameError, suggest

POOLINGS = ("mean", "cls", "gem", "maxavg", "max")


@dataclass
class BackboneOutput:
    """What a backbone builder returns."""

    module: nn.Module  # images B×3×H×W -> tokens B×N×C
    feature_dim: int
    num_prefix_tokens: int = 0  # CLS / register tokens at the start of the sequence
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bilinear"
    source: str = ""  # where the weights came from, for the run record
    extra: dict[str, Any] = field(default_factory=dict)


BackboneBuilder = Callable[[Any], BackboneOutput]
_BACKBONES: dict[str, BackboneBuilder] = {}
_PREFLIGHT: dict[str, Callable[[Any], None]] = {}


def register_backbone(
    kind: str, preflight: Callable[[Any], None] | None = None
) -> Callable[[BackboneBuilder], BackboneBuilder]:
    """Register a builder ``fn(backbone_cfg) -> BackboneOutput`` for ``backbone.kind=<kind>``; ``preflight(cfg)``,
    if given, raises :class:`BackboneWeightsError` at once when the weights cannot be found (before data is read)."""

    def wrap(fn: BackboneBuilder) -> BackboneBuilder:
        _BACKBONES[kind] = fn
        if preflight is not None:
            _PREFLIGHT[kind] = preflight
        return fn

    return wrap


def preflight_backbone(cfg: Any) -> None:
    """Fail fast, before any data is read, when the backbone's weights cannot be found (kinds that can tell)."""
    _import_builtin_backbones()
    check = _PREFLIGHT.get(cfg.kind)
    if check is not None:
        check(cfg)


def list_backbone_kinds() -> list[str]:
    _import_builtin_backbones()
    return sorted(_BACKBONES)


def _import_builtin_backbones() -> None:
    import importlib
    import pkgutil

    import benchmark.backbones as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        importlib.import_module(f"benchmark.backbones.{info.name}")


class BackboneWeightsError(RuntimeError):
    """Pretrained weights that cannot be loaded (no network, wrong file)."""


class _TimmTokens(nn.Module):
    """A timm model as an images -> tokens module (feature maps B×C×H×W become B×HW×C)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.model.forward_features(images)
        if features.ndim == 4:  # CNN: B×C×H×W
            return features.flatten(2).transpose(1, 2)
        return features


@register_backbone("timm")
def build_timm_backbone(cfg: Any) -> BackboneOutput:
    """A timm model by name; ``cfg.checkpoint`` loads a local weights file instead of fetching from the hub."""
    import timm

    kwargs: dict[str, Any] = {"num_classes": 0}
    pretrained = bool(cfg.pretrained)
    if cfg.checkpoint:
        path = Path(cfg.checkpoint).expanduser()
        if not path.is_file():
            raise BackboneWeightsError(
                f"backbone.checkpoint={cfg.checkpoint} does not exist (expected a weights file)."
            )
        kwargs["pretrained_cfg_overlay"] = {"file": str(path)}
        pretrained = True
    if cfg.get("img_size") and "vit" in cfg.name:
        kwargs["img_size"] = cfg.img_size
    try:
        model = timm.create_model(cfg.name, pretrained=pretrained, **kwargs)
    except Exception as err:  # network, hub and file errors come in many types
        if isinstance(err, RuntimeError) and "Unknown model" in str(err):
            names = timm.list_models()
            raise UnknownNameError(suggest(cfg.name, names, "timm backbone", TIMM_LISTING)) from None
        if cfg.checkpoint:  # timm reads it weights-only (safetensors, or torch.load(weights_only=True))
            from benchmark.engine.checkpoints import load_error_reason

            if "Weights only" in str(err) or "Unsupported global" in str(err):
                reason = load_error_reason(err)
            else:
                reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise BackboneWeightsError(
                f"backbone.checkpoint={cfg.checkpoint} could not be loaded into '{cfg.name}': {reason}. Expected a "
                "weights file of this model (model.safetensors, or a PyTorch state dict of tensors); nothing in it "
                "was run."
            ) from None
        if pretrained:
            raise BackboneWeightsError(
                f"Could not fetch pretrained weights for '{cfg.name}' ({type(err).__name__}: {err}). "
                "Without network access, download the weights elsewhere (e.g. the model's Hugging Face page, "
                "file model.safetensors or pytorch_model.bin) and pass backbone.checkpoint=/path/to/file, "
                "or train from scratch with backbone.pretrained=false."
            ) from err
        raise
    data_cfg = timm.data.resolve_data_config({}, model=model)
    tag = model.pretrained_cfg.get("tag") if pretrained else None
    source = f"timm:{cfg.name}" + (f".{tag}" if tag else "")
    source += f" (local file {cfg.checkpoint})" if cfg.checkpoint else ("" if pretrained else " (random init)")
    return BackboneOutput(
        module=_TimmTokens(model),
        feature_dim=model.num_features,
        num_prefix_tokens=getattr(model, "num_prefix_tokens", 0),
        mean=tuple(data_cfg["mean"]),
        std=tuple(data_cfg["std"]),
        interpolation=data_cfg.get("interpolation", "bilinear"),
        source=source,
    )


#: The command an unknown-backbone error points at for the full list of timm names.
TIMM_LISTING = "python -c \"import timm; print('\\n'.join(timm.list_models()))\"."


def check_timm_name(name: str) -> None:
    """Raise :class:`UnknownNameError` with the nearest names when timm has no architecture ``name`` (a name with a
    pretrained tag, ``resnet50.a1_in1k``, or a hub source, ``hf-hub:org/repo``, is left to timm)."""
    import timm

    if ":" in name or timm.is_model(name):
        return
    raise UnknownNameError(suggest(name, timm.list_models(), "timm backbone", TIMM_LISTING))


def enable_activation_checkpointing(module: nn.Module, name: str) -> None:
    """Each block's activations recomputed in backward instead of stored (``backbone.activation_checkpointing``): the
    library's own switch, Hugging Face's ``activation_checkpointing_enable`` (an MLLM's vision tower) or timm's
    ``set_grad_checkpointing``; a backbone with neither is refused."""
    for sub in module.modules():
        if hasattr(sub, "activation_checkpointing_enable") and getattr(sub, "supports_gradient_checkpointing", False):
            sub.activation_checkpointing_enable({"use_reentrant": False})
            return
        if hasattr(sub, "set_grad_checkpointing"):
            sub.set_grad_checkpointing(True)
            return
    raise ValueError(
        f"backbone.activation_checkpointing=true: '{name}' has no activation checkpointing (Hugging Face models "
        "and timm models have one); set backbone.activation_checkpointing=false."
    )


class Encoder(nn.Module):
    """Backbone -> pooling -> optional linear head -> L2 normalisation.

    ``tokens(images)`` gives the backbone's token sequence (what attention poolers, e.g. SAGA's, consume);
    ``forward(images)`` gives the L2-normalised embedding that retrieval uses.
    """

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        _import_builtin_backbones()
        if cfg.kind not in _BACKBONES:
            raise UnknownNameError(suggest(cfg.kind, _BACKBONES, "backbone kind"))
        if cfg.pooling not in POOLINGS:
            raise UnknownNameError(suggest(cfg.pooling, POOLINGS, "pooling"))
        built = _BACKBONES[cfg.kind](cfg)
        if cfg.pooling == "cls" and built.num_prefix_tokens == 0:
            raise ValueError(
                f"backbone.pooling=cls needs a backbone with a CLS token (e.g. a ViT); '{cfg.name}' "
                "has none. Use backbone.pooling=mean."
            )
        self.backbone = built.module
        if cfg.get("activation_checkpointing"):
            enable_activation_checkpointing(self.backbone, str(cfg.name))
        self.info = built
        self.pooling = cfg.pooling
        self.gem_p = float(cfg.get("gem_p", 3.0))
        self.feature_dim = built.feature_dim
        self.num_prefix_tokens = built.num_prefix_tokens
        self.freeze_bn = True if cfg.get("freeze_bn") is None else bool(cfg.freeze_bn)
        if self.freeze_bn:  # as Proxy Anchor's official code: BN layers in eval mode, affine terms not trained
            dead = 0
            for module in self.backbone.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.requires_grad_(False)
                    dead += bool(module.affine and not module.weight.detach().abs().sum())
            if dead:
                import warnings

                warnings.warn(
                    f"backbone.freeze_bn=true freezes {dead} BatchNorm layer(s) of '{cfg.name}' whose scale is 0 "
                    "(an untrained timm ResNet zero-initialises the last BN of every residual branch), so those "
                    "branches never learn. Train BN from scratch: backbone.freeze_bn=false.",
                    stacklevel=2,
                )
        if cfg.embedding_dim:
            self.head: nn.Module = nn.Linear(built.feature_dim, int(cfg.embedding_dim))
            # Proxy Anchor's official code initialises the embedding layer with kaiming normal (fan_out).
            nn.init.kaiming_normal_(self.head.weight, mode="fan_out")
            nn.init.zeros_(self.head.bias)
            self.embedding_dim = int(cfg.embedding_dim)
        else:
            self.head = nn.Identity()
            self.embedding_dim = built.feature_dim

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Backbone tokens B×N×C (prefix tokens first)."""
        return self.backbone(images)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """Pool B×N×C tokens to B×C with the configured pooling (CLS uses the first prefix token)."""
        if self.pooling == "cls":
            return tokens[:, 0]
        patches = tokens[:, self.num_prefix_tokens :]
        if self.pooling == "mean":
            return patches.mean(1)
        if self.pooling == "max":
            return patches.amax(1)
        if self.pooling == "maxavg":  # Proxy Anchor's GAP + GMP
            return patches.mean(1) + patches.amax(1)
        # GeM (Radenović et al., TPAMI 2018): (mean x^p)^(1/p) on non-negative activations
        return patches.clamp(min=1e-6).pow(self.gem_p).mean(1).pow(1.0 / self.gem_p)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled features before the head."""
        return self.pool(self.tokens(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(self.features(images)).float(), dim=-1)

    def backbone_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.backbone.parameters() if p.requires_grad]

    def head_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.head.parameters() if p.requires_grad]

    def train(self, mode: bool = True) -> Encoder:
        super().train(mode)
        if mode and self.freeze_bn:  # BN frozen: running statistics stay as loaded
            for module in self.backbone.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self
