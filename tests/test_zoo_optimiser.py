"""Method recipes in the optimiser the engine builds: per-group learning rate, weight decay and Adam epsilon from
each method's ParamGroup (benchmark/engine/optim.py), checked against the official optimisers' behaviour.

ProxyNCA++'s fast proxies (lr 4e2 with Adam eps = 1, euwern/proxynca_pp config/*.json) and SoftTriple's centres
(lr 0.01 with Adam eps = 0.01, idstcv/SoftTriple train.py) only train as officially with their epsilon.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from benchmark.engine.optim import create_optimizer, method_optimizer_groups
from benchmark.method import ParamGroup, TaskInfo
from benchmark.registry import get_method

CLASSES, PER_CLASS, DIM = 8, 4, 16


def _method(name: str, num_classes: int = CLASSES):
    cls = get_method(name)
    torch.manual_seed(0)
    return cls(OmegaConf.structured(cls.config_class), TaskInfo(num_classes, DIM, "cub"))


def _fixed_features(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of a frozen encoder: class centres plus noise, L2-normalised (no gradient)."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(CLASSES, DIM, generator=gen)
    labels = torch.arange(CLASSES).repeat(PER_CLASS)
    return F.normalize(centres[labels] + 0.8 * torch.randn(len(labels), DIM, generator=gen), dim=-1), labels


def _engine_optimizer(method, base_lr: float, weight_decay: float = 1e-4) -> torch.optim.Optimizer:
    groups, _ = method_optimizer_groups(method.param_groups(), base_lr)
    return create_optimizer(groups, base_lr, weight_decay)


def _losses(method, optimizer: torch.optim.Optimizer, steps: int) -> list[float]:
    x, y = _fixed_features()
    out = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = method.loss(x, y)
        loss.backward()
        optimizer.step()
        out.append(loss.item())
    out.append(method.loss(x, y).item())
    return out


def test_proxynca_pp_fast_proxies_train_as_with_the_official_adam():
    # The engine at the official base lr 4e-3: proxies at 4e-3 x 1e5 = 4e2, weight decay 0, eps 1.
    engine = _method("proxynca_pp")
    engine_losses = _losses(engine, _engine_optimizer(engine, 4e-3), steps=30)
    # The official optimiser (config/cub.json): Adam over the proxies at lr 4e2, weight decay 0, eps 1.0.
    official = _method("proxynca_pp")
    adam = torch.optim.Adam([{"params": official.criterion.parameters(), "lr": 4e2, "weight_decay": 0}], eps=1.0)
    official_losses = _losses(official, adam, steps=30)
    assert official_losses[-1] < 0.5 * official_losses[0], "the fixture must be one the official recipe learns"
    assert engine_losses == pytest.approx(official_losses, rel=1e-5)
    (group,) = engine.param_groups()
    assert (group.eps, group.lr_mult, group.weight_decay) == (1.0, 1e5, 0.0) and "eps 1.0" in group.source


def test_soft_triple_centres_first_step_matches_adam_with_the_official_eps():
    # 100 training classes (CUB's) of which a batch holds 8: most centres get small gradients, where eps matters.
    method = _method("soft_triple", num_classes=100)
    x, y = _fixed_features()
    optimizer = _engine_optimizer(method, base_lr=1e-4, weight_decay=0.0)
    centres = method.criterion.fc
    before = centres.detach().clone()
    method.loss(x, y).backward()
    grad = centres.grad.detach().clone()
    optimizer.step()
    step = centres.detach() - before
    # Adam's first step (bias-corrected moments m = g, v = g^2): lr * g / (|g| + eps), lr = --centerlr 0.01, eps 0.01.
    torch.testing.assert_close(step, -0.01 * grad / (grad.abs() + 0.01), rtol=1e-4, atol=1e-9)
    # AdamW's default eps (1e-8) would move every coordinate with a gradient by about the full 0.01.
    assert float(step.abs().mean()) < 0.6 * 0.01


def test_param_group_eps_reaches_the_optimizer_and_the_record():
    p, q = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2))
    groups, records = method_optimizer_groups(
        [ParamGroup("proxies", [p], lr_mult=10, eps=0.5, source="paper"), ParamGroup("other", [q])], base_lr=1e-3
    )
    optimizer = create_optimizer(groups, 1e-3, 1e-4)
    assert [g["eps"] for g in optimizer.param_groups] == [0.5, 1e-8]
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([1e-2, 1e-3])
    assert [r["eps"] for r in records] == [0.5, None] and records[0]["source"] == "paper"


@pytest.mark.parametrize("eps", [0.0, -1.0])
def test_param_group_refuses_a_non_positive_eps(eps):
    with pytest.raises(ValueError, match="eps must be > 0"):
        ParamGroup("proxies", [], eps=eps)
