"""Protocols (``protocol=``): the commands users type compose to their protocol's setting, explicit overrides win,
impossible combinations fail at compose time in one line, and every committed sweep cell composes and fits the
m-per-class sampler with the same budget for every method of a protocol."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmark.config import ConfigError, compose_config
from benchmark.sweeps.spec import SWEEPS_DIR, expand_cells, load_spec

SPECS = sorted(p.stem for p in SWEEPS_DIR.glob("*.yaml") if p.name != "clusters.yaml")
REPO = Path(__file__).resolve().parents[1]


def _record(stdout: str) -> dict:
    """The run record named by ``run --json`` (its JSON follows the per-epoch lines)."""
    printed = json.loads(stdout[stdout.index("\n{") :] if not stdout.startswith("{") else stdout)
    return json.loads(Path(printed["record"]).read_text())


def _values(cfg, *keys):
    from omegaconf import OmegaConf

    return {k: OmegaConf.select(cfg, k) for k in keys}


def test_plain_saga_command_composes_to_the_papers_table1_setting():
    cfg = compose_config(["method=saga", "dataset=aircraft", "dataset.root=/data/aircraft"])
    assert cfg.protocol == "saga"
    assert _values(cfg, "backbone.kind", "backbone.name", "backbone.embedding_dim", "data.image_size") == {
        "backbone.kind": "mllm_vision",
        "backbone.name": "Qwen/Qwen3-VL-8B-Instruct",
        "backbone.embedding_dim": None,
        "data.image_size": 224,
    }
    train = cfg.train
    assert (train.epochs, train.warmup_epochs, train.lr, train.batch_size, train.m_per_class) == (3, 0.15, 2e-5, 64, 4)
    assert train.grad_clip == 1.0 and cfg.data.transform == "saga" and cfg.eval.selection == "last"
    assert cfg.method.num_pairs == 8 and cfg.method.teacher_layer == 26  # the paper's K and layer, not a CPU's


def test_table1_baseline_trains_the_same_tower_with_the_same_recipe():
    saga = compose_config(["method=saga", "dataset=cub", "dataset.root=/d"])
    base = compose_config(["method=proxy_anchor", "protocol=saga", "dataset=cub", "dataset.root=/d"])
    assert base.protocol == "saga" and base.backbone == saga.backbone and base.backbone.pooling == "mean"
    assert base.train == saga.train and base.data == saga.data and base.eval == saga.eval


def test_internvl_preset_trains_at_its_native_448px_tiles_under_saga():
    cfg = compose_config(["method=saga", "dataset=cub", "backbone=internvl_vision"])
    assert cfg.backbone.name == "OpenGVLab/InternVL3_5-8B-HF" and cfg.data.image_size == 448
    assert compose_config(["method=saga", "dataset=cub"]).data.image_size == 224


def test_dataset_cards_choose_the_protocol_and_protocol_overrides_it():
    default = compose_config([])  # proxy_anchor on attributes: the embedded protocol (the cards' old defaults)
    assert default.protocol == "embedded"
    assert (default.backbone.name, default.backbone.pretrained, default.train.lr, default.train.epochs) == (
        "resnet10t",
        False,
        1e-3,
        6,
    )
    cub = compose_config(["dataset=cub"])
    assert cub.protocol == "classic" and cub.backbone.name == "resnet50" and cub.backbone.pooling == "maxavg"
    assert (cub.train.epochs, cub.train.batch_size, cub.train.freeze_backbone_epochs) == (60, 120, 5)
    assert compose_config(["dataset=cub", "protocol=embedded"]).backbone.name == "resnet10t"
    digits = compose_config(["dataset=digits"])  # 5 training classes: the card scales the protocol
    assert digits.eval.selection == "last" and digits.train.m_per_class == 16


def test_explicit_overrides_beat_the_protocol():
    cfg = compose_config(["method=saga", "dataset=cub", "train.lr=3e-4", "data.image_size=336", "backbone.name=/w"])
    assert (cfg.train.lr, cfg.data.image_size, cfg.backbone.name) == (3e-4, 336, "/w")
    tiny = compose_config(["method=saga", "dataset=cub", "backbone=tiny_qwen3_vl"])  # a preset replaces the tower
    assert tiny.backbone.name == "tiny-qwen3-vl" and tiny.train.epochs == 3


def test_saga_on_the_embedded_dataset_composes_to_the_attributes_world():
    cfg = compose_config(["method=saga"])
    assert cfg.protocol == "saga" and cfg.dataset.name == "attributes"
    assert (cfg.backbone.kind, cfg.backbone.name, cfg.data.image_size) == ("mllm_vision", "attributes-supervisor", 64)
    assert (cfg.train.epochs, cfg.train.steps_per_epoch, cfg.train.batch_size, cfg.train.lr) == (3, 25, 32, 1e-4)
    assert (cfg.method.num_pairs, cfg.method.max_new_tokens, cfg.method.teacher_layer) == (4, 64, 1)
    baseline = compose_config(["method=potential_field", "protocol=saga"])
    assert baseline.backbone == cfg.backbone and baseline.train == cfg.train


@pytest.mark.parametrize(
    "overrides",
    [
        ["method=saga", "protocol=classic", "dataset=cub", "dataset.root=/nowhere"],
        ["method=saga", "protocol=embedded"],
        ["method=saga", "backbone=timm", "backbone.name=resnet50", "dataset=cub"],
    ],
)
def test_saga_without_a_supervisor_fails_at_compose_in_one_line_before_any_data(overrides, monkeypatch, capsys):
    import benchmark.data.base as base
    import benchmark.engine.trainer as trainer
    from benchmark.cli import main

    def no_data(*args, **kwargs):
        raise AssertionError("data was read")

    for module in (base, trainer):
        monkeypatch.setattr(module, "load_dataset", no_data)
    assert main(["run", *overrides]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: SAGA's GRPO and KL terms need a multimodal LLM")
    assert "protocol=saga" in err and "method.supervisor=" in err


def test_missing_hub_weights_fail_fast_with_the_download_command(tmp_path, monkeypatch, capsys):
    import benchmark.engine.trainer as trainer
    from benchmark.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_hub_cache"))

    def no_data(*args, **kwargs):
        raise AssertionError("data was read before the weights were found")

    monkeypatch.setattr(trainer, "load_dataset", no_data)
    args = ["run", "method=saga", "dataset=aircraft", f"dataset.root={tmp_path}", f"out_dir={tmp_path / 'runs'}"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "`hf download Qwen/Qwen3-VL-8B-Instruct --local-dir DIR`" in err
    assert "backbone.name=DIR" in err


@pytest.mark.filterwarnings("ignore:Dataset 'aircraft' does not have the expected counts")
def test_saga_protocol_runs_on_a_miniature_aircraft_with_a_saved_checkpoint(tmp_path, capsys):
    from benchmark.backbones import mllm
    from benchmark.backbones._mllm_tiny import TINY_FAMILIES
    from benchmark.cli import main
    from tests.miniature import make_aircraft

    make_aircraft(tmp_path / "aircraft")
    ckpt = tmp_path / "ckpt"
    mllm.build_tiny_model(mllm.TINY_NAME, seed=3).save_pretrained(ckpt)
    mllm.build_tiny_tokenizer(TINY_FAMILIES[mllm.TINY_NAME]).save_pretrained(ckpt)
    small = [  # only the budget and SAGA's rollout sizes shrink; everything else is the protocol's
        "train.epochs=1", "train.steps_per_epoch=1", "train.batch_size=8", "train.m_per_class=2",
        "data.image_size=64", "method.group_size=4", "method.num_pairs=1", "method.pairs_per_batch=2",
        "method.max_new_tokens=300", "method.rollout_constraint=json_skeleton", "method.embedding_dim=32",
        "eval.kmeans_restarts=1", "data.num_workers=0", "train.progress=false",
    ]  # fmt: skip
    args = ["run", "method=saga", "dataset=aircraft", f"dataset.root={tmp_path / 'aircraft'}", "dataset.strict=false"]
    try:
        assert main([*args, f"backbone.name={ckpt}", *small, f"out_dir={tmp_path / 'runs'}", "--json"]) == 0
    finally:
        mllm._SUPERVISORS.pop(str(ckpt), None)
    record = _record(capsys.readouterr().out)
    assert record["status"] == "completed" and record["config"]["protocol"] == "saga"
    assert record["protocol"]["name"] == record["protocol"]["fields"]["protocol"] == "saga"  # in the protocol hash
    assert record["selection"]["rule"] == "last"
    assert record["config"]["train"]["lr"] == 2e-5 and record["data"]["transform"] == "saga"


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    """An empty supervisor cache, and a build that fails the test if anything tries one: the shipped build is used."""
    from benchmark.backbones import mllm
    from benchmark.world import supervisor as ws

    monkeypatch.setenv("DML_BENCHMARK_CACHE", str(tmp_path / "cache"))

    def no_build(*args, **kwargs):
        raise AssertionError("the shipped supervisor should have been loaded, not a build started")

    monkeypatch.setattr(ws, "build_supervisor", no_build)
    mllm._SUPERVISORS.pop("attributes-supervisor", None)
    yield
    mllm._SUPERVISORS.pop("attributes-supervisor", None)


@pytest.mark.filterwarnings("ignore:Dataset 'attributes' does not have the expected counts")
def test_plain_saga_command_runs_end_to_end_on_the_shipped_supervisor(empty_cache, tmp_path, capsys):
    """``python -m benchmark run method=saga`` through the CLI on a machine with nothing cached (steps shortened for
    test time): it loads the shipped supervisor and never builds one."""
    from benchmark.cli import main
    from benchmark.world import supervisor as ws

    short = ["train.epochs=1", "train.steps_per_epoch=1", "eval.kmeans_restarts=1", "data.num_workers=0"]
    short += ["dataset.strict=false", "dataset.options.per_class=6", "train.progress=false"]
    assert main(["run", "method=saga", *short, f"out_dir={tmp_path / 'runs'}", "--json"]) == 0
    record = _record(capsys.readouterr().out)
    assert record["status"] == "completed" and record["method"] == "saga" and record["dataset"] == "attributes"
    assert record["config"]["protocol"] == "saga" and record["backbone"]["name"] == "attributes-supervisor"
    assert str(ws.shipped_supervisor()) in record["backbone"]["source"] and ws.BuildConfig().digest() in str(
        record["backbone"]["source"]
    )
    assert record["diagnostics"]["steps"] == 1 and record["diagnostics"]["gen_tokens_per_s"] > 0  # it answered


# ------------------------------------------------------------------------------------------------- sweep specs


def _distinct(cells):
    """One cell per configuration up to the seed (seeds compose alike)."""
    return {json.dumps({k: v for k, v in c.assign.items() if k != "seed"}, default=str): c for c in cells}.values()


def _training_classes(card: dict, cfg) -> int:
    """Expected training classes from the card, after the validation carve-out (carve_validation's rule)."""
    total = card["expected"]["train_classes"]
    if cfg.eval.selection != "val":
        return total
    return total - max(1, int(round(total * cfg.dataset.val_fraction)))


def _tower(backbone: str) -> str:
    """What a run's tower is: the world's judges (saga_world_judges) differ in their language model only and name
    one tower, their shared stage 1; any other backbone is its name."""
    from benchmark.world import supervisor as ws

    fields = {ws.WORLD_NAME: {}, **ws.JUDGE_VARIANTS}.get(backbone)
    return f"{ws.WORLD_NAME} tower {ws.BuildConfig(**fields).stage1_digest()}" if fields is not None else backbone


@pytest.mark.parametrize("name", SPECS)
def test_every_cell_of_every_committed_spec_composes_and_fits_the_sampler(name, tmp_path):
    from benchmark.data.base import load_card

    spec = load_spec(name)
    budgets: dict[str, set] = {}
    for cell in _distinct(expand_cells(spec, tmp_path / "runs")):
        cfg = compose_config(cell.overrides)
        t = cfg.train
        assert t.batch_size % t.m_per_class == 0, cell.cell_id
        assert t.batch_size // t.m_per_class <= _training_classes(load_card(cfg.dataset.name), cfg), cell.cell_id
        budget = (t.epochs, t.steps_per_epoch, t.lr, t.batch_size, t.m_per_class, cfg.data.image_size)
        budgets.setdefault(f"{cfg.dataset.name}/{cfg.protocol}", set()).add(budget + (_tower(cfg.backbone.name),))
    for group, seen in budgets.items():  # one protocol, one dataset: one budget and one tower for every method
        assert len(seen) == 1, f"{name}: methods train different budgets on {group}: {sorted(seen, key=str)}"


def test_paper_tables_and_the_zoo_use_protocols_instead_of_spelling_them_out():
    from benchmark.config import NON_RESULT_KEYS

    for name in ("paper_table1", "paper_table2", "paper_table3", "paper_table4", "zoo", "zoo_attributes", "saga_world"):
        overrides = load_spec(name).data["overrides"]
        assert any(o.startswith("protocol=") for o in overrides), name
        overrides = [o for o in overrides if o.partition("=")[0] not in NON_RESULT_KEYS]  # num_workers, progress
        assert not [o for o in overrides if o.startswith(("train.", "backbone.", "data.", "eval."))], name


def test_recommended_settings_never_change_the_budget_in_a_sweep(tmp_path):
    spec_path = tmp_path / "rec.yaml"
    spec_path.write_text(
        "name: rec\ncluster: cpu\noverrides: [train.epochs=2]\nuse_recommended: true\n"
        "grid: {method: [potential_field], dataset: [attributes], seed: [0]}\n"
    )
    (cell,) = expand_cells(load_spec(spec_path), tmp_path / "runs")
    assert "train.epochs=2" in cell.overrides and "train.epochs=200" not in cell.overrides
    assert "train.lr=0.0005" in cell.overrides  # the rest of its recipe still applies


def _committed_and_cells(spec: str, committed_dir: str, tmp_path: Path) -> tuple[set[str], set[str]]:
    """The committed records' run directories (dataset/method/hash-seed) and those the spec's cells compose to."""
    from benchmark.sweeps.spec import cell_run_dir

    runs = REPO / "leaderboard" / committed_dir / "runs"
    committed = {str(r.parent.relative_to(runs)) for r in runs.rglob("record.json")}
    cells = set()
    for cell in expand_cells(load_spec(spec), tmp_path / "runs"):
        run_dir = cell_run_dir(cell.overrides)[0]
        cells.add(f"{run_dir.parent.parent.name}/{run_dir.parent.name}/{run_dir.name}")
    return committed, cells


@pytest.mark.parametrize(
    ("spec", "runs", "n"),
    [
        ("zoo_attributes", "zoo_attributes", 40),
        ("saga_world", "saga_world", 33),
        ("saga_world_judges", "saga_world_judges", 18),
    ],
)
def test_committed_comparisons_are_exactly_their_specs_cells(spec, runs, n, tmp_path):
    """Every cell of the spec is one committed record (same run directory, i.e. the same config hash), nothing else is
    committed, and every record is complete and from a clean checkout, so the README's one command regenerates the
    committed tables from the committed records."""
    committed, cells = _committed_and_cells(spec, runs, tmp_path)
    assert len(cells) == n and cells == committed
    for record in (REPO / "leaderboard" / runs / "runs").rglob("record.json"):
        data = json.loads(record.read_text())
        assert data["status"] == "completed" and data["git"]["dirty"] is False, record


def test_the_attributes_world_ran_on_the_shipped_supervisor():
    """Every committed saga_world record ran on the shipped supervisor (recipe v4, its digest in the record); the v3
    experiment kept beside it ran on the v3 build whose card is kept with it."""
    from benchmark.world import supervisor as ws

    shipped = ws.shipped_supervisor()
    assert shipped is not None
    card = ws.read_card(shipped)
    assert card["recipe_version"] == ws.RECIPE_VERSION == 4 and card["digest"] == ws.BuildConfig().digest()
    records = list((REPO / "leaderboard" / "saga_world" / "runs").rglob("record.json"))
    assert records
    for record in records:
        assert card["digest"] in json.loads(record.read_text())["backbone"]["source"], record
    v3 = json.loads((REPO / "leaderboard" / "saga_world_v3" / "supervisor_card_v3.json").read_text())
    assert v3["recipe_version"] == 3
    for record in (REPO / "leaderboard" / "saga_world_v3" / "runs").rglob("record.json"):
        assert v3["digest"] in json.loads(record.read_text())["backbone"]["source"], record


def test_sampler_constraints_fail_at_compose_with_the_batch_that_fits():
    with pytest.raises(ConfigError, match=r"40 training classes after the validation carve-out.*batch_size=360"):
        compose_config(["method=hyp_vit", "dataset=aircraft", "train.m_per_class=9", "train.batch_size=900"])
    with pytest.raises(ConfigError, match="eval.selection=last"):
        compose_config(["dataset=digits", "eval.selection=val"])


def test_unknown_protocol_names_the_nearest():
    from benchmark.registry import UnknownNameError

    with pytest.raises(UnknownNameError, match="Unknown protocol 'sag'. Did you mean 'saga'"):
        compose_config(["protocol=sag"])
