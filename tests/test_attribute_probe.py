"""Attribute probes (benchmark/evaluation/attribute_probe.py), their place in the run record, and the world report.

The probe is checked on synthetic embeddings whose content is known (an attribute written linearly into them, one
absent, class identity without attributes); the engine wiring on a real miniature run of the attribute dataset; the
report on records made from a real run record with their method, SAGA switches, seeds and numbers varied.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import statistics
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from benchmark.config import compose_config, config_hash
from benchmark.data.attributes import ATTRIBUTES, class_attribute_table
from benchmark.engine.run import main as run_main
from benchmark.evaluation.attribute_probe import ProbeError, class_attributes_by_id, format_probe, probe_attributes
from benchmark.world.report import ROW_ORDER, load_runs, row_label, write_world_report
from tests.attribute_runs import attributes_budget

# The default attribute dataset's 48 test classes (ids 48-95), 30 images each: the probe's real input size.
TABLE = class_attribute_table(seed=0, classes=96)
ATTRS = class_attributes_by_id(list(TABLE), TABLE)
LABELS = np.repeat(np.arange(48, 96), 30)


def _values(attribute: str) -> np.ndarray:
    return np.array([ATTRS[int(c)][attribute] for c in LABELS])


def _one_hot(values: np.ndarray) -> np.ndarray:
    return (values[:, None] == np.unique(values)[None, :]).astype(float)


# ----------------------------------------------------------------------------------------------- the probe
# A factorial class table: every combination of shape (4 values) x colour (3) x size (4) is one class, so the
# attributes are independent across classes and knowing one says nothing about another.
FACTORIAL = {c: {"shape": "abcd"[c % 4], "colour": "xyz"[(c // 4) % 3], "size": "klmn"[c // 12]} for c in range(48)}
FACTORIAL_LABELS = np.repeat(np.arange(48), 20)


def test_an_encoded_attribute_is_read_and_an_absent_one_is_at_chance():
    rng = np.random.default_rng(0)
    shape = np.array([FACTORIAL[int(c)]["shape"] for c in FACTORIAL_LABELS])
    code = 2.0 * _one_hot(shape) + 0.3 * rng.normal(size=(len(shape), 4))
    x = np.hstack([code, rng.normal(size=(len(shape), 40))])  # shape written in, the rest noise
    result = probe_attributes(x, FACTORIAL_LABELS, FACTORIAL)
    assert list(result["accuracy"]) == ["shape", "colour", "size"] and not result["skipped"]
    assert result["accuracy"]["shape"] > 0.95 and result["chance"]["shape"] == pytest.approx(0.25, abs=0.05)
    for attribute in ("colour", "size"):  # not in the embedding: no better than chance
        assert result["accuracy"][attribute] < result["chance"][attribute] + 0.08, attribute
        assert result["other_attributes"][attribute] < result["chance"][attribute] + 0.08, attribute
    assert result["mean_accuracy"] == pytest.approx(np.mean(list(result["accuracy"].values())))
    assert result["mean_chance"] == pytest.approx(np.mean(list(result["chance"].values())))
    assert (result["n_images"], result["n_classes"], result["seed"]) == (960, 48, 0)
    assert result == probe_attributes(x, FACTORIAL_LABELS, FACTORIAL)  # deterministic
    json.dumps(result)  # goes into the record as it is


def test_correlated_attributes_are_read_through_each_other_up_to_the_other_attributes_level():
    """In the attribute dataset the test classes' attributes are correlated (classes are one-attribute mutations
    of each other): an embedding of body colour alone lets a probe read the border style well above chance. The
    ``other_attributes`` level bounds what such correlation explains; the encoded attribute itself exceeds it."""
    rng = np.random.default_rng(0)
    colour = _one_hot(_values("body color"))
    x = np.hstack([2.0 * colour + 0.3 * rng.normal(size=colour.shape), rng.normal(size=(len(LABELS), 20))])
    result = probe_attributes(x, LABELS, ATTRS)
    assert list(result["accuracy"]) == list(ATTRIBUTES)
    assert result["accuracy"]["body color"] > 0.95 > result["other_attributes"]["body color"] + 0.2
    assert result["accuracy"]["border style"] > result["chance"]["border style"] + 0.15  # read through colour
    for attribute in ATTRIBUTES:
        if attribute != "body color":
            assert result["accuracy"][attribute] < result["other_attributes"][attribute] + 0.05, attribute


def test_a_probe_that_could_only_memorise_classes_scores_at_chance():
    """Embeddings carry class identity (a random centre per class) and nothing else about the attributes: a probe
    scored on images of its training classes would recall each class's values; the class-disjoint probe cannot."""
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(96, 64))
    x = centres[LABELS] + 0.3 * rng.normal(size=(len(LABELS), 64))
    result = probe_attributes(x, LABELS, ATTRS)
    assert result["mean_accuracy"] < result["mean_chance"] + 0.05
    # The same linear probe scored on held-out images of SEEN classes memorises them: the check above can fail.
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    values = _values("body shape")
    seen = cross_val_predict(probe, x, values, cv=StratifiedKFold(2, shuffle=True, random_state=0))
    assert (seen == values).mean() > 0.9 > result["accuracy"]["body shape"] + 0.4


