"""Significance in the generated tables (``leaderboard --reference``): Welch's t over seeds with Holm's correction,
and a bootstrap interval over queries for one-seed rows; the same numbers as scipy.stats in every output format."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import yaml

from benchmark.cli import main
from benchmark.data.base import register_reader
from benchmark.leaderboard import significance
from benchmark.leaderboard.gather import read_csv
from tests.blobs import make_blobs

REPO = Path(__file__).resolve().parents[1]
ZOO = REPO / "leaderboard" / "zoo_attributes" / "runs"


@register_reader("noisy_blobs")
def read_noisy_blobs(card, root, strict, classes: int = 12, per_class: int = 8, size: int = 16, seed: int = 0):
    """Blobs noisy enough that retrieval is imperfect, so two methods' per-query hits differ."""
    return make_blobs("noisy", classes, per_class, size, seed, background=200, jitter=90)


def _holm_rejections(pvalues: dict[str, float], alpha: float) -> set[str]:
    """Holm's step-down procedure as stated (reject while p_(i) <= alpha / (m - i)), independent of holm()."""
    order, rejected = sorted(pvalues, key=pvalues.get), set()
    for i, name in enumerate(order):
        if pvalues[name] > alpha / (len(order) - i):
            break
        rejected.add(name)
    return rejected


