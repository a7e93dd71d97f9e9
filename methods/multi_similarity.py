"""Multi-Similarity loss with its miner (Wang, Han, Huang, Dong, Scott: "Multi-Similarity Loss with General Pair
Weighting for Deep Metric Learning", CVPR 2019), through pytorch-metric-learning, computed in fp32 under the engine's
bf16 autocast (the shared ``methods/_pml.py`` plumbing).

Defaults: alpha = 2, beta = 50, lambda (pml's ``base``) = 0.5 and mining margin epsilon = 0.1. These are the values
of the Proxy Anchor authors' re-implementation, the code behind the Proxy Anchor and SAGA comparison tables:
tjddus9597/Proxy-Anchor-CVPR2020@51db570 ``code/losses.py`` lines 77-80 (``thresh = 0.5``, ``epsilon = 0.1``,
``scale_pos = 2``, ``scale_neg = 50``), which are also pytorch-metric-learning's defaults. The MS authors' official
code differs in beta: msight-tech/research-ms-loss@b68507d ``ret_benchmark/config/defaults.py`` lines 41-42
(``SCALE_POS = 2.0``, ``SCALE_NEG = 40.0``) with ``thresh = 0.5`` and ``margin = 0.1`` in
``ret_benchmark/losses/multi_similarity_loss.py`` lines 18-19; pass ``method.beta=40`` for that setting.
"""

from __future__ import annotations

from dataclasses import dataclass

from pytorch_metric_learning import losses, miners
from torch import nn

from benchmark.method import MethodConfig
from benchmark.registry import register_method
from methods._pml import PmlLossMethod


@dataclass
class MultiSimilarityConfig(MethodConfig):
    name: str = "multi_similarity"
    alpha: float = 2.0  # positive scale (Proxy Anchor repo code/losses.py: scale_pos 2; MS official: 2)
    beta: float = 50.0  # negative scale (Proxy Anchor repo: scale_neg 50; MS official config: 40)
    base: float = 0.5  # similarity offset lambda (Proxy Anchor repo and MS official: thresh 0.5)
    epsilon: float = 0.1  # pair-mining margin, Eqs. 7-8 (Proxy Anchor repo: epsilon 0.1; MS official: margin 0.1)


@register_method
class MultiSimilarity(PmlLossMethod):
    """Multi-Similarity: soft-weighted positive and negative pairs after hard-pair mining (Eqs. 7-10)."""

    name = "multi_similarity"
    paper = "Wang, Han, Huang, Dong, Scott. Multi-Similarity Loss with General Pair Weighting for DML. CVPR 2019"
    year = 2019
    url = "https://arxiv.org/abs/1904.06627"
    config_class = MultiSimilarityConfig

    def build_criterion(self) -> nn.Module:
        return losses.MultiSimilarityLoss(alpha=self.cfg.alpha, beta=self.cfg.beta, base=self.cfg.base)

    def build_miner(self) -> nn.Module | None:
        return miners.MultiSimilarityMiner(epsilon=self.cfg.epsilon)
