"""HIST: hypergraph-induced semantic tuplet loss.

Lim, Yun, Park, Choi. "Hypergraph-Induced Semantic Tuplet Loss for Deep Metric Learning". CVPR 2022, pp. 212-222.
Official code: https://github.com/ljin0429/HIST (``code/hist.py``, ``code/train.py``, README configs).

Each training class has a learnable prototypical distribution (mean and diagonal log-variance). Three parts:

1. Distribution loss: softmax over classes of ``-tau * (squared Mahalanobis distance)`` between the L2-normalised
   embedding and the L2-normalised class means, cross-entropy on the true class (official ``CDs2Hg``).
2. A semantic-tuplet hypergraph: one hyperedge per class present in the batch; a sample belongs with weight 1 to
   its class's hyperedge and with ``exp(-alpha * distance)`` to the others.
3. A two-layer HGNN (Feng et al., AAAI 2019; hidden 512, BN, LeakyReLU 0.1) classifies the batch's samples on
   that hypergraph; its cross-entropy is weighted by ``lambda_s`` (official ``--ls 1``). The HGNN exists only in
   training: retrieval uses the embedding alone.

As in the official code the embedding network's output goes through a LayerNorm without affine terms
(``--layer-norm 1``); the distribution loss L2-normalises it, the HGNN consumes it as is, and retrieval
L2-normalises it (``embed``).

Learning rates (fairness rule: the engine owns the optimiser; this method only adds parameter groups with the values
its paper gives). The official code trains the class distributions at an *absolute* ``--lr-ds`` (1e-1 on CUB/Cars,
1e-2 on SOP), independent of the network's base rate (1.2e-4 on CUB, 1e-4 on Cars/SOP): the group states that
absolute rate (``ParamGroup.lr``), so it holds whatever the engine's base rate. The HGNN trains at
``--lr-hgnn-factor`` x the base rate (5 on CUB, 10 on Cars/SOP), a multiplier. Datasets the paper does not cover get
the official ``train.py`` defaults (tau 32, alpha 0.9, lr-ds 1e-1, HGNN factor 10).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Optional  # noqa: UP035 - OmegaConf structured configs need typing generics

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.method import Method, MethodConfig, ParamGroup, TaskInfo, fp32_loss, to_fp32
from benchmark.registry import register_method

#: The official README configs (ResNet-50, 512-d) per dataset; "default" is the official train.py argparse default.
PAPER_VALUES: dict[str, dict[str, float]] = {
    "cub": {"tau": 32.0, "alpha": 1.1, "lr": 1.2e-4, "lr_ds": 1e-1, "hgnn_factor": 5.0},
    "cars": {"tau": 32.0, "alpha": 0.9, "lr": 1e-4, "lr_ds": 1e-1, "hgnn_factor": 10.0},
    "sop": {"tau": 16.0, "alpha": 2.0, "lr": 1e-4, "lr_ds": 1e-2, "hgnn_factor": 10.0},
    "default": {"tau": 32.0, "alpha": 0.9, "lr": 1e-4, "lr_ds": 1e-1, "hgnn_factor": 10.0},
}


@dataclass
class HISTConfig(MethodConfig):
    name: str = "hist"
    # None: the official value for task.dataset (PAPER_VALUES), else the official train.py default.
    tau: Optional[float] = None  # noqa: UP045 - softmax temperature scale (README: 32 CUB/Cars, 16 SOP)
    alpha: Optional[float] = None  # noqa: UP045 - hyperedge hardness (README: 1.1 CUB, 0.9 Cars, 2 SOP)
    lambda_s: float = 1.0  # weight of the HGNN cross-entropy (official --ls default 1)
    hgnn_hidden: int = 512  # official --hgnn-hidden default 512
    layer_norm: bool = True  # official --layer-norm default 1: LayerNorm (no affine) on the embedding
    distribution_lr: Optional[float] = None  # noqa: UP045 - absolute rate of the class distributions (--lr-ds)
    hgnn_lr_mult: Optional[float] = None  # noqa: UP045 - official --lr-hgnn-factor (README: 5 CUB, 10 Cars/SOP)


def pairwise_mahalanobis(x: torch.Tensor, means: torch.Tensor, log_vars: torch.Tensor) -> torch.Tensor:
    """Squared Mahalanobis distances N×C from rows of ``x`` to diagonal Gaussians (official pairwise_mahalanobis)."""
    return ((x.unsqueeze(1) - means.unsqueeze(0)).pow(2) / log_vars.exp().unsqueeze(0)).sum(-1)


class HGNN(nn.Module):
    """Two-layer hypergraph network (Feng et al., AAAI 2019) with unit hyperedge weights, as HIST uses it."""

    def __init__(self, embedding_dim: int, hidden: int, num_classes: int) -> None:
        super().__init__()
        self.theta1 = nn.Linear(embedding_dim, hidden)
        self.bn1 = nn.BatchNorm1d(hidden)
        self.theta2 = nn.Linear(hidden, num_classes)

    @staticmethod
    def propagation(h: torch.Tensor) -> torch.Tensor:
        """G = Dv^-1/2 H W De^-1 H^T Dv^-1/2 with W = I (Feng et al. 2019; official HGNN.compute_G)."""
        dv_inv_sqrt = h.sum(1).pow(-0.5)
        de_inv = h.sum(0).pow(-1)
        return (dv_inv_sqrt[:, None] * h * de_inv[None, :]) @ (h.t() * dv_inv_sqrt[None, :])

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        g = self.propagation(h)
        x = F.leaky_relu(self.bn1(g @ self.theta1(x)), 0.1)
        return g @ self.theta2(x)


@register_method
class HIST(Method):
    """HIST: class-distribution loss plus HGNN node classification on the semantic-tuplet hypergraph."""

    name = "hist"
    paper = "Lim, Yun, Park, Choi. Hypergraph-Induced Semantic Tuplet Loss for Deep Metric Learning. CVPR 2022"
    year = 2022
    url = "https://arxiv.org/abs/2204.05569"
    config_class = HISTConfig
    #: Engine settings of the official recipe: GAP+GMP pooling, frozen BN, 512-d, one warm-up epoch training only the
    #: new parameters (--warm 1). The paper's base lr is 1.2e-4 on CUB, 1e-4 on Cars/SOP (the class distributions'
    #: absolute --lr-ds is this method's param group, whatever the base). The official optimiser is Adam with weight
    #: decay 1e-4 (5e-5 on CUB) and a step schedule; the engine's optimiser and schedule are used instead.
    recommended: ClassVar[dict[str, Any]] = {
        "backbone.pooling": "maxavg",
        "backbone.freeze_bn": True,
        "backbone.embedding_dim": 512,
        "train.freeze_backbone_epochs": 1,
    }

    def __init__(self, cfg: HISTConfig, task: TaskInfo) -> None:
        super().__init__(cfg, task)
        paper = PAPER_VALUES.get(task.dataset.lower(), PAPER_VALUES["default"])
        self.tau = float(cfg.tau if cfg.tau is not None else paper["tau"])
        self.alpha = float(cfg.alpha if cfg.alpha is not None else paper["alpha"])
        self.distribution_lr = float(cfg.distribution_lr if cfg.distribution_lr is not None else paper["lr_ds"])
        self.hgnn_lr_mult = float(cfg.hgnn_lr_mult if cfg.hgnn_lr_mult is not None else paper["hgnn_factor"])
        c, e = task.num_classes, task.embedding_dim
        self.means = nn.Parameter(torch.empty(c, e))
        self.log_vars = nn.Parameter(torch.empty(c, e))
        nn.init.kaiming_normal_(self.means, mode="fan_out")  # official CDs2Hg initialisation
        nn.init.kaiming_normal_(self.log_vars, mode="fan_out")
        self.hgnn = HGNN(e, int(cfg.hgnn_hidden), c)

    def param_groups(self) -> list[ParamGroup]:
        source = "HIST official README/train.py"
        return [
            ParamGroup(
                "class_distributions",
                [self.means, self.log_vars],
                lr=self.distribution_lr,
                source=f"{source}: absolute --lr-ds (independent of the network's --lr)",
            ),
            ParamGroup(
                "hgnn", list(self.hgnn.parameters()), lr_mult=self.hgnn_lr_mult, source=f"{source}: --lr-hgnn-factor"
            ),
        ]

    def diagnostics(self) -> dict[str, float]:
        """The values actually used (config or per-dataset paper value), for the run record."""
        return {
            "tau": self.tau,
            "alpha": self.alpha,
            "distribution_lr": self.distribution_lr,
            "hgnn_lr_mult": self.hgnn_lr_mult,
        }

    def _raw_embedding(self, images: torch.Tensor, encoder: Any) -> torch.Tensor:
        x = encoder.head(encoder.features(images)).float()
        return F.layer_norm(x, x.shape[-1:]) if self.cfg.layer_norm else x

    def embed(self, images: torch.Tensor, encoder: Any) -> torch.Tensor:
        return F.normalize(self._raw_embedding(images, encoder), dim=-1)

    def hist_loss(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """HIST's losses on raw (LayerNorm-ed) embeddings ``x``: distribution loss, HGNN cross-entropy, total."""
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.task.num_classes):
            raise ValueError(f"labels must lie in 0..{self.task.num_classes - 1} (the training classes)")
        one_hot = F.one_hot(labels, self.task.num_classes).to(x.dtype)
        distance = pairwise_mahalanobis(F.normalize(x, dim=-1), F.normalize(self.means, dim=-1), F.relu6(self.log_vars))
        p_true = (F.softmax(-self.tau * distance, dim=1) * one_hot).sum(1)
        dist_loss = -torch.log(p_true[p_true != 0]).mean()  # the official code drops underflowed zeros
        in_batch = one_hot.sum(0) != 0
        one_hot_b = one_hot[:, in_batch]
        h = one_hot_b + torch.exp(-self.alpha * distance[:, in_batch]) * (1 - one_hot_b)  # official CDs2Hg hypergraph
        ce = F.cross_entropy(self.hgnn(x, h), labels)
        return {"loss": dist_loss + self.cfg.lambda_s * ce, "distribution_loss": dist_loss, "hgnn_ce": ce}

    def training_step(self, images: torch.Tensor, labels: torch.Tensor, encoder: Any) -> dict[str, Any]:
        x = self._raw_embedding(images, encoder)
        with fp32_loss(x):  # the losses in fp32 even under the engine's bf16 autocast (Mahalanobis, HGNN, softmax)
            out = self.hist_loss(to_fp32(x), labels)
        return {
            "loss": out["loss"],
            "distribution_loss": out["distribution_loss"].detach(),
            "hgnn_ce": out["hgnn_ce"].detach(),
        }
