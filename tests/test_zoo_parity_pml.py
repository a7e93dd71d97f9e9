"""Parity tests of the pytorch-metric-learning-based zoo methods: the configured pml loss against its paper's
equation computed independently here on tiny inputs (float64), and SoftTriple / ProxyNCA++ against numbers recorded
from their official code. (Potential Field, HIST and Hyp-ViT are in test_zoo_parity.py.)
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from benchmark.method import TaskInfo


def _fixed_inputs(n: int = 8, dim: int = 6, classes: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(n, dim, generator=gen, dtype=torch.float64), dim=-1)
    y = torch.arange(n) % classes
    return x, y


def _cos_weighted(t: torch.Tensor) -> float:
    return float((t * torch.arange(t.numel(), dtype=t.dtype).reshape(t.shape).cos()).sum())


# ---------------------------------------------------------------- pytorch-metric-learning losses vs the equations


def _method(name: str, num_classes: int = 5, dim: int = 6, dataset: str = "cub", **overrides):
    from benchmark.registry import get_method

    cls = get_method(name)
    return cls(cls.config_class(**overrides), TaskInfo(num_classes, dim, dataset)).double()


def _pair_stats(x, y):
    sim = x @ x.t()
    dist = (2 - 2 * sim).clamp(min=0).sqrt()
    n = len(y)
    pos = [(i, j) for i in range(n) for j in range(n) if i != j and y[i] == y[j]]
    neg = [(i, j) for i in range(n) for j in range(n) if y[i] != y[j]]
    return sim, dist, pos, neg


def _avg_nonzero(values):
    nonzero = [v for v in values if v > 0]
    return sum(nonzero) / len(nonzero) if nonzero else torch.tensor(0.0, dtype=torch.float64)


def _contrastive_by_hand(form: str, x: torch.Tensor, y: torch.Tensor, m: float = 1.0) -> float:
    """Each form's per-pair terms, written out here; pml's reduction (mean over non-zero pairs, per term)."""
    _, d, pos, neg = _pair_stats(x, y)
    if form == "hadsell":  # Hadsell et al. Eq. 4: L_S = 1/2 D^2, L_D = 1/2 max(0, m - D)^2
        pos_terms = [0.5 * d[i, j] ** 2 for i, j in pos]
        neg_terms = [0.5 * torch.relu(m - d[i, j]) ** 2 for i, j in neg]
    elif form == "hinge":  # unsquared: D and max(0, m - D)
        pos_terms = [d[i, j] for i, j in pos]
        neg_terms = [torch.relu(m - d[i, j]) for i, j in neg]
    else:  # hinges on the squared distance: D^2 and max(0, m - D^2)
        pos_terms = [d[i, j] ** 2 for i, j in pos]
        neg_terms = [torch.relu(m - d[i, j] ** 2) for i, j in neg]
    return float(_avg_nonzero(pos_terms) + _avg_nonzero(neg_terms))


@pytest.mark.parametrize("form", ["hadsell", "hinge", "hinge_on_squared_distance"])
def test_contrastive_forms_match_their_equations(form):
    x, y = _fixed_inputs()
    method = _method("contrastive", form=form)
    assert method.loss(x, y).item() == pytest.approx(_contrastive_by_hand(form, x, y), rel=1e-9)


def test_contrastive_default_is_hadsells_form_and_differs_from_the_squared_distance_hinge():
    x, y = _fixed_inputs()
    method = _method("contrastive")
    assert method.cfg.form == "hadsell"
    hadsell, other = _contrastive_by_hand("hadsell", x, y), _contrastive_by_hand("hinge_on_squared_distance", x, y)
    assert abs(hadsell - other) > 0.05 * abs(other)  # the two forms are not the same loss on this input
    assert method.loss(x, y).item() == pytest.approx(hadsell, rel=1e-9)
    with pytest.raises(ValueError, match="use one of hadsell, hinge, hinge_on_squared_distance"):
        _method("contrastive", form="squared")


def test_triplet_semihard_matches_facenet_equations():
    gen = torch.Generator().manual_seed(3)
    x = F.normalize(torch.randn(12, 4, generator=gen, dtype=torch.float64), dim=-1)
    y = torch.arange(12) % 3
    method = _method("triplet", num_classes=3, dim=4)
    assert method.miner.type_of_triplets == "semihard" and method.criterion.margin == 0.2
    _, dist, pos, _ = _pair_stats(x, y)
    d2 = dist**2  # FaceNet Eq. 1: squared distances
    losses = [
        d2[a, p] - d2[a, n] + 0.2
        for a, p in pos
        for n in range(12)
        if y[n] != y[a] and d2[a, p] < d2[a, n] <= d2[a, p] + 0.2  # semi-hard (FaceNet Eq. 4)
    ]
    assert losses, "the fixture must contain semi-hard triplets"
    assert method.loss(x, y).item() == pytest.approx(float(_avg_nonzero(losses)), rel=1e-9)


def test_circle_matches_its_equation():
    x, y = _fixed_inputs()
    method = _method("circle")
    assert (method.criterion.m, method.criterion.gamma) == (0.4, 80.0)
    sim, _, _, _ = _pair_stats(x, y)
    m, gamma, per_anchor = 0.4, 80.0, []
    for i in range(len(y)):
        sp = torch.stack([sim[i, j] for j in range(len(y)) if j != i and y[j] == y[i]])
        sn = torch.stack([sim[i, j] for j in range(len(y)) if y[j] != y[i]])
        logit_p = -gamma * torch.relu(1 + m - sp) * (sp - (1 - m))  # O_p = 1 + m, Delta_p = 1 - m
        logit_n = gamma * torch.relu(sn + m) * (sn - m)  # O_n = -m, Delta_n = m
        per_anchor.append(F.softplus(torch.logsumexp(logit_p, 0) + torch.logsumexp(logit_n, 0)))
    assert method.loss(x, y).item() == pytest.approx(float(_avg_nonzero(per_anchor)), rel=1e-9)


def test_supcon_matches_its_equation():
    x, y = _fixed_inputs()
    method = _method("supcon")
    sim, _, _, _ = _pair_stats(x, y)
    tau, n, per_anchor = 0.1, len(y), []
    for i in range(n):
        log_denominator = torch.logsumexp(torch.stack([sim[i, a] / tau for a in range(n) if a != i]), 0)
        terms = [sim[i, p] / tau - log_denominator for p in range(n) if p != i and y[p] == y[i]]
        per_anchor.append(-sum(terms) / len(terms))  # L^sup_out, paper Eq. 2
    assert method.loss(x, y).item() == pytest.approx(float(sum(per_anchor) / n), rel=1e-9)


@pytest.mark.parametrize("name", ["arcface", "norm_softmax"])
def test_classification_losses_match_their_equations_with_weight_gradients(name):
    x, y = _fixed_inputs()
    method = _method(name, num_classes=3)
    weights = method.criterion.W.detach().clone().requires_grad_(True)  # E×C class weights
    cos = x @ F.normalize(weights, dim=0)
    if name == "arcface":  # s * cos(theta_y + m) on the true class, s * cos(theta_j) elsewhere (paper Eq. 3)
        assert method.criterion.scale == 64.0 and method.criterion.margin == pytest.approx(0.5)  # pml: radians
        theta = torch.acos(cos.clamp(-1, 1))
        # beyond theta = pi - m the official insightface code (and pml) use cos(theta) - m sin(m) to stay monotonic
        target = torch.where(theta <= math.pi - 0.5, torch.cos(theta + 0.5), cos - 0.5 * math.sin(0.5))
        logits = 64.0 * torch.where(F.one_hot(y, 3).bool(), target, cos)
    else:  # cos / T (T = 0.05)
        assert method.criterion.temperature == 0.05
        logits = cos / 0.05
    expected = F.cross_entropy(logits, y)
    expected.backward()
    loss = method.loss(x, y)
    loss.backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-9)
    torch.testing.assert_close(method.criterion.W.grad, weights.grad, rtol=1e-7, atol=1e-10)
    (group,) = method.param_groups()
    assert group.lr_mult == 1.0 and group.source


# ---------------------------------------------------------------- SoftTriple, ProxyNCA++ (official code fixtures)

# Recorded by running the official loss code on CPU in float64 (torch.Tensor.cuda patched to a no-op): ProxyNCA++
# euwern/proxynca_pp@217233d29a89 loss.ProxyNCA_prob(scale=3) and SoftTriple idstcv/SoftTriple@cc1c32d2f93a
# SoftTriple(la=20, gamma=0.1, tau=0.2, margin=0.01, K=3), on _official_inputs() (SoftTriple fed F.normalize(x), as its
# network's forward ends; gradients w.r.t. x).
# Values: (loss, |grad x|_1, cos-weighted grad x, |grad W|_1, cos-weighted grad W).
PROXYNCA_PP_FIXTURE = (9.619801333609972, 12.145849984774006, 1.5064135468589428, 11.29994841359656, 0.7233381936538812)
SOFT_TRIPLE_FIXTURE = (
    8.378655249191134,
    13.877551432375135,
    -2.767114892363854,
    18.897010222117192,
    -4.040761510037247,
)


def _official_inputs():
    g = torch.Generator().manual_seed(99)
    x = torch.randn(8, 6, generator=g, dtype=torch.float32).double()
    y = torch.tensor([0, 0, 1, 1, 2, 2, 4, 4])
    proxies = torch.randn(5, 6, generator=g, dtype=torch.float32).double()
    centers = torch.randn(6, 5 * 3, generator=g, dtype=torch.float32).double()
    return x, y, proxies, centers


def _check_fixture(loss, x_grad, w_grad, fixture, rel=1e-8):
    assert loss.item() == pytest.approx(fixture[0], rel=rel)
    assert float(x_grad.abs().sum()) == pytest.approx(fixture[1], rel=rel)
    assert _cos_weighted(x_grad) == pytest.approx(fixture[2], rel=max(rel, 1e-7))
    assert float(w_grad.abs().sum()) == pytest.approx(fixture[3], rel=rel)
    assert _cos_weighted(w_grad) == pytest.approx(fixture[4], rel=max(rel, 1e-7))


def test_proxynca_pp_matches_the_official_code():
    x, y, proxies, _ = _official_inputs()
    method = _method("proxynca_pp")
    assert method.criterion.softmax_scale == pytest.approx(9.0)
    with torch.no_grad():
        method.criterion.proxies.copy_(proxies)
    x = x.requires_grad_(True)
    method.loss(x, y).backward()
    _check_fixture(method.loss(x.detach(), y), x.grad, method.criterion.proxies.grad, PROXYNCA_PP_FIXTURE)
    (group,) = method.param_groups()
    assert (group.lr_mult, group.weight_decay) == (1e5, 0.0)


def test_soft_triple_matches_the_official_code():
    x, y, _, centers = _official_inputs()
    method = _method("soft_triple", centers_per_class=3)
    assert (method.criterion.la, method.criterion.gamma, method.criterion.margin) == (20.0, 10.0, 0.01)
    assert method.criterion.weight_reg_weight == 0.2
    with torch.no_grad():
        method.criterion.fc.copy_(centers)
    x = x.requires_grad_(True)  # pml's cosine similarity normalises inside, as the official network's last step
    method.loss(x, y).backward()
    # rel 1e-6: the official regulariser has sqrt(2 + 1e-5 - 2 sim), pml's adds float64's tiny value instead of 1e-5
    _check_fixture(method.loss(x.detach(), y), x.grad, method.criterion.fc.grad, SOFT_TRIPLE_FIXTURE, rel=1e-6)
    (group,) = method.param_groups()
    assert group.lr == 0.01  # the official absolute --centerlr, whatever the engine's base rate


@pytest.mark.parametrize("name", ["circle", "soft_triple"])
def test_pml_losses_are_computed_in_fp32_under_bf16_autocast(name):
    x, y = _fixed_inputs()
    method = _method(name, num_classes=3).float()
    x = x.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = method.loss(x, y)
    assert under_autocast.item() == pytest.approx(method.loss(x, y).item(), rel=1e-6)


# ---------------------------------------------------------------- layer norm before the head (ProxyNCA++, NormSoftmax)


class _LinearHeadEncoder(torch.nn.Module):
    """An encoder whose pooled features are the input rows, with a linear head (as the engine's ``Encoder``)."""

    def __init__(self, dim: int = 6, out: int = 4) -> None:
        super().__init__()
        self.head = torch.nn.Linear(dim, out).double()

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return images

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(self.features(images)), dim=-1)


