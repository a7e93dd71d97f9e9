"""The catalogue of bad inputs: each one is run as a user runs it and must get a clear one-line answer.

Every :class:`Case` goes through the real command line (``benchmark.cli.main``, in-process: a subprocess per case
would take 15 s of start-up each on a small machine; one case below also runs ``python -m benchmark`` itself) and
must give: a non-zero exit status, no traceback, a message holding the case's distinctive words (what was expected
and what to do), and nothing written or lost (the files under the test's directory, which is also the working
directory, are the same before and after, byte sizes and modification times included).

To add a case, append a ``Case(id, argv, expected_words, setup=...)`` to :data:`CASES`; ``{tmp}`` in ``argv`` is the
test's directory, and ``setup(tmp, monkeypatch)`` prepares it (files the case needs, e.g. an existing run).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

from benchmark import cli
from tests import miniature

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Case:
    """One bad input: the command line, the words its error must hold, and what the directory holds beforehand."""

    id: str
    argv: tuple[str, ...]
    expected: tuple[str, ...]  # each must appear in the output (case-insensitive)
    setup: Callable[[Path, pytest.MonkeyPatch], None] | None = None
    max_chars: int = 1500  # the whole answer stays short (no 26 KB list of names)


def run_args(*overrides: str) -> tuple[str, ...]:
    """``run`` with the overrides and an out_dir inside the test's directory."""
    return ("run", *overrides, "out_dir={tmp}/runs")


# ----------------------------------------------------------------------------------------------- setups
def existing_run(tmp: Path, _: pytest.MonkeyPatch) -> None:
    """A finished run already in out_dir: a refused command must leave it exactly as it is."""
    run_dir = tmp / "runs" / "attributes" / "proxy_anchor" / "0123abcd-s0"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.pt").write_bytes(b"weights")
    (run_dir / "config.yaml").write_text("seed: 0\n")
    (run_dir / "record.json").write_text(json.dumps({"status": "completed", "config_hash": "0123abcd"}))


def npz(name: str, labels: np.ndarray) -> Callable[[Path, pytest.MonkeyPatch], None]:
    def setup(tmp: Path, _: pytest.MonkeyPatch) -> None:
        np.savez(tmp / name, embeddings=np.random.default_rng(0).normal(size=(len(labels), 4)), labels=labels)

    return setup


def a_file(tmp: Path, _: pytest.MonkeyPatch) -> None:
    (tmp / "afile").write_text("not a directory\n")


