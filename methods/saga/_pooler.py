"""SAGA's retrieval pooler (App. B) and the DML loss it trains with (Sec. 3.3)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.method import fp32_loss, to_fp32

METRIC_LOSSES = ("potential_field", "proxy_anchor", "multi_similarity")


class AttentionPooler(nn.Module):
    """Single-query cross-attention pooling: ``beta = softmax(q W_k X^T / sqrt(D))``, ``z = norm(W_o (beta X))``.

    No value projection (none is mentioned in App. B) and no bias in W_o (App. B writes ``norm(W_o beta X)``).
    ``beta`` is exactly the map the KL term supervises.

    Initialisation (ours; the paper gives none) makes the pooler start as mean pooling, the baselines' pooling:

    - q ~ N(0, 0.02²) and W_k PyTorch's default init, then W_k's columns are projected off q (``W_k <- (I - q̂q̂ᵀ)
      W_k``), so ``W_kᵀ q = 0``: every score ``q · W_k x`` is 0 for every token x, beta is uniform (1/N) and beta X
      is the mean of the tokens. Both q and W_k still get gradients at step 0 (d score / d W_k = q xᵀ ≠ 0).
    - W_o is orthogonal (``nn.init.orthogonal_``): for ``out_dim >= dim`` its columns are orthonormal, so it keeps
      every inner product and norm and the cosine ranking of z equals that of the mean-pooled tokens, exactly (up
      to float rounding). For ``out_dim < dim`` it is a random semi-orthogonal projection: close to, not equal to,
      mean pooling.
    """

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.randn(dim) * 0.02)
        self.key = nn.Linear(dim, dim, bias=False)
        self.out = nn.Linear(dim, out_dim, bias=False)
        self.dim = dim
        with torch.no_grad():
            q = self.query / self.query.norm()
            self.key.weight -= torch.outer(q, q @ self.key.weight)  # W_kᵀ q = 0: uniform beta at step 0
        nn.init.orthogonal_(self.out.weight)

    def attention(self, tokens: torch.Tensor) -> torch.Tensor:
        """beta ∈ Δ^N for each image: B×N (float32)."""
        scores = self.key(tokens) @ self.query.to(tokens.dtype) / math.sqrt(self.dim)
        return scores.float().softmax(dim=-1)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """L2-normalised embeddings B×D_e and the attention B×N."""
        beta = self.attention(tokens)
        pooled = torch.einsum("bn,bnd->bd", beta.to(tokens.dtype), tokens)
        return F.normalize(self.out(pooled).float(), dim=-1), beta


class _PMLLoss(nn.Module):
    """A pytorch-metric-learning loss (and optional miner) as ``loss(embeddings, labels)``."""

    def __init__(self, loss: nn.Module, miner: Any = None) -> None:
        super().__init__()
        self.loss = loss
        self.miner = miner

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with fp32_loss(embeddings):  # similarities in fp32 even under the engine's bf16 autocast
            embeddings = to_fp32(embeddings)
            pairs = self.miner(embeddings, labels) if self.miner is not None else None
            return self.loss(embeddings, labels, pairs) if pairs is not None else self.loss(embeddings, labels)


def create_metric_loss(name: str, num_classes: int, embedding_dim: int, options: dict[str, Any]) -> nn.Module:
    """The DML term: ``potential_field`` (the paper's headline), ``proxy_anchor`` or ``multi_similarity`` (Table 3).

    SAGA states no hyperparameters for them (§7 item 15); the defaults are each loss's own paper's: Proxy Anchor
    alpha = 32, delta = 0.1 (Kim et al., 2020); Multi-Similarity alpha = 2, beta = 50, base = 0.5 with its miner,
    epsilon = 0.1 (the Proxy Anchor repository's re-implementation, ``code/losses.py``, which is also
    pytorch-metric-learning's defaults; see methods/multi_similarity.py). ``options`` overrides them.
    """
    if name == "potential_field":
        try:
            from methods.potential_field import PotentialFieldLoss
        except ImportError as err:
            raise ImportError(
                "method.metric_loss=potential_field needs methods/potential_field.py (PotentialFieldLoss), which is "
                "not in this checkout; use method.metric_loss=proxy_anchor or multi_similarity."
            ) from err
        return PotentialFieldLoss(num_classes, embedding_dim, **options)
    from pytorch_metric_learning import losses, miners

    if name == "proxy_anchor":
        opts = {"margin": 0.1, "alpha": 32.0, **options}
        return _PMLLoss(losses.ProxyAnchorLoss(num_classes, embedding_dim, **opts))
    if name == "multi_similarity":
        opts = {"alpha": 2.0, "beta": 50.0, "base": 0.5, **options}
        epsilon = float(opts.pop("miner_epsilon", 0.1))
        return _PMLLoss(losses.MultiSimilarityLoss(**opts), miners.MultiSimilarityMiner(epsilon=epsilon))
    raise ValueError(f"Unknown method.metric_loss '{name}'; expected one of {METRIC_LOSSES}.")
