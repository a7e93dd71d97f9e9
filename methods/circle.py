"""Circle loss (Sun, Cheng, Zhang, Zhang, Zheng, Wang, Wei. "Circle Loss: A Unified Perspective of Pair Similarity
Optimization". CVPR 2020), through pytorch-metric-learning (pair-wise form, cosine similarity).

Paper defaults for fine-grained image retrieval (CUB, Cars, SOP): relaxation margin m = 0.4, scale
gamma = 80 (pml's defaults are the same values).
"""

from __future__ import annotations

from dataclasses import dataclass

from pytorch_metric_learning import losses
from torch import nn

from benchmark.method import MethodConfig
from benchmark.registry import register_method
from methods._pml import PmlLossMethod


@dataclass
class CircleConfig(MethodConfig):
    name: str = "circle"
    m: float = 0.4  # relaxation margin, paper, fine-grained retrieval setting
    gamma: float = 80.0  # scale factor, paper, fine-grained retrieval setting


@register_method
class Circle(PmlLossMethod):
    """Circle loss: self-paced weighting of within-class and between-class similarities."""

    name = "circle"
    paper = "Sun et al. Circle Loss: A Unified Perspective of Pair Similarity Optimization. CVPR 2020"
    year = 2020
    url = "https://arxiv.org/abs/2002.10857"
    config_class = CircleConfig

    def build_criterion(self) -> nn.Module:
        return losses.CircleLoss(m=self.cfg.m, gamma=self.cfg.gamma)
