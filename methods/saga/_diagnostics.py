"""SAGA's run diagnostics: run-level totals of the step statistics, and the loss balance made visible (each
term's gradient norm on each parameter group, Eq. 8's three terms).

The balance is hand-written (no library splits one backward pass by loss term): ``torch.autograd.grad`` of each
weighted term on the trainable parameters, with the graph retained, so the step's own backward (by the engine) is
unchanged. Norms are of ``lambda_term * L_term`` (what each term adds to the update) before gradient clipping.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any

import torch
from torch import nn


def term_grad_norms(
    terms: dict[str, torch.Tensor | float], groups: dict[str, list[nn.Parameter]]
) -> dict[str, dict[str, float]]:
    """``{term: {group: ||d term / d group||_2}}``; a term without a graph, or a group it does not reach, gives 0."""
    named = {g: [p for p in params if p.requires_grad] for g, params in groups.items()}
    flat = [p for params in named.values() for p in params]
    out: dict[str, dict[str, float]] = {}
    for term, loss in terms.items():
        if not (torch.is_tensor(loss) and loss.requires_grad) or not flat:
            out[term] = dict.fromkeys(named, 0.0)
            continue
        grads = torch.autograd.grad(loss, flat, retain_graph=True, allow_unused=True)
        by_param = {id(p): g for p, g in zip(flat, grads, strict=True)}
        out[term] = {}
        for group, params in named.items():
            sq = [by_param[id(p)].detach().float().pow(2).sum() for p in params if by_param[id(p)] is not None]
            out[term][group] = float(torch.stack(sq).sum().sqrt()) if sq else 0.0
    return out


class GradNormLog:
    """Per-(term, group) norms over the measured steps; the record gets their medians (robust to a spiky step)."""

    def __init__(self) -> None:
        self.values: dict[str, list[float]] = defaultdict(list)
        self.steps = 0

    def add(self, norms: dict[str, dict[str, float]]) -> None:
        self.steps += 1
        for term, by_group in norms.items():
            for group, value in by_group.items():
                self.values[f"{term}_{group}"].append(value)

    def summary(self) -> dict[str, float]:
        """``grad_norm_<term>_<group>``: the median over measured steps, and ``grad_norm_steps``, their number."""
        out = {f"grad_norm_{key}": statistics.median(v) for key, v in sorted(self.values.items())}
        return out | {"grad_norm_steps": float(self.steps)}


class RunTotals:
    """Sums of SAGA's step statistics over the run, for the record's run-level means."""

    def __init__(self) -> None:
        self.t: dict[str, float] = defaultdict(float)

    @property
    def steps(self) -> int:
        return int(self.t["steps"])

    def add(self, out: dict[str, Any], stats: dict[str, float], buffer: Any) -> None:
        t = self.t
        t["steps"] += 1
        for key in ("loss_dml", "loss_grpo", "loss_kl"):
            t[key] += out[key]
        t["refills"] += out["micro_batches"] - 1
        t["pairs_offered"] += buffer.offered
        t["pairs_contributing"] += len(buffer.groups)
        t["pairs_skipped_all_correct"] += buffer.skipped_all_correct
        t["pairs_skipped_all_wrong"] += buffer.skipped_all_wrong
        for key, value in stats.items():
            t[key] = max(t[key], value) if key == "log_ratio_max" else t[key] + value

    def means(self) -> dict[str, float]:
        """Reward, contributing fraction, refill rate, parse failures, tokens/s and each loss, per step or rollout."""
        t = self.t
        steps, rollouts = max(t["steps"], 1), max(t["rollouts"], 1)
        return {
            "steps": t["steps"],
            "loss_dml_mean": t["loss_dml"] / steps,
            "loss_grpo_mean": t["loss_grpo"] / steps,
            "loss_kl_mean": t["loss_kl"] / steps,
            "reward_mean": t["reward_sum"] / rollouts,
            "contributing_fraction": t["pairs_contributing"] / max(t["pairs_offered"], 1),
            "refills_per_step": t["refills"] / steps,
            "parse_failure_rate": t["parse_failures"] / rollouts,
            "gen_tokens_per_s": t["gen_tokens"] / max(t["gen_seconds"], 1e-9),
            "pairs_skipped_all_correct": t["pairs_skipped_all_correct"],
            "pairs_skipped_all_wrong": t["pairs_skipped_all_wrong"],
            "kl_rollouts": t["kl_rollouts"],
            "kl_missing_spans": t["kl_missing_spans"],
            "log_ratio_max": t["log_ratio_max"],  # on-policy check: largest |replay - decoding log-prob|
        }
