"""Supervised contrastive loss (Khosla, Teterwak, Wang, Sarna, Tian, Isola, Maschinot, Liu, Krishnan.
"Supervised Contrastive Learning". NeurIPS 2020), through pytorch-metric-learning (L^sup_out, Eq. 2).

Paper default: temperature tau = 0.1 (the paper's value for its main results; pml's default is the same).
The paper's two augmented views per image are not used: the engine's class-balanced batches provide the positives.
"""

from __future__ import annotations

from dataclasses import dataclass

from pytorch_metric_learning import losses
from torch import nn

from benchmark.method import MethodConfig
from benchmark.registry import register_method
from methods._pml import PmlLossMethod


@dataclass
class SupConConfig(MethodConfig):
    name: str = "supcon"
    temperature: float = 0.1  # paper: tau = 0.1


@register_method
class SupCon(PmlLossMethod):
    """SupCon: InfoNCE with every same-class sample of the batch as a positive."""

    name = "supcon"
    paper = "Khosla et al. Supervised Contrastive Learning. NeurIPS 2020"
    year = 2020
    url = "https://arxiv.org/abs/2004.11362"
    config_class = SupConConfig

    def build_criterion(self) -> nn.Module:
        return losses.SupConLoss(temperature=self.cfg.temperature)