def no_gpu(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """This machine as one without a CUDA GPU (whatever it really has)."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


def leaderboard_input(tmp: Path, _: pytest.MonkeyPatch) -> None:
    (tmp / "lb_in").mkdir()
    (tmp / "afile").write_text("not a directory\n")


def bad_yaml(tmp: Path, _: pytest.MonkeyPatch) -> None:
    (tmp / "bad.yaml").write_text("name: bad\ngrid: {method: [proxy_anchor\n  seed: [0, 1]\n")


def manifest(text: str) -> Callable[[Path, pytest.MonkeyPatch], None]:
    def setup(tmp: Path, _: pytest.MonkeyPatch) -> None:
        (tmp / "sw").mkdir()
        (tmp / "sw" / "manifest.json").write_text(text)

    return setup


def partial_inat(tmp: Path, _: pytest.MonkeyPatch) -> None:
    """An iNat copy with 20 of the 1,486 bird species (plus 2 others)."""
    miniature.make_inat_aves(tmp / "inat", aves=20, others=2, per_class=1)


def inat_without_test_images(tmp: Path, _: pytest.MonkeyPatch) -> None:
    """Every bird species is listed, but the annotations hold no image of the last 743 (the test classes)."""
    root = miniature.make_inat_aves(tmp / "inat", aves=1486, others=0, per_class=1)
    meta = json.loads((root / "train_mini.json").read_text())
    test_ids = {c["id"] for c in sorted(meta["categories"], key=lambda c: c["image_dir_name"])[743:]}
    kept = [a for a in meta["annotations"] if a["category_id"] not in test_ids]
    keep_images = {a["image_id"] for a in kept}
    meta["annotations"], meta["images"] = kept, [i for i in meta["images"] if i["id"] in keep_images]
    (root / "train_mini.json").write_text(json.dumps(meta))


def cars_devkit_unlabelled(tmp: Path, _: pytest.MonkeyPatch) -> None:
    root = miniature.make_cars(tmp / "cars", "devkit", per_class=2)
    (root / "cars_test_annos_withlabels.mat").rename(root / "devkit" / "cars_test_annos.mat")


def cars_annotations_as_html(tmp: Path, _: pytest.MonkeyPatch) -> None:
    root = miniature.make_cars(tmp / "cars", "original", per_class=1)
    (root / "cars_annos.mat").write_text("<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head></html>\n")


def cub_labels_as_html(tmp: Path, _: pytest.MonkeyPatch) -> None:
    base = miniature.make_cub(tmp / "cub", per_class=1)
    (base / "image_class_labels.txt").write_text("\n\n  <html>\n<body>Access denied</body></html>\n")


def fake_gallery(run_dir: Path, dataset: str) -> None:
    """A finished run directory with a (queryless) gallery of ``dataset``, as benchmark.evaluation.gallery writes it."""
    from PIL import Image

    from benchmark.evaluation import gallery

    (run_dir / "gallery").mkdir(parents=True)
    (run_dir / "record.json").write_text(json.dumps({"status": "completed", "dataset": dataset}))
    Image.new("RGB", (64, 64)).save(run_dir / "gallery" / "thumbnails.png")
    spec = {"file": "thumbnails.png", "cell": 64, "columns": 16, "order": []}
    meta = {"format": gallery.FORMAT, "dataset": dataset, "method": "m", "seed": 0, "queries": [], "thumbnails": spec}
    meta["test_split"] = {"dataset": dataset, "split": "test", "images": 10, "labels_sha1": "0"}
    (run_dir / "gallery" / "gallery.json").write_text(json.dumps(meta))


def galleries(*datasets: str, out_file: bool = False) -> Callable[[Path, pytest.MonkeyPatch], None]:
    def setup(tmp: Path, _: pytest.MonkeyPatch) -> None:
        for i, dataset in enumerate(datasets):
            fake_gallery(tmp / f"run{i}", dataset)
        if out_file:
            (tmp / "n.png").write_bytes(b"a picture made earlier")

    return setup


# ----------------------------------------------------------------------------------------------- the catalogue
CASES = [
    # -- silent wrong results (issue 13 item 2)
    Case("epochs-negative", run_args("train.epochs=-1"), ("train.epochs=-1", "positive"), existing_run),
    Case("epochs-zero-training-method", run_args("train.epochs=0"), ("train.epochs=0", "method=pretrained")),
    Case("steps-per-epoch-zero", run_args("train.steps_per_epoch=0"), ("train.steps_per_epoch=0", "positive integer")),
    Case("score-one-class", ("score", "{tmp}/one.npz", "--json"), ("same class", "2 or more classes"),
         npz("one.npz", np.zeros(10, dtype=int))),
    Case("score-all-labels-unique", ("score", "{tmp}/unique.npz", "--json"), ("unique", "class ids"),
         npz("unique.npz", np.arange(10))),
    Case("leaderboard-reported-missing",
         ("leaderboard", "{tmp}/lb_in", "--reported", "{tmp}/nonexistent", "--out", "{tmp}/lb_out"),
         ("does not exist", "--no-reported"), leaderboard_input),
    # -- config values, checked when the config is composed (item 7)
    Case("batch-size-zero", run_args("train.batch_size=0"), ("train.batch_size=0", "positive integer")),
    Case("batch-size-negative", run_args("train.batch_size=-8"), ("train.batch_size=-8", "positive integer")),
    Case("m-per-class-zero", run_args("train.m_per_class=0"), ("train.m_per_class=0", "positive integer")),
    Case("batch-not-divisible", run_args("train.batch_size=64", "train.m_per_class=3"),
         ("multiple of train.m_per_class=3", "train.batch_size=63")),
    Case("grad-accum-zero", run_args("train.grad_accum=0"), ("train.grad_accum=0", "positive integer")),
    Case("eval-every-zero", run_args("eval.every=0"), ("eval.every=0", "positive integer")),
    Case("eval-ks-zero", run_args("eval.ks=[0]"), ("eval.ks=[0]", "positive integers")),
    Case("eval-ks-empty", run_args("eval.ks=[]"), ("eval.ks=[]", "non-empty")),
    Case("lr-zero", run_args("train.lr=0"), ("train.lr=0", "positive number")),
    Case("lr-negative", run_args("train.lr=-1e-4"), ("train.lr=", "positive number")),
    Case("image-size-zero", run_args("data.image_size=0"), ("data.image_size=0", "positive number of pixels")),
    Case("num-workers-negative", run_args("data.num_workers=-1"), ("data.num_workers=-1", ">= 0")),
    Case("device-cuda-without-gpu", run_args("device=cuda"), ("device=cuda", "no usable cuda gpu", "device=cpu"),
         no_gpu),
    Case("device-tpu", run_args("device=tpu"), ("device=tpu", "cuda:n")),
    Case("override-without-equals", run_args("trainepochs"), ("'trainepochs' is not an override", "key=value")),
    Case("override-unparsable", run_args("train.lr=1e-4]"), ("cannot parse", "key='value'")),
    Case("override-wrong-type", run_args("train.batch_size=abc"), ("train.batch_size=abc", "type")),
    Case("out-dir-is-a-file", ("run", "out_dir={tmp}/afile"), ("afile is a file", "out_dir=DIR"), a_file),
    Case("out-dir-under-a-file", ("run", "out_dir={tmp}/afile/runs"), ("cannot be created", "out_dir=DIR"), a_file),
    Case("out-dir-not-writable", ("run", "out_dir=/proc/1/runs"), ("not writable", "out_dir=DIR")),
    Case("leaderboard-out-is-a-file", ("leaderboard", "{tmp}/lb_in", "--out", "{tmp}/afile"),
         ("--out", "is a file", "--out DIR"), leaderboard_input),
    Case("sweep-spec-invalid-yaml", ("sweep", "{tmp}/bad.yaml", "--dry-run"), ("invalid yaml", "line"), bad_yaml),
    Case("sweep-max-parallel-zero", ("sweep", "smoke", "--local", "--max-parallel", "0"),
         ("--max-parallel", "positive integer")),
    Case("status-manifest-not-json", ("status", "{tmp}/sw"), ("not valid json", "move it aside"), manifest("{oops")),
    Case("status-manifest-wrong-shape", ("status", "{tmp}/sw"), ("shape of a sweep manifest", "move it aside"),
         manifest("[1, 2, 3]")),
    Case("sweep-manifest-wrong-shape", ("sweep", "smoke", "--sweep-dir", "{tmp}/sw", "--dry-run"),
         ("cell 'a' has no 'run_dir'", "move it aside"), manifest('{"name": "smoke", "cells": {"a": {"jobs": []}}}')),
    Case("unknown-timm-backbone", run_args("backbone.name=resnet5O"), ("did you mean 'resnet50'", "timm.list_models"),
         max_chars=400),
    # -- datasets (item 8)
    Case("inat-partial-copy", run_args("dataset=inat_aves", "dataset.root={tmp}/inat", "dataset.strict=false"),
         ("puts classes 1-743 in train", "only 20 classes", "partial", "prepare"), partial_inat),
    Case("inat-empty-test-split", run_args("dataset=inat_aves", "dataset.root={tmp}/inat", "dataset.strict=false"),
         ("test split of 'inat_aves' is empty", "expects 743 test classes (positions 744-1486", "found 0"), inat_without_test_images),
    Case("cars-devkit-unlabelled-test-annotations", run_args("dataset=cars", "dataset.root={tmp}/cars"),
         ("cars_test_annos.mat", "unlabelled", "cars_test_annos_withlabels.mat"), cars_devkit_unlabelled),
    Case("cars-annotations-are-an-html-page", run_args("dataset=cars", "dataset.root={tmp}/cars"),
         ("cars_annos.mat is an html", "download failed"), cars_annotations_as_html),
    Case("cub-labels-are-an-html-page", run_args("dataset=cub", "dataset.root={tmp}/cub"),
         ("image_class_labels.txt is an html", "download the file again"), cub_labels_as_html),
    # -- neighbours galleries and per-query results (issue 22 items 1 and 5)
    Case("neighbours-run-without-gallery",
         ("neighbours", "{tmp}/runs/attributes/proxy_anchor/0123abcd-s0", "--out", "{tmp}/n.png"),
         ("has no gallery", "written before runs saved galleries", "force=true"), existing_run),
    Case("neighbours-different-datasets", ("neighbours", "{tmp}/run0", "{tmp}/run1", "--out", "{tmp}/n.png"),
         ("dataset 'cars'", "'cub'", "runs of one dataset"), galleries("cub", "cars")),
    Case("neighbours-out-exists", ("neighbours", "{tmp}/run0", "{tmp}/run1", "--out", "{tmp}/n.png"),
         ("exists and is not empty", "--force"), galleries("cub", "cub", out_file=True)),
    Case("neighbours-not-a-run", ("neighbours", "{tmp}/lb_in", "--out", "{tmp}/n.png"),
         ("no record.json", "run directory"), leaderboard_input),
    Case("score-neighbours-given-embeddings", ("score", "--neighbours", "{tmp}/emb.npz"),
         ("no array(s) 'indices'", "without --neighbours"), npz("emb.npz", np.repeat(np.arange(3), 4))),
    Case("score-two-files", ("score", "{tmp}/emb.npz", "--neighbours", "{tmp}/emb.npz"),
         ("one file", "--neighbours FILE"), npz("emb.npz", np.repeat(np.arange(3), 4))),
    # -- bad inputs that already had clear answers: they must keep them
    Case("unknown-method", run_args("method=proxyanchor"), ("unknown method 'proxyanchor'", "proxy_anchor")),
    Case("unknown-dataset", run_args("dataset=cubb"), ("unknown dataset 'cubb'", "did you mean 'cub'")),
    Case("unknown-method-key", run_args("method.margn=0.2"), ("method.margn", "margin")),
    Case("unknown-section", run_args("trian.epochs=3"), ("trian", "did you mean 'train'")),
    Case("unknown-choice", run_args("eval.selection=best"), ("eval.selection=best", "val, last, test")),
    Case("dataset-without-root", run_args("dataset=cub"), ("dataset.root=dir", "prepare dataset=cub")),
    Case("score-missing-file", ("score", "{tmp}/missing.npz"), ("no such file", "'embeddings'")),
    Case("sweep-unknown-spec", ("sweep", "{tmp}/nope.yaml", "--dry-run"), ("not found", "smoke")),
    Case("status-not-a-sweep", ("status", "{tmp}"), ("not a sweep directory", "python -m benchmark sweep")),
    Case("leaderboard-missing-path", ("leaderboard", "{tmp}/nothing", "--out", "{tmp}/lb_out"), ("nothing",)),
]  # fmt: skip


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` with its size and modification time (directories: size 0)."""
    return {
        str(p.relative_to(root)): (p.stat().st_size if p.is_file() else 0, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
    }


def run_cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    """``python -m benchmark ARGV`` in this process: (exit status, stdout + stderr). An exception escaping the CLI
    is what a user would see as a traceback, so it fails the test."""
    try:
        code = cli.main(argv)
    except SystemExit as stop:  # argparse and a few commands exit this way, as they do for a user
        code = stop.code if isinstance(stop.code, int) else 1
        if isinstance(stop.code, str):
            print(stop.code, file=sys.stderr)
    except Exception as err:  # noqa: BLE001 - any escaping exception is the failure being tested for
        pytest.fail(f"{' '.join(argv)} ended in a traceback: {type(err).__name__}: {err}")
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_a_bad_input_gets_a_clear_answer_and_changes_nothing(case: Case, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # a command that wrote to the working directory would show in the snapshot
    if case.setup:
        case.setup(tmp_path, monkeypatch)
    before = snapshot(tmp_path)
    code, output = run_cli([a.replace("{tmp}", str(tmp_path)) for a in case.argv], capsys)
    assert code not in (0, None), f"exit status {code} for a bad input; output:\n{output}"
    assert "Traceback" not in output, output
    for word in case.expected:
        assert word.lower() in output.lower(), f"{word!r} not in:\n{output}"
    assert len(output) <= case.max_chars, f"{len(output)} characters:\n{output[:2000]}"
    assert snapshot(tmp_path) == before, "the refused command wrote, changed or removed files"


def test_the_catalogue_covers_every_case_once():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 45


def test_score_json_writes_an_undefined_metric_as_null(tmp_path, capsys, monkeypatch):
    """``score --json`` is strict JSON: a metric that is not a number (NaN) is written as null, never as bare NaN."""
    import benchmark.evaluation.metrics as metrics

    monkeypatch.setattr(metrics, "score_file", lambda path: {"recall@1": 0.5, "map@r": float("nan"), "nmi": 0.25})
    code, output = run_cli(["score", str(tmp_path / "e.npz"), "--json"], capsys)
    assert code == 0
    values = json.loads(output, parse_constant=lambda name: pytest.fail(f"bare {name} in the JSON"))
    assert values == {"recall@1": 0.5, "map@r": None, "nmi": 0.25}


def test_an_out_dir_with_spaces_and_non_ascii_letters_just_works(tiny_overrides, tmp_path, capsys):
    out_dir = tmp_path / "my runs, été" / "données ü"
    overrides = [o for o in tiny_overrides if not o.startswith(("out_dir=", "train.epochs="))]
    code, output = run_cli(["run", *overrides, "train.epochs=1", f"out_dir={out_dir}"], capsys)
    assert code == 0, output
    (record_path,) = out_dir.rglob("record.json")
    record = json.loads(record_path.read_text(encoding="utf-8"))
    assert record["status"] == "completed" and record["config"]["out_dir"] == str(out_dir)
    assert str(record_path) in output


def test_the_real_command_line_answers_without_a_traceback(tmp_path):
    """One case through ``python -m benchmark`` itself: exit status 2 and one ``error:`` line on stderr."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmark", "run", "device=tpu", f"out_dir={tmp_path / 'runs'}"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and proc.stderr.startswith("error: device=tpu")
    assert list(tmp_path.iterdir()) == []


def test_a_sweep_spec_error_names_the_line(tmp_path):
    """The YAML error of a spec points at where the file breaks (line numbers are 1-based)."""
    from benchmark.sweeps.spec import SpecError, load_spec

    bad_yaml(tmp_path, None)
    with pytest.raises(SpecError, match=r"invalid YAML at line \d+, column \d+"):
        load_spec(tmp_path / "bad.yaml")
    assert yaml.safe_load("grid: {seed: [0]}")  # the same loader reads a good spec
