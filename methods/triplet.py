"""Triplet loss with semi-hard negative mining (Schroff, Kalenichenko, Philbin. "FaceNet: A Unified Embedding for
Face Recognition and Clustering". CVPR 2015), through pytorch-metric-learning.

Paper defaults: margin alpha = 0.2 on *squared* Euclidean distances between L2-normalised embeddings (the
triplet loss, Eq. 1), all anchor-positive pairs of the batch, and semi-hard negatives:
d(a,p) < d(a,n) < d(a,p) + alpha (Eq. 4). pml's ``TripletMarginMiner(type_of_triplets="semihard")`` returns every
semi-hard triplet (FaceNet picks one at random per anchor-positive pair) and the loss averages over the triplets
with a positive loss.
"""

from __future__ import annotations

from dataclasses import dataclass

from pytorch_metric_learning import distances, losses, miners
from torch import nn

from benchmark.method import MethodConfig
from benchmark.registry import register_method
from methods._pml import PmlLossMethod


@dataclass
class TripletConfig(MethodConfig):
    name: str = "triplet"
    margin: float = 0.2  # FaceNet: alpha = 0.2
    squared_distance: bool = True  # FaceNet Eq. 1 uses squared L2 distances


@register_method
class Triplet(PmlLossMethod):
    """Triplet margin loss on semi-hard triplets mined in the batch."""

    name = "triplet"
    paper = (
        "Schroff, Kalenichenko, Philbin. FaceNet: A Unified Embedding for Face Recognition and Clustering. CVPR 2015"
    )
    year = 2015
    url = "https://arxiv.org/abs/1503.03832"
    config_class = TripletConfig

    def _distance(self) -> distances.LpDistance:
        return distances.LpDistance(normalize_embeddings=True, p=2, power=2 if self.cfg.squared_distance else 1)

    def build_criterion(self) -> nn.Module:
        return losses.TripletMarginLoss(margin=self.cfg.margin, distance=self._distance())

    def build_miner(self) -> nn.Module:
        return miners.TripletMarginMiner(margin=self.cfg.margin, type_of_triplets="semihard", distance=self._distance())
