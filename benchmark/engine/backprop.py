"""The one way a training step's loss reaches the parameters' ``.grad``: :class:`Backprop`.

A method's step either returns its loss with its graph (the engine back-propagates it once), or back-propagates it in
parts as it goes (``Method.backward_part``), so that a step too large to hold at once (SAGA's: a tower graph per
micro-batch, a replay through an 8B language model per pair) frees each part's graph as soon as it is used. Either
way the gradient is the same; what this class owns, in one place, is what must be done identically for every part:

- the finiteness check before anything reaches ``.grad`` (a NaN part stops the run with the same error as a NaN loss);
- ``backward()`` outside autocast (PyTorch runs backward ops in the dtypes autocast chose in the forward; calling it
  under autocast is not recommended);
- the ``1 / train.grad_accum`` scale (gradients of the accumulated micro-batches average);
- DDP: parts are back-propagated under ``no_sync()`` (DDP's reducer expects one backward per forward), and the
  gradients are averaged across ranks once, before the optimiser step (:meth:`sync`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist


class Backprop:
    """Back-propagates a step's loss, whole or in parts, for the trainer (see the module docstring).

    ``on_nonfinite(value)`` raises the run's error for a NaN or infinite loss; ``ddp`` is the DDP-wrapped step module
    when training is distributed (else None).
    """

    def __init__(self, grad_accum: int, on_nonfinite: Callable[[float], None], ddp: Any = None) -> None:
        self.grad_accum = max(int(grad_accum), 1)
        self.on_nonfinite = on_nonfinite
        self.ddp = ddp
        self.parts = 0  # parts back-propagated in the current step
        self.total = 0.0  # their sum (unscaled), for the step's logged loss
        self.pending_sync = False  # gradients accumulated under no_sync, to be averaged before the optimiser step

    def begin_step(self) -> None:
        self.parts, self.total = 0, 0.0

    def context(self, in_parts: bool, boundary: bool) -> contextlib.AbstractContextManager:
        """Where a micro-batch's step and backward run. Distributed: a step back-propagated in parts runs under DDP's
        ``no_sync`` (averaged later by :meth:`sync`); a whole-loss step synchronises only on its last accumulation
        micro-batch (DDP then averages what the earlier ones accumulated). Alone: nothing."""
        if self.ddp is None:
            return contextlib.nullcontext()
        if in_parts:
            self.pending_sync = True
            return self.ddp.no_sync()
        return contextlib.nullcontext() if boundary else self.ddp.no_sync()

    def __call__(self, loss: torch.Tensor, retain_graph: bool = False) -> None:
        """Back-propagate ``loss`` (a scalar with a graph) now: checked finite, scaled, outside autocast."""
        value = float(loss.detach())
        if not torch.isfinite(torch.tensor(value)):
            self.on_nonfinite(value)
        self.parts += 1
        self.total += value
        if not loss.requires_grad:  # e.g. a term that reached no trainable parameter this step
            return
        with torch.autocast(loss.device.type, enabled=False):
            (loss / self.grad_accum).backward(retain_graph=retain_graph)

    def through(self, outputs: list[torch.Tensor], grads: list[torch.Tensor | None]) -> None:
        """Continue a backward from detached boundary tensors: ``grads`` (accumulated there by earlier parts, so
        already scaled) into ``outputs``' graph, outside autocast; a non-finite gradient stops the run."""
        pairs = [(o, g) for o, g in zip(outputs, grads, strict=True) if g is not None and o.requires_grad]
        if not pairs:
            return
        bad = sum(int((~torch.isfinite(g)).sum()) for _, g in pairs)
        if bad:
            self.on_nonfinite(float("nan"))
        with torch.autocast(pairs[0][0].device.type, enabled=False):
            torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])

    def sync(self, params: list[torch.nn.Parameter]) -> None:
        """Average the gradients accumulated under ``no_sync`` across ranks (one flat all-reduce per dtype and device).

        Hand-written (DDP's own reducer runs only inside a synchronised backward): a parameter that no part reached
        on one rank counts as a zero gradient there, so every rank takes the same all-reduce.
        """
        if not self.pending_sync or not dist.is_initialized():
            self.pending_sync = False
            return
        self.pending_sync = False
        world = dist.get_world_size()
        buckets: dict[tuple[torch.dtype, torch.device], list[torch.nn.Parameter]] = {}
        for p in params:
            if p.requires_grad:
                buckets.setdefault((p.dtype, p.device), []).append(p)
        for group in buckets.values():
            for p in group:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            flat = torch._utils._flatten_dense_tensors([p.grad for p in group])
            dist.all_reduce(flat)
            flat /= world
            for p, synced in zip(group, torch._utils._unflatten_dense_tensors(flat, [p.grad for p in group]),
                                 strict=True):  # fmt: skip
                p.grad.copy_(synced)
