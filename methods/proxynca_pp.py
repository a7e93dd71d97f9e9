"""ProxyNCA++ (Teh, DeVries, Taylor. "ProxyNCA++: Revisiting and Revitalizing Proxy Neighborhood Component
Analysis". ECCV 2020). Official code: https://github.com/euwern/proxynca_pp (``loss.ProxyNCA_prob``).

The loss is NCA over one proxy per class with low temperature T = 1/9 on squared distances between L2-normalised
embeddings and proxies: -log softmax(-||x - p||^2 / T)[y]. pytorch-metric-learning's ``ProxyNCALoss`` computes
exactly this with ``softmax_scale = 1/T = 9`` (parity test against the official code in tests/test_zoo_parity.py);
proxies start as N(0, 1/8^2) as in the official code. "Fast proxies": the official configs train the proxies at
lr 4e2 against a base 4e-3 (x1e5) without weight decay. Global max pooling, layer norm on the embedding and the
2048-d embedding of the official configs are engine settings (``recommended``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from pytorch_metric_learning import losses
from pytorch_metric_learning.utils import common_functions as c_f
from torch import nn

from benchmark.method import MethodConfig
from benchmark.registry import register_method
from methods._pml import PmlLossMethod


@dataclass
class ProxyNCAppConfig(MethodConfig):
    name: str = "proxynca_pp"
    temperature: float = 1.0 / 9.0  # paper (T = 1/9) / official config "scale": 3 (= sqrt(1/T))
    proxy_lr_mult: float = 1e5  # official config/*.json: proxynca lr 4e2 over base lr 4e-3
    proxy_init_std: float = 1.0 / 8.0  # official loss.py: torch.randn(nb_classes, sz_embed) / 8


@register_method
class ProxyNCApp(PmlLossMethod):
    """ProxyNCA++: proxy NCA with low temperature and fast-moving proxies."""

    name = "proxynca_pp"
    paper = (
        "Teh, DeVries, Taylor. ProxyNCA++: Revisiting and Revitalizing Proxy Neighborhood Component Analysis. ECCV 2020"
    )
    year = 2020
    url = "https://arxiv.org/abs/2004.01113"
    config_class = ProxyNCAppConfig
    proxy_lr_source = "ProxyNCA++ official config/*.json: proxies lr 4e2 over base lr 4e-3, weight decay 0"
    proxy_weight_decay = 0.0
    recommended: ClassVar[dict[str, Any]] = {"backbone.pooling": "max", "backbone.embedding_dim": 2048}

    def build_criterion(self) -> nn.Module:
        init = c_f.TorchInitWrapper(torch.nn.init.normal_, std=float(self.cfg.proxy_init_std))
        return losses.ProxyNCALoss(
            num_classes=self.task.num_classes,
            embedding_size=self.task.embedding_dim,
            softmax_scale=1.0 / float(self.cfg.temperature),
            weight_init_func=init,
        )
