"""ProxyNCA++ (Teh, DeVries, Taylor. "ProxyNCA++: Revisiting and Revitalizing Proxy Neighborhood Component
Analysis". ECCV 2020). Official code: https://github.com/euwern/proxynca_pp (``loss.ProxyNCA_prob``).

The loss is NCA over one proxy per class with low temperature T = 1/9 on squared distances between L2-normalised
embeddings and proxies: -log softmax(-||x - p||^2 / T)[y]. pytorch-metric-learning's ``ProxyNCALoss`` computes
exactly this with ``softmax_scale = 1/T = 9`` (parity test against the official code in tests/test_zoo_parity_pml.py);
proxies start as N(0, 1/8^2) as in the official code.

"Fast proxies": the official configs (euwern/proxynca_pp@217233d ``config/cub.json`` lines 32-49, the same in
``cars``/``sop``/``inshop.json``) train the proxies with ``torch.optim.Adam`` at lr 4e2 against a base lr 4e-3 (x1e5),
weight decay 0, and Adam's ``eps = 1.0`` (the ``"base"`` arguments, which ``train.py`` lines 290-312 give the whole
optimiser). The rate only works with that epsilon: with eps = 1 and proxy gradients far below 1 a step is about
lr x (first moment), while with AdamW's default 1e-8 it is about lr per coordinate, and the proxies turn into sign
vectors after one step. The proxies' parameter group therefore carries ``eps = 1.0`` (``proxy_eps``). The official
optimiser also uses eps = 1 for the backbone and embedding layer; here the encoder keeps the engine's AdamW settings,
the same for every method.

Layer norm: the official network (``networks.py`` lines 20-22 and 38-39, ``Feat_resnet50_max_n`` in the configs)
applies a LayerNorm without affine parameters to the pooled feature, before the linear embedding layer. This method
does the same (``layer_norm=true``, the default), in training and for the retrieval embeddings: the encoder's pooled
features are layer-normalised, then go through the encoder's head and L2 normalisation. Global max pooling and the
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
    proxy_eps: float = 1.0  # official config/*.json "base": {"eps": "1.0"} (Adam's epsilon)
    proxy_init_std: float = 1.0 / 8.0  # official loss.py: torch.randn(nb_classes, sz_embed) / 8
    layer_norm: bool = True  # official networks.py: LayerNorm(2048, elementwise_affine=False) after pooling


@register_method
class ProxyNCApp(PmlLossMethod):
    """ProxyNCA++: proxy NCA with low temperature, fast-moving proxies and layer-normalised pooled features."""

    name = "proxynca_pp"
    paper = (
        "Teh, DeVries, Taylor. ProxyNCA++: Revisiting and Revitalizing Proxy Neighborhood Component Analysis. ECCV 2020"
    )
    year = 2020
    url = "https://arxiv.org/abs/2004.01113"
    config_class = ProxyNCAppConfig
    proxy_lr_source = (
        "ProxyNCA++ official config/cub.json lines 32-49 (euwern/proxynca_pp@217233d): Adam, proxies lr 4e2 over base "
        "lr 4e-3, weight decay 0, eps 1.0"
    )
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
