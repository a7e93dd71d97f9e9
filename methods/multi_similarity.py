"""Multi-Similarity loss with its miner (Wang, Han, Huang, Dong, Scott: "Multi-Similarity Loss with General Pair
Weighting for Deep Metric Learning", CVPR 2019), through pytorch-metric-learning.

Defaults: alpha = 2, beta = 50, lambda (pml's ``base``) = 0.5 and mining margin epsilon = 0.1, the values of the
MS paper's experiments (Sec. 5) as also used by the Proxy Anchor authors' re-implementation
(tjddus9597/Proxy-Anchor-CVPR2020 ``code/losses.py``: thresh 0.5, epsilon 0.1, scale_pos 2, scale_neg 50), the
code behind the Proxy Anchor and SAGA comparison tables; they are also pytorch-metric-learning's defaults.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pytorch_metric_learning import losses, miners

from benchmark.method import EmbeddingLossMethod, MethodConfig
from benchmark.registry import register_method


@dataclass
class MultiSimilarityConfig(MethodConfig):
    name: str = "multi_similarity"
    alpha: float = 2.0  # positive scale (Proxy Anchor repo's MS: scale_pos 2)
    beta: float = 50.0  # negative scale (scale_neg 50)
    base: float = 0.5  # similarity offset lambda (thresh 0.5)
    epsilon: float = 0.1  # pair-mining margin, Eqs. 7-8 (epsilon 0.1)


@register_method
class MultiSimilarity(EmbeddingLossMethod):
    """Multi-Similarity: soft-weighted positive and negative pairs after hard-pair mining (Eqs. 7-10)."""

    name = "multi_similarity"
    paper = "Wang, Han, Huang, Dong, Scott. Multi-Similarity Loss with General Pair Weighting for DML. CVPR 2019"
    year = 2019
    url = "https://arxiv.org/abs/1904.06627"
    config_class = MultiSimilarityConfig

    def __init__(self, cfg, task) -> None:
        super().__init__(cfg, task)
        self.criterion = losses.MultiSimilarityLoss(alpha=cfg.alpha, beta=cfg.beta, base=cfg.base)
        self.miner = miners.MultiSimilarityMiner(epsilon=cfg.epsilon)

    def loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        pairs = self.miner(embeddings, labels)
        return self.criterion(embeddings, labels, pairs)
