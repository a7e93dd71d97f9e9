"""Reliability, take 3 (issue 23, items 8-15): each case through the real command line (``benchmark.cli.main``
in-process, as ``tests/test_bad_inputs.py`` does; real processes where a process id matters).

A refused input must give a non-zero exit, no traceback, one message naming what was expected, and leave the test's
directory (also the working directory) exactly as it was. Results that are not results (a split that cannot be
scored, degenerate embeddings, disagreeing duplicates) are refused or named, never recorded as a result.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.test_bad_inputs import run_cli
from tests.test_leaderboard import make_record, write_run

REPO = Path(__file__).resolve().parents[1]
METRICS = {"recall@1": 0.5, "recall@2": 0.6, "recall@4": 0.7, "recall@8": 0.8, "map@r": 0.3, "r_precision": 0.35,
           "nmi": 0.4}  # fmt: skip


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` with its size and modification time, links not followed (a symlink loop is a
    case here)."""
    return {str(p.relative_to(root)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def refused(argv: list[str], capsys, tmp_path: Path, *words: str) -> str:
    """Run ``argv``; assert a non-zero exit, no traceback, every word in the output and nothing written."""
    before = snapshot(tmp_path)
    code, output = run_cli(argv, capsys)
    assert code not in (0, None), f"exit status {code}; output:\n{output}"
    assert "Traceback" not in output, output
    for word in words:
        assert word.lower() in output.lower(), f"{word!r} not in:\n{output}"
    assert snapshot(tmp_path) == before, "the refused command wrote, changed or removed files"
    return output


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


# ----------------------------------------------------------------------------- 11, 12, 13, 15: refused at compose
COMPOSE_CASES = {
    "delete-method": (["~method"], ["~method", "removing a config key", "method=VALUE"]),
    "delete-section": (["~train"], ["~train", "removing a config key"]),
    "lr-1e300": (["train.lr=1e300"], ["train.lr=1e+300", "up to 10"]),
    "weight-decay-1e300": (["train.weight_decay=1e300"], ["train.weight_decay", "float32"]),
    "image-size-100000": (["data.image_size=100000"], ["data.image_size=100000", "up to 4096"]),
    "margin-nan": (["method.margin=nan"], ["method.margin=nan", "not a finite number"]),
    "margin-inf": (["method.margin=inf"], ["method.margin=inf", "finite"]),
    "seed-sweep": (["seed=0,1"], ["seed=0,1", "sweep", "seed=[a,b]"]),
    "out-dir-empty": (["out_dir="], ["out_dir= is empty", "working directory"]),
    "out-dir-quoted-empty": (["out_dir=''"], ["out_dir= is empty"]),
    "hydra-run-dir": (["hydra.run.dir=/tmp/elsewhere"], ["hydra.run.dir", "out_dir=DIR"]),
    "warmup-longer-than-run": (["train.epochs=2", "train.warmup_epochs=5"], ["train.warmup_epochs=5", "< 2"]),
    "warmup-as-long-as-card-epochs": (["train.warmup_epochs=1000"], ["train.warmup_epochs=1000", "epoch"]),
    "ks-too-deep": (["eval.ks=[1,2,4,8,100000]"], ["Recall@100000", "1440 images", "at most 1439"]),
    "ks-without-record-ks": (["eval.ks=[1,100000]"], ["eval.ks=[1,100000]", "lacks 2, 4, 8", "[1,2,4,8,100000]"]),
}


@pytest.mark.parametrize("case", sorted(COMPOSE_CASES))
def test_a_bad_override_is_refused_before_anything_runs(case, in_tmp, capsys):
    overrides, words = COMPOSE_CASES[case]
    output = refused(["run", *overrides] + ([] if case.startswith("out-dir") else [f"out_dir={in_tmp}/runs"]),
                     capsys, in_tmp, *words)  # fmt: skip
    assert "--multirun" not in output
    if case.startswith("margin"):  # a bad method setting is named, not blamed on the learning rate
        assert "learning rate" not in output.lower() and "train.lr" not in output
    assert len(output.strip().splitlines()) == 1, output


def test_seed_sweep_never_suggests_multirun_that_the_cli_rejects(in_tmp, capsys):
    output = refused(["run", "seed=0,1", f"out_dir={in_tmp}/runs"], capsys, in_tmp, "python -m benchmark sweep")
    code, help_text = run_cli(["run", "--help"], capsys)
    assert "--multirun" not in output and "--multirun" not in help_text


# ----------------------------------------------------------------------------- 11, 12, 13: prepare, score, report
def test_prepare_on_a_symlink_loop_is_refused(in_tmp, capsys):
    (in_tmp / "a").symlink_to(in_tmp / "b")
    (in_tmp / "b").symlink_to(in_tmp / "a")
    refused(["prepare", "dataset=cub", f"dataset.root={in_tmp / 'a'}"], capsys, in_tmp, "symlink loop")


def test_prepare_no_download_never_creates_a_missing_root(in_tmp, capsys):
    refused(["prepare", "dataset=cub", f"dataset.root={in_tmp / 'nothing'}", "--no-download"], capsys, in_tmp,
            "does not exist", "--no-download")  # fmt: skip
    assert not (in_tmp / "nothing").exists()


def test_prepare_names_the_key_it_does_not_take(in_tmp, capsys):
    refused(["prepare", "dataset=cub", f"dataset.root={in_tmp}", "train.lr=1"], capsys, in_tmp,
            "not train.lr", "usage")  # fmt: skip


def test_prepare_on_a_read_only_mount_says_so(tmp_path, capsys, monkeypatch):
    mount = tmp_path / "ro"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"mounting a read-only tmpfs is not permitted here ({done.stderr.decode().strip()})")
    try:
        monkeypatch.chdir(tmp_path)
        code, output = run_cli(["prepare", "dataset=cub", f"dataset.root={mount}"], capsys)
        assert code == 2 and "Traceback" not in output
        assert "read-only" in output and "--no-download" in output and "Downloading" not in output
        code, output = run_cli(["prepare", "dataset=cub", f"dataset.root={mount / 'sub'}"], capsys)
        assert code == 2 and "read-only" in output and not (mount / "sub").exists()
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_world_report_out_an_existing_file(in_tmp, capsys):
    (in_tmp / "runs").mkdir()
    (in_tmp / "report.txt").write_text("mine\n")
    refused(["world-report", str(in_tmp / "runs"), "--out", str(in_tmp / "report.txt")], capsys, in_tmp,
            "is a file, not a directory", "--out DIR")  # fmt: skip


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_score_on_a_fifo_or_a_directory_says_what_it_is(kind, in_tmp, capsys):
    path = in_tmp / "e.npz"
    os.mkfifo(path) if kind == "fifo" else path.mkdir()
    words = ["not a regular file"] if kind == "fifo" else ["is a directory"]
    output = refused(["score", str(path)], capsys, in_tmp, *words)
    assert "no such file" not in output


# ----------------------------------------------------------------------------- 9: scores that are not scores
def _npz(path: Path, embeddings: np.ndarray, labels: np.ndarray) -> Path:
    np.savez(path, embeddings=embeddings, labels=labels)
    return path


def test_all_zero_embeddings_are_refused_not_scored_by_the_tie_rule(in_tmp, capsys):
    labels = np.repeat(np.arange(4), 5)
    path = _npz(in_tmp / "zeros.npz", np.zeros((20, 8)), labels)
    refused(["score", str(path)], capsys, in_tmp, "all-zero", "20 of 20")
    some = np.random.default_rng(0).normal(size=(20, 8))
    some[[3, 7]] = 0
    refused(["score", str(_npz(in_tmp / "some.npz", some, labels))], capsys, in_tmp, "2 of 20", "[3, 7]")


def test_collapsed_embeddings_are_refused_by_score(in_tmp, capsys):
    path = _npz(in_tmp / "same.npz", np.tile([[0.3, -1.0, 2.0]], (12, 1)), np.repeat(np.arange(3), 4))
    refused(["score", str(path)], capsys, in_tmp, "point the same way")


@pytest.mark.parametrize("scale", [1e300, 1e-300, 1e30])
def test_extreme_scale_embeddings_score_as_what_they_show(scale, in_tmp, capsys):
    """Cosine similarity does not depend on scale: float64 values near 1e300 (which overflow float32) or 1e-300
    (which underflow) score exactly as the same directions at unit scale."""
    rng = np.random.default_rng(1)
    x, labels = rng.normal(size=(40, 6)), np.repeat(np.arange(8), 5)
    code, plain = run_cli(["score", str(_npz(in_tmp / "plain.npz", x, labels)), "--json"], capsys)
    assert code == 0
    code, scaled = run_cli(["score", str(_npz(in_tmp / "scaled.npz", x * scale, labels)), "--json"], capsys)
    assert code == 0, scaled
    assert json.loads(scaled) == pytest.approx(json.loads(plain), abs=1e-6)


def test_a_test_split_of_single_image_classes_is_refused_before_training(tiny_overrides, in_tmp, capsys):
    out = [o for o in tiny_overrides if not o.startswith("dataset.val_fraction")]
    refused(["run", *out, "dataset.options.per_class=1", "dataset.strict=false", "eval.selection=last"], capsys, in_tmp,
            "test split", "each class has one sample", "Nothing was trained")  # fmt: skip
    assert not (in_tmp / "runs").exists()


def test_eval_ks_deeper_than_the_loaded_test_split_is_refused_before_training(tiny_overrides, in_tmp, capsys):
    # blobs: 6 test classes x 8 images = 48 (its card states no test-image count, so only the loaded split can tell)
    refused(["run", *tiny_overrides, "eval.ks=[1,2,4,8,60]"], capsys, in_tmp,
            "Recall@60", "48 images", "at most 47")  # fmt: skip


def test_a_model_that_outputs_zeros_fails_its_record_instead_of_scoring(tiny_overrides, in_tmp, capsys, monkeypatch):
    from benchmark.engine.trainer import Trainer

    embed = Trainer.embed
    monkeypatch.setattr(Trainer, "embed", lambda self, split: (lambda e, y: (np.zeros_like(e), y))(*embed(self, split)))
    code, output = run_cli(["run", *tiny_overrides], capsys)
    assert code == 2 and "Traceback" not in output and "all-zero vectors" in output
    (record,) = (in_tmp / "runs").rglob("record.json")
    data = json.loads(record.read_text())
    assert data["status"] == "failed" and "all-zero" in data["error"]


# ----------------------------------------------------------------------------- 11, 13: the run directory in the way
@pytest.mark.parametrize(("name", "make", "words"), [
    ("config.yaml", Path.mkdir, ["config.yaml should be a file"]),
    ("checkpoints", lambda p: p.write_text("x"), ["checkpoints should be a directory"]),
])  # fmt: skip
def test_a_run_directory_with_something_in_the_way_is_refused(name, make, words, tiny_overrides, in_tmp, capsys):
    from benchmark.sweeps.spec import cell_run_dir

    run_dir, _ = cell_run_dir(tiny_overrides)
    run_dir.mkdir(parents=True)
    make(run_dir / name)
    output = refused(["run", *tiny_overrides], capsys, in_tmp, *words, "move it aside")
    assert "free space" not in output.lower()


# ----------------------------------------------------------------------------- 12, 15: where and how files are written
def test_a_quoted_home_out_dir_goes_home_and_files_follow_the_umask(tiny_overrides, in_tmp, capsys, monkeypatch):
    monkeypatch.setenv("HOME", str(in_tmp / "home"))
    overrides = [o for o in tiny_overrides if not o.startswith(("out_dir=", "train.epochs="))]
    old = os.umask(0o027)
    try:
        code, output = run_cli(["run", *overrides, "train.epochs=1", "out_dir='~/x'"], capsys)
    finally:
        os.umask(old)
    assert code == 0, output
    assert not (in_tmp / "~").exists()
    (record,) = (in_tmp / "home" / "x").rglob("record.json")
    assert str(record) in output and "~" not in json.loads(record.read_text())["config"]["out_dir"]
    for path in [record, record.parent / "config.yaml", *record.parent.glob("checkpoints/*.pt")]:
        assert path.stat().st_mode & 0o777 == 0o640, f"{path}: {oct(path.stat().st_mode & 0o777)}"


# ----------------------------------------------------------------------------- 9, 10: the leaderboard
def _leaderboard(paths: list[Path], out: Path, capsys) -> tuple[int, str, str]:
    from benchmark.leaderboard.gather import main

    code = main([*map(str, paths), "--out", str(out), "--formats", "md,csv", "--no-reported"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("bad", ["abc", [1, 2], 10**400, -3, True, 0])
def test_one_bad_embedding_dim_is_skipped_with_a_warning_naming_the_file(bad, tmp_path, capsys):
    write_run(tmp_path / "runs", make_record("proxy_anchor", "cub", 0, METRICS))
    rec = make_record("multi_similarity", "cub", 0, METRICS)
    rec["backbone"]["embedding_dim"] = bad
    bad_dir = write_run(tmp_path / "runs", rec)
    assert json.loads((bad_dir / "record.json").read_text())["backbone"]["embedding_dim"] == bad
    code, out, err = _leaderboard([tmp_path / "runs"], tmp_path / "lb", capsys)
    assert code == 0 and "Traceback" not in err
    (warning,) = [line for line in err.splitlines() if line.startswith("warning:")]
    assert "multi_similarity" in warning and "record.json" in warning and "embedding_dim" in warning
    table = (tmp_path / "lb" / "README.md").read_text()
    assert "proxy\\_anchor" in table or "proxy_anchor" in table


@pytest.mark.parametrize(("field", "value"), [("seed", 10**400), ("seed", -1)])
def test_a_bad_seed_is_skipped_not_fatal(field, value, tmp_path, capsys):
    write_run(tmp_path / "runs", make_record("proxy_anchor", "cub", 0, METRICS))
    rec = make_record("multi_similarity", "cub", 0, METRICS)
    rec[field] = value
    write_run(tmp_path / "runs", rec)
    code, out, err = _leaderboard([tmp_path / "runs"], tmp_path / "lb", capsys)
    assert code == 0 and "warning: skipped" in err and "seed" in err


def test_duplicates_that_disagree_are_named_not_kept_silently(tmp_path, capsys):
    early = make_record("proxy_anchor", "cub", 0, {**METRICS, "recall@1": 0.9},
                        timings={"finished": "2026-11-26T08:00:00Z"})  # fmt: skip
    late = make_record("proxy_anchor", "cub", 0, {**METRICS, "recall@1": 0.1},
                       timings={"finished": "2026-11-26T09:00:00Z"})  # fmt: skip
    write_run(tmp_path / "runs", early, name="a-early")
    write_run(tmp_path / "runs", late, name="b-late")
    same = make_record("multi_similarity", "cub", 0, METRICS)
    write_run(tmp_path / "runs", same, name="c-first")
    write_run(tmp_path / "runs", {**same, "timings": {"finished": "2026-11-27T00:00:00Z"}}, name="d-again")
    code, out, err = _leaderboard([tmp_path / "runs"], tmp_path / "lb", capsys)
    assert code == 0
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "b-late" in warnings[0] and "a-early" in warnings[0]
    assert "DISAGREES" in warnings[0] and "recall@1 0.9000 vs 0.1000" in warnings[0]
    skipped = (tmp_path / "lb" / "README.md").read_text()
    assert "DISAGREES" in skipped  # the plain duplicate (d-again) is listed as a duplicate only
    from benchmark.leaderboard.gather import gather

    _, rows = gather([tmp_path / "runs"])
    plain = [r for r in rows if "d-again" in r["path"]]
    assert plain and "DISAGREES" not in plain[0]["reason"] and plain[0]["reason"].startswith("duplicate of")


# ----------------------------------------------------------------------------- 8: status does not trust the manifest
@pytest.fixture(scope="module")
def sweep_env(tmp_path_factory):
    import sweep_support

    root = tmp_path_factory.mktemp("take3_sweeps")
    mp = pytest.MonkeyPatch()
    sweep_support.sweep_test_env(root, mp)
    yield root
    mp.undo()


def _spec(path: Path, seeds=(0, 1), method: str = "pretrained") -> Path:
    import sweep_support

    overrides = [o for o in sweep_support.TINY if not o.startswith("train.epochs")] + ["train.epochs=0"]
    spec = {"name": path.stem, "cluster": "cpu", "overrides": overrides,
            "grid": {"method": [method], "dataset": ["sweepblobs"], "seed": list(seeds)}}  # fmt: skip
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _manifest(spec: Path, sweep_dir: Path) -> tuple[dict, list]:
    from benchmark.sweeps.manifest import begin_submission, write_manifest
    from benchmark.sweeps.submit import prepare

    prepared = prepare(spec, sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    manifest, _ = begin_submission(prepared, "local", {"sha": None, "dirty": None})
    write_manifest(sweep_dir, manifest)
    return manifest, prepared.cells


def _complete_record(cell, seed: int) -> dict:
    rec = make_record("pretrained", "sweepblobs", seed, METRICS, config_hash=cell.config_hash)
    Path(cell.run_dir).mkdir(parents=True, exist_ok=True)
    (Path(cell.run_dir) / "record.json").write_text(json.dumps(rec))
    return rec


def test_status_does_not_report_another_runs_record_as_a_cells_result(sweep_env, tmp_path, capsys):
    from benchmark.sweeps.manifest import write_manifest

    sweep_dir = tmp_path / "sw"
    manifest, cells = _manifest(_spec(tmp_path / "pointed.yaml"), sweep_dir)
    _complete_record(cells[0], seed=0)
    manifest["cells"][cells[1].cell_id]["run_dir"] = cells[0].run_dir  # edited by hand: seed 1 -> seed 0's run
    write_manifest(sweep_dir, manifest)
    code, output = run_cli(["status", str(sweep_dir), "--json"], capsys)
    rows = {r["cell"]: r for r in json.loads(output)}
    assert rows[cells[0].cell_id]["state"] == "done"
    wrong = rows[cells[1].cell_id]
    assert wrong["state"] == "not submitted" and "test" not in wrong
    assert "holds another run" in wrong["error"] and "seed 0 (this cell: 1)" in wrong["error"]


def _sleeper() -> subprocess.Popen:
    """A live process that is not a run (what a reused process id points at)."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])


def _give_job(manifest: dict, cell, **job) -> None:
    manifest["cells"][cell.cell_id]["jobs"].append({"mode": "local", "job_id": f"local-{job['pid']}",
                                                    "host": os.uname().nodename, "returncode": None, **job})  # fmt: skip


@pytest.mark.parametrize("recorded_start", ["none (older manifest)", "another time"])
def test_a_reused_pid_does_not_keep_a_cell_running(recorded_start, sweep_env, tmp_path, capsys):
    from benchmark.sweeps.liveness import process_start
    from benchmark.sweeps.manifest import write_manifest

    sweep_dir = tmp_path / "sw"
    manifest, cells = _manifest(_spec(tmp_path / "reused.yaml", seeds=(0,)), sweep_dir)
    proc = _sleeper()
    try:
        start = None if recorded_start.startswith("none") else process_start(proc.pid) - 100
        _give_job(manifest, cells[0], pid=proc.pid, **({"pid_start": start} if start else {}))
        write_manifest(sweep_dir, manifest)
        code, output = run_cli(["status", str(sweep_dir), "--json"], capsys)
        (row,) = json.loads(output)
        assert row["state"] == "failed" and "LOST" in row["error"] and str(proc.pid) in row["error"]
    finally:
        proc.kill()
        proc.wait()


def test_sweep_local_reruns_a_lost_cell_and_says_why_it_holds_a_live_one(sweep_env, tmp_path, capsys):
    """Through ``sweep --local`` itself: a cell whose recorded pid now belongs to another process is run again (it
    used to stay "running" forever and the sweep exited 1 without a word); a cell whose process really still runs
    (same pid, same start time) is held back, and the exit status 1 comes with the reason."""
    from benchmark.sweeps.liveness import process_start
    from benchmark.sweeps.manifest import read_manifest, write_manifest

    sweep_dir = tmp_path / "sw"
    spec = _spec(tmp_path / "local.yaml", seeds=(0, 1))
    manifest, cells = _manifest(spec, sweep_dir)
    reused, live = _sleeper(), _sleeper()
    try:
        _give_job(manifest, cells[0], pid=reused.pid, pid_start=process_start(reused.pid) - 7)
        _give_job(manifest, cells[1], pid=live.pid, pid_start=process_start(live.pid))
        write_manifest(sweep_dir, manifest)
        code, output = run_cli(["sweep", str(spec), "--local", "--sweep-dir", str(sweep_dir), "--allow-dirty"], capsys)
        assert code == 1 and "Traceback" not in output
        assert "1 of 2 cell(s) are not done" in output and "still running from an earlier submission" in output
        assert cells[1].cell_id in output.splitlines()[-1]
        jobs = read_manifest(sweep_dir)["cells"][cells[0].cell_id]["jobs"]
        assert len(jobs) == 2 and jobs[-1]["returncode"] == 0 and jobs[-1]["pid_start"] is not None
    finally:
        for proc in (reused, live):
            proc.kill()
            proc.wait()


# ----------------------------------------------------------------------------- 14: large grids
def test_cells_share_one_composition_per_set_of_group_choices(sweep_env, tmp_path, monkeypatch):
    import benchmark.config as config
    from benchmark.sweeps.spec import expand_cells, load_spec, validate_cells

    calls = []
    real = config._hydra_compose
    monkeypatch.setattr(config, "_hydra_compose", lambda overrides: calls.append(overrides) or real(overrides))
    spec = _spec(tmp_path / "grid.yaml", seeds=range(30))
    data = yaml.safe_load(spec.read_text())
    data["grid"]["method"] = ["pretrained", "proxy_anchor"]
    data["rules"] = [{"match": {"method": "proxy_anchor"}, "overrides": ["train.epochs=1"]}]
    spec.write_text(yaml.safe_dump(data))
    cells = expand_cells(load_spec(spec), tmp_path / "runs")
    validate_cells(cells)
    assert len(cells) == 60 and len(calls) == 2  # one per method, not one per cell
    assert len({c.run_dir for c in cells}) == 60 and all(c.extra["seed"] in range(30) for c in cells)


SHARED_CASES = [
    ["seed=3", "train.lr=0.001"],
    ["method=multi_similarity", "seed=1", "eval.ks=[1,2,4,8,16]", "dataset.options.size=3"],
    ["method=pretrained", "train.epochs=0", "backbone.name=resnet10t", "out_dir='/tmp/a b, c'"],
    ["method=proxy_anchor", "method.margin=0.2", "train.grad_clip=1.0", "backbone.embedding_dim=null"],
    ["train.lr=abc"], ["trian.lr=1"], ["seed=0,1"], ["method.nope=1"], ["train.batch_size=1.5"], ["eval.ks=[1,"],
]  # fmt: skip


@pytest.mark.parametrize("overrides", SHARED_CASES, ids=lambda o: " ".join(o))
def test_a_shared_composition_equals_a_composition_alone(overrides, tmp_path):
    from omegaconf import OmegaConf

    from benchmark.compose_cache import ComposeCache
    from benchmark.config import compose_config

    cache = ComposeCache()
    compose_config(["seed=9"], cache=cache)  # the base is already there, as for every cell after the first

    def outcome(**kwargs):
        try:
            cfg = compose_config(overrides, **kwargs)
        except Exception as err:  # noqa: BLE001 - the error is part of what must be identical
            return type(err).__name__, str(err)
        return OmegaConf.to_yaml(cfg), OmegaConf.is_struct(cfg), OmegaConf.is_readonly(cfg)

    assert outcome(cache=cache) == outcome()


def test_a_large_dry_run_shows_progress_while_composing(sweep_env, tmp_path, capsys):
    spec = _spec(tmp_path / "wide.yaml", seeds=range(60))
    code, output = run_cli(["sweep", str(spec), "--dry-run", "--sweep-dir", str(tmp_path / "sw")], capsys)
    assert code == 0 and "composing cells" in output and "60 cells" in output
    assert not (tmp_path / "sw").exists()


# ----------------------------------------------------------------------------- files safe in the program that opens them
def test_leaderboard_csv_cells_never_open_as_spreadsheet_formulas(tmp_path, capsys):
    import csv

    hostile = '=HYPERLINK("http://e.example","x")'
    write_run(tmp_path / "runs", make_record(hostile, "cub", 0, METRICS))
    write_run(tmp_path / "runs", make_record("@SUM(A1)", "cub", 0, METRICS))
    code, out, err = _leaderboard([tmp_path / "runs"], tmp_path / "lb", capsys)
    assert code == 0, err
    for name in ("runs.csv", "leaderboard.csv"):
        with open(tmp_path / "lb" / name, newline="") as handle:
            cells = [cell for row in csv.reader(handle) for cell in row]
        assert "'" + hostile in cells and "'@SUM(A1)" in cells
        assert not [c for c in cells if c.startswith(("=", "+", "@", "\t", "\r"))], name
        numbers = [c for c in cells if c.startswith("-")]
        assert all(float(c) < 0 for c in numbers)  # negative numbers stay numbers
