"""Leaderboard: gathering records, aggregation, bad input, output formats, the committed leaderboard, the HTML page.

Records are built here to the schema of RECORD_SCHEMA.md (schema_version 1); expected numbers are recomputed in
the tests with :mod:`statistics`, independently of pandas.
"""

from __future__ import annotations

import copy
import json
import os
import random
import re
import shlex
import shutil
import statistics
import struct
from pathlib import Path

import pandas as pd
import pytest

from benchmark.leaderboard import gather as lb
from benchmark.leaderboard.render import md_escape
from benchmark.leaderboard.reported import ReportedDataError, load_reported, load_reported_file

REPO = Path(__file__).resolve().parents[1]
KS = (1, 2, 4, 8)

BASE = {
    "schema_version": 1,
    "run_id": "?",
    "status": "completed",
    "error": None,
    "method": "proxy_anchor",
    "dataset": "attributes",
    "seed": 0,
    "backbone": {"name": "resnet18", "kind": "timm", "pretrained": False, "source": "timm:resnet18 (random init)",
                 "pooling": "mean", "embedding_dim": 128, "feature_dim": 512, "freeze_bn": True},
    "data": {"image_size": 64, "train_transform": "classic: RandomResizedCrop(64)+HFlip",
             "test_transform": "resize 73, centre crop 64", "normalization": {"mean": [0.5] * 3, "std": [0.5] * 3},
             "interpolation": "bilinear"},
    "splits": {"train": {"classes": 38, "images": 1140}, "val": {"classes": 10, "images": 300},
               "test": {"classes": 48, "images": 1440}},
    "selection": {"rule": "val", "metric": "recall@1", "epoch": 3},
    "metrics": {"test": {}, "val": None},
    "history": [{"epoch": 1, "loss": 1.2}],
    "method_info": {"paper": "x", "year": 2020, "param_groups": []},
    "diagnostics": {},
    "protocol": {"hash": "a1b2c3d4e5f6", "version": 1, "fields": {}},
    "config_hash": "?",
    "config": {},
    "git": {"sha": "0123456789abcdef0123", "dirty": False},
    "versions": {"python": "3.11.7"},
    "timings": {"train_s": 1.0, "eval_s": 0.1, "total_s": 1.1, "started": "2026-11-26T08:00:00Z",
                "finished": "2026-11-26T08:01:00Z"},
    "evaluation": {"tie_rule": "stable by index", "kmeans": {"seed": 0, "restarts": 10}, "ks": [1, 2, 4, 8]},
}  # fmt: skip


def make_record(method: str, dataset: str, seed: int, metrics: dict, **over) -> dict:
    """A completed schema-1 record; ``over`` replaces top-level keys (``backbone``/``protocol`` dicts are merged)."""
    rec = copy.deepcopy(BASE)
    rec.update(method=method, dataset=dataset, seed=seed, config_hash=over.pop("config_hash", f"{method}-{dataset}"))
    rec["run_id"] = f"{method}-{dataset}-{rec['config_hash']}-s{seed}"
    rec["metrics"]["test"] = dict(metrics)
    for key in ("backbone", "protocol", "selection", "timings"):
        rec[key].update(over.pop(key, {}))
    rec.update(over)
    return rec


def write_run(root: Path, rec: dict, name: str | None = None) -> Path:
    """A run directory as the engine lays it out: config.yaml, metrics.jsonl, checkpoints/, record.json."""
    d = root / rec["dataset"] / rec["method"] / (name or rec["run_id"])
    (d / "checkpoints").mkdir(parents=True, exist_ok=True)
    (d / "config.yaml").write_text("seed: 0\n")
    (d / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "loss": 1.0}) + "\n")
    (d / "record.json").write_text(json.dumps(rec))
    return d


def random_metrics(rng: random.Random, level: float) -> dict:
    m = {}
    r = level + rng.uniform(-0.03, 0.03)
    for k in KS:
        m[f"recall@{k}"] = min(1.0, r)
        r += rng.uniform(0.01, 0.08)
    m.update({"map@r": level / 3 + rng.uniform(0, 0.02), "r_precision": level / 2 + rng.uniform(0, 0.02)})
    m["nmi"] = 0.4 + level / 3 + rng.uniform(-0.01, 0.01)
    return m