def test_the_probe_runs_on_the_datasets_test_split():
    """The real input size (48 test classes x 30 images, 128-d); its timing is python -m benchmark.perf.probe."""
    x = np.random.default_rng(2).normal(size=(1440, 128)).astype(np.float32)
    result = probe_attributes(x, LABELS, ATTRS)
    assert result["n_images"] == 1440 and result["n_classes"] == 48
    assert set(result["accuracy"]) | set(result["skipped"]) == set(ATTRIBUTES)
    assert all(0.0 <= v <= 1.0 for v in result["accuracy"].values())


def test_an_attribute_with_one_value_is_skipped_with_the_reason():
    attrs = {c: {**a, "border style": "thin"} for c, a in ATTRS.items()}
    result = probe_attributes(np.random.default_rng(3).normal(size=(1440, 8)), LABELS, attrs)
    assert "border style" not in result["accuracy"] and "one value ('thin')" in result["skipped"]["border style"]


@pytest.mark.parametrize(
    ("embeddings", "labels", "attrs", "message"),
    [
        (np.zeros(1440), LABELS, ATTRS, "N×D array"),
        (np.zeros((1440, 4)), LABELS[:-1], ATTRS, "vector of 1440 class ids"),
        (np.full((1440, 4), np.nan), LABELS, ATTRS, "NaN"),
        (np.zeros((1440, 4)), LABELS.astype(float), ATTRS, "integer class ids"),
        (np.zeros((60, 4)), LABELS[:60], ATTRS, "at least 4 classes"),
        (
            np.zeros((1440, 4)),
            LABELS,
            {c: a for c, a in ATTRS.items() if c != 50},
            r"no entry for class id\(s\) \[50\]",
        ),
        (np.zeros((1440, 4)), LABELS, {**ATTRS, 60: {"pattern": "dots"}}, "same attributes"),
    ],
)
def test_bad_input_is_refused_with_what_was_expected(embeddings, labels, attrs, message):
    with pytest.raises(ProbeError, match=message):
        probe_attributes(embeddings, labels, attrs)


# ----------------------------------------------------------------------------------------------- the engine
# A miniature attributes run: 16 training and 16 unseen test classes of 12 images at 32 px, 1 epoch of 2 steps.
TINY = attributes_budget(classes=32, per_class=12, epochs=1, steps_per_epoch=2)


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """Real miniature runs on the attribute dataset (16 unseen test classes): pretrained and proxy_anchor."""
    out = tmp_path_factory.mktemp("probe_runs")
    printed = {}
    for method in ("pretrained", "proxy_anchor"):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf), pytest.warns(UserWarning, match="expected counts"):
            assert run_main([*TINY, f"method={method}", f"out_dir={out}"]) == 0
        printed[method] = buf.getvalue()
    records = {p.parent.parent.name: json.loads(p.read_text()) for p in out.rglob("record.json")}
    return out, records, printed


