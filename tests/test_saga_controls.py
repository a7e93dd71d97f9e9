"""SAGA's two controls of the attributes world: advantages shuffled across the buffer (the same values, no information)
and the rule judge (the reward computed by code from the answer's own two descriptions, GRPO on those tokens only)."""

from __future__ import annotations

import json

import pytest
import torch

from benchmark.backbones import mllm
from methods.saga._grpo import answer_object, described_verdict
from methods.saga._rollout import Rollouts
from tests._saga_common import CARD, _batch, _encoder, _method, one_thread  # noqa: F401  (fixture)


def _capture(method):
    seen = {}
    policy_terms = method._policy_terms

    def capture(sup, buffer, batches, *args):
        seen["before"] = [g.advantages.clone() for g in buffer.groups]
        seen["rewards"] = [g.rewards.clone() for g in buffer.groups]
        out = policy_terms(sup, buffer, batches, *args)
        seen["after"] = [g.advantages.clone() for g in buffer.groups]
        seen["groups"] = list(buffer.groups)
        return out

    method._policy_terms = capture
    return seen


def test_shuffled_advantages_keep_the_buffers_values_and_lose_which_answer_earned_them():
    torch.manual_seed(0)
    enc = _encoder()
    method = _method(enc, advantages="shuffled", num_pairs=3, pairs_per_batch=2, max_refill_batches=4)
    extra = iter([_batch(k) for k in range(1, 6)])
    method.next_batch = lambda: next(extra)
    seen = _capture(method)
    out = method.training_step(*_batch(), enc)
    assert out["pairs_contributing"] >= 2 and out["loss_grpo"] != 0
    before, after = torch.cat(seen["before"]), torch.cat(seen["after"])
    assert torch.equal(before.sort().values, after.sort().values)  # the same values: the same gradient scale
    assert not torch.equal(before, after)  # ... at other answers
    # each group's own advantages follow its rewards (Eq. 4); after the shuffle at least one group's do not
    follows = [bool(((a > 0) == (r > r.mean())).all()) for a, r in zip(seen["after"], seen["rewards"], strict=True)]
    assert not all(follows)


def test_group_advantages_are_left_alone_by_default():
    torch.manual_seed(0)
    enc = _encoder()
    method = _method(enc, num_pairs=2, pairs_per_batch=2, max_refill_batches=4)
    extra = iter([_batch(k) for k in range(1, 6)])
    method.next_batch = lambda: next(extra)
    seen = _capture(method)
    method.training_step(*_batch(), enc)
    assert all(torch.equal(a, b) for a, b in zip(seen["before"], seen["after"], strict=True))


def test_described_verdict_is_the_comparison_of_the_two_descriptions():
    attrs = ["color", "shape"]
    same = {"shape_1": {"color": "red", "shape": "round"}, "shape_2": {"color": " Red", "shape": "round"}}
    assert described_verdict(same, "shape", attrs) is True
    differ = dict(same, shape_2={"color": "red", "shape": "square"}, same_class="yes")
    assert described_verdict(differ, "shape", attrs) is False  # the written verdict is not read
    assert described_verdict({"shape_1": {"color": "red"}, "shape_2": {"color": "red"}}, "shape", attrs) is None
    assert described_verdict(None, "shape", attrs) is None
    text = "sure: ```json\n" + json.dumps(differ) + "\n``` done"
    assert answer_object(text) == differ and answer_object("no json here") is None


def test_rule_judge_rewards_the_descriptions_and_masks_the_verdict_out_of_grpo():
    torch.manual_seed(0)
    enc = _encoder()
    method = _method(enc, reward="descriptions")
    sup = mllm.load_supervisor(mllm.TINY_NAME)
    answer = {"shape_1": {"color": "red", "shape": "round"}, "shape_2": {"color": "red", "shape": "square"},
              "differences": "shape", "same_class": "yes"}  # fmt: skip
    ids = sup.tokenizer(json.dumps(answer), add_special_tokens=False)["input_ids"] + [sup.eos_token_ids[0]]
    row = torch.tensor([ids])
    ro = Rollouts(row, torch.ones_like(row, dtype=torch.bool), torch.zeros(row.shape), [False], 0.0, 0.0)
    masked = method._descriptions_only(sup, ro)
    kept = masked.policy_mask[0].sum()
    assert 0 < kept < ro.mask[0].sum() and bool(ro.mask.all())  # the replay still sees every token
    text = sup.tokenizer.decode(ids[:kept])
    assert '"square"}' in text and "differences" not in text and "same_class" not in text
    # a whole step under the rule judge: it trains, and GRPO sums over fewer tokens than were generated
    seen = _capture(method)
    out = method.training_step(*_batch(), enc)
    assert out["pairs_rolled_out"] >= 1
    for group in seen.get("groups", []):
        r = group.payload["rollouts"]
        assert r.policy_mask is not None and int(r.policy_mask.sum()) <= int(r.mask.sum())


@pytest.mark.parametrize("key, value", [("reward", "votes"), ("advantages", "random")])
def test_unknown_control_names_are_refused(key, value):
    with pytest.raises(ValueError, match="method.reward must be verdict or descriptions"):
        _method(_encoder(), **{key: value})


def test_the_controls_do_not_change_the_hash_of_runs_without_them():
    from benchmark.config import compose_config, config_hash

    base = compose_config(["method=saga", "dataset=attributes"])
    explicit = compose_config(["method=saga", "dataset=attributes", "method.reward=verdict", "method.advantages=group"])
    shuffled = compose_config(["method=saga", "dataset=attributes", "method.advantages=shuffled"])
    assert config_hash(base) == config_hash(explicit) != config_hash(shuffled)
    assert CARD["attributes"]  # the toy card the method tests use has attributes to describe
