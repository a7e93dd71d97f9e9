"""Every training method's loss runs in fp32 under the engine's bf16 autocast: a training step under
``torch.autocast("cpu", bfloat16)`` gives the fp32 loss and gradients (parametrised over the registry).

The encoder here is a stand-in whose embedding is a fixed fp32 tensor (autocast cannot change it), so any difference
comes from the method's own computation: its loss, miner and parameters.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from benchmark.method import TaskInfo
from benchmark.registry import list_methods

NUM_CLASSES, PER_CLASS, DIM = 4, 3, 16
#: Methods with a training step on a plain encoder (SAGA needs a multimodal LLM: tests/test_saga*.py).
TRAINING = sorted(n for n, cls in list_methods().items() if cls.trains and not getattr(cls, "needs_mllm", False))


class FixedFeatureEncoder(nn.Module):
    """An encoder whose pooled features are the input rows themselves (identity head, L2-normalised output)."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Identity()
        self.embedding_dim = DIM

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return images

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(self.features(images)).float(), dim=-1)


def _step(name: str, autocast: bool) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Loss, gradient w.r.t. the features and gradients of the method's parameters after one training step."""
    cls = list_methods()[name]
    torch.manual_seed(0)
    method = cls(OmegaConf.structured(cls.config_class), TaskInfo(NUM_CLASSES, DIM, "cub"))
    gen = torch.Generator().manual_seed(1)
    labels = torch.arange(NUM_CLASSES).repeat(PER_CLASS)
    feats = (torch.randn(len(labels), DIM, generator=gen) + 0.7 * F.one_hot(labels, DIM)).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = method.training_step(feats, labels, FixedFeatureEncoder())["loss"]
    loss.backward()
    return loss.detach(), feats.grad, [p.grad for p in method.parameters() if p.requires_grad]


@pytest.mark.parametrize("name", TRAINING)
def test_loss_and_gradients_under_bf16_autocast_equal_fp32(name):
    loss32, grad32, param_grads32 = _step(name, autocast=False)
    loss_ac, grad_ac, param_grads_ac = _step(name, autocast=True)
    assert loss_ac.dtype == torch.float32 and torch.isfinite(loss32)
    torch.testing.assert_close(loss_ac, loss32)  # fp32 tolerances (rtol 1.3e-6)
    torch.testing.assert_close(grad_ac, grad32)
    assert len(param_grads_ac) == len(param_grads32)
    for got, want in zip(param_grads_ac, param_grads32, strict=True):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("loss_name", ["potential_field", "proxy_anchor", "multi_similarity"])
def test_saga_metric_terms_are_fp32_under_bf16_autocast(loss_name):
    from methods.saga._pooler import create_metric_loss

    def run(autocast: bool) -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(0)
        loss_fn = create_metric_loss(loss_name, NUM_CLASSES, DIM, {})
        labels = torch.arange(NUM_CLASSES).repeat(PER_CLASS)
        gen = torch.Generator().manual_seed(1)
        z = F.normalize(torch.randn(len(labels), DIM, generator=gen), dim=-1).requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = loss_fn(z, labels)
        loss.backward()
        return loss.detach(), z.grad

    (loss32, grad32), (loss_ac, grad_ac) = run(False), run(True)
    torch.testing.assert_close(loss_ac, loss32)
    torch.testing.assert_close(grad_ac, grad32)