def test_a_run_on_the_attribute_dataset_records_and_prints_the_probe(tiny_runs):
    out, records, printed = tiny_runs
    for method, record in records.items():
        probe = record["attribute_probe"]
        assert probe["n_classes"] == 16 and probe["n_images"] == 192
        assert set(probe["accuracy"]) | set(probe["skipped"]) == set(ATTRIBUTES)
        assert all(0 <= v <= 1 for v in [*probe["accuracy"].values(), *probe["chance"].values()])
        assert format_probe(probe) in printed[method]
        assert "attribute probe (linear, class-disjoint): mean" in printed[method]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), pytest.warns(UserWarning, match="expected counts"):  # complete: not rerun
        assert run_main([*TINY, "method=pretrained", f"out_dir={out}"], as_json=True) == 0
    text = buf.getvalue()
    assert json.loads(text[text.index("{\n") :])["attribute_probe"] == records["pretrained"]["attribute_probe"]
    # chance depends on the labels and the folds only: the same for every method
    assert records["pretrained"]["attribute_probe"]["chance"] == records["proxy_anchor"]["attribute_probe"]["chance"]
    assert (
        records["pretrained"]["attribute_probe"]["accuracy"] != records["proxy_anchor"]["attribute_probe"]["accuracy"]
    )


def test_the_probe_can_be_turned_off_without_changing_the_run(tiny_runs, tmp_path):
    out, records, _ = tiny_runs
    overrides = [*TINY, "method=pretrained", f"out_dir={tmp_path}"]
    with pytest.warns(UserWarning, match="expected counts"):
        assert run_main([*overrides, "eval.attribute_probe=false"]) == 0
    (path,) = tmp_path.rglob("record.json")
    record = json.loads(path.read_text())
    assert record["attribute_probe"] is None
    assert record["config_hash"] == records["pretrained"]["config_hash"]  # a measurement switch, not another run
    assert record["metrics"]["test"] == records["pretrained"]["metrics"]["test"]
    assert config_hash(compose_config([*overrides, "eval.attribute_probe=false"])) == config_hash(
        compose_config(overrides)
    )


def test_a_dataset_without_attributes_records_no_probe(tiny_overrides, capsys):
    assert run_main([*tiny_overrides, "method=pretrained"]) == 0
    assert "attribute probe" not in capsys.readouterr().out
    (path,) = Path(tiny_overrides[-1].split("=", 1)[1]).rglob("record.json")
    assert json.loads(path.read_text())["attribute_probe"] is None


# ----------------------------------------------------------------------------------------------- the report
def _variant(template: dict, method: str, seed: int, level: float, grpo=None, kl=None, lr=1e-3) -> dict:
    """A copy of a real record as another method / SAGA ablation / seed, with known metrics and probe numbers."""
    rec = copy.deepcopy(template)
    rec["method"], rec["seed"] = method, seed
    rec["config"]["method"] = {"name": method, "lr_note": lr}
    if method == "saga":
        rec["config"]["method"].update(use_grpo=grpo, use_kl=kl)
    rec["config_hash"] = f"{method[:3]}{int(bool(grpo))}{int(bool(kl))}{int(lr * 1e4):03d}"
    rec["run_id"] = f"{method}-attributes-{rec['config_hash']}-s{seed}"
    rec["metrics"]["test"] = {k: min(1.0, level + 0.05 * i) for i, k in enumerate(rec["metrics"]["test"])}
    probe = rec["attribute_probe"]
    probe["accuracy"] = {a: min(1.0, level + 0.02 * i + 0.01 * seed) for i, a in enumerate(probe["accuracy"])}
    probe["mean_accuracy"] = float(np.mean(list(probe["accuracy"].values())))
    return rec


