"""ArcFace, additive angular margin loss (Deng, Guo, Xue, Zafeiriou. "ArcFace: Additive Angular Margin Loss for
Deep Face Recognition". CVPR 2019), through pytorch-metric-learning.

Paper defaults (experimental settings): feature scale s = 64, angular margin m = 0.5 rad (pml takes degrees:
28.6). The class weights are trained with the network at the same learning rate (the paper has no separate rate):
multiplier 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pytorch_metric_learning import losses
from torch import nn

from benchmark.method import MethodConfig
from benchmark.registry import register_method
from methods._pml import PmlLossMethod


@dataclass
class ArcFaceConfig(MethodConfig):
    name: str = "arcface"
    margin: float = 0.5  # additive angular margin m in radians, paper's setting
    scale: float = 64.0  # feature scale s, paper's setting
    proxy_lr_mult: float = 1.0  # class weights at the base rate (paper: one optimiser for all)


@register_method
class ArcFace(PmlLossMethod):
    """ArcFace: softmax over classes with an additive angular margin on the true class."""

    name = "arcface"
    paper = "Deng, Guo, Xue, Zafeiriou. ArcFace: Additive Angular Margin Loss for Deep Face Recognition. CVPR 2019"
    year = 2019
    url = "https://arxiv.org/abs/1801.07698"
    config_class = ArcFaceConfig
    proxy_lr_source = "ArcFace paper: class weights trained with the network at the same learning rate"

    def build_criterion(self) -> nn.Module:
        return losses.ArcFaceLoss(
            num_classes=self.task.num_classes,
            embedding_size=self.task.embedding_dim,
            margin=math.degrees(self.cfg.margin),
            scale=self.cfg.scale,
        )
