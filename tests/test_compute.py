"""Cost beside recall: the record's ``compute`` section, its totals over resumed sessions, and the leaderboard's cost
column and figure."""

from __future__ import annotations

import json
import resource

import pytest
import torch

from benchmark.cli import main
from benchmark.engine.compute import ComputeMeter
from benchmark.leaderboard.cost import fmt_cost
from benchmark.leaderboard.gather import read_csv


def test_a_run_records_its_cost_and_the_leaderboard_shows_it(tiny_overrides, tmp_path, capsys):
    assert main(["run", *tiny_overrides, "method=proxy_anchor"]) == 0
    assert main(["run", *tiny_overrides, "method=pretrained"]) == 0
    runs = tmp_path / "runs"
    records = {json.loads(p.read_text())["method"]: json.loads(p.read_text()) for p in runs.rglob("record.json")}
    c = records["proxy_anchor"]["compute"]
    assert c["device_type"] == "cpu" and c["device_count"] == 1 and c["device"]
    # 2 epochs x 3 steps x batch 8 images; images/s from the recorded training seconds
    assert c["train_images"] == 48 and c["train_images_per_s"] == pytest.approx(48 / c["train_s"])
    assert c["train_s"] == records["proxy_anchor"]["timings"]["train_s"] and c["eval_s"] > 0
    assert c["wall_s"] >= c["train_s"] + c["eval_s"]
    own_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # this process ran the run: RSS only grows
    assert 0 < c["peak_memory_bytes"] <= own_peak and c["peak_memory_kind"].startswith("max RSS")
    assert c["gpu_hours"] is None and 0 < c["cpu_core_hours"] < 1 and len(c["sessions"]) == 1
    assert records["pretrained"]["compute"]["train_images"] == 0  # nothing trained
    out = tmp_path / "lb"
    assert main(["leaderboard", str(runs), "--out", str(out), "--no-reported"]) == 0
    agg = read_csv(out / "leaderboard.csv").set_index("method")
    assert agg.loc["proxy_anchor", "cost_hours_mean"] == pytest.approx(c["cpu_core_hours"], rel=1e-12)
    assert agg.loc["proxy_anchor", "cost_unit"] == "CPU core-h"
    shown = fmt_cost(c["cpu_core_hours"], "CPU core-h")
    row = next(line for line in (out / "README.md").read_text().splitlines() if "proxy\\_anchor" in line)
    assert f"| {shown} |" in row
    assert shown in (out / "leaderboard.html").read_text() and shown in (out / "leaderboard.tex").read_text()
    assert list((out / "figures").glob("runs_*_cost-recall1.png"))


def test_sessions_add_up_over_a_resume_and_method_phases_are_totalled(tmp_path):
    """A resumed run's earlier session is read back from its unfinished record; per-step phase times and counts a
    method logs (SAGA's time_rollout_s, time_replay_s, pairs_rolled_out) are totalled over the history's epochs."""
    earlier = {"device": "x", "device_type": "cpu", "device_count": 1, "peak_memory_bytes": 2**40, "wall_s": 100.0,
               "train_s": 80.0, "eval_s": 0.0, "cpu_s": 360.0, "train_images": 800}  # fmt: skip
    (tmp_path / "record.json").write_text(json.dumps({"status": "running", "compute": {"sessions": [earlier]}}))
    meter = ComputeMeter(tmp_path, torch.device("cpu"))
    history = [
        {"epoch": 1, "time_rollout_s": 0.5, "time_replay_s": 0.25, "pairs_rolled_out": 6.0, "loss": 1.0},
        {"epoch": 2, "time_rollout_s": 1.5, "time_replay_s": 0.75, "pairs_rolled_out": 8.0, "loss": 0.5},
    ]
    meter.section(step=10, batch_size=8, steps_per_epoch=10, history=[], diagnostics={}, train_s=0.0, eval_s=None)
    c = meter.section(step=20, batch_size=8, steps_per_epoch=10, history=history, diagnostics={"gen_tokens": 123.0},
                      train_s=20.0, eval_s=1.0)  # fmt: skip
    assert len(c["sessions"]) == 2 and c["sessions"][0] == earlier
    assert c["train_images"] == 800 + 80 and c["train_s"] == 100.0 and c["train_images_per_s"] == 8.8
    assert c["phases_s"] == {"rollout": 20.0, "replay": 10.0} and c["pairs_judged"] == 140
    assert c["peak_memory_bytes"] == 2**40 and c["generated_tokens"] == 123
    assert c["cpu_core_hours"] >= 0.1  # the earlier session's 360 CPU seconds
    (tmp_path / "record.json").write_text(json.dumps({"status": "completed", "compute": {"sessions": [earlier]}}))
    assert ComputeMeter(tmp_path, torch.device("cpu")).previous == []  # a finished record is not a resume
