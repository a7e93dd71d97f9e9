"""Hyp-ViT: hyperbolic embeddings with a pairwise cross-entropy loss.

Ermolov, Mirvakhabova, Khrulkov, Sebe, Oseledets. "Hyperbolic Vision Transformers: Combining Improvements in
Metric Learning". CVPR 2022. Official code: https://github.com/htdt/hyp_metric (``train.py``, ``model.py``,
``helpers.py``, ``hyptorch/``).

Training: the encoder's head output (a linear layer on the ViT's CLS feature, 128-d in the official code) is
clipped to norm ``clip_r`` = 2.3 (feature clipping, Guo et al. 2022) and mapped onto the Poincare ball of curvature
``-c`` (c = 0.1) with the exponential map at 0. For every ordered pair of sample slots (i, j) of a batch holding
K images of each of P classes, a cross-entropy over P classes treats z_j of the same class as the positive for z_i,
with logits ``-d_hyp(z_i, .) / t`` (t = 0.2) against the other classes' z_j and z_i (official ``contrastive_loss``);
the losses of all ordered slot pairs are summed.

Retrieval: the official evaluation (``helpers.evaluate``) reports two numbers; the paper's tables give the
encoder's 384-d output before the head, L2-normalised, compared with cosine (``skip_head=True``; the "384" of the
reported ViT-S rows). ``embed`` therefore returns the L2-normalised pooled encoder features; the hyperbolic head
is used only in training. (Scoring on the ball with the hyperbolic distance is the other official number and is
not what the engine scores.)

Engine settings of the official recipe (``recommended``, applied by the engine, not here): ``vit_small_patch16_224``
with CLS pooling, a 128-d head, mean = std = 0.5 normalisation, RandomResizedCrop(224, scale=(0.2, 1), bicubic) +
flip for training, bicubic resize 224 (256 on CUB) + centre crop 224 for testing, AdamW at 3e-5 (ViT-S), gradient
clipping at norm 3, batches of P classes x K images (K = 9 on CUB/Cars, 2 on SOP).

Not reproduced here: the official code freezes the ViT's patch embedding (htdt/hyp_metric@c89de04 ``train.py`` line 37,
``freeze: int = 0`` -> ``model.py`` lines 58-66 set ``requires_grad = False`` on ``patch_embed`` and ``pos_drop``);
the engine has no setting for freezing part of a backbone, so the patch embedding trains with the rest of the encoder.
The official head's orthogonal initialisation (``model.py`` line 26) is also not reproduced: the engine's embedding
head is initialised as for every method.

The Poincare-ball maths (exponential map at 0, projection, Mobius addition, distance) is written here by hand
after the official ``hyptorch/pmath.py``, so that no extra dependency is needed; a parity test checks it against
the official code's numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from benchmark.method import Method, MethodConfig, TaskInfo
from benchmark.registry import register_method

_BALL_EPS = 1e-3  # official _project: points kept within (1 - 1e-3) / sqrt(c) of the centre


def clip_features(x: torch.Tensor, clip_r: float) -> torch.Tensor:
    """Feature clipping: rescale rows with norm > clip_r to norm clip_r (official ToPoincare, +1e-5 in the norm)."""
    norm = x.norm(dim=-1, keepdim=True) + 1e-5
    return x * torch.minimum(torch.ones_like(norm), clip_r / norm)


def expmap0(u: torch.Tensor, c: float) -> torch.Tensor:
    """Exponential map at 0 of the Poincare ball: tanh(sqrt(c)|u|) u / (sqrt(c)|u|) (official pmath._expmap0)."""
    sqrt_c = c**0.5
    norm = u.norm(dim=-1, keepdim=True).clamp_min(1e-5)
    return (sqrt_c * norm).clamp(-15, 15).tanh() * u / (sqrt_c * norm)


def project(x: torch.Tensor, c: float) -> torch.Tensor:
    """Pull points that fell on or outside the ball's boundary back inside (official pmath._project)."""
    norm = x.norm(dim=-1, keepdim=True).clamp_min(1e-5)
    max_norm = (1 - _BALL_EPS) / c**0.5
    return torch.where(norm > max_norm, x / norm * max_norm, x)


def to_poincare(x: torch.Tensor, c: float, clip_r: float | None) -> torch.Tensor:
    """Euclidean head output -> point on the Poincare ball (clip, expmap0, project)."""
    if clip_r:
        x = clip_features(x, clip_r)
    return project(expmap0(x, c), c)


def poincare_distance_matrix(x: torch.Tensor, y: torch.Tensor, c: float) -> torch.Tensor:
    """Pairwise distances (2/sqrt(c)) artanh(sqrt(c) |(-x_i) (+)_c y_j|) (official pmath.dist_matrix)."""
    sqrt_c = c**0.5
    xy = x @ y.t()
    x2 = x.pow(2).sum(-1, keepdim=True)
    y2 = y.pow(2).sum(-1, keepdim=True).t()
    # Mobius addition (-x) (+)_c y, batched over all pairs; the official code adds 1e-5 to the denominator.
    num = (1 - 2 * c * xy + c * y2).unsqueeze(2) * (-x).unsqueeze(1) + (1 - c * x2).unsqueeze(2) * y.unsqueeze(0)
    denom = 1 - 2 * c * xy + c**2 * x2 * y2
    mobius = num / (denom.unsqueeze(2) + 1e-5)
    arg = sqrt_c * mobius.norm(dim=-1)
    # The official Artanh clamps to (-1 + 1e-5, 1 - 1e-5) inside its autograd Function: the gradient is
    # 1 / (1 - clamped^2) even where the clamp is active. A straight-through clamp reproduces that.
    clamped = arg + (arg.clamp(-1 + 1e-5, 1 - 1e-5) - arg).detach()
    return 2 / sqrt_c * torch.atanh(clamped)


