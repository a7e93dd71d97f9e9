"""Parity tests of Potential Field, HIST and Hyp-ViT: numbers recorded from the original code, or (Potential Field,
which has no public code) the paper's equations computed independently here with scalar loops in float64.
The pytorch-metric-learning-based methods are in test_zoo_parity_pml.py.
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


def test_potential_field_is_computed_in_fp32_under_bf16_autocast():
    torch.manual_seed(0)
    loss_fn = PotentialFieldLoss(num_classes=3, embedding_dim=6, proxies_per_class=2, alpha=4.0, delta=0.9)
    z, y = _fixed_inputs()
    z = z.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = loss_fn(z, y)
    assert under_autocast.dtype == torch.float32
    assert under_autocast.item() == pytest.approx(loss_fn(z, y).item(), rel=1e-6)


def test_potential_field_rejects_labels_outside_the_training_classes():
    loss_fn = PotentialFieldLoss(num_classes=2, embedding_dim=2, proxies_per_class=1)
    with pytest.raises(ValueError, match="labels must lie in 0..1"):
        loss_fn(torch.randn(2, 2), torch.tensor([0, 2]))


# ---------------------------------------------------------------- HIST (official code: ljin0429/HIST)

# Fixtures recorded by running the official code/hist.py (CDs2Hg + HGNN, ljin0429/HIST@e7d650c80460) on CPU in
# float64 (inputs drawn in float32 from the generator, then cast), with torch.Tensor.cuda patched to a no-op and
# torch.chain_matmul replaced by torch.linalg.multi_dot where absent; inputs and parameters from _hist_inputs() below
# (same generator order); loss = dist_loss + 1.0 * CE(HGNN(x, H), y), default dtype float64.
# "cos_weighted" is sum(grad * cos(arange(numel)).reshape(grad.shape)).
HIST_FIXTURES = {
    (32.0, 1.1): {
        "loss": 15.633551729571924,
        "dist": 13.851332884017689,
        "ce": 1.7822188455542358,
        "x": (42.02898443239106, -0.027145307900716453),
        "means": (21.08982218023611, 3.445756506296097),
        "log_vars": (12.320529227627706, 0.1389547535604616),
        "theta1": (0.9167676926725815, 0.07687302027065884),
        "theta2": (1.7624369264234927, 0.0013992767334682077),
    },
    (16.0, 2.0): {
        "loss": 8.960139599850011,
        "dist": 7.042208454510897,
        "ce": 1.917931145339114,
        "x": (20.135808767414623, -0.32449160302222446),
        "means": (10.845655294870973, 1.6742086138109058),
        "log_vars": (6.681013269193725, 0.30094060567656766),
        "theta1": (2.4030413669975688, 0.14287785424583319),
        "theta2": (2.6531310612053183, 0.0944895953447574),
    },
}


def _hist_inputs():
    c, e, hid = 5, 6, 7
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(8, e, generator=g).double()
    y = torch.tensor([0, 0, 1, 1, 3, 3, 4, 4])  # class 2 absent: it must get no hyperedge
    means = torch.randn(c, e, generator=g).double()
    log_vars = (torch.rand(c, e, generator=g) * 2 - 0.5).double()
    w1 = torch.randn(hid, e, generator=g).double() * 0.3
    b1 = torch.randn(hid, generator=g).double() * 0.1
    w2 = torch.randn(c, hid, generator=g).double() * 0.3
    b2 = torch.randn(c, generator=g).double() * 0.1
    return x, y, means, log_vars, w1, b1, w2, b2


def _cos_weighted(t: torch.Tensor) -> float:
    return float((t * torch.arange(t.numel(), dtype=t.dtype).reshape(t.shape).cos()).sum())


@pytest.mark.parametrize("tau,alpha", list(HIST_FIXTURES))
def test_hist_loss_and_gradients_match_the_official_code(tau, alpha):
    from methods.hist import HIST, HISTConfig

    x, y, means, log_vars, w1, b1, w2, b2 = _hist_inputs()
    method = HIST(HISTConfig(tau=tau, alpha=alpha, hgnn_hidden=7), TaskInfo(5, 6, "cub")).double()
    with torch.no_grad():
        method.means.copy_(means)
        method.log_vars.copy_(log_vars)
        method.hgnn.theta1.weight.copy_(w1)
        method.hgnn.theta1.bias.copy_(b1)
        method.hgnn.theta2.weight.copy_(w2)
        method.hgnn.theta2.bias.copy_(b2)
    x = x.requires_grad_(True)
    out = method.hist_loss(x, y)
    out["loss"].backward()
    ref = HIST_FIXTURES[(tau, alpha)]
    assert out["loss"].item() == pytest.approx(ref["loss"], rel=1e-9)
    assert out["distribution_loss"].item() == pytest.approx(ref["dist"], rel=1e-9)
    assert out["hgnn_ce"].item() == pytest.approx(ref["ce"], rel=1e-9)
    grads = {
        "x": x.grad,
        "means": method.means.grad,
        "log_vars": method.log_vars.grad,
        "theta1": method.hgnn.theta1.weight.grad,
        "theta2": method.hgnn.theta2.weight.grad,
    }
    for name, grad in grads.items():
        abs_sum, weighted = ref[name]
        assert float(grad.abs().sum()) == pytest.approx(abs_sum, rel=1e-8), name
        assert _cos_weighted(grad) == pytest.approx(weighted, rel=1e-7, abs=1e-10), name


def test_hist_takes_the_papers_per_dataset_values_and_learning_rate_multipliers():
    from methods.hist import HIST, HISTConfig

    cub = HIST(HISTConfig(), TaskInfo(4, 8, "cub"))
    assert (cub.tau, cub.alpha, cub.hgnn_lr_mult) == (32.0, 1.1, 5.0)
    assert cub.diagnostics()["alpha"] == 1.1  # the resolved per-dataset value reaches the run record
    assert cub.distribution_lr == 1e-1  # the official absolute --lr-ds, whatever the engine's base rate
    sop = HIST(HISTConfig(), TaskInfo(4, 8, "sop"))
    assert (sop.tau, sop.alpha, sop.hgnn_lr_mult, sop.distribution_lr) == (16.0, 2.0, 10.0, 1e-2)
    cars = HIST(HISTConfig(alpha=0.5, distribution_lr=0.05), TaskInfo(4, 8, "cars"))
    assert (cars.alpha, cars.distribution_lr) == (0.5, 0.05)  # explicit values win
    groups = {g.name: g for g in cub.param_groups()}
    assert (groups["class_distributions"].lr, groups["hgnn"].lr, groups["hgnn"].lr_mult) == (1e-1, None, 5.0)
    assert set(groups) == {"class_distributions", "hgnn"}
    assert {id(p) for g in groups.values() for p in g.params} == {id(p) for p in cub.parameters()}
    assert all(g.source for g in groups.values())


# ---------------------------------------------------------------- Hyp-ViT (official code: htdt/hyp_metric)


def _method(name: str, num_classes: int = 5, dim: int = 6, dataset: str = "cub", **overrides):
    from benchmark.registry import get_method

    cls = get_method(name)
    return cls(cls.config_class(**overrides), TaskInfo(num_classes, dim, dataset)).double()


# Recorded by running the official code (htdt/hyp_metric@c89de0490691: hyptorch.nn.ToPoincare(c, riemannian=False,
# clip_r=2.3), hyptorch.pmath.dist_matrix and train.contrastive_loss, on CPU in float64 with .cuda patched out) on
# _hyp_inputs() in class-major order, loss summed over ordered slot pairs i != j as in train.py.
# Values: (loss, |grad x|_1, cos-weighted grad x).
HYP_VIT_FIXTURES = {
    (0.1, 0.2): (87.79859596064686, 101.35554466201336, 1.5280024827500016),
    (1.0, 0.2): (39.742285815781045, 59.358583730238685, -1.2059082568990933),
}


def _hyp_inputs():
    g = torch.Generator().manual_seed(7)
    p, k, e = 4, 3, 5
    x = (torch.randn(p * k, e, generator=g, dtype=torch.float32) * 1.5).double()  # some rows beyond clip_r
    return x, torch.arange(p).repeat_interleave(k), p, k


@pytest.mark.parametrize("c,t", list(HYP_VIT_FIXTURES))
def test_hyp_vit_loss_and_gradient_match_the_official_code(c, t):
    from methods.hyp_vit import to_poincare

    x, labels, p, k = _hyp_inputs()
    # Present the batch interleaved (slot-major), as a sampler may: the method must regroup it by class.
    perm = torch.arange(p * k).view(p, k).t().reshape(-1)
    xi = x[perm].clone().requires_grad_(True)
    method = _method("hyp_vit", num_classes=p, dim=5, hyp_c=c, temperature=t)
    loss = method.hyp_loss(to_poincare(xi, c, 2.3), labels[perm])
    loss.backward()
    grad = torch.empty_like(x)
    grad[perm] = xi.grad
    ref = HYP_VIT_FIXTURES[(c, t)]
    assert loss.item() == pytest.approx(ref[0], rel=1e-8)  # official artanh uses the log form: ~1e-9 apart
    assert float(grad.abs().sum()) == pytest.approx(ref[1], rel=1e-8)
    assert _cos_weighted(grad) == pytest.approx(ref[2], rel=1e-7)


def test_hyp_vit_rejects_unbalanced_batches_and_retrieves_on_encoder_features():
    method = _method("hyp_vit", num_classes=3, dim=4)
    with pytest.raises(ValueError, match="same number K >= 2"):
        method.hyp_loss(torch.zeros(5, 4), torch.tensor([0, 0, 1, 1, 1]))

    class _Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.head = torch.nn.Linear(6, 4)

        def features(self, images):
            return images.flatten(1)

    images = torch.randn(4, 6)
    torch.testing.assert_close(method.embed(images, _Encoder()), F.normalize(images, dim=-1))
    assert method.recommended["backbone.name"] == "vit_small_patch16_224"
