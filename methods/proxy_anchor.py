"""Proxy Anchor loss (Kim, Kim, Cho, Kwak: "Proxy Anchor Loss for Deep Metric Learning", CVPR 2020).

Through pytorch-metric-learning's ``ProxyAnchorLoss`` (Eq. 4 of the paper; parity with the official code's
``Proxy_Anchor`` in tests/test_first_methods.py), computed in fp32 under the engine's bf16 autocast (the
shared ``methods/_pml.py`` plumbing). One proxy per class, trained at 100x the base learning rate as in the official
code (``train.py``: ``'lr': float(args.lr) * args.lr_mult`` with ``--lr-mult 100``).
"""

from __future__ import annotations

from dataclasses import dataclass

from pytorch_metric_learning import losses
from torch import nn

from benchmark.method import MethodConfig
from benchmark.registry import register_method
from methods._pml import PmlLossMethod


@dataclass
class ProxyAnchorConfig(MethodConfig):
    name: str = "proxy_anchor"
    margin: float = 0.1  # delta, paper Sec. 4.2 / official --mrg 0.1
    alpha: float = 32.0  # scaling, paper Sec. 4.2 / official --alpha 32
    proxy_lr_mult: float = 100.0  # official train.py --lr-mult 100 (proxies at 100x the base learning rate)


@register_method
class ProxyAnchor(PmlLossMethod):
    """Proxy Anchor: each proxy is an anchor pulling its class's embeddings and pushing the others' (Eq. 4)."""

    name = "proxy_anchor"
    paper = "Kim, Kim, Cho, Kwak. Proxy Anchor Loss for Deep Metric Learning. CVPR 2020"
    year = 2020
    url = "https://arxiv.org/abs/2003.13911"
    config_class = ProxyAnchorConfig
    proxy_lr_source = "Proxy Anchor official train.py: proxies at lr * lr_mult, lr_mult = 100"

    def build_criterion(self) -> nn.Module:
        # pml initialises proxies with kaiming_normal_(mode="fan_out"), as the official code does.
        return losses.ProxyAnchorLoss(
            num_classes=self.task.num_classes,
            embedding_size=self.task.embedding_dim,
            margin=self.cfg.margin,
            alpha=self.cfg.alpha,
        )