@pytest.mark.parametrize("name", ["proxynca_pp", "norm_softmax"])
def test_layer_norm_without_affine_on_pooled_features_before_the_head(name):
    # ProxyNCA++ official networks.py (LayerNorm(2048, elementwise_affine=False) after pooling); NormSoftmax paper.
    torch.manual_seed(0)
    encoder = _LinearHeadEncoder()
    x, _ = _fixed_inputs()
    x = x * 3 + 0.5  # pooled features are not centred
    method = _method(name, num_classes=3, dim=4)
    standardised = (x - x.mean(-1, keepdim=True)) / (x.var(-1, unbiased=False, keepdim=True) + 1e-5).sqrt()
    expected = F.normalize(encoder.head(standardised), dim=-1)
    torch.testing.assert_close(method.embed(x, encoder), expected)
    assert not torch.allclose(method.embed(x, encoder), encoder(x), atol=1e-3)
    # A per-image affine change of the pooled features leaves the embedding alone (up to LayerNorm's 1e-5).
    torch.testing.assert_close(method.embed(4 * x - 1, encoder), method.embed(x, encoder), rtol=1e-4, atol=1e-4)
    plain = _method(name, num_classes=3, dim=4, layer_norm=False)
    torch.testing.assert_close(plain.embed(x, encoder), encoder(x))
