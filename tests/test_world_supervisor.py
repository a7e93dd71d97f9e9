"""The attributes world's trained supervisor: its answer format, a quick real build, loading it the way SAGA loads
Qwen3-VL-8B, and SAGA's rewards from it varying within groups (both correct and wrong verdicts)."""

from __future__ import annotations

import json

import pytest
import torch

from benchmark.data.base import load_card
from benchmark.world import supervisor as ws
from benchmark.world.data import encode_answer, target_answer, to_pixels, world_tokenizer
from methods.saga._grpo import parse_verdict
from methods.saga._prompt import build_prompt

# A quick build: enough steps to learn the answer's format, not the attributes (the cached default learns those).
QUICK = ws.BuildConfig(
    vision_steps=100,
    steps=120,
    batch_size=8,
    warmup_steps=20,
    train_combinations=48,
    images_per_class=8,
    eval_pairs=6,
    eval_samples=4,
)


@pytest.fixture(scope="module")
def card():
    return load_card("attributes")


@pytest.fixture(scope="module")
def quick_supervisor(tmp_path_factory):
    out = tmp_path_factory.mktemp("world") / "supervisor"
    ws.build_supervisor(QUICK, out, log=lambda _: None)
    return out


def test_target_answer_is_the_prompts_json_with_the_right_verdict(card):
    attrs = card["attributes"]
    a = {k: card["attribute_values"][k][0] for k in attrs}
    b = dict(a, **{"pattern": card["attribute_values"]["pattern"][1]})
    for first, second, same in ((a, dict(a), True), (a, b, False)):
        text = "".join(t for _, t in target_answer(card, first, second))
        obj = json.loads(text)
        assert obj["figure_1"] == first and obj["figure_2"] == second
        assert parse_verdict(text, "same_class") == (same, None)
        assert obj["differences"] == ("none" if same else "pattern")
        assert list(obj) == ["figure_1", "figure_2", "differences", "confidence", "reasoning", "same_class"]


def test_generalist_combinations_avoid_every_benchmark_class_and_follow_the_seed(card):
    """The supervisor's training combinations: distinct, none of the 96 benchmark classes (training or test), every
    value of every attribute used, drawn independently (so attributes are not correlated as in the classes), and
    the same for the same seed."""
    import numpy as np

    from benchmark.data.attributes import class_attribute_table
    from benchmark.world.data import generalist_combinations

    values = {a: list(v) for a, v in card["attribute_values"].items()}
    benchmark_classes = list(class_attribute_table(0, 96).values())
    draw = generalist_combinations(values, benchmark_classes, 2880, np.random.default_rng(0))
    keys = {tuple(c.values()) for c in draw}
    assert len(keys) == 2880 and not keys & {tuple(c[a] for a in values) for c in benchmark_classes}
    assert all({c[a] for c in draw} == set(values[a]) for a in values)
    shape = np.array([values["body shape"].index(c["body shape"]) for c in draw])
    colour = np.array([values["body color"].index(c["body color"]) for c in draw])
    assert abs(np.corrcoef(shape, colour)[0, 1]) < 0.1  # independent draws
    assert draw == generalist_combinations(values, benchmark_classes, 2880, np.random.default_rng(0))
    assert draw != generalist_combinations(values, benchmark_classes, 2880, np.random.default_rng(1))
    with pytest.raises(ValueError, match="choose 1.."):
        generalist_combinations(values, benchmark_classes, 30000, np.random.default_rng(0))


def test_pair_sampler_neighbours_differ_in_exactly_one_attribute():
    import numpy as np

    from benchmark.data.attributes import class_attribute_table
    from benchmark.world.data import PairSampler

    table = list(class_attribute_table(0, 96).values())
    sampler = PairSampler(table, 2, np.random.default_rng(0))
    brute = [[d for d in range(96) if sum(table[c][a] != table[d][a] for a in table[c]) == 1] for c in range(96)]
    assert sampler.neighbours == brute and sum(map(len, brute)) > 0


