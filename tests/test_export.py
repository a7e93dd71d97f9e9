"""``python -m benchmark export``: a run's encoder in the Hub layout, loaded back as ``backbone=exported`` with the
run's exact test metrics (a timm backbone and the tiny Qwen3-VL tower), ONNX parity, and the refusals."""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmark.cli import main


def _record(run_dir: Path) -> dict:
    return json.loads((run_dir / "record.json").read_text())


def _reproduce(export_dir: Path, out_dir: Path) -> dict:
    """Run the model card's load command (DIR = the export) and return the new run's record."""
    card = (export_dir / "README.md").read_text()
    command = next(line for line in card.splitlines() if line.startswith("python -m benchmark run method=pretrained"))
    args = shlex.split(command.replace("backbone.checkpoint=DIR", f"backbone.checkpoint={export_dir}"))[4:]
    assert main(["run", *args, f"out_dir={out_dir}", "train.progress=false", "data.num_workers=0"]) == 0
    (record,) = [json.loads(p.read_text()) for p in out_dir.rglob("record.json")]
    return record


@pytest.fixture
def timm_run(tiny_overrides, tmp_path):
    assert main(["run", *tiny_overrides, "method=proxy_anchor"]) == 0
    (run_dir,) = (tmp_path / "runs").glob("blobs/proxy_anchor/*")
    return run_dir


def test_timm_export_reloads_with_the_runs_test_metrics_and_onnx_parity(timm_run, tmp_path, capsys):
    out = tmp_path / "export"
    assert main(["export", str(timm_run), "--out", str(out), "--onnx"]) == 0
    assert {p.name for p in out.iterdir()} == {"model.safetensors", "config.json", "README.md", "model.onnx"}
    from safetensors.torch import load_file

    keys = set(load_file(out / "model.safetensors"))
    assert keys and all(k.startswith("encoder.") for k in keys)  # proxy_anchor's proxies are not exported
    assert "encoder.head.weight" in keys and any(k.startswith("encoder.backbone.") for k in keys)
    card = (out / "README.md").read_text()
    record = _record(timm_run)
    for text in (
        "proxy_anchor",
        "blobs",
        record["protocol"]["hash"],
        "Proxy Anchor Loss",
        "python -m benchmark export",
    ):
        assert text in card, text
    assert card.startswith("---\nlibrary_name: dml-benchmark") and "model-index" in card
    again = _reproduce(out, tmp_path / "again")
    assert again["method"] == "pretrained" and again["backbone"]["kind"] == "exported"
    assert again["metrics"]["test"] == record["metrics"]["test"]  # exactly
    # ONNX: onnxruntime on new images against the reloaded torch model
    import onnxruntime

    from benchmark.backbones.exported import load_exported

    model, config = load_exported(out)
    images = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(7))
    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": images.numpy()})[0]
    with torch.no_grad():
        expected = model.embed(images).numpy()
    assert got.shape == (5, 16) and np.abs(got - expected).max() < 1e-5
    assert config["onnx"]["max_abs_diff"] < 1e-4


def test_bad_exports_get_one_line(timm_run, tmp_path, capsys):
    def refused(*args: str) -> str:
        capsys.readouterr()
        assert main(["export", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
        return err

    assert "is not a run directory (no record.json)" in refused(str(tmp_path), "--out", str(tmp_path / "e"))
    unfinished = tmp_path / "unfinished"
    shutil.copytree(timm_run, unfinished)
    record = _record(unfinished)
    record["status"] = "running"
    (unfinished / "record.json").write_text(json.dumps(record))
    assert "is an unfinished run (status 'running')" in refused(str(unfinished), "--out", str(tmp_path / "e"))
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    assert "exists and is not empty" in refused(str(timm_run), "--out", str(taken))
    assert (taken / "keep.txt").read_text() == "mine" and not (tmp_path / "e").exists()
    assert main(["export", str(timm_run), "--out", str(taken), "--force"]) == 0
    assert (taken / "model.safetensors").is_file() and not (taken / "keep.txt").exists()
    bad = tmp_path / "notexport"
    bad.mkdir()
    (bad / "config.json").write_text("{}")
    (bad / "model.safetensors").write_bytes(b"junk")
    capsys.readouterr()
    args = [
        "method=pretrained",
        "backbone=exported",
        f"backbone.checkpoint={bad}",
        "dataset=blobs",
        "eval.selection=last",
    ]
    assert main(["run", *args, "train.batch_size=8", "train.m_per_class=2", f"out_dir={tmp_path}/r"]) == 2
    assert "not this suite's" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:Dataset 'attributes' does not have the expected counts")
def test_saga_export_is_the_tower_and_pooler_and_reproduces_on_the_tiny_qwen_tower(tmp_path, capsys):
    overrides = [
        "method=saga", "method.use_grpo=false", "method.use_kl=false", "method.embedding_dim=32",
        "method.metric_loss=potential_field", "dataset=attributes", "dataset.strict=false",
        "+dataset.options.per_class=6", "backbone=tiny_qwen3_vl", "data.transform=saga", "data.image_size=64",
        "train.epochs=1", "train.steps_per_epoch=2", "train.batch_size=8", "train.m_per_class=2",
        "train.progress=false", "data.num_workers=0", "eval.kmeans_restarts=1", "eval.selection=last",
        "eval.attribute_probe=false", f"out_dir={tmp_path / 'runs'}",
    ]  # fmt: skip
    assert main(["run", *overrides]) == 0
    (run_dir,) = (tmp_path / "runs").glob("attributes/saga/*")
    out = tmp_path / "export"
    capsys.readouterr()
    assert main(["export", str(run_dir), "--out", str(out), "--onnx"]) == 2  # ONNX: timm backbones only
    assert "--onnx exports timm backbones only" in capsys.readouterr().err and not out.exists()
    assert main(["export", str(run_dir), "--out", str(out)]) == 0
    from safetensors.torch import load_file

    keys = set(load_file(out / "model.safetensors"))
    method_keys = {k for k in keys if k.startswith("method.")}
    assert method_keys and all(k.startswith("method.pooler.") for k in method_keys)  # no proxies, no LM
    assert keys - method_keys and all(k.startswith("encoder.backbone.") for k in keys - method_keys)
    assert json.loads((out / "config.json").read_text())["embed_modules"] == ["pooler"]
    again = _reproduce(out, tmp_path / "again")
    assert again["metrics"]["test"] == _record(run_dir)["metrics"]["test"]
