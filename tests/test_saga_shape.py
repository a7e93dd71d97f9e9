"""SAGA at the paper's shape on fake tensors (issue 20): parameter counts, the counter itself, and the memory bounds.

Fake-tensor memory is deterministic (shapes and dtypes only), so these bounds may be asserted; they are not timings.
The bounds are the issue's: the default paper setting (Qwen3-VL-8B, 224 px, G = K = P = 8, 1024 tokens) within
76 GiB (an 80 GB card with headroom for the CUDA context and fragmentation) at every refill count up to the cap and
on ``grad_norm_every`` steps; InternVL3.5-8B at its native 448 px within 130 GiB (an H200). Memory only grows with
the micro-batches consumed and the diagnostic adds to a step, so the step at the cap with the diagnostic bounds all.
"""

from __future__ import annotations

import gc

import pytest
import torch

from benchmark.perf._fake_memory import GIB, FakeStep
from benchmark.perf.saga_shape import build_shape, run_step
from methods.saga import SAGAConfig

CAP = SAGAConfig.max_refill_batches + 1  # micro-batches a step may consume


@pytest.fixture(scope="module")
def qwen():
    return build_shape("qwen3-vl-8b", FakeStep())


@pytest.fixture(scope="module")
def internvl():
    return build_shape("internvl3.5-8b", FakeStep())


def test_parameter_counts_match_the_published_checkpoints(qwen, internvl) -> None:
    q, i = qwen.counts(), internvl.counts()
    # Qwen3-VL-8B-Instruct: 8.77 B parameters (the hub's count); Qwen3-8B's LM: 6.95 B non-embedding (its card)
    assert q["tower"] + q["lm"] == pytest.approx(8.77e9, rel=2e-3)
    assert q["tower"] == pytest.approx(576.4e6, rel=1e-3)
    assert q["lm"] == pytest.approx(8.191e9, rel=1e-3)
    assert q["lm_non_embedding"] == pytest.approx(6.95e9, rel=2e-3)
    # InternVL3.5-8B: 8.5 B (InternViT-300M, an MLP projector, Qwen3-8B)
    assert i["tower"] + i["lm"] == pytest.approx(8.5e9, rel=1e-2)
    assert 0.28e9 < i["tower"] < 0.36e9
    assert i["lm_non_embedding"] == pytest.approx(6.95e9, rel=2e-3)


def test_counter_frees_storages_and_attention_saves_no_square_matrix() -> None:
    step = FakeStep()
    with step.fake():
        lin = torch.nn.Linear(256, 256)
        x = torch.randn(4, 4096, 256, requires_grad=True)
    step.track([*lin.parameters(), x])
    start = step.current
    with step:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            q = lin(x).view(4, 4096, 4, 64).transpose(1, 2)
            out = torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)
        retained = step.current - start
        out.float().sum().backward()
        del q, out
        gc.collect()
    square = 4 * 4 * 4096 * 4096 * 2  # a bf16 score matrix per head
    assert retained < square / 20  # q/k/v, out, logsumexp: linear in the sequence
    params = sum(p.numel() * 4 for p in lin.parameters())
    assert step.current - start == pytest.approx(params + x.numel() * 4, rel=0.01)  # the gradients remain


def test_paper_setting_fits_80gb_at_every_refill_count(qwen) -> None:
    first = run_step(qwen, 1024, 1, grad_norm_step=False)
    last = run_step(qwen, 1024, CAP, grad_norm_step=True)
    assert (first["consumed"], last["consumed"]) == (1, CAP)
    assert first["pairs_replayed"] == last["pairs_replayed"] == SAGAConfig.num_pairs
    assert first["static_gib"] == pytest.approx((qwen.counts()["lm"] * 2 + qwen.counts()["tower"] * 12) / GIB, 0.02)
    assert first["peak_gib"] <= 76.0, first["phase_peak_gib"]
    assert last["peak_gib"] <= 76.0, last["phase_peak_gib"]


def test_internvl_at_448_fits_an_h200(internvl) -> None:
    run = run_step(internvl, 1024, CAP, grad_norm_step=False)
    assert run["consumed"] == CAP
    assert run["peak_gib"] <= 130.0, run["phase_peak_gib"]
