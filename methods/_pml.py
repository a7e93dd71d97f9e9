"""Shared plumbing for methods whose loss (and miner) come from pytorch-metric-learning (not a plugin itself)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.method import EmbeddingLossMethod, ParamGroup, TaskInfo, fp32_loss, to_fp32


class PmlLossMethod(EmbeddingLossMethod):
    """A method whose loss is a pytorch-metric-learning loss, optionally fed by a miner.

    Subclasses implement :meth:`build_criterion` (and :meth:`build_miner`). A loss with learnable class weights
    (proxies, centres) exposes them as one parameter group at ``cfg.proxy_lr_mult`` (the paper's ratio, cited in
    :attr:`proxy_lr_source`), or at the absolute ``cfg.proxy_lr`` where the paper gives a rate of its own for them
    (it then replaces the multiplier), with ``proxy_weight_decay`` (None: the engine's) and Adam's epsilon
    ``cfg.proxy_eps`` where the official optimiser sets one (None: the engine's AdamW default).
    """

    proxy_lr_source: ClassVar[str] = ""
    proxy_weight_decay: ClassVar[float | None] = None

    def __init__(self, cfg: Any, task: TaskInfo) -> None:
        super().__init__(cfg, task)
        self.criterion = self.build_criterion()
        self.miner = self.build_miner()

    def build_criterion(self) -> nn.Module:
        raise NotImplementedError

    def build_miner(self) -> nn.Module | None:
        return None

    def param_groups(self) -> list[ParamGroup]:
        params = [p for p in self.criterion.parameters() if p.requires_grad]
        if not params:
            return []
        return [
            ParamGroup(
                "proxies",
                params,
                lr_mult=float(getattr(self.cfg, "proxy_lr_mult", 1.0)),
                lr=None if getattr(self.cfg, "proxy_lr", None) is None else float(self.cfg.proxy_lr),
                weight_decay=self.proxy_weight_decay,
                source=self.proxy_lr_source,
                eps=None if getattr(self.cfg, "proxy_eps", None) is None else float(self.cfg.proxy_eps),
            )
        ]

    def embed(self, images: torch.Tensor, encoder: Any) -> torch.Tensor:
        """The encoder's embedding; with ``cfg.layer_norm`` (ProxyNCA++, NormSoftmax), the pooled features are
        layer-normalised (no affine parameters) before the encoder's head, as those papers' networks do."""
        if not getattr(self.cfg, "layer_norm", False):
            return super().embed(images, encoder)
        feats = encoder.features(images)
        return F.normalize(to_fp32(encoder.head(F.layer_norm(feats, feats.shape[-1:]))), dim=-1)

    def loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # Similarities in fp32 even under the engine's bf16 autocast (margins of 0.01-0.4 on cosines need the digits),
        # also when the loss is called directly rather than through training_step.
        with fp32_loss(embeddings):
            embeddings = to_fp32(embeddings)
            indices = self.miner(embeddings, labels) if self.miner is not None else None
            return self.criterion(embeddings, labels, indices)