# Levels per method; "pretrained" has only 2 seeds (flagged), the others 3.
PLAN = {("proxy_anchor", 0.55, 3), ("saga", 0.65, 3), ("pretrained", 0.35, 2)}


@pytest.fixture
def runs_dir(tmp_path: Path) -> tuple[Path, list[dict]]:
    rng = random.Random(1234)
    records = []
    for dataset in ("cub", "cars"):
        for method, level, n in sorted(PLAN):
            for seed in range(n):
                rec = make_record(method, dataset, seed, random_metrics(rng, level))
                write_run(tmp_path / "runs", rec)
                records.append(rec)
    return tmp_path / "runs", records


def expected_aggregate(records: list[dict], reference: str) -> dict:
    """Mean / sample std / n per (dataset, method) and deltas, computed with the statistics module."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["dataset"], r["method"]), []).append(r["metrics"]["test"])
    exp = {}
    for key, ms in groups.items():
        e = {"n": len(ms)}
        for m in lb.METRICS:
            vals = [x[m] for x in ms]
            e[m] = (statistics.mean(vals), statistics.stdev(vals))
        exp[key] = e
    for (dataset, _), e in exp.items():
        for m in lb.METRICS:
            e[f"delta_{m}"] = e[m][0] - exp[(dataset, reference)][m][0]
    return exp


def test_gather_one_row_per_run_with_its_description(runs_dir):
    root, records = runs_dir
    runs, skipped = lb.gather([root])
    assert skipped == []
    assert len(runs) == len(records) == 16
    assert list(runs.columns) == lb.RUN_COLUMNS
    row = runs[(runs["method"] == "saga") & (runs["dataset"] == "cub") & (runs["seed"] == 2)].iloc[0]
    rec = next(r for r in records if (r["method"], r["dataset"], r["seed"]) == ("saga", "cub", 2))
    assert row["backbone"] == "resnet18" and row["embedding_dim"] == 128 and row["pooling"] == "mean"
    assert row["image_size"] == 64 and row["train_transform"].startswith("classic")
    assert row["selection_rule"] == "val" and row["protocol_hash"] == "a1b2c3d4e5f6"
    assert row["git_sha"] == "0123456789abcdef0123" and row["config_hash"] == "saga-cub"
    assert row["recall@1"] == rec["metrics"]["test"]["recall@1"] and row["nmi"] == rec["metrics"]["test"]["nmi"]


def test_aggregate_matches_an_independent_computation(runs_dir):
    root, records = runs_dir
    runs, _ = lb.gather([root])
    agg = lb.aggregate(runs, reference="proxy_anchor")
    exp = expected_aggregate(records, "proxy_anchor")
    assert len(agg) == len(exp) == 6
    for _, row in agg.iterrows():
        e = exp[(row["dataset"], row["method"])]
        assert row["n_seeds"] == e["n"]
        for m in lb.METRICS:
            assert row[f"{m}_mean"] == pytest.approx(e[m][0], abs=1e-12)
            assert row[f"{m}_std"] == pytest.approx(e[m][1], abs=1e-12)
            assert row[f"delta_{m}"] == pytest.approx(e[f"delta_{m}"], abs=1e-12)
        assert row["fewer_seeds"] == (row["method"] == "pretrained")
    # Stable order: dataset, then method.
    assert list(zip(agg["dataset"], agg["method"], strict=True)) == sorted(exp)


def test_protocols_selection_rules_and_configs_are_never_merged(tmp_path):
    rng = random.Random(0)
    recs = [make_record("pa", "cub", s, random_metrics(rng, 0.5)) for s in range(2)]
    # Same config and seeds under another protocol (another hash): results of their own, not duplicates.
    recs += [make_record("pa", "cub", s, random_metrics(rng, 0.5), protocol={"hash": "ffff0000ffff"}) for s in range(2)]
    recs += [make_record("pa", "cub", 0, random_metrics(rng, 0.5), config_hash="pa-test", selection={"rule": "test"})]
    recs += [make_record("pa", "cub", s, random_metrics(rng, 0.6), config_hash="pa-lr2") for s in range(2)]
    for i, r in enumerate(recs):
        write_run(tmp_path / "runs", r, name=f"run{i}")
    runs, skipped = lb.gather([tmp_path / "runs"])
    assert skipped == [] and len(runs) == len(recs)
    agg = lb.aggregate(runs)
    assert len(agg) == 4
    main_table = agg[(agg["protocol_hash"] == "a1b2c3d4e5f6") & (agg["selection_rule"] == "val")]
    assert sorted(main_table["entry"]) == ["pa [pa-cub]", "pa [pa-lr2]"]  # two configs of one method: two rows
    out = lb.build_leaderboard([tmp_path / "runs"], tmp_path / "out", formats=["md", "tex"], reported_dir=None)
    readme = out["md"].read_text()
    assert readme.count("### Protocol ") == 3
    assert "BEST EPOCH ON THE TEST SET" in readme
    assert out["tex"].read_text().count(r"\begin{tabular}") == 3


BAD_CASES = {
    "corrupted": ("{not json", "corrupted or truncated JSON"),
    "truncated": (None, "corrupted or truncated JSON"),
    "top_level_list": ("[1, 2]", "not a JSON object"),
    "running": ({"status": "running"}, "unfinished: status 'running'"),
    "failed": ({"status": "failed", "error": "CUDA out of memory"}, "failed run: CUDA out of memory"),
    "schema_0": ({"schema_version": 0}, "older record schema"),
    "no_schema": ({"schema_version": None}, "older record schema"),
    "schema_2": ({"schema_version": 2}, "unknown schema_version 2"),
    "no_metric": ({"drop_metric": "map@r"}, "partial record: missing metrics.test.map@r"),
    "no_protocol": ({"protocol": None}, "partial record: missing protocol"),
    "out_of_range": ({"set_metric": ("recall@1", 61.0)}, "not a number in [0, 1]"),
    "nan_metric": ({"set_metric": ("nmi", float("nan"))}, "not a number in [0, 1]"),
    "bad_rule": ({"selection": {"rule": "best"}}, "selection.rule 'best'"),
}


def _bad_record(name: str, spec, good: dict) -> str:
    if isinstance(spec, str):
        return spec
    rec = copy.deepcopy(good)
    if spec is None:
        return json.dumps(rec)[:200]
    spec = dict(spec)
    if "drop_metric" in spec:
        del rec["metrics"]["test"][spec.pop("drop_metric")]
    if "set_metric" in spec:
        k, v = spec.pop("set_metric")
        rec["metrics"]["test"][k] = v
    rec.update(spec)
    rec["config_hash"] = f"bad-{name}"
    return json.dumps(rec)


def test_bad_records_are_listed_with_reasons_and_never_merged(runs_dir, tmp_path):
    root, records = runs_dir
    good = records[0]
    for name, (spec, _) in BAD_CASES.items():
        d = root / "bad" / name
        d.mkdir(parents=True)
        (d / "record.json").write_text(_bad_record(name, spec, good))
    dup = copy.deepcopy(records[1])
    dup["timings"]["finished"] = "2026-11-27T00:00:00Z"  # finished later than the original: the copy is skipped
    write_run(root / "copies", dup, name="copy-of-run")
    unfinished = root / "cub" / "saga" / "still-running"
    unfinished.mkdir(parents=True)
    (unfinished / "metrics.jsonl").write_text('{"epoch": 1}\n')

    runs, skipped = lb.gather([root])
    assert len(runs) == len(records)  # the good runs, and nothing from the bad ones
    reasons = {Path(s["path"]).parent.name if s["path"].endswith(".json") else Path(s["path"]).name: s["reason"]
               for s in skipped}  # fmt: skip
    for name, (_, reason) in BAD_CASES.items():
        assert reason in reasons[name], (name, reasons[name])
    assert "duplicate of" in reasons["copy-of-run"] and f"seed {dup['seed']}" in reasons["copy-of-run"]
    assert "no record.json" in reasons["still-running"]
    assert len(skipped) == len(BAD_CASES) + 2
    out = lb.build_leaderboard([root], tmp_path / "out", formats=["md", "html", "csv"], reported_dir=None)
    readme = out["md"].read_text()
    section = readme.split("## Skipped records")[1]
    # the Markdown source holds the reasons escaped (record fields are inert text): compare with the escaped form
    assert all(md_escape(reason.split(":")[0]) in section for _, reason in BAD_CASES.values())
    assert len(pd.read_csv(out["skipped_csv"])) == len(skipped)


def test_duplicate_keeps_the_first_run_to_finish(tmp_path):
    m = random_metrics(random.Random(3), 0.5)
    late = make_record("pa", "cub", 0, m, timings={"finished": "2026-11-26T09:00:00Z"})
    early = make_record("pa", "cub", 0, {**m, "recall@1": 0.1}, timings={"finished": "2026-11-26T08:00:00Z"})
    write_run(tmp_path, late, name="a-late")
    write_run(tmp_path, early, name="b-early")
    runs, skipped = lb.gather([tmp_path])
    assert len(runs) == 1 and runs["recall@1"].iloc[0] == 0.1
    assert len(skipped) == 1 and "a-late" in skipped[0]["path"] and "b-early" in skipped[0]["reason"]


def test_clear_errors_for_a_missing_path_and_an_unknown_reference(runs_dir, tmp_path, capsys):
    root, _ = runs_dir
    assert lb.main([str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert lb.main([str(root), "--out", str(tmp_path / "o"), "--reference", "proxy_anchr", "--formats", "md"]) == 2
    err = capsys.readouterr().err
    assert "proxy_anchr" in err and "proxy_anchor" in err


def _tabulars(tex: str) -> list[tuple[str, list[str]]]:
    return re.findall(r"\\begin\{tabular\}\{([lr]+)\}\n(.*?)\\end\{tabular\}", tex, flags=re.S)


def test_latex_is_wellformed_booktabs_with_best_bold_and_second_underlined(runs_dir, tmp_path):
    root, records = runs_dir
    out = lb.build_leaderboard([root], tmp_path / "out", reference="proxy_anchor", formats=["tex"])
    tex = out["tex"].read_text()
    assert tex.count(r"\begin{tabular}") == tex.count(r"\end{tabular}") == len(_tabulars(tex)) >= 2
    for spec, body in _tabulars(tex):
        lines = body.strip().splitlines()
        assert lines[0] == r"\toprule" and lines[2] == r"\midrule" and lines[-1] == r"\bottomrule"
        for line in [lines[1], *lines[3:-1]]:
            assert line.endswith(r"\\") and line.count("&") == len(spec) - 1, line
            assert line.count("{") == line.count("}")
            assert not re.search(r"(?<!\\)[_%#]", line), line  # specials escaped
    spec, body = _tabulars(tex)[0]
    rows = [line.rstrip("\\ ").split(" & ") for line in body.strip().splitlines()[3:-1]]
    exp = expected_aggregate(records, "proxy_anchor")
    for dataset in ("cub", "cars"):
        order = sorted((k[1] for k in exp if k[0] == dataset), key=lambda meth: -exp[(dataset, meth)]["recall@1"][0])
        cells = {r[1].replace("\\_", "_"): r[5] for r in rows if r[0] == {"cub": "CUB", "cars": "Cars"}[dataset]}
        assert cells[order[0]].startswith(r"\textbf{") and cells[order[1]].startswith(r"\underline{")
        assert "\\" not in cells[order[2]].replace(r"$\pm$", "")
        mean, std = exp[(dataset, order[0])]["recall@1"]
        assert cells[order[0]] == rf"\textbf{{{100 * mean:.1f} $\pm$ {100 * std:.1f}}}"


def test_csv_round_trips(runs_dir, tmp_path):
    root, _ = runs_dir
    out = lb.build_leaderboard([root], tmp_path / "out", reference="saga", formats=["csv"])
    runs, _ = lb.gather([root])
    agg = lb.aggregate(runs, reference="saga")
    pd.testing.assert_frame_equal(lb.read_csv(out["leaderboard_csv"]), agg, check_dtype=False, check_exact=True)
    pd.testing.assert_frame_equal(lb.read_csv(out["runs_csv"]), runs, check_dtype=False, check_exact=True)
    # A plain pandas reader gets the numbers bit for bit too.
    plain = pd.read_csv(out["leaderboard_csv"])
    assert plain["recall@1_mean"].tolist() == agg["recall@1_mean"].tolist()
    assert plain["delta_nmi"].tolist() == agg["delta_nmi"].tolist()


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_output_is_deterministic_and_figures_show_the_means(runs_dir, tmp_path):
    root, records = runs_dir
    a = lb.build_leaderboard([root], tmp_path / "a", reference="proxy_anchor", command="CMD")
    # The same runs found in another order (copied in reverse) give byte-identical outputs.
    other = tmp_path / "other"
    for d in sorted(root.rglob("record.json"), reverse=True):
        shutil.copytree(d.parent, other / d.parent.relative_to(root))
    cwd = os.getcwd()
    b = lb.build_leaderboard([other], tmp_path / "b", reference="proxy_anchor", command="CMD")
    assert sorted(a) == sorted(b)
    for key in a:
        if key in ("runs_csv",):  # holds the record paths, which differ
            continue
        assert a[key].read_bytes() == b[key].read_bytes(), key
    assert os.getcwd() == cwd
    figs = [k for k in a if k.startswith("figure:")]
    assert len(figs) == 4 and all(_png_size(a[k])[0] > 200 for k in figs)
    # The R@1 bars are the seed means, computed here independently.
    from benchmark.leaderboard import figures as F

    runs, _ = lb.gather([root])
    agg = lb.aggregate(runs)
    fig = F._bars(F._labelled_runs(runs, agg), "recall@1", "t")
    heights = sorted(round(p.get_height(), 9) for p in fig.axes[0].patches if p.get_height() > 0)
    exp = expected_aggregate(records, "proxy_anchor")
    assert heights == sorted(round(100 * e["recall@1"][0], 9) for e in exp.values())


def test_reported_numbers_are_data_with_citations():
    rep = load_reported(lb.DEFAULT_REPORTED_DIR)
    assert set(rep["source"]) == {f"SAGA Table {i}" for i in range(1, 6)} | {"Classic baselines"}
    assert rep[["citation", "backbone", "embedding_dim", "selection_rule"]].notna().all().all()

    def get(source, method, dataset, metric, dim=None):
        sel = (rep["source"] == source) & (rep["method"] == method) & (rep["dataset"] == dataset)
        sel &= rep["metric"] == metric
        if dim is not None:
            sel &= rep["embedding_dim"] == dim
        hit = rep[sel]
        assert len(hit) == 1, (source, method, dataset, metric)
        return hit["value"].iloc[0], hit["std"].iloc[0]

    # Spot checks against docs/protocol.md §4 and docs/saga-method.md §5.
    assert get("SAGA Table 1", "SAGA", "cub", "recall@1") == (87.9, 0.3)
    assert get("SAGA Table 1", "Pre-trained backbone", "inat_aves", "nmi")[0] == 0.65
    assert get("SAGA Table 3", "PA + SAGA", "aircraft", "recall@1")[0] == 82.7
    assert get("SAGA Table 4", "Potential Field", "aircraft", "recall@4", dim=128)[0] == 91.5
    assert get("SAGA Table 5", "SAGA", "cub", "recall@8")[0] == 95.6
    assert get("Classic baselines", "HIST", "cars", "recall@4") == (96.4, 0.1)
    assert len(rep[rep["source"] == "SAGA Table 1"]) == 4 * 4 * 3
    assert rep.loc[rep["metric"] == "nmi", "value"].max() <= 1.0
    assert rep.loc[rep["metric"] != "nmi", "value"].min() > 1.0  # percentages, as published


def test_reported_file_errors_say_what_to_fix(tmp_path):
    f = tmp_path / "x.yaml"
    f.write_text("source: s\ntitle: t\ncitation: c\nbackbone: b\nembedding_dim: 1\nmetrics: [recall@1]\n"
                 "rows:\n  - {method: m, dataset: cub, recall@1: 875}\n")  # fmt: skip
    with pytest.raises(ReportedDataError, match=r"outside \[0, 100\]"):
        load_reported_file(f)
    f.write_text(f.read_text().replace("recall@1: 875", "recall@3: 1"))
    with pytest.raises(ReportedDataError, match="unknown key"):
        load_reported_file(f)


def test_reported_numbers_are_shown_apart_and_never_ranked(runs_dir, tmp_path):
    root, _ = runs_dir
    out = lb.build_leaderboard([root], tmp_path / "out", formats=["md", "csv", "tex"])
    agg = pd.read_csv(out["leaderboard_csv"])
    assert set(agg["method"]) == {"proxy_anchor", "saga", "pretrained"}
    readme = out["md"].read_text()
    ours, reported = readme.split("## Reported numbers")
    assert "SAGA Table 1" not in ours and "87.9 ± 0.3" in reported and "**" not in reported
    tex = out["tex"].read_text()
    reported_tex = tex.split("% Reported")[1]
    assert r"\textbf" not in reported_tex and r"\underline" not in reported_tex


def test_committed_leaderboard_is_regenerated_by_its_readme_command(tmp_path, monkeypatch):
    """leaderboard/README.md states one command; running it again reproduces the committed tables."""
    readme = (REPO / "leaderboard" / "README.md").read_text()
    command = re.search(r"^    (python -m benchmark leaderboard.*)$", readme, flags=re.M).group(1)
    args = lb.make_parser().parse_args(shlex.split(command.removeprefix(lb.COMMAND)))
    monkeypatch.chdir(REPO)
    out = lb.build_leaderboard(
        args.paths, tmp_path, reference=args.reference, metric=args.metric, formats=list(lb.FORMATS),
        reported_dir=None if args.no_reported else args.reported, command=command,
    )  # fmt: skip
    for key, path in out.items():
        if not key.startswith("figure:"):  # PNG bytes depend on the fonts of the machine; the README names them
            assert (REPO / args.out / path.name).read_text() == path.read_text(), key
        assert (REPO / args.out / path.relative_to(tmp_path)).is_file(), key


def _chromium_driver(tmp_path: Path):
    """A headless Chromium through selenium and the system chromedriver (no downloads); None when unavailable."""
    chrome = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        return None, "selenium is not installed (pip install selenium)"
    if not chrome or not driver_path:
        return None, "Chromium is not installed (apt-get install chromium chromium-driver)"
    opts = webdriver.ChromeOptions()
    opts.binary_location = chrome
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1400,1000"):  # fmt: skip
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=driver_path), options=opts), ""


def test_html_page_in_a_headless_browser(runs_dir, tmp_path):
    """The page renders our rows, a header click sorts them, the dataset filter hides the other rows."""
    root, records = runs_dir
    out = lb.build_leaderboard([root], tmp_path / "out", reference="proxy_anchor", formats=["html"])
    page = out["html"].read_text()
    assert "http://" not in page and "https://" not in page and "<script src" not in page  # self-contained
    driver, why = _chromium_driver(tmp_path)
    if driver is None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser test: {why}")
        pytest.skip(why)
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    try:
        driver.get(out["html"].as_uri())
        table = driver.find_element(By.CSS_SELECTOR, "table.ours")
        headers = [th.text.strip() for th in table.find_elements(By.CSS_SELECTOR, "thead th")]
        assert headers[:6] == ["Dataset", "Method", "Backbone", "Dim", "Seeds", "R@1"]
        rows = table.find_elements(By.CSS_SELECTOR, "tbody tr")
        exp = expected_aggregate(records, "proxy_anchor")
        assert len(rows) == len(exp)
        shown = {(r.find_elements(By.TAG_NAME, "td")[0].text, r.find_elements(By.TAG_NAME, "td")[1].text) for r in rows}
        assert shown == {({"cub": "CUB", "cars": "Cars"}[d], m) for d, m in exp}

        def column(i: int) -> list[str]:
            return [
                r.find_elements(By.TAG_NAME, "td")[i].text for r in table.find_elements(By.CSS_SELECTOR, "tbody tr")
            ]

        means = sorted(e["recall@1"][0] for e in exp.values())
        r1 = table.find_elements(By.CSS_SELECTOR, "thead th")[5]
        r1.click()
        assert r1.get_attribute("aria-sort") == "ascending"
        assert [c.split(" ±")[0] for c in column(5)] == [f"{100 * m:.1f}" for m in means]
        r1.click()
        assert [c.split(" ±")[0] for c in column(5)] == [f"{100 * m:.1f}" for m in reversed(means)]
        table.find_elements(By.CSS_SELECTOR, "thead th")[1].click()  # by method name, as text
        assert column(1) == sorted(column(1))

        Select(driver.find_element(By.ID, "dataset-filter")).select_by_value("cub")
        visible = [r for r in table.find_elements(By.CSS_SELECTOR, "tbody tr") if r.is_displayed()]
        assert len(visible) == 3 and {r.find_elements(By.TAG_NAME, "td")[0].text for r in visible} == {"CUB"}
        reported = driver.find_elements(By.CSS_SELECTOR, "table.reported tbody tr")
        assert reported and all(r.get_attribute("data-dataset") == "cub" for r in reported if r.is_displayed())
        assert any(not r.is_displayed() for r in reported)
        Select(driver.find_element(By.ID, "dataset-filter")).select_by_value("")
        assert all(r.is_displayed() for r in table.find_elements(By.CSS_SELECTOR, "tbody tr"))
    finally:
        driver.quit()


ENGINE_RUNS = Path(__file__).parent / "fixtures" / "engine_runs"


def test_records_written_by_the_engine_are_read_whole(tmp_path):
    """Records from real tiny engine runs (see fixtures/engine_runs/README.md) are gathered and aggregated."""
    files = sorted(ENGINE_RUNS.rglob("record.json"))
    raw = [json.loads(f.read_text()) for f in files]
    runs, skipped = lb.gather([ENGINE_RUNS])
    assert skipped == [] and len(runs) == len(raw) == 8
    for rec in raw:
        row = runs[(runs["method"] == rec["method"]) & (runs["seed"] == rec["seed"])].iloc[0]
        assert row["run_id"] == rec["run_id"] and row["config_hash"] == rec["config_hash"]
        assert row["protocol_hash"] == rec["protocol"]["hash"] and row["git_sha"] == rec["git"]["sha"]
        assert row["embedding_dim"] == rec["backbone"]["embedding_dim"] == 16
        assert row["train_transform"] == rec["data"]["train_transform"]
        assert all(row[m] == rec["metrics"]["test"][m] for m in lb.METRICS)
    agg = lb.aggregate(runs, reference="proxy_anchor")
    counts = {m: sum(r["method"] == m for r in raw) for m in {r["method"] for r in raw}}
    assert dict(zip(agg["method"], agg["n_seeds"], strict=True)) == counts
    assert agg.set_index("method")["fewer_seeds"].to_dict() == {m: n < max(counts.values()) for m, n in counts.items()}
    for _, row in agg.iterrows():
        vals = [r["metrics"]["test"]["map@r"] for r in raw if r["method"] == row["method"]]
        assert row["map@r_mean"] == pytest.approx(statistics.mean(vals))
    # A run moved aside by force=true (<run>.old-<time>) is listed as archived, not as a duplicate or a result.
    shutil.copytree(ENGINE_RUNS, tmp_path / "runs")
    src = next((tmp_path / "runs").rglob("record.json")).parent
    shutil.copytree(src, src.with_name(src.name + ".old-20261126-082300"))
    runs2, skipped2 = lb.gather([tmp_path / "runs"])
    assert len(runs2) == 8 and len(skipped2) == 1 and "archived" in skipped2[0]["reason"]
