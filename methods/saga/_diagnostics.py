"""SAGA's run diagnostics: run-level totals of the step statistics, and the loss balance made visible (each
term's gradient norm on each parameter group, Eq. 8's three terms).

The balance is hand-written (no library splits a backward pass by loss term): SAGA back-propagates its terms in
parts, one term after another, and :class:`TermGradTracker` reads what each term added to ``.grad`` (no graph is
retained for it). Norms are of ``lambda_term * L_term`` (what each term adds to the update) before gradient clipping.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any

import torch
from torch import nn


class TermGradTracker:
    """Each term's gradient norm on each parameter group, read off a step that back-propagates its terms in turn.

    The step back-propagates its parts term after term (every DML part, then GRPO, then KL), so each term's gradient
    is what ``.grad`` gained between two :meth:`mark` calls; one snapshot of the groups' gradients is kept between
    marks (no graph is retained). ``scale`` undoes the engine's ``1 / grad_accum``, so a norm is of ``lambda * L``.
    """

    def __init__(self, groups: dict[str, list[nn.Parameter]], scale: float = 1.0) -> None:
        self.groups = {g: [p for p in params if p.requires_grad] for g, params in groups.items()}
        self.scale = float(scale)
        self.snapshot = self._grads()
        self.by_term: dict[str, dict[str, float]] = {}

    def _grads(self) -> dict[int, torch.Tensor | None]:
        return {
            id(p): (p.grad.detach().clone() if p.grad is not None else None) for ps in self.groups.values() for p in ps
        }

    def mark(self, term: str) -> None:
        """Everything ``.grad`` gained since the last mark belongs to ``term``."""
        norms = {}
        for group, params in self.groups.items():
            sq = []
            for p in params:
                before = self.snapshot[id(p)]
                if p.grad is not None:
                    delta = p.grad.detach() if before is None else p.grad.detach() - before
                    sq.append(delta.float().pow(2).sum())
            norms[group] = float(torch.stack(sq).sum().sqrt()) * self.scale if sq else 0.0
        self.by_term[term] = norms
        self.snapshot = self._grads()

    def norms(self) -> dict[str, dict[str, float]]:
        """``{term: {group: ||d (lambda term) / d group||_2}}``; a term that reached no group of them gives 0."""
        self.snapshot = {}
        return dict(self.by_term)


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
            "log_ratio_mean": t["log_ratio_sum"] / max(t["log_ratio_tokens"], 1),  # its mean over replayed tokens
            "pairs_rolled_out": t["pairs_rolled_out"],  # decoded, offered or not (the batch decodes all P at once)
            "gen_tokens": t["gen_tokens"],  # generated tokens over the run (the cost of the rollouts)
        }