def _write(root: Path, rec: dict) -> Path:
    d = root / rec["dataset"] / rec["method"] / f"{rec['config_hash']}-s{rec['seed']}"
    d.mkdir(parents=True)
    (d / "record.json").write_text(json.dumps(rec))
    return d


PLAN = [  # (method, use_grpo, use_kl, level, seeds)
    ("saga", True, True, 0.70, 3),
    ("triplet", None, None, 0.40, 1),
    ("saga", True, False, 0.62, 2),
    ("potential_field", None, None, 0.55, 2),
    ("saga", False, True, 0.60, 2),
    ("proxy_anchor", None, None, 0.50, 3),
    ("pretrained", None, None, 0.30, 2),
]
EXPECTED_ROWS = [
    "pretrained",
    "proxy_anchor",
    "potential_field",
    "saga (KL only)",
    "saga (GRPO only)",
    "saga",
    "triplet",
]


@pytest.fixture
def report_runs(tiny_runs, tmp_path):
    template = tiny_runs[1]["pretrained"]
    root, written = tmp_path / "runs", []
    for method, grpo, kl, level, seeds in PLAN:
        for seed in range(seeds):
            written.append(_variant(template, method, seed, level, grpo, kl))
            _write(root, written[-1])
    return root, written


def test_row_labels_follow_the_saga_switches():
    assert row_label("proxy_anchor", {"method": {"use_kl": False}}) == "proxy_anchor"
    cases = {(True, True): "saga", (True, False): "saga (GRPO only)", (False, True): "saga (KL only)"}
    for (grpo, kl), label in cases.items():
        assert row_label("saga", {"method": {"use_grpo": grpo, "use_kl": kl}}) == label
    assert row_label("saga", {"method": {"use_grpo": False, "use_kl": False}}) == "saga (no GRPO, no KL)"
    # the paper's literal KL weight is a row of its own (SAGA's default lambda_kl is ours); it matters only with KL
    paper = {"use_grpo": True, "use_kl": True, "lambda_kl": 1.0}
    assert row_label("saga", {"method": paper}) == "saga (λ_kl = 1)" == ROW_ORDER[6]
    assert row_label("saga", {"method": paper | {"use_grpo": False}}) == "saga (KL only, λ_kl = 1)"
    assert row_label("saga", {"method": paper | {"use_kl": False}}) == "saga (GRPO only)"
    assert row_label("saga", {"method": paper | {"lambda_kl": 0.01}}) == "saga"


