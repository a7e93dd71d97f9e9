"""SAGA's reward, advantage and policy-loss maths as small pure functions (SAGA Sec. 3.2, Eqs. 3–5; Algorithm 1).

Hand-written: the maths follows TRL's GRPO (group-normalised advantages, token-level normalisation), whose trainer
cannot be reused because its policy is the LLM while SAGA's policy parameters are the vision encoder's.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import torch

_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)
PARSE_FAILURES = ("empty", "truncated", "no_json", "malformed_json", "not_object", "missing_key", "bad_value")


def parse_verdict(text: str, verdict_key: str, truncated: bool = False) -> tuple[bool | None, str | None]:
    """The yes/no verdict in a JSON answer: ``(True|False, None)`` or ``(None, failure_reason)``.

    Tolerates code fences and text around the JSON object (SAGA §7 item 8, ours); a completion cut at the token
    limit is a failure (``truncated``) even if an object parses, as are malformed JSON, a missing key and any value
    other than "yes"/"no" (case and surrounding spaces ignored). Failures get reward 0 (Eq. 3).
    """
    if truncated:
        return None, "truncated"
    if not text or not text.strip():
        return None, "empty"
    obj, failure = _first_object(text)
    if failure is not None:
        return None, failure
    if verdict_key not in obj:
        return None, "missing_key"
    value = obj[verdict_key]
    answer = value.strip().lower() if isinstance(value, str) else None
    if answer == "yes":
        return True, None
    if answer == "no":
        return False, None
    return None, "bad_value"


def _first_object(text: str) -> tuple[dict[str, Any] | None, str | None]:
    """The first JSON object in ``text`` (inside a code fence if there is one; text after it ignored) and ``None``,
    or ``None`` and why not: ``no_json``, ``malformed_json`` or ``not_object``."""
    fenced = _FENCE.search(text)
    body = fenced.group(1) if fenced else text
    start = body.find("{")
    if start < 0:
        return None, "no_json"
    try:
        obj, _ = json.JSONDecoder().raw_decode(body[start:])
    except json.JSONDecodeError:
        return None, "malformed_json"
    return (obj, None) if isinstance(obj, dict) else (None, "not_object")


def answer_object(text: str) -> dict[str, Any] | None:
    """The answer's first JSON object, read as :func:`parse_verdict` reads it (fences and surrounding text ignored),
    or ``None`` when there is none."""
    return _first_object(text or "")[0]


def described_verdict(obj: dict[str, Any] | None, item: str, attributes: list[str]) -> bool | None:
    """The verdict the answer's own two descriptions imply: same class iff ``{item}_1`` and ``{item}_2`` give every
    attribute and give it the same value; ``None`` when either description is missing an attribute (the rule
    judge of the attributes world, and the card's check that a verdict follows its descriptions)."""
    if obj is None:
        return None
    first, second = obj.get(f"{item}_1"), obj.get(f"{item}_2")
    if not isinstance(first, dict) or not isinstance(second, dict):
        return None
    if any(not isinstance(d.get(a), str) for d in (first, second) for a in attributes):
        return None
    return all(first[a].strip().lower() == second[a].strip().lower() for a in attributes)


def verdict_reward(text: str, verdict_key: str, same_class: bool, truncated: bool = False) -> tuple[float, str | None]:
    """Binary reward of Eq. 3: 1 if the parsed verdict equals ``same_class``, else 0 (parse failures included)."""
    verdict, failure = parse_verdict(text, verdict_key, truncated)
    return (1.0 if verdict is not None and verdict == same_class else 0.0), failure


def group_advantages(rewards: torch.Tensor, eps: float = 1e-6, unbiased: bool = True) -> torch.Tensor:
    """Group-normalised advantages ``(r - mean) / (std + eps)`` over the last dimension (one group of G rollouts).

    The paper states neither the std convention nor eps; SAGA §7 item 12 (ours): unbiased (n-1) std, eps = 1e-6,
    which reproduces the paper's figure example (G = 8, 5 correct: +0.72 / -1.21 against the printed +0.71 / -1.22).
    """
    rewards = rewards.float()
    std = rewards.std(dim=-1, unbiased=unbiased, keepdim=True) if rewards.shape[-1] > 1 else torch.zeros_like(rewards)
    return (rewards - rewards.mean(dim=-1, keepdim=True)) / (std + eps)


def grpo_loss(
    logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, num_tokens: int | float | None = None
) -> torch.Tensor:
    """Token-level-normalised GRPO loss with ratio 1, no clipping and no reference KL (Eq. 5).

    ``logprobs`` G×T (log π of the sampled tokens), ``advantages`` G, ``mask`` G×T (1 on generated tokens).
    ``num_tokens`` is |T|, the token count of the whole buffer (Algorithm 1: "token-level normalization across the
    buffer"), so per-pair calls sum to the buffer loss; by default the tokens of this call.
    """
    mask = mask.to(logprobs.dtype)
    total = mask.sum() if num_tokens is None else torch.as_tensor(float(num_tokens), device=logprobs.device)
    weighted = advantages.to(logprobs.dtype)[:, None] * logprobs * mask
    return -weighted.sum() / total.clamp(min=1.0)


@dataclass
class PairGroup:
    """One pair's G rollouts: the token ids, rewards, advantages and whatever the replay needs (``payload``)."""

    rewards: torch.Tensor  # G
    same_class: bool
    payload: Any = None
    advantages: torch.Tensor | None = None

    @property
    def contributes(self) -> bool:
        return bool(self.rewards.numel() > 1 and self.rewards.std() > 0)


@dataclass
class DynamicSamplingBuffer:
    """DAPO dynamic sampling (Yu et al., 2025; SAGA Algorithm 1 Phase B): keep pairs whose rewards vary.

    Pairs with zero reward variance (all correct or all wrong) carry no GRPO or KL gradient and are skipped;
    drawing continues until ``capacity`` (K = 8 in the paper) contributing pairs are buffered.
    """

    capacity: int = 8
    eps: float = 1e-6
    unbiased: bool = True
    groups: list[PairGroup] = field(default_factory=list)
    offered: int = 0
    skipped_all_correct: int = 0
    skipped_all_wrong: int = 0

    @property
    def full(self) -> bool:
        return len(self.groups) >= self.capacity

    def offer(self, group: PairGroup) -> bool:
        """Add ``group`` if it contributes (and the buffer is not full); returns whether it was kept."""
        if self.full:
            raise RuntimeError("DynamicSamplingBuffer is full; check .full before drawing more pairs.")
        self.offered += 1
        if not group.contributes:
            if bool((group.rewards > 0).all()):
                self.skipped_all_correct += 1
            else:
                self.skipped_all_wrong += 1
            return False
        group.advantages = group_advantages(group.rewards, self.eps, self.unbiased)
        self.groups.append(group)
        return True

    @property
    def contributing_fraction(self) -> float:
        return len(self.groups) / self.offered if self.offered else 0.0


def balanced_pairs(labels: Any, count: int, rng: Any) -> list[tuple[int, int, bool]]:
    """``count`` candidate pairs ``(i, j, same_class)`` from one micro-batch, alternating same- and different-class
    (random start), each pair's order random (SAGA §4.1 "balanced same/different-class pairs"; §7 item 6, ours)."""
    import numpy as np

    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    multi = classes[counts >= 2]
    pairs: list[tuple[int, int, bool]] = []
    start_same = bool(rng.random() < 0.5)
    for k in range(count):
        want_same = (k % 2 == 0) == start_same
        if (want_same and len(multi)) or len(classes) < 2:
            if not len(multi):
                break
            members = np.flatnonzero(labels == rng.choice(multi))
            i, j = rng.choice(members, 2, replace=False)
        else:
            ca, cb = rng.choice(classes, 2, replace=False)
            i, j = rng.choice(np.flatnonzero(labels == ca)), rng.choice(np.flatnonzero(labels == cb))
        pairs.append((int(i), int(j), bool(labels[i] == labels[j])))
    return pairs
