"""SAGA back-propagated in parts (issue 20): the gradients of one step equal those of one backward of the whole Eq. 8
loss, as the step was computed before it was split (every micro-batch's tower graph and every pair's replay held
until a single backward), with and without refills; and the engine's Backprop scales, checks and refuses as the
single backward did."""

from __future__ import annotations

from collections import defaultdict

import pytest
import torch
import torch.nn.functional as F

from benchmark.backbones import mllm
from methods.saga._grpo import grpo_loss
from methods.saga._rollout import replay, teacher_layer_index
from tests._saga_common import _batch, _encoder, _method, one_thread  # noqa: F401  (fixture)


def _grads(*modules) -> dict[str, torch.Tensor]:
    return {
        f"{i}.{n}": p.grad.detach().clone()
        for i, m in enumerate(modules)
        for n, p in m.named_parameters()
        if p.grad is not None
    }


def _single_backward(method, enc, batches, buffer) -> None:
    """The step's loss as one graph and one backward (the pre-split algorithm), on the step's own rollouts."""
    cfg = method.cfg
    sup = mllm.load_supervisor(mllm.TINY_NAME)
    feats_list, dml = [], []
    for b, (imgs, labs) in enumerate(batches):
        feats = method._features(enc, imgs)
        feats_list.append(feats)
        if b == 0 or cfg.refill_dml:
            dml.append(method.metric(method.pooler(feats.tokens)[0], labs))
    layer = teacher_layer_index(sup, cfg.teacher_layer, tiny=True)
    total_tokens = sum(int(g.payload["rollouts"].mask.sum()) for g in buffer.groups)
    loss_grpo, kl_terms = 0.0, []
    lm = sup.model.model.language_model
    for group in buffer.groups:
        ro, prefix = group.payload["rollouts"], group.payload["prefix"]
        feats = feats_list[group.payload["batch"]].select(group.payload["order"])
        rows = method._teacher_rows(sup, group, defaultdict(float))
        lm.train(True)
        logprobs, maps = replay(sup, prefix, feats, ro, layer, rows, cfg.replay_chunk)
        lm.eval()
        loss_grpo = loss_grpo + grpo_loss(logprobs, group.advantages, ro.mask, total_tokens)
        beta = method.pooler.attention(feats.tokens.detach())
        for alphas in maps.values():
            terms = [
                F.kl_div(beta[k].clamp_min(1e-12).log(), a, reduction="sum")
                for k, a in enumerate(alphas)
                if a is not None
            ]
            if terms:
                kl_terms.append(torch.stack(terms).sum())
    loss = cfg.lambda_dml * torch.stack(dml).sum() + cfg.lambda_grpo * loss_grpo
    loss = loss + cfg.lambda_kl * torch.stack(kl_terms).mean()
    loss.backward()


@pytest.mark.parametrize(
    "overrides, refills",
    [({"num_pairs": 1, "pairs_per_batch": 2}, False), ({"num_pairs": 3, "pairs_per_batch": 2}, True)],
    ids=["no-refill", "refills"],
)
def test_gradients_in_parts_equal_one_backward_of_the_whole_loss(overrides, refills):
    torch.manual_seed(0)
    enc = _encoder()
    method = _method(enc, lambda_kl=1.0, **overrides)
    extra = iter([_batch(1), _batch(2), _batch(3)])
    method.next_batch = lambda: next(extra)
    seen = {}
    policy_terms = method._policy_terms

    def capture(sup, buffer, batches, *args):
        seen.update(buffer=buffer, batches=list(batches))
        return policy_terms(sup, buffer, batches, *args)

    method._policy_terms = capture
    out = method.training_step(*_batch(), enc)
    assert (out["micro_batches"] > 1) == refills
    assert out["pairs_contributing"] >= 1 and out["kl_rollouts"] >= 1 and out["loss_grpo"] != 0
    parts = _grads(enc, method)
    enc.zero_grad(set_to_none=True)
    method.zero_grad(set_to_none=True)
    _single_backward(method, enc, seen["batches"], seen["buffer"])
    whole = _grads(enc, method)
    assert parts.keys() == whole.keys() and len(parts) > 10
    worst = max(float((parts[k] - whole[k]).abs().max() / whole[k].abs().max().clamp_min(1e-12)) for k in parts)
    assert all(torch.allclose(parts[k], whole[k], rtol=1e-6, atol=1e-6) for k in parts), f"worst relative {worst}"


def test_engine_backprop_scales_checks_and_continues_through_a_boundary():
    from benchmark.engine.backprop import Backprop

    raised = []

    def nonfinite(value: float) -> None:
        raised.append(value)
        raise RuntimeError("non-finite")

    w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    bp = Backprop(grad_accum=4, on_nonfinite=nonfinite)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the backward itself runs outside autocast
        bp((w * 3.0).sum())
    assert torch.equal(w.grad, torch.full((2,), 0.75))  # 3 / grad_accum
    assert bp.parts == 1 and bp.total == pytest.approx(9.0)
    # a detached boundary: parts accumulate there (scaled), one backward continues them into the graph behind
    hidden = w * 2.0
    leaf = hidden.detach().requires_grad_(True)
    bp(leaf.square().sum())
    bp.through([hidden], [leaf.grad])
    assert torch.allclose(w.grad, torch.tensor([0.75, 0.75]) + 2.0 * 2 * leaf.detach() / 4)
    with pytest.raises(RuntimeError, match="non-finite"):
        bp(w.sum() * float("nan"))
    assert raised and raised[0] != raised[0]  # NaN reported before anything reached .grad
    assert torch.allclose(w.grad, torch.tensor([0.75, 0.75]) + 2.0 * 2 * leaf.detach() / 4)


def _ddp_rank(rank: int, world: int, port: int, out: str) -> None:
    import os

    import torch.distributed as dist

    from benchmark.engine.backprop import Backprop

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(3, 2), find_unused_parameters=True)
    bp = Backprop(grad_accum=1, on_nonfinite=lambda v: None, ddp=model)
    x = torch.arange(6.0).view(2, 3) * (rank + 1)  # each rank its own data
    with bp.context(in_parts=True, boundary=True):  # two parts of one forward: DDP's reducer must not see them
        y = model(x)
        bp(y[0].square().sum(), retain_graph=True)
        bp(y[1].sum())
    bp.sync(list(model.parameters()))
    torch.save({n: p.grad for n, p in model.module.named_parameters()}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def test_parts_under_ddp_are_averaged_once_across_ranks(tmp_path):
    """Two gloo ranks back-propagate two parts of one DDP forward each under no_sync; Backprop.sync averages them:
    every rank ends with the mean of the ranks' own gradients (computed here without DDP)."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_rank, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    expected = {}
    for rank in range(2):
        torch.manual_seed(0)
        layer = torch.nn.Linear(3, 2)
        y = layer(torch.arange(6.0).view(2, 3) * (rank + 1))
        (y[0].square().sum() + y[1].sum()).backward()
        for n, p in layer.named_parameters():
            expected[n] = expected.get(n, 0) + p.grad / 2
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert got.keys() == expected.keys()
        assert all(torch.allclose(got[n], expected[n], atol=1e-6) for n in got)