def test_the_report_writes_its_three_files_with_rows_in_order(report_runs, tmp_path):
    root, written = report_runs
    paths = write_world_report(root, tmp_path / "report")
    assert set(paths) == {"csv", "md", "png"} and all(p.parent == tmp_path / "report" for p in paths.values())
    assert not list((tmp_path / "report").glob(".*.tmp"))  # atomic writes leave no temporary file
    results = pd.read_csv(paths["csv"])
    assert len(results) == len(written)
    assert list(dict.fromkeys(results["row"])) == EXPECTED_ROWS
    assert EXPECTED_ROWS[:6] == list(ROW_ORDER[:6])
    saga = results[results["method"] == "saga"]
    assert set(zip(saga["row"], saga["use_grpo"], saga["use_kl"], strict=True)) == {
        ("saga", True, True),
        ("saga (GRPO only)", True, False),
        ("saga (KL only)", False, True),
    }
    # summary.md: one line per row in order, mean ± sample std computed here with statistics
    md = paths["md"].read_text()
    table_rows = [line.split(" | ")[0].strip("| ") for line in md.splitlines() if line.startswith("| ")]
    retrieval = table_rows[1 : 1 + len(EXPECTED_ROWS)]
    assert retrieval == EXPECTED_ROWS
    saga_r1 = [r["metrics"]["test"]["recall@1"] for r in written if r["method"] == "saga" and r["config"]["method"]["use_kl"] and r["config"]["method"]["use_grpo"]]  # fmt: skip
    saga_line = next(line for line in md.splitlines() if line.startswith("| saga | 3 |"))
    assert f"{100 * statistics.mean(saga_r1):.1f} ± {100 * statistics.stdev(saga_r1):.1f}" in saga_line
    attr = next(iter(written[0]["attribute_probe"]["accuracy"]))
    pa = [r["attribute_probe"]["accuracy"][attr] for r in written if r["method"] == "proxy_anchor"]
    pa_probe_line = [line for line in md.splitlines() if line.startswith("| proxy_anchor | 3 |")][1]
    assert pa_probe_line.split(" | ")[2] == f"{100 * statistics.mean(pa):.1f} ± {100 * statistics.stdev(pa):.1f}"
    chance = written[0]["attribute_probe"]["chance"][attr]
    assert f"| *chance (majority value)* | | {100 * chance:.1f} |" in md
    other = written[0]["attribute_probe"]["other_attributes"][attr]
    assert f"| *from the other attributes* | | {100 * other:.1f} |" in md
    assert results[f"other:{attr}"].tolist() == pytest.approx([other] * len(written), abs=1e-6)
    png = paths["png"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000


def test_one_label_over_two_configurations_is_split_by_config_hash(report_runs, tiny_runs):
    root, _ = report_runs
    _write(root, _variant(tiny_runs[1]["pretrained"], "saga", 0, 0.75, True, True, lr=3e-3))
    runs, _, _ = load_runs(root)
    saga_rows = sorted(r for r in set(runs["row"]) if r.startswith("saga ["))
    assert saga_rows == ["saga [sag11010]", "saga [sag11030]"]
    assert list(dict.fromkeys(runs["row"]))[-3:] == [*saga_rows, "triplet"]


def test_a_run_without_probe_results_is_shown_and_said(report_runs, tmp_path):
    root, written = report_runs
    rec = copy.deepcopy(written[-1])
    rec.update(seed=7, run_id="pretrained-off-s7", attribute_probe=None)
    _write(root, rec)
    md = write_world_report(root, tmp_path / "report")["md"].read_text()
    assert "Runs without probe results:" in md and "no probe in the record" in md
    assert any(line.startswith("| pretrained | 3 |") for line in md.splitlines())  # retrieval: 3 seeds
    assert any(line.startswith("| pretrained | 2 |") for line in md.splitlines())  # probe: 2 seeds


def test_the_report_refuses_an_empty_or_mixed_directory(report_runs, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="No finished run records"):
        write_world_report(tmp_path / "empty", tmp_path / "report")
    root, written = report_runs
    other = copy.deepcopy(written[0])
    other.update(dataset="blobs", run_id="x-blobs")
    _write(root, other)
    with pytest.raises(ValueError, match="mix experiments"):
        write_world_report(root, tmp_path / "report")
    assert not (tmp_path / "report").exists()


# ------------------------------------------------------------------------- take 3: controls, X, judge curve
def test_row_labels_name_the_controls_and_the_grpo_weight():
    grpo_only = {"use_grpo": True, "use_kl": False}
    assert row_label("saga", {"method": grpo_only | {"advantages": "shuffled"}}) == ROW_ORDER[8]
    assert row_label("saga", {"method": grpo_only | {"reward": "descriptions"}}) == ROW_ORDER[9]
    assert ROW_ORDER[8] == "saga (GRPO only, shuffled advantages)" and ROW_ORDER[9] == "saga (GRPO only, rule judge)"
    assert row_label("saga", {"method": grpo_only | {"lambda_grpo": 0.3}}) == "saga (GRPO only, λ_grpo = 0.3)"
    assert row_label("saga", {"method": {"lambda_grpo": 0.1}}) == "saga (λ_grpo = 0.1)"
    # without GRPO the GRPO settings do nothing, so they do not make a row of their own
    off = {"use_grpo": False, "use_kl": False, "advantages": "shuffled", "lambda_grpo": 0.1}
    assert row_label("saga", {"method": off}) == "saga (no GRPO, no KL)"


def test_confusable_classes_are_those_with_a_one_attribute_neighbour_in_it():
    from benchmark.world.report import confusable_in

    classes = {
        0: {"shape": "a", "colour": "x"},
        1: {"shape": "b", "colour": "x"},  # 0's neighbour in shape
        2: {"shape": "b", "colour": "y"},  # 1's neighbour in colour
        3: {"shape": "c", "colour": "z"},  # nobody's neighbour
    }
    assert confusable_in(classes, "shape") == {0, 1}
    assert confusable_in(classes, "colour") == {1, 2}


def test_recall_on_queries_confusable_in_x_and_the_rest_make_up_recall_at_1(tiny_runs):
    """From a real run's per-query hits: the two parts weigh back to the record's R@1 exactly."""
    from benchmark.world.report import _confusable_recall, _test_classes, confusable_in

    record = tiny_runs[1]["proxy_anchor"]
    labels, classes = _test_classes(record)
    parts = _confusable_recall(record, "appendage")
    n_x = int(np.isin(labels, sorted(confusable_in(classes, "appendage"))).sum())
    assert 0 < n_x < len(labels)
    total = (n_x * parts["recall@1_confusable_in_x"] + (len(labels) - n_x) * parts["recall@1_rest"]) / len(labels)
    assert total == pytest.approx(record["metrics"]["test"]["recall@1"], abs=1e-9)
    assert np.isnan(_confusable_recall(record, None)["recall@1_confusable_in_x"])
    old = copy.deepcopy(record)
    old.pop("per_query", None)  # an older record: no hits, no numbers (not a crash)
    assert np.isnan(_confusable_recall(old, "appendage")["recall@1_rest"])


def _saga(template: dict, seed: int, r1: float, source: str = "", **method) -> dict:
    rec = _variant(template, "saga", seed, r1, method.pop("use_grpo", True), method.pop("use_kl", False))
    rec["config"]["method"].update(method)
    key = json.dumps([rec["config"]["method"], source], sort_keys=True).encode()
    rec["config_hash"] = "s" + hashlib.sha256(key).hexdigest()[:7]
    rec["run_id"] = f"saga-attributes-{rec['config_hash']}-s{seed}"
    rec["metrics"]["test"]["recall@1"] = r1
    rec["diagnostics"] = {"reward_mean": 0.5 + r1 / 10, "grad_norm_grpo_tower": 0.2, "grad_norm_dml_tower": 0.05}
    if source:
        rec["backbone"] = dict(rec["backbone"], name=source.split(" ")[0].removeprefix("hf:"), source=source)
    return rec


def test_the_report_tests_each_saga_row_against_its_pooler_alone(tiny_runs, tmp_path):
    from scipy import stats

    template, root = tiny_runs[1]["pretrained"], tmp_path / "runs"
    base, grpo = [0.80, 0.82, 0.81], [0.76, 0.78, 0.75]
    for seed, (b, g) in enumerate(zip(base, grpo, strict=True)):
        _write(root, _saga(template, seed, b, use_grpo=False))
        _write(root, _saga(template, seed, g))
    md = write_world_report(root, tmp_path / "report", "appendage")["md"].read_text()
    section = md.split("## SAGA's MLLM terms against its pooler alone", 1)[1]
    line = next(x for x in section.splitlines() if x.startswith("| saga (GRPO only) | 3 |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    p = stats.ttest_ind(grpo, base, equal_var=False).pvalue
    assert cells[3] == f"{100 * (np.mean(grpo) - np.mean(base)):+.1f}" and cells[4] == f"{p:.3f}"
    assert cells[-1] == "4.00"  # GRPO/DML gradient ratio 0.2 / 0.05
    assert "Training reward against test R@1 over the 3 runs with GRPO: Pearson r = +1.00" in md


def _judge_card(path: Path, digest: str, verdict: float) -> None:
    from benchmark.world.supervisor import CARD_FILE

    held = {"verdict_accuracy": verdict, "verdict_accuracy_same": verdict, "by_kind": {
        "same": {"verdict_accuracy": verdict}, "neighbour": {"verdict_accuracy": verdict - 0.1}}}  # fmt: skip
    path.mkdir(parents=True)
    (path / CARD_FILE).write_text(json.dumps({"digest": digest, "metrics": {"held_out": held}}))


def test_the_judge_curve_puts_grpos_effect_beside_each_builds_verdict_accuracy(tiny_runs, tmp_path):
    from scipy import stats

    from benchmark.cli import main

    template = tiny_runs[1]["pretrained"]
    builds = {"aaaaaaaaaaaa": 0.6, "bbbbbbbbbbbb": 0.9}
    effect = {"aaaaaaaaaaaa": -0.03, "bbbbbbbbbbbb": 0.02}
    for digest, verdict in builds.items():
        where = tmp_path / "cache" / f"attributes-supervisor-{digest}"
        _judge_card(where, digest, verdict)
        source = f"hf:attributes-supervisor ({where})"
        for seed in range(3):
            _write(tmp_path / "runs", _saga(template, seed, 0.80 + 0.01 * seed, source, use_grpo=False))
            _write(tmp_path / "runs", _saga(template, seed, 0.80 + effect[digest] + 0.005 * seed, source))
    _write(tmp_path / "runs", _saga(template, 0, 0.5, source, advantages="shuffled"))  # a control: not on the curve
    out = tmp_path / "curve"
    assert main(["world-report", str(tmp_path / "runs"), "--judges", "--out", str(out)]) == 0
    table = pd.read_csv(out / "judges.csv")
    assert table["verdict_accuracy"].tolist() == [0.6, 0.9] and table["n_grpo"].tolist() == [3, 3]
    grpo = [0.80 + effect["aaaaaaaaaaaa"] + 0.005 * s for s in range(3)]
    base = [0.80 + 0.01 * s for s in range(3)]
    assert table["delta_recall_at_1"][0] == pytest.approx(np.mean(grpo) - np.mean(base), abs=1e-6)
    assert table["welch_p"][0] == pytest.approx(stats.ttest_ind(grpo, base, equal_var=False).pvalue, abs=1e-6)
    assert table["grad_ratio_grpo_dml"].tolist() == pytest.approx([4.0, 4.0])
    assert (out / "judges.png").read_bytes()[:4] == b"\x89PNG" and "| verdict acc. |" in (out / "judges.md").read_text()
    # the builds' cards travel with the report: it is rebuilt from the records alone once the cache is gone
    import shutil

    shutil.rmtree(tmp_path / "cache")
    assert main(["world-report", str(tmp_path / "runs"), "--judges", "--out", str(out)]) == 0
    assert pd.read_csv(out / "judges.csv")["verdict_accuracy"].tolist() == [0.6, 0.9]


def test_the_judge_curve_keeps_runs_of_two_builds_that_share_a_config_hash(tiny_runs, tmp_path):
    """Runs on different builds share a config hash (it names `attributes-supervisor`, not the build): read from
    two directories, neither build's runs may be dropped as the other's duplicates."""
    from benchmark.world.curve import load_judge_runs

    template = tiny_runs[1]["pretrained"]
    for digest, verdict in {"cccccccccccc": 0.6, "dddddddddddd": 0.9}.items():
        where = tmp_path / "cache" / f"attributes-supervisor-{digest}"
        _judge_card(where, digest, verdict)
        for seed in range(2):
            for grpo in (True, False):
                rec = _saga(template, seed, 0.8, use_grpo=grpo)  # the same hash for both builds
                rec["backbone"] = dict(rec["backbone"], source=f"hf:attributes-supervisor ({where})")
                _write(tmp_path / digest, rec)
    runs, cards = load_judge_runs([tmp_path / "cccccccccccc", tmp_path / "dddddddddddd"], tmp_path / "cards")
    assert set(cards) == {"cccccccccccc", "dddddddddddd"}
    assert runs.groupby("digest").size().to_dict() == {"cccccccccccc": 4, "dddddddddddd": 4}