def test_world_tokenizer_keeps_values_whole_and_the_answer_short(card):
    tok = world_tokenizer(card, build_prompt(card), 1500, seed=0)
    a = {k: v[-1] for k, v in card["attribute_values"].items()}
    b = {k: v[0] for k, v in card["attribute_values"].items()}
    segs = target_answer(card, a, b)
    ans = encode_answer(tok, segs, eos=tok.convert_tokens_to_ids("<|im_end|>"))
    assert tok.decode(ans.ids[:-1]) == "".join(t for _, t in segs)
    assert tok.encode("".join(t for _, t in segs), add_special_tokens=False) == ans.ids[:-1]
    assert len(ans.value_slots) == 14  # every attribute value of both figures is one token
    assert len(ans.ids) <= 50  # the longest answer: all seven attributes differ
    assert len(tok.encode(build_prompt(card), add_special_tokens=False)) < 40


def test_quick_build_is_a_checkpoint_with_a_card(quick_supervisor):
    names = {p.name for p in quick_supervisor.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", ws.CARD_FILE} <= names
    assert not list(quick_supervisor.parent.glob(".*tmp*"))  # written atomically
    card = ws.read_card(quick_supervisor)
    held = card["metrics"]["held_out"]
    assert card["build"]["steps"] == QUICK.steps and card["digest"] == QUICK.digest()
    assert set(held["attribute_accuracy_per_attribute"]) == set(load_card("attributes")["attributes"])
    assert 0.0 <= held["verdict_accuracy"] <= 1.0
    assert held["parse_rate"] > 0.5  # 120 steps learn the answer's format
    assert "none of them one of the 96 classes" in card["trained_on"]
    room = card["metrics"]["headroom"]
    assert room["recall@1_ceiling"] == 1.0 and 0.0 < room["recall@1_mean_pooled_tower"] < 1.0


def test_supervisor_loads_through_the_checkpoint_path_and_gives_mixed_rewards(quick_supervisor, card):
    """The tower and the LM load from the directory as a hub checkpoint would; SAGA's rollouts on held-out pairs
    parse, and some group holds both a correct and a wrong verdict (non-zero GRPO advantages)."""
    import numpy as np

    from benchmark.backbones.mllm import clear_supervisors, load_supervisor, load_vision_tower
    from benchmark.data.attributes import generate
    from methods.saga._grpo import verdict_reward
    from methods.saga._rollout import build_prefix, sample_rollouts

    clear_supervisors()
    tower = load_vision_tower(quick_supervisor)
    sup = load_supervisor(str(quick_supervisor))
    assert sup.family == "qwen3_vl" and not any(p.requires_grad for p in sup.model.parameters())
    images, labels, _ = generate()
    test = np.flatnonzero(labels >= 48)
    x = to_pixels(images[test])
    prompt = build_prompt(card)
    gen = torch.Generator().manual_seed(0)
    mixed, parsed, total = 0, 0, 0
    with torch.no_grad():
        for i, j in [(0, 1), (0, 30), (60, 61), (60, 200), (300, 301), (300, 500)]:
            feats = tower.encode(x[[i, j]])
            prefix = build_prefix(sup, prompt, feats.tokens.shape[1], feats.grid_thw, torch.device("cpu"))
            ro = sample_rollouts(sup, prefix, feats, 8, 0.7, 0.95, 64, None, gen)
            same = bool(labels[test[i]] == labels[test[j]])
            rewards = []
            for row in range(8):
                text = sup.tokenizer.decode(ro.tokens[row, : int(ro.mask[row].sum())], skip_special_tokens=True)
                reward, failure = verdict_reward(text, "same_class", same, ro.truncated[row])
                rewards.append(reward)
                parsed += failure is None
                total += 1
            mixed += 0 < sum(rewards) < 8
    assert parsed / total > 0.5
    assert mixed >= 1
    clear_supervisors()


def test_named_supervisor_is_found_in_the_cache_or_built(tmp_path, monkeypatch, quick_supervisor):
    from benchmark.backbones.mllm import resolve_checkpoint_dir

    monkeypatch.setenv("DML_BENCHMARK_CACHE", str(tmp_path))
    built = []

    def fake_build(cfg, out, log=print):
        built.append(out)
        import shutil

        shutil.copytree(quick_supervisor, out)
        return out

    monkeypatch.setattr(ws, "build_supervisor", fake_build)
    first = resolve_checkpoint_dir(ws.WORLD_NAME)
    second = resolve_checkpoint_dir(ws.WORLD_NAME)
    assert first == second == ws.default_dir() and len(built) == 1
    assert str(first).startswith(str(tmp_path))


def test_cli_show_prints_the_card_and_refuses_a_non_supervisor(quick_supervisor, tmp_path, capsys):
    from benchmark.cli import main

    assert main(["supervisor", "show", str(quick_supervisor)]) == 0
    out = capsys.readouterr().out
    assert "held-out classes: verdict accuracy" in out and "per attribute" in out
    assert main(["supervisor", "show", str(tmp_path)]) == 2
    assert "not a built supervisor" in capsys.readouterr().out


def test_build_is_reproducible_from_its_seed(tmp_path):
    from safetensors.torch import load_file

    tiny = ws.BuildConfig(
        vision_steps=3,
        steps=3,
        batch_size=2,
        vision_batch_size=4,
        train_combinations=8,
        images_per_class=2,
        eval_pairs=1,
    )
    weights = []
    for name in ("a", "b"):
        ws.build_supervisor(tiny, tmp_path / name, log=lambda _: None)
        weights.append(load_file(tmp_path / name / "model.safetensors"))
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    other = ws.build_supervisor(ws.BuildConfig(**{**tiny.__dict__, "seed": 1}), tmp_path / "c", log=lambda _: None)
    key = "model.language_model.embed_tokens.weight"
    assert not torch.equal(load_file(other / "model.safetensors")[key], weights[0][key])


def test_card_evaluation_reads_answers_with_text_after_the_json(quick_supervisor, card, monkeypatch):
    """Answers parse as the reward parses them: text after the JSON object is ignored, not a crash."""
    from benchmark.backbones.mllm import clear_supervisors, load_supervisor, load_vision_tower
    from methods.saga import _rollout
    from methods.saga._rollout import Rollouts, build_prefix

    clear_supervisors()
    sup, tower = load_supervisor(str(quick_supervisor)), load_vision_tower(quick_supervisor)
    cfg = ws.BuildConfig(train_combinations=8, images_per_class=2, eval_pairs=2, eval_samples=2)
    world = ws._World(cfg)
    first = world.test_attrs[0]
    text = "".join(t for _, t in target_answer(card, first, first)) + " (done)"
    ids = torch.tensor([sup.tokenizer.encode(text, add_special_tokens=False) + [sup.eos_token_ids[0]]] * 2)

    def fake(*args, **kwargs):
        return Rollouts(ids, torch.ones_like(ids, dtype=torch.bool), torch.zeros(ids.shape), [False, False], 0.0, 0.0)

    monkeypatch.setattr(_rollout, "sample_rollouts", fake)
    n = tower.tokens_per_image(64, 64)
    grid = torch.tensor([[1, 8, 8]] * 2)
    prefix = build_prefix(sup, world.prompt, n, grid, torch.device("cpu"))
    result = ws.evaluate(sup, tower, prefix, world, world.test_attrs, world.test_images, cfg, "test")
    assert result["parse_rate"] == 1.0  # json.loads would have raised "Extra data" on every answer
    clear_supervisors()


def test_auxiliary_readers_read_the_tokens_by_attention_not_their_mean():
    """Recipe v3: two images whose tokens have the same mean but different content are told apart by a reader (a
    reader of the mean could not), so the build does not make the mean-pooled tower a class embedding."""
    torch.manual_seed(0)
    reader = ws._Reader(16, 4)
    x, y = torch.randn(1, 1, 16), torch.randn(1, 1, 16)
    same_mean = torch.cat([x, -x], 1), torch.cat([y, -y], 1)
    assert torch.allclose(same_mean[0].mean(1), same_mean[1].mean(1))
    assert not torch.allclose(reader(same_mean[0]), reader(same_mean[1]), atol=1e-3)


def test_nuisance_targets_belong_to_their_images():
    """The nuisance reader regresses each training image's own nuisance: its background colour target follows the
    colour of the image's corners (where the background shows), image by image."""
    import numpy as np

    world = ws._World(ws.BuildConfig(train_combinations=12, images_per_class=3))
    images = world.train_images.reshape(-1, 64, 64, 3).astype(np.float64)
    targets = world.train_nuisance.reshape(-1, 7)
    corners = np.concatenate([images[:, :4, :4], images[:, :4, -4:], images[:, -4:, :4], images[:, -4:, -4:]], 1)
    corner_rgb = corners.reshape(len(images), -1, 3).mean(1)
    for channel in range(3):
        assert np.corrcoef(corner_rgb[:, channel], targets[:, channel])[0, 1] > 0.8
    shuffled = np.roll(targets[:, 0], 1)
    assert np.corrcoef(corner_rgb[:, 0], shuffled)[0, 1] < 0.8
