"""SAGA's pure maths on hand-computed cases: advantages, token normalisation, dynamic sampling, the verdict parser,
pairs, prompts and attribute spans."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from benchmark.backbones import mllm
from methods.saga._grpo import (
    DynamicSamplingBuffer,
    PairGroup,
    balanced_pairs,
    group_advantages,
    grpo_loss,
    parse_verdict,
    verdict_reward,
)
from methods.saga._prompt import PromptCardError, answer_skeleton, build_prompt
from methods.saga._spans import attribute_token_spans, token_offsets
from tests._saga_common import CARD


def test_group_advantages_match_hand_computation():
    rewards = torch.tensor([1.0, 1, 1, 1, 1, 0, 0, 0])  # the paper's figure: G = 8, 5 correct
    adv = group_advantages(rewards)
    std = math.sqrt(0.625 * 0.375 * 8 / 7)  # unbiased
    assert adv[0].item() == pytest.approx(0.375 / (std + 1e-6), abs=1e-6)
    assert adv[0].item() == pytest.approx(0.72, abs=0.01) and adv[-1].item() == pytest.approx(-1.21, abs=0.01)
    biased = group_advantages(rewards, unbiased=False)
    assert biased[0].item() == pytest.approx(0.375 / math.sqrt(0.625 * 0.375), abs=1e-5)
    assert torch.equal(group_advantages(torch.ones(4)), torch.zeros(4))


def test_grpo_loss_is_token_normalised_across_the_buffer():
    logprobs = torch.tensor([[-1.0, -2.0, -9.0], [-0.5, -9.0, -9.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    adv = torch.tensor([1.0, -1.0])
    # -(1·(-1-2) + (-1)·(-0.5)) / 3 tokens = 2.5 / 3; padded positions (-9) must not count
    assert grpo_loss(logprobs, adv, mask).item() == pytest.approx(2.5 / 3)
    assert grpo_loss(logprobs, adv, mask, num_tokens=6).item() == pytest.approx(2.5 / 6)
    # two pairs normalised by the buffer's token count sum to the loss of the whole buffer
    lp2, m2, a2 = torch.tensor([[-3.0, -1.0]]), torch.tensor([[1, 1]]), torch.tensor([2.0])
    total = int(mask.sum() + m2.sum())
    split = grpo_loss(logprobs, adv, mask, total) + grpo_loss(lp2, a2, m2, total)
    whole = -(-3 + 0.5 + 2 * (-4)) / 5
    assert split.item() == pytest.approx(whole)


def test_dynamic_sampling_skips_zero_variance_pairs_and_counts():
    buf = DynamicSamplingBuffer(capacity=2)
    assert not buf.offer(PairGroup(torch.ones(4), True))  # all correct
    assert not buf.offer(PairGroup(torch.zeros(4), False))  # all wrong
    assert buf.offer(PairGroup(torch.tensor([1.0, 0, 1, 0]), True))
    assert not buf.full
    assert buf.offer(PairGroup(torch.tensor([0.0, 0, 0, 1]), False))
    assert buf.full and buf.offered == 4 and buf.contributing_fraction == 0.5
    assert (buf.skipped_all_correct, buf.skipped_all_wrong) == (1, 1)
    assert torch.allclose(buf.groups[0].advantages, group_advantages(torch.tensor([1.0, 0, 1, 0])))
    with pytest.raises(RuntimeError, match="full"):
        buf.offer(PairGroup(torch.tensor([1.0, 0]), True))


@pytest.mark.parametrize(
    "text, truncated, expected",
    [
        ('{"same_class": "yes"}', False, (True, None)),
        ('```json\n{"a": {"b": "c"}, "same_class": " No "}\n```', False, (False, None)),
        ('Sure! Here it is: {"same_class": "yes"} Hope this helps.', False, (True, None)),
        ('{"same_class": "yes"}', True, (None, "truncated")),
        ('{"same_class": "yes",}', False, (None, "malformed_json")),
        ('{"differences": "bill", "same_class": "ye', False, (None, "malformed_json")),
        ('{"differences": "bill"}', False, (None, "missing_key")),
        ('{"same_class": "maybe"}', False, (None, "bad_value")),
        ('{"same_class": true}', False, (None, "bad_value")),
        ("yes", False, (None, "no_json")),
        ("   ", False, (None, "empty")),
    ],
)
def test_parse_verdict_on_malformed_outputs(text, truncated, expected):
    assert parse_verdict(text, "same_class", truncated) == expected


def test_verdict_reward_compares_with_the_ground_truth():
    assert verdict_reward('{"k": "no"}', "k", same_class=False) == (1.0, None)
    assert verdict_reward('{"k": "no"}', "k", same_class=True) == (0.0, None)
    assert verdict_reward("garbage", "k", same_class=True) == (0.0, "no_json")


def test_balanced_pairs_alternate_same_and_different():
    labels = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    pairs = balanced_pairs(labels, 8, np.random.default_rng(0))
    assert len(pairs) == 8
    assert [p[2] for p in pairs[::2]] != [p[2] for p in pairs[1::2]]  # alternating flags
    assert sum(p[2] for p in pairs) == 4
    for i, j, same in pairs:
        assert i != j and same == (labels[i] == labels[j])


def test_prompts_and_their_errors():
    text = build_prompt(CARD)
    assert "distinguish between shapes: color, shape" in text
    assert '"shape_1": {' in text and '"same_class": "yes" or "no"' in text and '(e.g. "red, round")' in text
    generic = build_prompt(CARD, generic=True)
    assert "color, shape" not in generic and '"same_class": "yes" or "no"' in generic
    with pytest.raises(PromptCardError, match="verdict_key"):
        build_prompt({"name": "x", "attributes": ["a"], "prompt": {"item": "bird"}})
    with pytest.raises(PromptCardError, match="attributes"):
        build_prompt({"name": "x", "prompt": CARD["prompt"]})
    literal = "".join(v if k == "text" else "v" for k, v in answer_skeleton(CARD))
    assert json.loads(literal)["shape_2"] == {"color": "v", "shape": "v"}


def test_attribute_token_spans_locate_each_images_values():
    text = (
        '{"shape_1": {"color": "red", "shape": "round"}, "shape_2": {"color": "blue"}, '
        '"differences": "color", "same_class": "no"}'
    )
    offsets = [(i, i + 1) for i in range(len(text))]  # one token per character
    first, second = attribute_token_spans(text, offsets, "shape")
    assert "".join(text[i] for i in first) == "redround"
    assert "".join(text[i] for i in second) == "blue"
    keys, _ = attribute_token_spans(text, offsets, "shape", include_keys=True)
    assert "".join(text[i] for i in keys) == "colorredshaperound"
    cut = text[: text.index("blue") + 2]  # truncated inside image 2's object
    assert "".join(cut[i] for i in attribute_token_spans(cut, offsets[: len(cut)], "shape")[1]) == "bl"
    tok = mllm.build_tiny_tokenizer()
    joined, offs = token_offsets(tok, tok.encode(text))
    assert joined == text and offs[-1][1] == len(text)
    a, b = attribute_token_spans(joined, offs, "shape")
    assert "red" in "".join(joined[slice(*offs[i])] for i in a) and "blue" in "".join(
        joined[slice(*offs[i])] for i in b
    )
