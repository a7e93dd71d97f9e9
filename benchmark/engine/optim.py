"""The optimiser the engine builds: AdamW over the encoder's groups and the method's own parameter groups.

A method's :class:`~benchmark.method.ParamGroup` brings its paper's learning rate (a multiplier of the base rate, or
an absolute rate), weight decay and, where the official recipe needs it, Adam's epsilon; each becomes a torch
optimiser group with those values (torch's AdamW takes ``lr``, ``weight_decay`` and ``eps`` per group), and the run
record stores them with their source.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from benchmark.method import ParamGroup


def method_optimizer_groups(
    groups: list[ParamGroup], base_lr: float
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A method's parameter groups as torch optimiser groups, and what the run record stores of each.

    An absolute rate from the paper (``group.lr``) replaces ``lr_mult x base_lr``; the engine's schedule factor still
    applies to either. ``weight_decay`` and ``eps`` left at None take the optimiser's defaults.
    """
    optimizer_groups, records = [], []
    for group in groups:
        lr = float(group.lr) if group.lr is not None else base_lr * group.lr_mult
        optimizer_groups.append(
            {
                "name": group.name,
                "params": group.params,
                "lr_mult": group.lr_mult,
                "lr": lr,
                **({"weight_decay": group.weight_decay} if group.weight_decay is not None else {}),
                **({"eps": float(group.eps)} if group.eps is not None else {}),
            }
        )
        records.append(
            {
                "name": group.name,
                "lr_mult": group.lr_mult,
                "source": group.source,
                "weight_decay": group.weight_decay,
                "absolute_lr": group.lr,
                "lr": lr,
                "eps": group.eps,  # None: AdamW's default eps (1e-8)
            }
        )
    return optimizer_groups, records


def create_optimizer(groups: list[dict[str, Any]], base_lr: float, weight_decay: float) -> torch.optim.AdamW:
    """The engine's AdamW over the non-empty ``groups`` (each may set its own lr, weight_decay and eps)."""
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=base_lr, weight_decay=weight_decay)


def engine_optimizer_groups(encoder: Any, method: Any, lr: float) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The optimiser groups of a run (the backbone, the embedding head, the method's own) and the record's view of
    the method's groups; a method parameter outside its ``param_groups()`` is refused."""
    from benchmark.engine.control import TrainingError

    groups: list[dict[str, Any]] = [{"name": "backbone", "params": encoder.backbone_parameters(), "lr_mult": 1.0}]
    if encoder.head_parameters():
        groups.append({"name": "embedding_head", "params": encoder.head_parameters(), "lr_mult": 1.0})
    method_groups, info = method_optimizer_groups(method.param_groups(), lr)
    groups += method_groups
    owned = {id(p) for g in groups for p in g["params"]}
    missed = [n for n, p in method.named_parameters() if p.requires_grad and id(p) not in owned]
    if missed:
        raise TrainingError(
            f"Method '{method.name}' has trainable parameters outside its param_groups(): {missed[:5]}. "
            "Return them from param_groups()."
        )
    for g in groups:
        g.setdefault("lr", lr * g["lr_mult"])
    return groups, info


def create_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int, min_lr_ratio: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up then cosine decay to ``min_lr_ratio``, per optimiser step.

    Hand-written factor: torch's CosineAnnealingLR takes an absolute floor, which would not respect the per-group
    learning-rate multipliers.
    """
    total = max(1, total_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
