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
    with pytest.MonkeyPatch.context() as mp:  # its stage 1 is cached: not in the user's cache
        mp.setenv("DML_BENCHMARK_CACHE", str(out.parent / "cache"))
        ws.build_supervisor(QUICK, out, log=lambda _: None)
    return out


def test_target_answer_is_the_prompts_json_with_the_right_verdict(card):
    attrs = card["attributes"]
    a = {k: card["attribute_values"][k][0] for k in attrs}
    b = dict(a, **{"pattern": card["attribute_values"]["pattern"][1]})
    for first, second, same in ((a, dict(a), True), (a, b, False)):
        for answer_format in ("list", "chain"):
            text = "".join(t for _, t in target_answer(card, first, second, answer_format))
            obj = json.loads(text)
            assert obj["figure_1"] == first and obj["figure_2"] == second
            assert parse_verdict(text, "same_class") == (same, None)
            assert list(obj) == ["figure_1", "figure_2", "differences", "confidence", "reasoning", "same_class"]
            if answer_format == "list":
                assert obj["differences"] == ("none" if same else "pattern")
            else:  # recipe v4: one comparison per attribute, in the card's order
                items = [f"{k}: {'differs' if not same and k == 'pattern' else 'same'}" for k in attrs]
                assert obj["differences"] == ", ".join(items)
    with pytest.raises(ValueError, match="answer_format must be one of"):
        target_answer(card, a, b, "prose")


def test_description_errors_change_values_within_their_attribute_at_the_rate(card):
    import numpy as np

    from benchmark.world.data import describe_with_errors

    values = {a: [str(v) for v in vs] for a, vs in card["attribute_values"].items()}
    a = {k: v[0] for k, v in values.items()}
    rng = np.random.default_rng(0)
    assert describe_with_errors(a, a, values, 0.0, rng) == (a, a)
    wrong = describe_with_errors(a, a, values, 1.0, rng)
    assert all(w[k] != a[k] and w[k] in values[k] for w in wrong for k in a)
    changed = sum(w[k] != a[k] for _ in range(200) for w in describe_with_errors(a, a, values, 0.1, rng) for k in a)
    assert 0.07 < changed / (200 * 2 * len(a)) < 0.13


def test_flipped_descriptions_flip_the_written_verdict_of_near_identical_pairs(card):
    import numpy as np

    from benchmark.world.data import flip_description

    values = {a: [str(v) for v in vs] for a, vs in card["attribute_values"].items()}
    a = {k: v[0] for k, v in values.items()}
    neighbour = dict(a, pattern=values["pattern"][1])
    far = {k: v[1] for k, v in values.items()}
    rng = np.random.default_rng(0)
    first, second = flip_description(a, dict(a), values, 1.0, rng)  # a same pair: now one attribute differs
    assert first == a and sum(second[k] != a[k] for k in a) == 1
    assert flip_description(a, neighbour, values, 1.0, rng) == (a, a)  # a neighbour: now they agree
    assert flip_description(a, far, values, 1.0, rng) == (a, far)  # a pair that differs in more: left alone
    assert flip_description(a, dict(a), values, 0.0, rng) == (a, a)
    flips = sum(flip_description(a, dict(a), values, 0.3, rng) != (a, a) for _ in range(1000))
    assert 250 < flips < 350


def test_stage_two_teaches_the_comparison_of_what_was_written_and_the_truth_of_each_value(card):
    """Recipe v4: where a description value is written wrong, the answer's comparison and verdict follow the written
    descriptions, while that value's own target is the true one (so perception is still taught)."""
    import numpy as np

    from benchmark.world.data import world_tokenizer

    cfg = ws.BuildConfig(train_combinations=8, images_per_class=2, val_combinations=4, describe_errors=1.0)
    world = ws._World(cfg)
    tok = world_tokenizer(world.card, world.prompt, cfg.vocab_size, cfg.seed)
    value_token = {a: {v: tok.convert_tokens_to_ids(tok.tokenize(v)[0]) for v in world.values[a]} for a in world.attrs}
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    (ans,), (fix,) = ws._described_batch(
        world, tok, [(0, 0, 0, 1)], cfg, eos, value_token, {}, np.random.default_rng(0)
    )
    text = tok.decode(ans.ids[:-1])
    obj = json.loads(text)
    truth = world.train_attrs[0]
    implied_same = obj["figure_1"] == obj["figure_2"]
    assert parse_verdict(text, "same_class") == (implied_same, None)  # the verdict of what was written
    assert all(obj["figure_1"][a] != truth[a] for a in world.attrs)  # rate 1: every value written wrong
    assert len(fix) == 14 and {tok.convert_ids_to_tokens(t) for _, t in fix} <= {
        tok.tokenize(v)[0] for v in truth.values()
    }
    for pos, token in fix:  # each fixed position holds a written value, and its target is the true value's token
        attr = dict(ans.value_slots)[pos]
        assert token == value_token[attr][truth[attr]] != ans.ids[pos]


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
    """Without a shipped build of the recipe, the name resolves to the cache, built once."""
    from benchmark.backbones.mllm import resolve_checkpoint_dir

    monkeypatch.setenv("DML_BENCHMARK_CACHE", str(tmp_path))
    monkeypatch.setattr(ws, "SHIPPED_ROOT", tmp_path / "nothing-shipped")
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