def pair_cross_entropy(z0: torch.Tensor, z1: torch.Tensor, temperature: float, c: float) -> torch.Tensor:
    """Official ``contrastive_loss``: row i's positive is z1[i]; negatives are z1[k] and z0[k] for k != i."""
    n = z0.shape[0]
    if c > 0:
        logits01 = -poincare_distance_matrix(z0, z1, c) / temperature
        logits00 = -poincare_distance_matrix(z0, z0, c) / temperature
    else:  # the official "sphere" variant (hyp_c = 0): dot products
        logits01, logits00 = z0 @ z1.t() / temperature, z0 @ z0.t() / temperature
    logits00 = logits00 - torch.eye(n, dtype=z0.dtype, device=z0.device) * 1e9
    logits = torch.cat([logits01, logits00], dim=1)
    logits = logits - logits.max(1, keepdim=True)[0].detach()
    return F.cross_entropy(logits, torch.arange(n, device=z0.device))


def group_by_class(z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Rearrange a batch of P classes x K images into P×K×E; every class must appear exactly K >= 2 times."""
    classes, counts = torch.unique(labels, return_counts=True)
    if len(classes) < 2 or int(counts.min()) < 2 or int(counts.min()) != int(counts.max()):
        raise ValueError(
            "hyp_vit needs batches of P >= 2 classes with the same number K >= 2 of images each (got counts "
            f"{counts.tolist()}); use the engine's class-balanced sampler (the official recipe: K = 9 on CUB/Cars)."
        )
    order = torch.argsort(labels, stable=True)
    return z[order].view(len(classes), int(counts[0]), -1)


@dataclass
class HypViTConfig(MethodConfig):
    name: str = "hyp_vit"
    hyp_c: float = 0.1  # ball curvature -c, official train.py --hyp_c 0.1 (0: the sphere variant)
    temperature: float = 0.2  # cross-entropy temperature, official --t 0.2 (0.1 for the sphere variant)
    clip_r: float = 2.3  # feature clipping radius, official --clip_r 2.3 (0: no clipping)


@register_method
class HypViT(Method):
    """Hyp-ViT: pairwise cross-entropy with hyperbolic distances on the Poincare ball (see module docstring)."""

    name = "hyp_vit"
    paper = (
        "Ermolov, Mirvakhabova, Khrulkov, Sebe, Oseledets. Hyperbolic Vision Transformers: Combining Improvements "
        "in Metric Learning. CVPR 2022"
    )
    year = 2022
    url = "https://arxiv.org/abs/2203.10833"
    config_class = HypViTConfig
    #: The official recipe's engine settings (README configs, train.py); the engine applies them, not the method.
    recommended: ClassVar[dict[str, Any]] = {
        "backbone.name": "vit_small_patch16_224",
        "backbone.pooling": "cls",
        "backbone.embedding_dim": 128,
        "data.transform": "hypvit",  # mean = std = 0.5; RandomResizedCrop(scale=(0.2, 1)) bicubic; test resize bicubic
        "train.lr": 3e-5,  # AdamW (the engine's optimiser, as the official code's)
        "train.grad_clip": 3.0,
        "train.m_per_class": 9,  # K = 9 on CUB/Cars (2 on SOP)
    }

    def __init__(self, cfg: HypViTConfig, task: TaskInfo) -> None:
        super().__init__(cfg, task)
        if cfg.hyp_c < 0 or cfg.temperature <= 0:
            raise ValueError(f"hyp_vit needs hyp_c >= 0 and temperature > 0; got {cfg.hyp_c}, {cfg.temperature}")

    def ball_embedding(self, images: torch.Tensor, encoder: Any) -> torch.Tensor:
        """The training embedding: the encoder's head output mapped onto the ball (or the sphere when c = 0)."""
        x = encoder.head(encoder.features(images)).float()
        with torch.autocast(x.device.type, enabled=False):
            if self.cfg.hyp_c > 0:
                return to_poincare(x, self.cfg.hyp_c, self.cfg.clip_r)
            return F.normalize(x, dim=-1)

    def embed(self, images: torch.Tensor, encoder: Any) -> torch.Tensor:
        return F.normalize(encoder.features(images).float(), dim=-1)

    def hyp_loss(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Sum over ordered slot pairs (i, j), i != j, of the pair cross-entropy (official train.py loop)."""
        grouped = group_by_class(z, labels)
        k = grouped.shape[1]
        total = z.new_zeros(())
        for i in range(k):
            for j in range(k):
                if i != j:
                    total = total + pair_cross_entropy(
                        grouped[:, i], grouped[:, j], self.cfg.temperature, self.cfg.hyp_c
                    )
        return total

    def training_step(self, images: torch.Tensor, labels: torch.Tensor, encoder: Any) -> dict[str, Any]:
        z = self.ball_embedding(images, encoder)
        # Hyperbolic distances near the boundary need fp32: the loss runs with the engine's autocast off.
        with torch.autocast(z.device.type, enabled=False):
            return {"loss": self.hyp_loss(z.float(), labels)}
