"""Data-parallel training on one node: process-group set-up from SLURM or torchrun, the rank's slice of each batch,
gathering embeddings for evaluation, and the stop decision all ranks must share.

A cell that asks for several GPUs is started by SLURM as one task per GPU (``srun``, through submitit); torchrun
works the same way. Each rank trains on its contiguous slice of every global batch (the m-per-class sampler lays a
batch out as runs of ``m`` images of one class, so a slice of a multiple of ``m`` keeps whole classes), gradients are
averaged by :class:`torch.nn.parallel.DistributedDataParallel`, evaluation embeds a shard per rank and gathers them
in the original order, and only rank 0 writes checkpoints and the record.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    """This process's place in the job (``world_size == 1``: not distributed)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    source: str = "single"

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def describe(self) -> dict[str, Any]:
        return {
            "world_size": self.world_size,
            "launcher": self.source,
            "backend": dist.get_backend() if dist.is_initialized() else None,
        }


def detect() -> DistInfo:
    """Rank and world size from torchrun (``RANK``/``WORLD_SIZE``) or a SLURM job step (``SLURM_PROCID``...)."""
    env = os.environ
    if int(env.get("WORLD_SIZE", 1)) > 1:
        return DistInfo(int(env["RANK"]), int(env.get("LOCAL_RANK", 0)), int(env["WORLD_SIZE"]), "torchrun")
    # SLURM_NTASKS is also set in a batch script's own shell, which is one process: trust it inside a step only.
    if "SLURM_STEP_ID" in env and int(env.get("SLURM_NTASKS", 1)) > 1:
        return DistInfo(int(env["SLURM_PROCID"]), int(env.get("SLURM_LOCALID", 0)), int(env["SLURM_NTASKS"]), "slurm")
    return DistInfo()


def init(device: torch.device) -> tuple[DistInfo, torch.device]:
    """Join the process group if this is one of several ranks; return the info and this rank's device."""
    info = detect()
    if not info.enabled:
        return info, device
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        if info.source == "slurm":
            os.environ.setdefault("MASTER_ADDR", _first_slurm_host())
            os.environ.setdefault("MASTER_PORT", str(20000 + int(os.environ.get("SLURM_JOB_ID", 0)) % 20000))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=info.rank, world_size=info.world_size)
    return info, device


def _first_slurm_host() -> str:
    from submitit.slurm.slurm import _parse_node_list  # submitit's parser of SLURM's compact node lists

    nodes = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST") or "127.0.0.1"
    return _parse_node_list(nodes)[0]


def rank_slice(batch: list, info: DistInfo, m_per_class: int) -> list:
    """This rank's contiguous slice of a global batch (whole runs of ``m_per_class`` images of one class)."""
    if not info.enabled:
        return batch
    per_rank = len(batch) // info.world_size
    if len(batch) % info.world_size or per_rank % m_per_class:
        raise ValueError(
            f"train.batch_size={len(batch)} must be a multiple of world size ({info.world_size}) x "
            f"train.m_per_class ({m_per_class}) to split batches across {info.world_size} processes."
        )
    return batch[info.rank * per_rank : (info.rank + 1) * per_rank]


def shard_indices(n: int, info: DistInfo) -> np.ndarray:
    """The dataset positions this rank embeds for evaluation."""
    return np.arange(info.rank, n, info.world_size) if info.enabled else np.arange(n)


def gather_in_order(part: np.ndarray, indices: np.ndarray, n: int, info: DistInfo) -> np.ndarray:
    """Every rank's rows, placed back at their dataset positions (the same array on every rank)."""
    if not info.enabled:
        return part
    pieces: list[Any] = [None] * info.world_size
    dist.all_gather_object(pieces, (indices, part))
    out = np.empty((n, *part.shape[1:]), dtype=part.dtype)
    for idx, rows in pieces:
        out[idx] = rows
    return out


def any_rank(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True on every rank if it is true on any (so all ranks stop at the same step)."""
    if not info.enabled:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


class TrainStep(torch.nn.Module):
    """Encoder and method as one module whose forward is the method's training step (what DDP wraps)."""

    def __init__(self, encoder: torch.nn.Module, method: torch.nn.Module) -> None:
        super().__init__()
        self.encoder, self.method = encoder, method

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
        return self.method.training_step(images, labels, self.encoder)


def wrap(encoder: torch.nn.Module, method: torch.nn.Module, info: DistInfo, device: torch.device):
    """The callable the training loop steps: DDP over encoder + method when distributed, else the plain step."""
    step = TrainStep(encoder, method)
    if not info.enabled or not any(p.requires_grad for p in step.parameters()):
        return step
    return torch.nn.parallel.DistributedDataParallel(
        step,
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=True,  # frozen-backbone warm-up epochs and losses that skip parameters
    )


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


class NoRecord:
    """Stands in for the record writer on ranks other than 0 (they write nothing)."""

    def write(self, *args: Any, **kwargs: Any) -> None:
        return None

    def append_history(self, *args: Any, **kwargs: Any) -> None:
        return None
