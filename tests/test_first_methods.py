"""Parity of the first methods with their original implementations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmark.method import TaskInfo
from benchmark.registry import get_method, list_methods

# Produced by running the official Proxy Anchor code (tjddus9597/Proxy-Anchor-CVPR2020, code/losses.py,
# class Proxy_Anchor, mrg=0.1, alpha=32) on CPU with `.cuda()` patched to a no-op, on the inputs built by
# `_inputs` below (numpy RandomState(0): X = randn(n, d), T = randint(0, c, n), proxies = randn(c, d)), then
# loss.backward(). The official code's binarize() was cast to float64 for the float64 case.
PROXY_ANCHOR_FIXTURES = {
    (12, 8, 5, torch.float64): {
        "loss": 39.05992572233764,
        "grad_x_abs_sum": 39.162354149993604,
        "grad_x0": [
            -1.069076819865923,
            0.08916825462472865,
            -0.667577010215594,
            0.427403764795251,
            0.9237942629150504,
            -0.14989579108555495,
            -0.4350459181611199,
            -0.5777447316434401,
        ],
        "grad_p_abs_sum": 34.34117506299914,
        "grad_p0": [
            0.8948222714739361,
            0.5151173048403773,
            1.2314287999370297,
            0.44237219071965134,
            0.31937985921717094,
            -0.1413640617220892,
            0.4757737258883734,
            -0.44683588138096964,
        ],
    },
    (32, 16, 10, torch.float32): {
        "loss": 32.296783447265625,
        "grad_x_abs_sum": 32.45414733886719,
        "grad_p_abs_sum": 29.105615615844727,
        "grad_x0": [
            0.027938485145568848,
            -0.10455885529518127,
            -0.003058314323425293,
            0.020581305027008057,
            -0.148555189371109,
            0.033224523067474365,
            0.09763529896736145,
            0.11617973446846008,
            0.24094799160957336,
            -0.055269755423069,
            0.06813296675682068,
            0.03805375099182129,
            0.1314237266778946,
            -0.12070637941360474,
            0.15412089228630066,
            0.0384351909160614,
        ],
        "grad_p0": [
            0.31797921657562256,
            -0.056407224386930466,
            -0.3184667229652405,
            0.0790410041809082,
            0.06247308477759361,
            -0.2936556041240692,
            -0.00881299376487732,
            0.18348723649978638,
            0.3204783797264099,
            -0.09284954518079758,
            0.057992395013570786,
            -0.2738749384880066,
            -0.12804582715034485,
            -0.18597054481506348,
            -0.02091067284345627,
            -0.20688320696353912,
        ],
    },
}


def _inputs(n, d, c, dtype):
    rs = np.random.RandomState(0)
    x = torch.tensor(rs.randn(n, d), dtype=dtype, requires_grad=True)
    t = torch.tensor(rs.randint(0, c, size=n))
    p = torch.tensor(rs.randn(c, d), dtype=dtype)
    return x, t, p


@pytest.mark.parametrize("shape", list(PROXY_ANCHOR_FIXTURES), ids=["float64", "float32"])
def test_proxy_anchor_matches_official_code(shape, datasets_dir):
    n, d, c, dtype = shape
    expected = PROXY_ANCHOR_FIXTURES[shape]
    cls = get_method("proxy_anchor")
    method = cls(cls.config_class(), TaskInfo(num_classes=c, embedding_dim=d, dataset="test")).to(dtype)
    x, t, p = _inputs(n, d, c, dtype)
    with torch.no_grad():
        method.criterion.proxies.copy_(p)
    loss = method.loss(x, t)
    loss.backward()
    tol = {"rtol": 1e-10, "atol": 1e-10} if dtype == torch.float64 else {"rtol": 2e-5, "atol": 2e-5}
    torch.testing.assert_close(loss.item(), expected["loss"], **tol)
    torch.testing.assert_close(x.grad.abs().sum().item(), expected["grad_x_abs_sum"], **tol)
    torch.testing.assert_close(x.grad[0], torch.tensor(expected["grad_x0"], dtype=dtype), **tol)
    grad_p = method.criterion.proxies.grad
    torch.testing.assert_close(grad_p.abs().sum().item(), expected["grad_p_abs_sum"], **tol)
    torch.testing.assert_close(grad_p[0], torch.tensor(expected["grad_p0"], dtype=dtype), **tol)


def test_proxy_anchor_proxies_get_the_paper_learning_rate_multiplier():
    cls = get_method("proxy_anchor")
    method = cls(cls.config_class(), TaskInfo(num_classes=4, embedding_dim=8, dataset="test"))
    (group,) = method.param_groups()
    assert group.lr_mult == 100.0 and group.params[0].shape == (4, 8)


def test_multi_similarity_equals_its_equations_on_mined_pairs():
    """MS loss (Wang et al. 2019, Eq. 6 on the pairs of Eqs. 7-8), computed independently here."""
    cls = get_method("multi_similarity")
    cfg = cls.config_class()
    method = cls(cfg, TaskInfo(num_classes=3, embedding_dim=6, dataset="test")).double()
    rs = np.random.RandomState(1)
    x = torch.nn.functional.normalize(torch.tensor(rs.randn(9, 6)), dim=1)
    y = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    got = method.loss(x, y).item()
    sim = (x @ x.T).numpy()
    a, b, lam, eps = cfg.alpha, cfg.beta, cfg.base, cfg.epsilon
    terms = []
    for i in range(len(y)):
        pos = [sim[i, j] for j in range(len(y)) if y[j] == y[i] and j != i]
        neg = [sim[i, j] for j in range(len(y)) if y[j] != y[i]]
        pos_kept = [s for s in pos if s - eps < max(neg)]  # Eq. 7
        neg_kept = [s for s in neg if s + eps > min(pos)]  # Eq. 8
        if not pos_kept or not neg_kept:
            continue
        terms.append(
            np.log1p(np.sum(np.exp(-a * (np.array(pos_kept) - lam)))) / a
            + np.log1p(np.sum(np.exp(b * (np.array(neg_kept) - lam)))) / b
        )
    assert terms and got > 0
    assert got == pytest.approx(np.sum(terms) / len(y), rel=1e-9)


def test_registry_lists_the_first_methods_with_citations():
    methods = list_methods()
    assert {"pretrained", "proxy_anchor", "multi_similarity"} <= set(methods)
    assert not methods["pretrained"].trains
    for name in ("proxy_anchor", "multi_similarity"):
        assert methods[name].year >= 2019 and "CVPR" in methods[name].paper
