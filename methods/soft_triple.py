"""SoftTriple loss (Qian, Shang, Sun, Hu, Li, Jin. "SoftTriple Loss: Deep Metric Learning Without Triplet
Sampling". ICCV 2019), through pytorch-metric-learning (``SoftTripleLoss`` plus ``SparseCentersRegularizer``, the
paper's tau-weighted centre regulariser). Official code: https://github.com/idstcv/SoftTriple.

Defaults from the paper's experiments and the official ``train.py``: K = 10 centres per class, lambda = 20, gamma = 0.1,
delta (margin) = 0.01, tau = 0.2; the centres train at their own absolute rate, ``--centerlr 0.01`` (a separate
argument from the network's ``--modellr 1e-4`` in the official ``train.py``), whatever the engine's base rate, with
Adam's ``eps = 0.01``: idstcv/SoftTriple@cc1c32d ``train.py`` lines 38-47 (``--modellr``, ``--centerlr``, ``--eps``)
and 84-86 (``torch.optim.Adam([...model..., ...centres...], eps=args.eps, weight_decay=args.weight_decay)``). With
that epsilon a centre coordinate moves by 0.01 x |g| / (|g| + 0.01) on the first step, not by the full 0.01 as with
AdamW's default 1e-8, so the centres' parameter group carries ``eps = 0.01`` (``proxy_eps``). The official optimiser
uses the same epsilon for the network; here the encoder keeps the engine's AdamW settings, the same for every method.
"""

from __future__ import annotations

from dataclasses import dataclass

from pytorch_metric_learning import losses, regularizers
from torch import nn

from benchmark.method import MethodConfig
from benchmark.registry import register_method
from methods._pml import PmlLossMethod


@dataclass
class SoftTripleConfig(MethodConfig):
    name: str = "soft_triple"
    centers_per_class: int = 10  # K, official -K 10
    la: float = 20.0  # lambda, official --la 20
    gamma: float = 0.1  # official --gamma 0.1
    margin: float = 0.01  # delta, official --margin 0.01
    tau: float = 0.2  # weight of the centre regulariser, official --tau 0.2
    proxy_lr: float = 0.01  # absolute centre rate, official --centerlr 0.01 (replaces a multiplier of the base rate)
    proxy_eps: float = 0.01  # Adam's epsilon for the centres, official --eps 0.01


@register_method
class SoftTriple(PmlLossMethod):
    """SoftTriple: a smoothed triplet loss with K centres per class and a regulariser merging redundant centres."""

    name = "soft_triple"
    paper = "Qian, Shang, Sun, Hu, Li, Jin. SoftTriple Loss: Deep Metric Learning Without Triplet Sampling. ICCV 2019"
    year = 2019
    url = "https://arxiv.org/abs/1909.05235"
    config_class = SoftTripleConfig
    proxy_lr_source = (
        "SoftTriple official train.py lines 38-47, 84-86 (idstcv/SoftTriple@cc1c32d): Adam, absolute --centerlr 0.01 "
        "(the network's --modellr is 1e-4), --eps 0.01"
    )

    def build_criterion(self) -> nn.Module:
        k = int(self.cfg.centers_per_class)
        regularizer = (
            regularizers.SparseCentersRegularizer(self.task.num_classes, k) if k > 1 and self.cfg.tau > 0 else None
        )
        return losses.SoftTripleLoss(
            num_classes=self.task.num_classes,
            embedding_size=self.task.embedding_dim,
            centers_per_class=k,
            la=self.cfg.la,
            gamma=self.cfg.gamma,
            margin=self.cfg.margin,
            weight_regularizer=regularizer,
            weight_reg_weight=self.cfg.tau,
        )
