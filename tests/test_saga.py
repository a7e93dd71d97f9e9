"""SAGA: pure maths on hand-computed cases, and the tiny Qwen3-VL end to end (gradients, frozen LM, attention)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from benchmark.backbones import mllm
from benchmark.encoder import Encoder
from benchmark.method import TaskInfo
from benchmark.registry import get_method
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
from methods.saga._rollout import Rollouts, build_prefix, replay, sample_rollouts, teacher_layer_index
from methods.saga._spans import attribute_token_spans, token_offsets

CARD = {
    "name": "toy",
    "attributes": ["color", "shape"],
    "prompt": {
        "expert_noun": "expert",
        "what_to_identify": "toy shapes",
        "expert_prefix": "Toy",
        "target_plural": "shapes",
        "item": "shape",
        "ITEM": "Shape",
        "item_plural": "shapes",
        "example_description": "red, round",
        "verdict_label": "Same Class",
        "verdict_question": "same class",
        "verdict_key": "same_class",
    },
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny matrices: one thread avoids oversubscription on shared 2-core machines (10-50× faster here).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------------ pure maths


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


# -------------------------------------------------------------------------------------------- tiny Qwen3-VL


def _encoder(name: str = mllm.TINY_NAME) -> Encoder:
    cfg = {"kind": "mllm_vision", "name": name, "pooling": "mean", "embedding_dim": 0, "freeze_bn": False}
    return Encoder(OmegaConf.create({**cfg, "pretrained": False, "checkpoint": None}))


def _method(encoder: Encoder, **overrides):
    cls = get_method("saga")
    base = dict(metric_loss="potential_field", embedding_dim=32, group_size=4, num_pairs=1, pairs_per_batch=2)
    base |= dict(max_new_tokens=160, rollout_constraint="json_skeleton", max_refill_batches=2)
    cfg = OmegaConf.structured(cls.config_class(**(base | overrides)))
    return cls(cfg, TaskInfo(num_classes=4, embedding_dim=encoder.embedding_dim, dataset="toy", card=CARD))


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(8, 3, 224, 224, generator=g), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])


def test_patchify_matches_the_hf_image_processor():
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor

    tower = _encoder().backbone
    proc = Qwen2VLImageProcessor(
        patch_size=16, merge_size=2, temporal_patch_size=2, size=mllm.PROCESSOR_SIZE, image_mean=[0.5] * 3,
        image_std=[0.5] * 3,
    )  # fmt: skip
    img = (torch.rand(3, 224, 224, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    ref = proc(images=[img], return_tensors="pt")
    mine, grid = tower.patchify(((img.float() / 255 - 0.5) / 0.5)[None])
    assert torch.equal(grid, ref["image_grid_thw"]) and grid.tolist() == [[1, 14, 14]]
    assert torch.allclose(mine, ref["pixel_values"], atol=1e-5)
    assert tower(torch.zeros(2, 3, 224, 224)).shape == (2, 49, 64)  # 49 tokens per image at 224²


def test_language_model_is_outside_the_encoder_and_method():
    enc = _encoder()
    method = _method(enc)
    sup = mllm.load_supervisor(mllm.TINY_NAME)
    assert mllm.load_supervisor(mllm.TINY_NAME) is sup  # loaded once, shared
    lm_ids = {id(p) for p in sup.model.model.language_model.parameters()}
    owned = list(enc.parameters()) + list(method.parameters())
    assert not lm_ids & {id(p) for p in owned}
    keys = list(enc.state_dict()) + list(method.state_dict())
    assert not any("language_model" in k or "lm_head" in k for k in keys)
    assert all(not p.requires_grad for p in sup.model.parameters()) and not sup.model.training


@pytest.mark.parametrize("name", ["tiny-qwen3-vl", "tiny-internvl"])
def test_training_step_gradients_and_frozen_language_model(name):
    enc = _encoder(name)
    method = _method(enc)
    images, labels = _batch()
    method.next_batch = lambda: _batch(1)
    sup = mllm.load_supervisor(name)
    lm_before = {k: v.clone() for k, v in sup.model.state_dict().items()}
    groups = [{"params": enc.backbone_parameters()}] + [
        {"params": g.params, "lr": 2e-5 * g.lr_mult} for g in method.param_groups()
    ]
    opt = torch.optim.AdamW(groups, lr=2e-5)
    out = method.training_step(images, labels, enc)
    assert out["pairs_contributing"] == 1 and out["loss_grpo"] != 0 and out["kl_rollouts"] >= 1
    out["loss"].backward()
    tower = dict(enc.backbone.named_parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in tower.values()), "vision tower grads"
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.pooler.parameters()), "pooler grads"
    assert all(p.grad is None for p in sup.model.parameters())
    opt.step()
    after = sup.model.state_dict()
    assert all(torch.equal(lm_before[k], after[k]) for k in lm_before)  # bit-identical
    diag = method.diagnostics()
    for key in ("reward_mean", "contributing_fraction", "refills_per_step", "parse_failure_rate", "gen_tokens_per_s"):
        assert key in diag and math.isfinite(diag[key])
    assert diag["loss_grpo_mean"] == out["loss_grpo"]


def test_grpo_reaches_only_the_tower_and_kl_only_the_pooler():
    enc = _encoder()
    images, labels = _batch()
    grpo_only = _method(enc, use_kl=False, lambda_dml=0.0)
    grpo_only.training_step(images, labels, enc)["loss"].backward()
    deepstack = enc.backbone.visual.deepstack_merger_list[0].linear_fc1.weight
    assert deepstack.grad is not None and deepstack.grad.abs().sum() > 0  # only the LM consumes DeepStack features
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in grpo_only.pooler.parameters())
    enc.zero_grad(set_to_none=True)
    kl_only = _method(enc, use_grpo=False, lambda_dml=0.0)
    out = kl_only.training_step(images, labels, enc)
    assert out["kl_rollouts"] >= 1
    out["loss"].backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in enc.parameters())  # X is detached for KL
    assert kl_only.pooler.query.grad.abs().sum() > 0 and kl_only.pooler.key.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["tiny-qwen3-vl", "tiny-internvl"])
def test_teacher_attention_matches_eager_attention_on_the_right_positions(name):
    from benchmark.backbones._mllm_tiny import TINY_FAMILIES

    enc = _encoder(name)
    eager = mllm.build_tiny_model(name, seed=1, attn_implementation="eager")
    eager.requires_grad_(False).eval()
    family = TINY_FAMILIES[name]
    tok = mllm.build_tiny_tokenizer(family)
    sup = mllm.Supervisor("tiny-eager", eager, tok, eager.config.image_token_id, [tok.eos_token_id], family=family)
    feats = enc.backbone.encode(_batch()[0][:2]).detach()
    prefix = build_prefix(sup, build_prompt(CARD), 49, feats.grid_thw, torch.device("cpu"))
    assert feats.tokens.shape == (2, 49, 64)
    image_mask = prefix.ids[0] == sup.image_token_id
    assert image_mask.sum() == 98 and torch.equal(prefix.image_positions.flatten(), image_mask.nonzero().flatten())
    assert prefix.image_positions[0].max() < prefix.image_positions[1].min()  # image a first (Eq. 1)
    tokens = torch.randint(10, 200, (2, 12), generator=torch.Generator().manual_seed(0))
    ro = Rollouts(tokens, torch.ones_like(tokens, dtype=torch.bool), [False, False], 0.0, 0.0)
    layer = teacher_layer_index(sup, 26, tiny=True)
    assert layer == 1
    rows = {1: ([2, 3, 4], [7, 8])}
    _, maps = replay(sup, prefix, feats, ro, layer, rows)
    ids = torch.cat([prefix.ids.expand(2, -1), tokens], 1)
    rows_rope = prefix.position_ids.shape[0]
    steps = torch.arange(12).view(1, 1, 12).expand(rows_rope, 2, 12) + prefix.next_position
    pos = torch.cat([prefix.position_ids.expand(-1, 2, -1), steps], 2)
    pos = pos if family == "qwen3_vl" else pos[0]
    from methods.saga._rollout import _image_outputs

    out = eager.model(
        input_ids=ids, position_ids=pos, mm_encoder_outputs=_image_outputs(sup, feats, 2), output_attentions=True
    )
    att = out.attentions[layer][1].mean(0)  # head-averaged, row 1
    for k, span in enumerate(rows[1]):
        sub = att[[prefix.length + i for i in span]][:, prefix.image_positions[k]]
        expected = (sub / sub.sum(-1, keepdim=True)).mean(0)
        assert torch.allclose(maps[1][k], expected, atol=1e-5)
        assert maps[1][k].sum().item() == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="out of range"):
        teacher_layer_index(sup, 26, tiny=False)


def test_shared_prefix_gives_the_same_rollouts_as_recomputing_it():
    enc = _encoder()
    sup = mllm.load_supervisor(mllm.TINY_NAME)
    feats = enc.backbone.encode(_batch()[0][:2]).detach()
    prefix = build_prefix(sup, build_prompt(CARD), 49, feats.grid_thw, torch.device("cpu"))
    runs = [
        sample_rollouts(sup, prefix, feats, 3, 0.7, 0.95, 6, None, torch.Generator().manual_seed(0), share)
        for share in (True, False)
    ]
    assert torch.equal(runs[0].tokens, runs[1].tokens)


@pytest.mark.parametrize("name", ["tiny-qwen3-vl", "tiny-internvl"])
def test_real_loading_path_from_a_local_directory(tmp_path, name):
    from benchmark.backbones._mllm_tiny import TINY_FAMILIES

    model = mllm.build_tiny_model(name, seed=3)
    model.save_pretrained(tmp_path)
    mllm.build_tiny_tokenizer(TINY_FAMILIES[name]).save_pretrained(tmp_path)
    cfg = {"kind": "mllm_vision", "name": str(tmp_path), "pooling": "mean", "embedding_dim": 0, "freeze_bn": False}
    enc = Encoder(OmegaConf.create({**cfg, "pretrained": True, "checkpoint": None}))
    saved = mllm._tower_from_model(model, TINY_FAMILIES[name], name).state_dict()
    assert saved.keys() == enc.backbone.state_dict().keys()
    assert all(torch.equal(v, saved[k]) for k, v in enc.backbone.state_dict().items())
    sup = mllm.load_supervisor(str(tmp_path))
    try:
        assert torch.equal(sup.model.lm_head.weight, model.lm_head.weight)
        assert sup.eos_token_ids and not any(p.requires_grad for p in sup.model.parameters())
        assert sup.family == TINY_FAMILIES[name]
    finally:
        mllm._SUPERVISORS.pop(str(tmp_path), None)
    with pytest.raises(mllm.BackboneWeightsError, match="backbone.name=DIR"):
        mllm.resolve_checkpoint_dir(str(tmp_path / "missing"))


def test_config_errors_are_explicit():
    enc = _encoder()
    with pytest.raises(ValueError, match="use_kl=false"):
        _method(enc, generic_prompt=True)
    generic = _method(enc, generic_prompt=True, use_kl=False)
    assert "color, shape" not in generic.prompt


def test_external_timm_encoder_with_a_trainable_projector():
    cfg = {"kind": "timm", "name": "vit_tiny_patch16_224", "pooling": "mean", "embedding_dim": 0, "freeze_bn": False}
    enc = Encoder(OmegaConf.create({**cfg, "pretrained": False, "checkpoint": None}))
    cls = get_method("saga")
    base = dict(metric_loss="multi_similarity", embedding_dim=32, group_size=4, num_pairs=1, pairs_per_batch=2)
    base |= dict(max_new_tokens=160, rollout_constraint="json_skeleton", supervisor=mllm.TINY_NAME, use_kl=False)
    method = cls(OmegaConf.structured(cls.config_class(**base)), TaskInfo(4, enc.embedding_dim, "toy", card=CARD))
    assert [g.name for g in method.param_groups()] == ["saga_pooler", "projector"]
    images, labels = _batch()
    out = method.training_step(images, labels, enc)
    assert out["pairs_contributing"] == 1
    out["loss"].backward()
    assert method.projector.weight.grad is not None and method.projector.weight.grad.abs().sum() > 0
    assert enc.backbone.model.patch_embed.proj.weight.grad.abs().sum() > 0
    assert method.embed(images, enc).shape == (8, 32)


@pytest.mark.filterwarnings("ignore:Dataset 'attributes' does not have the expected counts")
def test_end_to_end_run_on_the_attribute_dataset_writes_a_complete_record(tmp_path):
    from benchmark import records
    from benchmark.config import compose_config
    from benchmark.run import run

    overrides = [
        "method=saga", "dataset=attributes", "dataset.strict=false", "+dataset.options.per_class=6",
        "backbone=tiny_qwen3_vl", "data.transform=saga", "data.image_size=64",
        "train.epochs=1", "train.steps_per_epoch=2", "train.batch_size=8", "train.m_per_class=2",
        "train.progress=false", "data.num_workers=0", "eval.kmeans_restarts=2", "eval.selection=last",
        "method.metric_loss=proxy_anchor", "method.group_size=4", "method.num_pairs=1", "method.pairs_per_batch=2",
        "method.max_new_tokens=300", "method.rollout_constraint=json_skeleton", "method.embedding_dim=32",
        f"out_dir={tmp_path / 'runs'}",
    ]  # fmt: skip
    record, run_dir = run(compose_config(overrides))
    assert records.is_complete(record)
    on_disk = json.loads((run_dir / "record.json").read_text())
    assert on_disk["status"] == "completed" and on_disk["backbone"]["kind"] == "mllm_vision"
    diag = on_disk["diagnostics"]
    assert diag["steps"] == 2 and diag["parse_failure_rate"] == 0.0 and diag["gen_tokens_per_s"] > 0
    for key in ("reward_mean", "contributing_fraction", "refills_per_step", "loss_dml_mean", "loss_grpo_mean"):
        assert math.isfinite(diag[key])
    assert {g["name"] for g in on_disk["method_info"]["param_groups"]} == {"saga_pooler", "metric_proxies"}
    epoch = on_disk["history"][0]
    assert {"loss_dml", "loss_grpo", "loss_kl", "reward_mean", "time_rollout_s"} <= set(epoch)


def test_perf_script_reports_ratios_and_prefix_speedup(tmp_path, capsys):
    from benchmark import perf_saga

    out = tmp_path / "perf.json"
    args = ["--group-size", "2", "--num-pairs", "1", "--batch-size", "4", "--m-per-class", "2", "--image-size", "64"]
    args += ["--max-new-tokens", "300", "--prefix-repeat", "1", "--prefix-new-tokens", "2", "--out", str(out)]
    assert perf_saga.main(args) == 0
    result = json.loads(out.read_text())
    assert result["ratio"] > 0 and set(result["phases_s"]) == {
        "metric_s",
        "rollout_s",
        "replay_forward_s",
        "backward_step_s",
    }
    assert result["prefix"]["prefix_speedup"] > 0 and "prefix" in capsys.readouterr().out


def test_sampling_streams_survive_a_checkpoint():
    enc = _encoder()
    a = _method(enc)
    a.training_step(*_batch(), enc)
    b = _method(enc, seed=5)
    b.load_state_dict(a.state_dict())
    assert a._rng.random() == b._rng.random()
    assert torch.equal(a._generator(torch.device("cpu")).get_state(), b._generator(torch.device("cpu")).get_state())


@pytest.mark.filterwarnings("ignore:Dataset 'attributes' does not have the expected counts")
@pytest.mark.parametrize("method", ["pretrained", "proxy_anchor"])
def test_baselines_run_on_the_mllm_tower_without_loading_its_language_model(tmp_path, method):
    from benchmark import records
    from benchmark.config import compose_config
    from benchmark.run import run

    mllm.clear_supervisors()
    overrides = [
        f"method={method}", "dataset=attributes", "dataset.strict=false", "+dataset.options.per_class=6",
        "backbone=tiny_qwen3_vl", "data.transform=saga",
        "data.image_size=64", "train.epochs=1", "train.steps_per_epoch=1", "train.batch_size=8",
        "train.m_per_class=2", "train.progress=false", "data.num_workers=0", "eval.kmeans_restarts=1",
        "eval.selection=last", f"out_dir={tmp_path / 'runs'}",
    ]  # fmt: skip
    record, _ = run(compose_config(overrides))
    assert records.is_complete(record) and record["backbone"]["pooling"] == "mean"
    assert record["backbone"]["feature_dim"] == 64 and not mllm._SUPERVISORS  # inference never loads the LM


def test_internvl_tower_matches_the_library_image_features():
    from benchmark.backbones.mllm import _tower_from_model

    model = mllm.build_tiny_model("tiny-internvl", seed=2)
    tower = _tower_from_model(model, "internvl", "tiny-internvl")
    images = _batch()[0][:2]
    ref = model.model.get_image_features(
        pixel_values=images, vision_feature_layer=-1, vision_feature_select_strategy="default"
    ).pooler_output
    assert torch.allclose(tower(images), ref, atol=1e-5) and ref.shape == (2, 49, 64)
    enc = _encoder("tiny-internvl")
    assert enc.info.mean == mllm.IMAGENET_MEAN and enc.backbone.tokens_per_image(448, 448) == 196


def test_metric_loss_factory_defaults_to_potential_field_with_its_proxies():
    enc = _encoder()
    method = _method(enc)
    from methods.potential_field import PotentialFieldLoss

    assert isinstance(method.metric, PotentialFieldLoss)
    groups = {g.name: g for g in method.param_groups()}
    assert groups["saga_pooler"].lr_mult == 5.0  # App. B: 1e-4 pooler / 2e-5 encoder
    assert groups["metric_proxies"].params == [method.metric.proxies]
    with pytest.raises(ValueError, match="metric_loss"):
        _method(enc, metric_loss="triplet")
