"""SAGA on the tiny Qwen3-VL and InternVL: gradients reach the tower and the pooler, the language model stays
bit-identical and outside every module tree, the teacher attention sits on the right tokens and positions, the
shared prefix, the loading path from a local directory, and the configuration errors."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from benchmark.backbones import mllm
from benchmark.engine.encoder import Encoder
from methods.saga._prompt import build_prompt
from methods.saga._rollout import Rollouts, build_prefix, replay, sample_rollouts, teacher_layer_index
from tests._saga_common import CARD, _batch, _encoder, _method, one_thread  # noqa: F401  (fixture)


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
    out = method.training_step(images, labels, enc)  # back-propagates its parts itself (Method.backward_part)
    assert out["pairs_contributing"] == 1 and out["loss_grpo"] != 0 and out["kl_rollouts"] >= 1
    assert not out["loss"].requires_grad and math.isfinite(float(out["loss"]))
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
    assert 0 <= diag["log_ratio_max"] < 1e-3  # fp32: the replay reproduces the sampling distribution (ratio 1)


def test_grpo_reaches_only_the_tower_and_kl_only_the_pooler():
    enc = _encoder()
    images, labels = _batch()
    grpo_only = _method(enc, use_kl=False, lambda_dml=0.0)
    grpo_only.training_step(images, labels, enc)  # back-propagates in parts
    deepstack = enc.backbone.visual.deepstack_merger_list[0].linear_fc1.weight
    assert deepstack.grad is not None and deepstack.grad.abs().sum() > 0  # only the LM consumes DeepStack features
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in grpo_only.pooler.parameters())
    enc.zero_grad(set_to_none=True)
    kl_only = _method(enc, use_grpo=False, lambda_dml=0.0)
    out = kl_only.training_step(images, labels, enc)
    assert out["kl_rollouts"] >= 1
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
    ro = Rollouts(tokens, torch.ones_like(tokens, dtype=torch.bool), torch.zeros(2, 12), [False, False], 0.0, 0.0)
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


def test_sampling_streams_survive_a_checkpoint():
    enc = _encoder()
    a = _method(enc)
    a.training_step(*_batch(), enc)
    b = _method(enc, seed=5)
    b.load_state_dict(a.state_dict())
    assert a._rng.random() == b._rng.random()
    assert torch.equal(a._generator(torch.device("cpu")).get_state(), b._generator(torch.device("cpu")).get_state())


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
    assert _method(enc, metric_options={"proxies_per_class": 2}).metric.proxies.shape == (4 * 2, 32)


@pytest.mark.parametrize("name", ["tiny-qwen3-vl", "tiny-internvl"])
def test_replay_positions_match_the_library_and_the_cached_decoding(name):
    from methods.saga._rollout import _image_outputs

    enc = _encoder(name)
    sup = mllm.load_supervisor(name)
    feats = enc.backbone.encode(_batch()[0][:2]).detach()
    prefix = build_prefix(sup, build_prompt(CARD), 49, feats.grid_thw, torch.device("cpu"))
    ro = sample_rollouts(sup, prefix, feats, 2, 0.7, 0.95, 8, None, torch.Generator().manual_seed(0))
    logprobs, _ = replay(sup, prefix, feats, ro)
    # on-policy: the replay through the full sequence gives the decoding-time log-probs (ratio 1, Sec. 3.2)
    assert torch.allclose(logprobs[ro.mask], ro.logprobs[ro.mask], atol=1e-4)
    # the library's own positions (M-RoPE from the whole sequence, or 1-D) give the same log-probabilities
    ids = torch.cat([prefix.ids.expand(2, -1), ro.tokens], 1)
    kwargs = {"input_ids": ids, "mm_encoder_outputs": _image_outputs(sup, feats, 2)}
    if sup.family == "qwen3_vl":
        kwargs |= {
            "mm_token_type_ids": (ids == sup.image_token_id).int(),
            "image_grid_thw": feats.grid_thw.repeat(2, 1),
        }
    logits = sup.model(**kwargs).logits[:, prefix.length - 1 : -1].float()
    reference = logits.log_softmax(-1).gather(-1, ro.tokens[..., None]).squeeze(-1)
    assert torch.allclose(logprobs, reference, atol=1e-4)


def test_batched_vision_attention_equals_the_library_per_image_loop():
    """The tower runs same-size images as one batched attention; outputs and gradients equal HF's per-image loop,
    and mixed sizes (which the batched path cannot take) still go through the library's own code."""
    import copy

    from benchmark.backbones._mllm_tiny import build_tiny_model

    visual = build_tiny_model(mllm.TINY_NAME, seed=3).model.visual
    reference = copy.deepcopy(visual)  # unpatched
    tower = mllm.MLLMVisionTower(visual, mllm.TINY_NAME)
    images = torch.randn(3, 3, 64, 64)
    pixels, grid = tower.patchify(images)
    ours = tower.visual(pixels, grid_thw=grid).pooler_output
    theirs = reference(pixels, grid_thw=grid).pooler_output
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    ours.square().sum().backward()
    theirs.square().sum().backward()
    for (name, a), b in zip(visual.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=name)
    small, grid_small = tower.patchify(torch.randn(1, 3, 32, 32))
    mixed = torch.cat([pixels[: len(pixels) // 3], small]), torch.cat([grid[:1], grid_small])
    torch.testing.assert_close(
        tower.visual(mixed[0], grid_thw=mixed[1]).pooler_output, reference(*mixed[:1], grid_thw=mixed[1]).pooler_output
    )