def _md_rows(readme: str) -> dict[str, dict[str, str]]:
    lines = [line for line in readme.splitlines() if line.startswith("| ")]
    header = [h.strip() for h in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[1:]:
        cells = [c.strip().replace("\\_", "_").strip("*") for c in line.strip("|").split("|")]
        if len(cells) == len(header) and cells[0] != "Dataset":
            rows.setdefault(cells[1], dict(zip(header, cells, strict=True)))
    return rows


def test_zoo_welch_and_holm_are_scipys_in_every_format(tmp_path, monkeypatch, capsys):
    """On the committed zoo records: each row's p is scipy's Welch's t on the seeds' R@1 read from the records, the
    Holm p-values reject exactly what Holm's procedure rejects, and md, tex, csv and html show the same numbers."""
    monkeypatch.chdir(REPO)
    out = tmp_path / "zoo"
    args = ["leaderboard", str(ZOO), "--out", str(out), "--reference", "proxy_anchor", "--formats", "md,csv,tex,html"]
    assert main(args) == 0
    by_method: dict[str, list[float]] = {}
    for path in ZOO.rglob("record.json"):
        record = json.loads(path.read_text())
        by_method.setdefault(record["method"], []).append(record["metrics"]["test"]["recall@1"])
    ref = by_method.pop("proxy_anchor")
    expected = {m: scipy.stats.ttest_ind(v, ref, equal_var=False).pvalue for m, v in by_method.items() if len(v) >= 2}
    assert len(expected) == 12 and "pretrained" not in expected  # pretrained: one seed
    agg = read_csv(out / "leaderboard.csv").set_index("method")
    for method, p in expected.items():
        assert agg.loc[method, "sig_test"] == "welch"
        assert agg.loc[method, "welch_p"] == pytest.approx(p, rel=1e-12)
    holm = agg.loc[list(expected), "holm_p"].to_dict()
    for alpha in (0.01, 0.05, 0.2, 0.5):
        assert {m for m, p in holm.items() if p <= alpha} == _holm_rejections(expected, alpha), alpha
    assert _holm_rejections(expected, 0.05) == {"hist"}  # what the README states
    assert agg.loc["pretrained", "sig_test"] == significance.NO_HITS  # an older record: no per-query hits
    readme, tex, page = ((out / name).read_text() for name in ("README.md", "leaderboard.tex", "leaderboard.html"))
    md = _md_rows(readme)
    for method, p in expected.items():
        shown, shown_holm = significance.fmt_p(p), significance.fmt_p(holm[method])
        assert md[method]["p (Welch)"] == shown and md[method]["p (Holm)"] == shown_holm
        tex_name = method.replace("_", "\\_")
        tex_row = next(line for line in tex.splitlines() if line.startswith(f"attributes & {tex_name} &"))
        assert f"& {shown} & {shown_holm} &" in tex_row
        html_row = next(r for r in page.split("<tr ") if f">{method}</td>" in r)
        value = re.search(rf'data-value="([^"]+)">{re.escape(shown)}</td>', html_row).group(1)
        assert float(value) == pytest.approx(p, rel=1e-12)
    assert md["pretrained"]["95% CI"] == "n/a ‡" and "no per-query hits in the record" in readme


@pytest.fixture
def noisy_runs(datasets_dir, tmp_path):
    card = {"name": "noisy", "title": "Noisy blobs", "reader": "noisy_blobs", "needs_root": False,
            "defaults": {"image_size": 16, "backbone": {"name": "resnet10t", "pretrained": False}}}  # fmt: skip
    (datasets_dir / "noisy.yaml").write_text(yaml.safe_dump(card))
    runs = tmp_path / "runs"
    base = ["dataset=noisy", "dataset.val_fraction=0.34", "backbone.embedding_dim=16", "train.epochs=1",
            "train.batch_size=8", "train.m_per_class=2", "train.steps_per_epoch=2", "train.progress=false",
            "data.num_workers=0", "eval.kmeans_restarts=1", f"out_dir={runs}"]  # fmt: skip
    for extra in (["method=pretrained"], ["method=proxy_anchor"], ["method=proxy_anchor", "seed=1"]):
        assert main(["run", *base, *extra]) == 0
    return runs


def _hits(record: dict) -> np.ndarray:
    entry = record["per_query"]["test"]
    packed = np.frombuffer(base64.b64decode(entry["recall@1"]), dtype=np.uint8)
    return np.unpackbits(packed, count=entry["n"]).astype(float)


def test_one_seed_row_gets_scipys_bootstrap_interval_over_queries(noisy_runs, tmp_path, capsys):
    """A run's per-query hits average to its R@1; a one-seed row's interval is scipy.stats.bootstrap of the paired
    per-query difference to the reference's seed-mean hits (10,000 resamples, seed 0), shown in points."""
    records = {}
    for path in noisy_runs.rglob("record.json"):
        record = json.loads(path.read_text())
        hits = _hits(record)
        assert hits.mean() == record["metrics"]["test"]["recall@1"] and len(hits) == record["splits"]["test"]["images"]
        records.setdefault(record["method"], []).append(hits)
    diff = records["pretrained"][0] - np.mean(records["proxy_anchor"], axis=0)
    assert diff.any()  # the two differ on some queries, so the interval is not a point
    ci = scipy.stats.bootstrap((diff,), np.mean, n_resamples=10_000, method="percentile",
                               rng=np.random.default_rng(0)).confidence_interval  # fmt: skip
    out = tmp_path / "lb"
    assert main(["leaderboard", str(noisy_runs), "--out", str(out), "--reference", "proxy_anchor"]) == 0
    row = read_csv(out / "leaderboard.csv").set_index("method").loc["pretrained"]
    assert row["sig_test"] == "bootstrap" and row["ci_resamples"] == 10_000
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((ci.low, ci.high), rel=1e-12)
    assert row["ci_low"] <= row["delta_recall@1"] <= row["ci_high"]
    shown = f"{100 * ci.low:+.1f} to {100 * ci.high:+.1f}"
    assert _md_rows((out / "README.md").read_text())["pretrained"]["95% CI"] == shown
    assert shown in (out / "leaderboard.tex").read_text() and shown in (out / "leaderboard.html").read_text()
    # An older record (no per-query hits) gets no interval and says why.
    path = next((noisy_runs / "noisy" / "pretrained").rglob("record.json"))
    record = json.loads(path.read_text())
    del record["per_query"]
    path.write_text(json.dumps(record))
    assert main(["leaderboard", str(noisy_runs), "--out", str(out), "--reference", "proxy_anchor"]) == 0
    row = read_csv(out / "leaderboard.csv").set_index("method").loc["pretrained"]
    assert row["sig_test"] == significance.NO_HITS and np.isnan(row["ci_low"])
    assert re.search(r"\| n/a ‡ \|", (out / "README.md").read_text())


def test_holm_adjusts_in_order_and_caps_at_one():
    assert significance.holm([0.01, 0.04, 0.03, float("nan")])[:3] == pytest.approx([0.03, 0.06, 0.06])
    assert significance.holm([0.5, 0.9]) == [1.0, 1.0]


def test_readme_zoo_table_is_the_generated_one(tmp_path, monkeypatch):
    """The README's zoo comparison shows the generated p-values (not hand-computed ones)."""
    monkeypatch.chdir(REPO)
    out = tmp_path / "zoo"
    assert main(["leaderboard", str(ZOO), "--out", str(out), "--reference", "proxy_anchor", "--formats", "csv"]) == 0
    agg = read_csv(out / "leaderboard.csv").set_index("method")
    readme = (REPO / "README.md").read_text()
    table = readme.split("| method | R@1 | ΔR@1 vs proxy_anchor | p (Welch) | p (Holm) |")[1].split("\n\n")[0]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table.strip().splitlines()[1:]]
    assert len(rows) == 14
    for method, _, delta, p, p_holm in rows:
        method = method.split(" ")[0]
        assert (
            delta == significance.fmt_p(float("nan"))
            if method == "proxy_anchor"
            else f"{100 * agg.loc[method, 'delta_recall@1']:+.1f}" == delta
        )
        assert p == significance.fmt_p(agg.loc[method, "welch_p"]) and p_holm == significance.fmt_p(
            agg.loc[method, "holm_p"]
        )
