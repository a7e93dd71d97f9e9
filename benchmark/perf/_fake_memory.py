"""Memory, FLOP and byte accounting of a step run on fake tensors (no GPU, no weights), phase by phase.

:class:`FakeStep` is a ``TorchDispatchMode`` over a ``FakeTensorMode``: the model's parameters and the step's large
tensors are fake (shapes, dtypes and storages, no data), so an 8B model's step runs on a CPU in seconds. It counts
the bytes of every live fake storage (allocated on an op's output, freed when its storage object is collected:
``weakref.finalize``), each rounded up to 512 bytes like the CUDA caching allocator's blocks, and records the peak
of each named phase. Fragmentation, the CUDA context and workspace buffers are not in it: what it reports is the
live-tensor peak, a lower bound of ``torch.cuda.max_memory_allocated``.

Hand-written (torch has no public memory counter for fake tensors; ``torch.distributed._tools.mem_tracker`` is
private and attributes memory to modules, not to the phases of an optimiser step). It also:

- keeps small tensors *real* (bookkeeping: labels, token ids, masks, rewards), so the method's own host-side logic
  runs unchanged; factories larger than ``real_limit`` bytes are made fake (a KV cache is never allocated for real);
- answers ``.item()`` on a fake tensor with a placeholder (True, 0 or 0.0): its value is unknown and unused here;
- routes SDPA to the flash kernel, so attention saves what FlashAttention saves (q, k, v, out, logsumexp), never an
  N^2 matrix;
- counts FLOPs with torch's own formulas (``torch.utils.flop_counter``) and the bytes each kernel reads and writes
  (its tensor arguments and outputs; views are free), per phase.

The fake device is the CPU: the autograd engine refuses to run a backward on fake CUDA tensors without a CUDA
context ("hasPrimaryContext expects a valid device index"). Autocast is therefore CPU autocast in bf16; its casts
differ from CUDA's only for ops whose inputs are already fp32 here (layer norms, softmax), so the bytes are the same.
"""

from __future__ import annotations

import contextlib
import weakref
from collections import defaultdict
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.nn.attention import SDPBackend
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import arg_tree_leaves, tree_flatten
from torch.utils.flop_counter import flop_registry

GIB = 1024**3
_BLOCK = 512  # the CUDA caching allocator rounds every block up to a multiple of 512 bytes
_ATEN = torch.ops.aten
_FACTORIES = {
    _ATEN.empty.memory_format,
    _ATEN.empty_strided.default,
    _ATEN.zeros.default,
    _ATEN.ones.default,
    _ATEN.full.default,
    _ATEN.randn.default,
    _ATEN.rand.default,
    _ATEN.arange.start_step,
}


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


