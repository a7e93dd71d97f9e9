"""Contrastive loss (Hadsell, Chopra, LeCun. "Dimensionality Reduction by Learning an Invariant Mapping".
CVPR 2006), through pytorch-metric-learning, on Euclidean distances d between L2-normalised embeddings.

``form`` chooses the per-pair terms (positives / negatives):

- ``hadsell`` (default): Hadsell et al.'s Eq. 4, ½·max(0, d - pos_margin)² / ½·max(0, m - d)², i.e. ½·d² for
  positives with ``pos_margin = 0`` (Hadsell's L_S = ½·D²) and ½·max(0, m - D)² for negatives (L_D).
- ``hinge``: pml's default form, max(0, d - pos_margin) / max(0, m - d), unsquared (the form "A Metric Learning
  Reality Check" benchmarks).
- ``hinge_on_squared_distance``: max(0, d² - pos_margin) / max(0, m - d²), hinges on the *squared* distance (what
  this method's former ``squared=true`` computed; it is not Hadsell's form: the square is inside the hinge).

The reduction is pml's for every form: each term averaged over the pairs whose loss is non-zero, positives and
negatives separately, then added (Hadsell's Eq. 1 sums over all pairs). Hadsell leaves the margin m
problem-specific; pml's default m = 1 is used (distances between unit vectors lie in [0, 2]).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pytorch_metric_learning import distances, losses
from torch import nn

from benchmark.method import MethodConfig
from benchmark.registry import register_method
from methods._pml import PmlLossMethod

FORMS = ("hadsell", "hinge", "hinge_on_squared_distance")


class HadsellContrastiveLoss(losses.ContrastiveLoss):
    """pml's contrastive loss with Hadsell et al.'s squared, halved hinges (Eq. 4): ½·max(0, ·)² on each term."""

    def pos_calc(self, pos_pair_dist: torch.Tensor, margin: float) -> torch.Tensor:
        return 0.5 * super().pos_calc(pos_pair_dist, margin) ** 2

    def neg_calc(self, neg_pair_dist: torch.Tensor, margin: float) -> torch.Tensor:
        return 0.5 * super().neg_calc(neg_pair_dist, margin) ** 2


@dataclass
class ContrastiveConfig(MethodConfig):
    name: str = "contrastive"
    pos_margin: float = 0.0  # Hadsell Eq. 4: positives pulled to distance 0
    neg_margin: float = 1.0  # Hadsell's m is unspecified for retrieval; pml's default 1 (unit-sphere distances)
    form: str = "hadsell"  # hadsell (Eq. 4, the default) | hinge (pml's) | hinge_on_squared_distance


@register_method
class Contrastive(PmlLossMethod):
    """Contrastive loss over all positive and negative pairs of the batch (``form``: see the module docstring)."""

    name = "contrastive"
    paper = "Hadsell, Chopra, LeCun. Dimensionality Reduction by Learning an Invariant Mapping. CVPR 2006"
    year = 2006
    url = "https://doi.org/10.1109/CVPR.2006.100"
    config_class = ContrastiveConfig

    def build_criterion(self) -> nn.Module:
        form = self.cfg.form
        if form not in FORMS:
            raise ValueError(f"method.form={form} is not a contrastive form; use one of {', '.join(FORMS)}.")
        power = 2 if form == "hinge_on_squared_distance" else 1
        distance = distances.LpDistance(normalize_embeddings=True, p=2, power=power)
        loss_cls = HadsellContrastiveLoss if form == "hadsell" else losses.ContrastiveLoss
        return loss_cls(pos_margin=self.cfg.pos_margin, neg_margin=self.cfg.neg_margin, distance=distance)