def test_build_is_reproducible_from_its_seed(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    monkeypatch.setenv("DML_BENCHMARK_CACHE", str(tmp_path / "cache"))

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


TINY = dict(vision_steps=3, steps=3, batch_size=2, vision_batch_size=4, train_combinations=8, images_per_class=2)
TINY |= dict(eval_pairs=2, eval_samples=2, val_combinations=4)


def test_a_cached_stage_one_gives_the_same_build_and_stage_two_variants_share_it(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    monkeypatch.setenv("DML_BENCHMARK_CACHE", str(tmp_path / "cache"))
    cfg = ws.BuildConfig(**TINY)
    logs: list[str] = []
    ws.build_supervisor(cfg, tmp_path / "fresh", log=logs.append)
    assert ws._stage1_file(cfg).exists() and not any("stage 1 from" in line for line in logs)
    ws.build_supervisor(cfg, tmp_path / "cached", log=logs.append)
    assert any("stage 1 from" in line for line in logs)
    a, b = (load_file(tmp_path / d / "model.safetensors") for d in ("fresh", "cached"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    variant = ws.BuildConfig(**TINY, answer_format="list", describe_errors=0.0)
    assert variant.stage1_digest() == cfg.stage1_digest() and variant.digest() != cfg.digest()
    assert ws.BuildConfig(**{**TINY, "vision_steps": 4}).stage1_digest() != cfg.stage1_digest()
    ws.build_supervisor(variant, tmp_path / "variant", log=logs.append)
    c = load_file(tmp_path / "variant" / "model.safetensors")
    tower = [k for k in a if k.startswith("model.visual.")]
    assert tower and all(torch.equal(a[k], c[k]) for k in tower)  # the same perception: stage 2 keeps the tower
    assert not all(torch.equal(a[k], c[k]) for k in a if k not in tower)


def test_the_hard_attribute_stops_shaping_the_tower_at_its_accuracy(tmp_path, monkeypatch):
    monkeypatch.setenv("DML_BENCHMARK_CACHE", str(tmp_path / "cache"))
    logs: list[str] = []
    ws.build_supervisor(ws.BuildConfig(**TINY, hard_accuracy=0.0), tmp_path / "a", log=logs.append)
    card = ws.read_card(tmp_path / "a")
    assert card["metrics"]["stage1"]["hard_attribute_stopped_at"] == 0
    assert any("appendage reader at" in line and "stops learning" in line for line in logs)
    share = card["metrics"]["hard_attribute"]
    assert share["attribute"] == "appendage" and 0.3 <= share["test_classes_with_a_neighbour_in_it"] <= 1.0
    ws.build_supervisor(ws.BuildConfig(**TINY, hard_accuracy=1.01), tmp_path / "b", log=lambda _: None)
    assert ws.read_card(tmp_path / "b")["metrics"]["stage1"]["hard_attribute_stopped_at"] is None
    with pytest.raises(ValueError, match="hard_attribute 'wings'"):
        ws.build_supervisor(ws.BuildConfig(**TINY, hard_attribute="wings"), tmp_path / "c", log=lambda _: None)


def test_the_card_says_whether_the_verdict_follows_the_descriptions(quick_supervisor):
    card = ws.read_card(quick_supervisor)
    held = card["metrics"]["held_out"]
    assert set(held["by_kind"]) == {"same", "neighbour", "random"}
    assert sum(k["pairs"] for k in held["by_kind"].values()) == held["pairs"]
    assert (
        "intervention_flip_rate" in held["by_kind"]["same"]
        and "intervention_flip_rate" not in held["by_kind"]["random"]
    )
    for key in ("follows_descriptions", "compare_only_accuracy", "intervention_flip_rate"):
        assert 0.0 <= held[key] <= 1.0
    targets = card["targets"]
    assert targets == ws.card_targets(card) and len(targets) == 10
    assert targets["verdict_accuracy >= 0.85"]["value"] == round(held["verdict_accuracy"], 4)
    assert targets["verdict_accuracy >= 0.85"]["met"] == (held["verdict_accuracy"] >= 0.85)


def test_build_cli_takes_recipe_fields_and_refuses_unknown_ones(capsys):
    assert ws._recipe_fields(["answer_format=list", "describe_errors=0", "hard_attribute=null"]) == {
        "answer_format": "list", "describe_errors": 0.0, "hard_attribute": None
    }  # fmt: skip
    assert ws.main(["build", "--set", "colour=red"]) == 2
    assert "FIELD one of: seed" in capsys.readouterr().out
    assert ws.main(["build", "--set", "describe_errors=lots"]) == 2
    assert "takes a float" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------- the shipped build
def test_the_shipped_build_is_the_default_recipes_and_small():
    """``backbone.name=attributes-supervisor`` loads the committed build of the default recipe (found by its
    digest); its files are a Hugging Face checkpoint directory of a few MB."""
    shipped = ws.shipped_supervisor()
    assert shipped is not None and shipped.parent == ws.SHIPPED_ROOT
    card = ws.read_card(shipped)
    assert card["digest"] == ws.BuildConfig().digest() == shipped.name.rsplit("-", 1)[1]
    assert ws.BuildConfig(**card["build"]) == ws.BuildConfig() and card["recipe_version"] == ws.RECIPE_VERSION
    names = {p.name for p in shipped.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", ws.CARD_FILE} <= names
    assert sum(p.stat().st_size for p in shipped.iterdir()) < 10 * 2**20
    assert ws.shipped_supervisor(ws.BuildConfig(seed=1)) is None  # another recipe is never taken for it


def test_the_name_resolves_to_the_shipped_build_without_building(tmp_path, monkeypatch):
    from benchmark.backbones.mllm import resolve_checkpoint_dir

    monkeypatch.setenv("DML_BENCHMARK_CACHE", str(tmp_path))

    def no_build(*args, **kwargs):
        raise AssertionError("a build was started although the build ships")

    monkeypatch.setattr(ws, "build_supervisor", no_build)
    assert resolve_checkpoint_dir(ws.WORLD_NAME) == ws.shipped_supervisor()
    assert not (tmp_path / "supervisors").exists()


def test_a_shipped_card_of_another_digest_is_refused(tmp_path, monkeypatch):
    import shutil

    target = tmp_path / f"{ws.WORLD_NAME}-{ws.BuildConfig().digest()}"
    shutil.copytree(ws.shipped_supervisor(), target)
    monkeypatch.setattr(ws, "SHIPPED_ROOT", tmp_path)
    card = json.loads((target / ws.CARD_FILE).read_text())
    (target / ws.CARD_FILE).write_text(json.dumps(card | {"digest": "0" * 12}))
    with pytest.raises(ValueError, match="damaged"):
        ws.shipped_supervisor()


def test_the_shipped_cards_numbers_reproduce_from_its_weights():
    """What the card says of the shipped build is what its committed weights do (recomputed here on one thread, as
    it was built): held-out verdicts, descriptions, the checks, and the headroom."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        again = ws.reproduce_card(ws.shipped_supervisor())
    finally:
        torch.set_num_threads(before)
    card = ws.read_card(ws.shipped_supervisor())
    assert ws.card_reproduces(card, again)  # equal on the machine that built it; one pair's worth elsewhere
    held = card["metrics"]["held_out"]
    assert again["held_out"]["parse_rate"] == held["parse_rate"] == 1.0
    other = json.loads(json.dumps(again))  # a build whose numbers are not the card's is told apart
    other["held_out"]["verdict_accuracy"] += 0.02
    assert not ws.card_reproduces(card, other)


def test_the_weaker_judges_share_the_shipped_tower_and_differ_from_it():
    """The judge-quality curve's variants: other digests than the shipped build (never resolved to it), the same
    stage 1 (the same tower), and without the counterfactual lessons (the list variant: v1-v3's answer too)."""
    default = ws.BuildConfig()
    variants = {name: ws.BuildConfig(**fields) for name, fields in ws.JUDGE_VARIANTS.items()}
    assert set(variants) == {"attributes-supervisor-chain-only", "attributes-supervisor-list"}
    for cfg in variants.values():
        assert cfg.digest() != default.digest() and cfg.stage1_digest() == default.stage1_digest()
        assert cfg.flip_descriptions == 0.0 and ws.shipped_supervisor(cfg) is None
    assert variants["attributes-supervisor-list"].answer_format == "list"
    assert variants["attributes-supervisor-chain-only"].answer_format == "chain"
