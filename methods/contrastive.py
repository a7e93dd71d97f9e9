"""Contrastive loss (Hadsell, Chopra, LeCun. "Dimensionality Reduction by Learning an Invariant Mapping".
CVPR 2006), through pytorch-metric-learning.

pml's form: positives pay max(0, d - pos_margin), negatives max(0, neg_margin - d), with Euclidean distance d on
L2-normalised embeddings, averaged over the pairs with a positive loss. Hadsell et al.'s Eq. 4 squares both terms
and weights them by 1/2 and leaves the margin m problem-specific; pml's unsquared variant with pos_margin 0 and
neg_margin 1 (its defaults, the form "A Metric Learning Reality Check" benchmarks) is used here. Set
``squared=true`` for Hadsell's squared hinges (the distances are squared; the margins apply to squared distances).
"""

from __future__ import annotations

from dataclasses import dataclass

from pytorch_metric_learning import distances, losses
from torch import nn

from benchmark.method import MethodConfig
from benchmark.registry import register_method
from methods._pml import PmlLossMethod


@dataclass
class ContrastiveConfig(MethodConfig):
    name: str = "contrastive"
    pos_margin: float = 0.0  # Hadsell Eq. 4: positives pulled to distance 0
    neg_margin: float = 1.0  # Hadsell's m is unspecified for retrieval; pml's default 1 (unit-sphere distances)
    squared: bool = False  # False: pml's unsquared hinge on d; True: hinges on d^2


@register_method
class Contrastive(PmlLossMethod):
    """Contrastive loss over all positive and negative pairs of the batch."""

    name = "contrastive"
    paper = "Hadsell, Chopra, LeCun. Dimensionality Reduction by Learning an Invariant Mapping. CVPR 2006"
    year = 2006
    url = "https://doi.org/10.1109/CVPR.2006.100"
    config_class = ContrastiveConfig

    def build_criterion(self) -> nn.Module:
        distance = distances.LpDistance(normalize_embeddings=True, p=2, power=2 if self.cfg.squared else 1)
        return losses.ContrastiveLoss(pos_margin=self.cfg.pos_margin, neg_margin=self.cfg.neg_margin, distance=distance)