class FakeStep(TorchDispatchMode):
    """Enter to run a step; ``phase(name)`` labels what runs inside it. See the module docstring."""

    def __init__(self, fake_mode: FakeTensorMode | None = None, real_limit: int = 1 << 20) -> None:
        super().__init__()
        self.fake_mode = fake_mode or FakeTensorMode(allow_non_fake_inputs=True)
        self.real_limit = real_limit
        self._live: dict[int, int] = {}
        self.current = 0
        self.peak = 0
        self.phases: list[str] = ["static"]
        self.phase_peak: dict[str, int] = defaultdict(int)
        self.phase_start: dict[str, int] = {}
        self.flops: dict[str, int] = defaultdict(int)
        self.bytes: dict[str, int] = defaultdict(int)
        self.kernels: dict[str, int] = defaultdict(int)

    # ------------------------------------------------------------------------------------------- storages
    def fake(self) -> FakeTensorMode:
        """The fake mode to build models and inputs under (``with step.fake(): ...``)."""
        return self.fake_mode

    def track(self, tensors: Iterable[torch.Tensor]) -> None:
        """Count tensors created before the mode was entered (parameters, buffers, optimiser states)."""
        for t in tensors:
            self._add(t)

    def _add(self, t: Any) -> None:
        if not isinstance(t, FakeTensor):
            return
        storage = t.untyped_storage()
        key = id(storage)
        if key in self._live:
            return
        size = -(-storage.nbytes() // _BLOCK) * _BLOCK
        self._live[key] = size
        weakref.finalize(storage, self._free, key)
        self.current += size
        self.peak = max(self.peak, self.current)
        phase = self.phases[-1]
        self.phase_peak[phase] = max(self.phase_peak[phase], self.current)

    def _free(self, key: int) -> None:
        self.current -= self._live.pop(key, 0)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Attribute the memory peak, FLOPs and bytes of what runs inside to ``name`` (phases nest)."""
        self.phases.append(name)
        self.phase_start.setdefault(name, self.current)
        self.phase_peak[name] = max(self.phase_peak[name], self.current)
        try:
            yield
        finally:
            self.phases.pop()

    def charge(self, phase: str, transient: int) -> None:
        """Record in ``phase`` a peak of ``transient`` bytes above what is live now, without running it again
        (for a repeat of identical shapes whose transient peak was measured once)."""
        self.phase_peak[phase] = max(self.phase_peak[phase], self.current + transient)
        self.peak = max(self.peak, self.current + transient)

    def reset_peaks(self) -> None:
        """Forget peaks and counts so far (the live storages stay counted)."""
        self.peak = self.current
        for table in (self.phase_peak, self.flops, self.bytes, self.kernels):
            table.clear()
        self.phase_start.clear()

    # ------------------------------------------------------------------------------------------- dispatch
    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        flat = arg_tree_leaves(*args, **kwargs)
        has_fake = any(isinstance(a, FakeTensor) for a in flat)
        if func is _ATEN._fused_sdp_choice.default:
            return int(SDPBackend.FLASH_ATTENTION.value)
        if func is _ATEN._local_scalar_dense.default and has_fake:
            dtype = args[0].dtype
            return True if dtype == torch.bool else (0 if not dtype.is_floating_point else 0.0)
        if func is _ATEN.index.Tensor and has_fake:  # a real boolean mask into a fake tensor: index by positions
            args = (args[0], [i.nonzero().unbind(1) if _real_bool(i) else (i,) for i in args[1]])
            args = (args[0], [j for group in args[1] for j in group])
        if not has_fake and func in _FACTORIES and _factory_bytes(func, args, kwargs) > self.real_limit:
            with self.fake_mode:
                out = func(*args, **kwargs)
        else:
            out = func(*args, **kwargs)
        if has_fake or isinstance(out, FakeTensor):
            self._account(func, args, kwargs, out, flat)
        return out

    def _account(self, func: Any, args: tuple, kwargs: dict, out: Any, flat: list) -> None:
        outs = out if isinstance(out, (tuple, list)) else [out]
        if any(isinstance(t, (tuple, list)) for t in outs):
            outs, _ = tree_flatten(out)
        for t in outs:
            self._add(t)
        if func.is_view or func in (_ATEN.detach.default, _ATEN._unsafe_view.default):
            return
        phase = self.phases[-1]
        moved = sum(_nbytes(t) for t in flat if isinstance(t, torch.Tensor))
        moved += sum(_nbytes(t) for t in outs if isinstance(t, torch.Tensor))
        self.bytes[phase] += moved
        self.kernels[phase] += 1
        if func is _ATEN._scaled_dot_product_flash_attention_for_cpu.default:  # torch's formulas cover CUDA's kernels
            self.flops[phase] += _sdpa_flops(args[0].shape, args[1].shape, args[2].shape)
            return
        if func is _ATEN._scaled_dot_product_flash_attention_for_cpu_backward.default:
            self.flops[phase] += 2 * _sdpa_flops(args[1].shape, args[2].shape, args[3].shape)
            return
        counter = flop_registry.get(func._overloadpacket)
        if counter is not None:
            self.flops[phase] += int(counter(*args, **kwargs, out_val=out))


def _sdpa_flops(q: torch.Size, k: torch.Size, v: torch.Size) -> int:
    """Q K^T and P V: 2 * 2 * B * H * Lq * Lk * d (grouped-query heads count at the query's head number)."""
    b, h, lq, d = q
    return 4 * b * h * lq * k[-2] * d


def _real_bool(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and not isinstance(t, FakeTensor) and t.dtype == torch.bool


def _factory_bytes(func: Any, args: tuple, kwargs: dict) -> int:
    dtype = kwargs.get("dtype") or torch.get_default_dtype()
    size = 1
    if func is _ATEN.arange.start_step:
        return 0
    shape = args[0] if args else kwargs.get("size", ())
    for s in shape if isinstance(shape, (list, tuple)) else [shape]:
        size *= int(s)
    return size * torch.empty((), dtype=dtype).element_size()
