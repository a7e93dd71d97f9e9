"""Parity tests of the zoo's losses: fixtures recorded from the original code, or the paper's equations computed
independently here (loops over scalars, float64) where no public code exists.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from benchmark.method import TaskInfo
from methods.potential_field import PotentialField, PotentialFieldConfig, PotentialFieldLoss


def _fixed_inputs(n: int = 8, dim: int = 6, classes: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(n, dim, generator=gen, dtype=torch.float64), dim=-1)
    y = torch.arange(n) % classes
    return x, y


# ---------------------------------------------------------------- Potential Field (no public code: equations)


def _pf_energy_by_the_equations(z, y, proxies, proxy_labels, alpha, delta):
    """U = sum_i Psi_{y_i}(z_i) + sum_{j,k} Psi_j(p_jk) over ordered charge pairs, / n(n-1); scalar loops."""
    charges = list(F.normalize(z, dim=-1)) + list(F.normalize(proxies, dim=-1))
    labels = [int(v) for v in y] + [int(v) for v in proxy_labels]
    total, n = 0.0, len(charges)
    for a in range(n):
        for b in range(n):
            if a == b:
                continue
            d = torch.sqrt(((charges[a] - charges[b]) ** 2).sum())
            if labels[a] == labels[b]:  # attraction: flat -1/delta^alpha inside delta, -1/d^alpha outside
                total = total + (-(1.0 / delta**alpha) if d < delta else -(1.0 / d**alpha))
            else:  # repulsion: 1/d^alpha inside delta, constant 1/delta^alpha outside
                total = total + ((1.0 / d**alpha) if d < delta else 1.0 / delta**alpha)
    return total / (n * (n - 1))


@pytest.mark.parametrize("alpha,delta", [(4.0, 0.2), (2.0, 0.9), (6.0, 1.1)])
def test_potential_field_loss_and_gradients_match_the_equations(alpha, delta):
    torch.manual_seed(0)
    z, y = _fixed_inputs()
    loss_fn = PotentialFieldLoss(num_classes=3, embedding_dim=6, proxies_per_class=2, alpha=alpha, delta=delta).double()
    z1 = z.clone().requires_grad_(True)
    loss = loss_fn(z1, y)
    loss.backward()
    z2 = z.clone().requires_grad_(True)
    p2 = loss_fn.proxies.detach().clone().requires_grad_(True)
    ref = _pf_energy_by_the_equations(z2, y, p2, loss_fn.proxy_labels, alpha, delta)
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-10)
    torch.testing.assert_close(z1.grad, z2.grad, rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(loss_fn.proxies.grad, p2.grad, rtol=1e-8, atol=1e-12)
    assert loss_fn.proxies.grad.abs().sum() > 0  # proxies feel the field


def test_potential_field_forces_vanish_where_the_potentials_are_flat():
    loss_fn = PotentialFieldLoss(num_classes=2, embedding_dim=2, proxies_per_class=0, alpha=4.0, delta=0.5).double()
    # Same class, closer than delta: flat attraction, no force.
    z = torch.tensor([[1.0, 0.0], [math.cos(0.2), math.sin(0.2)]], dtype=torch.float64, requires_grad=True)
    loss_fn(z, torch.tensor([0, 0])).backward()
    assert z.grad.abs().max() < 1e-12
    # Different classes, farther than delta: constant repulsion, no force.
    z = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=torch.float64, requires_grad=True)
    loss_fn(z, torch.tensor([0, 1])).backward()
    assert z.grad.abs().max() < 1e-12


def test_potential_field_attraction_decays_with_distance():
    loss_fn = PotentialFieldLoss(num_classes=1, embedding_dim=2, proxies_per_class=0, alpha=4.0, delta=0.2).double()
    forces = []
    for angle in (0.5, 1.0, 2.0):  # same-class pairs at growing distance, all beyond delta
        z = torch.tensor([[1.0, 0.0], [math.cos(angle), math.sin(angle)]], dtype=torch.float64, requires_grad=True)
        loss_fn(z, torch.tensor([0, 0])).backward()
        forces.append(z.grad[1].norm().item())
    assert forces[0] > forces[1] > forces[2] > 0


def test_potential_field_method_picks_the_papers_m_per_dataset_and_proxy_lr():
    task = TaskInfo(num_classes=5, embedding_dim=4, dataset="sop")
    method = PotentialField(PotentialFieldConfig(), task)
    assert method.criterion.proxies.shape == (5 * 2, 4)  # M = 2 on SOP
    assert PotentialField(PotentialFieldConfig(), TaskInfo(5, 4, "cub")).criterion.proxies.shape == (75, 4)
    assert PotentialField(PotentialFieldConfig(proxies_per_class=3), task).criterion.proxies.shape == (15, 4)
    (group,) = method.param_groups()
    assert group.lr_mult == 100.0 and group.params[0] is method.criterion.proxies and group.source


def test_potential_field_rejects_labels_outside_the_training_classes():
    loss_fn = PotentialFieldLoss(num_classes=2, embedding_dim=2, proxies_per_class=1)
    with pytest.raises(ValueError, match="labels must lie in 0..1"):
        loss_fn(torch.randn(2, 2), torch.tensor([0, 2]))
