"""``python -m benchmark export RUN_DIR --out DIR [--onnx] [--force]``: a finished run's encoder, in the Hugging Face
Hub layout (``model.safetensors``, ``config.json``, ``README.md`` as the model card; ``model.onnx`` with ``--onnx``).

What is exported is what the run's evaluation embedded: the encoder (backbone, pooling, head) and the method modules
its ``embed`` calls, found by running ``embed`` once with forward hooks on the method's submodules (SAGA: the
attention pooler; its proxies and the language model are not used by ``embed``, so they are never written). The
export is loaded back before it is kept and must give bit-identical embeddings, so a parameter that the hooks could
not see (one a method uses outside a submodule's forward) makes the export fail rather than be wrong.
Load it with ``backbone=exported backbone.checkpoint=DIR`` (:mod:`benchmark.backbones.exported`).
"""

from __future__ import annotations

import json
import shlex
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from benchmark.backbones.exported import CONFIG, FORMAT, FORMAT_VERSION, WEIGHTS, build_model, load_exported
from benchmark.engine import checkpoints
from benchmark.engine.records import write_atomic, write_json_atomic

ONNX_FILE = "model.onnx"
#: Largest |difference| accepted between onnxruntime's and torch's embeddings (float32, unit-norm vectors).
ONNX_TOLERANCE = 1e-4


class ExportError(ValueError):
    """A run that cannot be exported as asked; the message says why and what to do."""


def _read_run(run_dir: Path) -> dict[str, Any]:
    layout = "a run directory is <out_dir>/<dataset>/<method>/<run_name>/ and holds record.json and checkpoints/"
    if not run_dir.is_dir():
        raise ExportError(f"{run_dir} is not a directory; {layout}.")
    path = run_dir / "record.json"
    if not path.is_file():
        raise ExportError(f"{run_dir} is not a run directory (no record.json); {layout}.")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ExportError(f"{path} cannot be read as a run record ({err}); {layout}.") from None
    if not isinstance(record, dict) or "config" not in record or "status" not in record:
        raise ExportError(f"{path} is not a run record of this suite; {layout}.")
    if record["status"] != "completed":
        raise ExportError(
            f"{run_dir} is an unfinished run (status {record['status']!r}): only a completed run has the weights its "
            "test metrics came from. Finish it (run the same command again: it resumes), then export."
        )
    return record


def _checkpoint(run_dir: Path, record: dict[str, Any]) -> Path:
    """The checkpoint holding the weights the final evaluation used (best.pt when a selected epoch was loaded)."""
    selection = record.get("selection") or {}
    best = run_dir / "checkpoints" / "best.pt"
    if selection.get("rule") in ("val", "test") and selection.get("epoch") is not None and best.is_file():
        return best
    last = run_dir / "checkpoints" / "last.pt"
    if not last.is_file():
        if not record["history"]:
            raise ExportError(
                f"{run_dir}: method {record['method']} trained nothing (no checkpoint): its encoder is the backbone "
                f"as built, e.g. backbone.name={record['backbone']['name']}; there are no trained weights to export."
            )
        raise ExportError(f"{run_dir}: checkpoints/last.pt is missing; the run's weights are gone.")
    return last


def export_config(record: dict[str, Any]) -> dict[str, Any]:
    """The export's ``config.json``: the architecture (backbone, method and its config) and what the run measured."""
    cfg = record["config"]
    backbone = dict(cfg["backbone"]) | {"pretrained": False}  # the weights come from the export, not the hub
    if backbone.get("kind") != "exported":  # an export fine-tuned further needs its first export's architecture
        backbone["checkpoint"] = None
    data, protocol = record["data"], record["protocol"]
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "run_id": record["run_id"],
        "method": record["method"],
        "method_config": cfg["method"],
        "backbone": backbone,
        "task": {"dataset": record["dataset"], "num_classes": int(record["splits"]["train"]["classes"])},
        "embedding_dim": None,  # filled in once the model is built
        "data": {
            "image_size": data["image_size"],
            "mean": data["normalization"]["mean"],
            "std": data["normalization"]["std"],
            "interpolation": data["interpolation"],
            "test_transform": data["test_transform"],
            "transform": data.get("transform"),
        },
        "protocol": {"name": protocol.get("name"), "hash": protocol["hash"], "version": protocol.get("version")},
        "config_hash": record["config_hash"],
        "metrics": {"test": record["metrics"]["test"]},
        "seed": record["seed"],
        "run_config": cfg,
    }


def _used_method_tensors(model: torch.nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """The method's tensors owned by the submodules its ``embed`` runs (forward hooks record which run)."""
    fired: set[str] = set()
    handles = [
        module.register_forward_hook(lambda mod, args, out, name=name: fired.add(name))
        for name, module in model.method.named_modules()
        if name
    ]
    try:
        with torch.no_grad():
            model.embed(images)
    finally:
        for handle in handles:
            handle.remove()
    state = model.method.state_dict()
    return {k: v for k, v in state.items() if torch.is_tensor(v) and k.rpartition(".")[0] in fired}


def _probe_images(config: dict[str, Any], n: int = 4) -> torch.Tensor:
    size = int(config["data"]["image_size"])
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))


def load_command(config: dict[str, Any], directory: str = "DIR") -> str:
    """The ``run`` command that evaluates the export under the run's data and evaluation settings."""
    cfg, data = config["run_config"], config["data"]
    ds, ev = cfg["dataset"], cfg["eval"]
    parts = ["python -m benchmark run method=pretrained backbone=exported", f"backbone.checkpoint={directory}"]
    parts += [f"dataset={config['task']['dataset']}", f"protocol={config['protocol']['name'] or 'none'}"]
    parts += ["dataset.root=..."] if ds.get("root") else []
    parts += [] if ds.get("strict", True) else ["dataset.strict=false"]
    parts += [f"+dataset.options.{k}={v}" for k, v in sorted((ds.get("options") or {}).items())]
    parts += [f"data.image_size={data['image_size']}", f"data.transform={cfg['data']['transform']}"]
    parts += [
        f"data.resize_ratio={cfg['data']['resize_ratio']}",
        "backbone.pooling=mean",
        "backbone.embedding_dim=null",
    ]
    parts += [
        f"eval.kmeans_seed={ev['kmeans_seed']}",
        f"eval.kmeans_restarts={ev['kmeans_restarts']}",
        "eval.selection=last",
    ]
    # the sampler's settings are checked at compose time even for a method that trains nothing: the run's fit
    parts += [f"train.batch_size={cfg['train']['batch_size']}", f"train.m_per_class={cfg['train']['m_per_class']}"]
    parts += [] if list(ev["ks"]) == [1, 2, 4, 8] else [shlex.quote(f"eval.ks=[{','.join(map(str, ev['ks']))}]")]
    return " ".join(parts)


def model_card(config: dict[str, Any], record: dict[str, Any], command: str, onnx: dict[str, Any] | None) -> str:
    """README.md in the Hub's model-card layout: YAML front matter, then what the model is and how to load it."""
    from benchmark.data.base import list_cards
    from benchmark.engine.run import format_metrics

    card = list_cards().get(record["dataset"], {})
    info = record.get("method_info") or {}
    test = record["metrics"]["test"]
    b = config["backbone"]
    front = {
        "library_name": "dml-benchmark",
        "tags": ["deep-metric-learning", "image-retrieval", record["method"], record["dataset"]],
        "pipeline_tag": "image-feature-extraction",
        "model-index": [{"name": record["run_id"], "results": [{
            "task": {"type": "image-retrieval"},
            "dataset": {"name": record["dataset"], "type": record["dataset"], "split": "test"},
            "metrics": [{"type": k, "value": float(v)} for k, v in test.items() if isinstance(v, (int, float))],
        }]}],
    }  # fmt: skip
    load = load_command(config)
    run_cmd = " ".join(
        ["python -m benchmark run", f"method={record['method']}", f"dataset={record['dataset']}"]
        + ([f"protocol={config['protocol']['name']}"] if config["protocol"]["name"] else [])
        + [f"seed={record['seed']}"]
    )
    lines = ["---", OmegaConf.to_yaml(OmegaConf.create(front)).rstrip(), "---", ""]
    lines += [f"# {record['method']} on {record['dataset']} ({record['run_id']})", ""]
    lines += [
        f"A deep-metric-learning image encoder trained by **{record['method']}** ({info.get('paper', '')}) on "
        f"**{card.get('title', record['dataset'])}**, exported from the run `{record['run_id']}` of the DML "
        "benchmark suite. Input: RGB images, "
        f"{config['data']['image_size']} px ({config['data']['test_transform']}), normalised with mean "
        f"{config['data']['mean']} and std {config['data']['std']}; output: an L2-normalised "
        f"{config['embedding_dim']}-d embedding (cosine similarity for retrieval).",
        "",
        "## Architecture",
        "",
        f"- backbone: `{b['kind']}` `{b['name']}`, pooling `{b['pooling']}`, head to {b['embedding_dim'] or 'none'}",
        f"- method modules used for the embedding: {', '.join(config['embed_modules']) or 'none'}"
        " (no language model, no proxies or classifier)",
        "",
        "## Protocol and test metrics",
        "",
        f"Protocol `{config['protocol']['name']}` (hash `{config['protocol']['hash']}`, version "
        f"{config['protocol']['version']}); checkpoint selection `{(record.get('selection') or {}).get('rule')}` "
        f"(epoch {(record.get('selection') or {}).get('epoch')}); seed {record['seed']}; config hash "
        f"`{record['config_hash']}`. Test split ({record['splits']['test']['classes']} unseen classes, "
        f"{record['splits']['test']['images']} images):",
        "",
        "```",
        format_metrics(test).strip(),
        "```",
        "",
        "## Load it",
        "",
        "Reproduce the test metrics above exactly (dataset.root=... for datasets that need files):",
        "",
        "```bash",
        load,
        "```",
        "",
        "In Python: `from benchmark.backbones.exported import load_exported; model, config = load_exported(DIR)`; "
        "`model.embed(images)` gives the embeddings. The weights are read with safetensors (no code is loaded).",
        "",
    ]
    if onnx:
        lines += [
            f"`{ONNX_FILE}`: the same embedding through ONNX (input `images` B×3×H×W float32, output "
            f"`embeddings`); onnxruntime matched torch to {onnx['max_abs_diff']:.1e} on {onnx['images']} images.",
            "",
        ]
    lines += ["## How it was made", "", "```bash", command, "```", ""]
    lines += [
        f"from the run made by `{run_cmd}` with the overrides that give config hash `{record['config_hash']}` "
        f"(its full resolved configuration is `run_config` in `{CONFIG}`; commit {(record.get('git') or {}).get('sha')}).",
        "",
        "## Citation",
        "",
    ]
    lines += [f"- Method: {info.get('paper', record['method'])}" + (f" ({info['url']})" if info.get("url") else "")]
    if card.get("citation"):
        lines += [f"- Dataset: {' '.join(str(card['citation']).split())}"]
    return "\n".join(lines) + "\n"


def _onnx_export(model: torch.nn.Module, images: torch.Tensor, path: Path) -> dict[str, Any]:
    """``model.onnx`` with a dynamic batch axis, and its parity with torch through onnxruntime."""
    import numpy as np
    import onnxruntime

    class Embed(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner.embed(x)

    wrapper = Embed(model).eval()
    batch = torch.export.Dim("batch", min=1)
    torch.onnx.export(
        wrapper, (images,), str(path), input_names=["images"], output_names=["embeddings"],
        dynamic_shapes=({0: batch},), dynamo=True, verbose=False, external_data=False,
    )  # fmt: skip
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    probe = torch.randn(len(images) + 3, *images.shape[1:], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = wrapper(probe).numpy()
    got = session.run(["embeddings"], {"images": probe.numpy()})[0]
    diff = float(np.abs(got - expected).max())
    if not diff <= ONNX_TOLERANCE:
        raise ExportError(f"The ONNX model differs from torch by {diff:.2e} (> {ONNX_TOLERANCE}); not written.")
    return {"file": ONNX_FILE, "max_abs_diff": diff, "images": len(probe), "opset": None}


def export_run(
    run_dir: str | Path, out: str | Path, *, force: bool = False, onnx: bool = False, command: str = ""
) -> dict[str, Path]:
    """Export a completed run's encoder into ``out`` (refused if it exists and is not empty, unless ``force``)."""
    run_dir, out = Path(run_dir), Path(out)
    record = _read_run(run_dir)
    if onnx and record["config"]["backbone"]["kind"] != "timm":
        raise ExportError(
            f"--onnx exports timm backbones only; this run's backbone is {record['config']['backbone']['kind']} "
            f"({record['backbone']['name']}): export without --onnx (model.safetensors loads with backbone=exported)."
        )
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise ExportError(
            f"--out {out} exists and is not empty: choose a new directory, or pass --force to replace it."
        )
    checkpoint = _checkpoint(run_dir, record)
    config = export_config(record)
    model = build_model(config)
    state = checkpoints.read(checkpoint, "cpu", record["config_hash"])
    model.encoder.load_state_dict(state["encoder"])
    model.method.load_state_dict(state["method"])
    model.eval()
    images = _probe_images(config)
    method_tensors = _used_method_tensors(model, images)
    config["embed_modules"] = sorted({k.split(".")[0] for k in method_tensors})
    with torch.no_grad():
        expected = model.embed(images)
    config["embedding_dim"] = int(expected.shape[1])
    tensors = {f"encoder.{k}": v for k, v in model.encoder.state_dict().items()}
    tensors |= {f"method.{k}": v for k, v in method_tensors.items()}
    from safetensors.torch import save_file

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.export-"))
    try:
        save_file({k: v.detach().contiguous().clone() for k, v in tensors.items()}, str(staging / WEIGHTS),
                  metadata={"format": FORMAT, "run_id": record["run_id"]})  # fmt: skip
        write_json_atomic(staging / CONFIG, config)
        loaded, _ = load_exported(staging)
        with torch.no_grad():
            if not torch.equal(loaded.embed(images), expected):
                raise ExportError(
                    f"The exported model does not reproduce the run's embeddings (method {record['method']} uses "
                    "parameters outside its submodules' forward); nothing was written."
                )
        onnx_info = _onnx_export(loaded, images, staging / ONNX_FILE) if onnx else None
        if onnx_info:
            config["onnx"] = onnx_info
            write_json_atomic(staging / CONFIG, config)
        command = command or f"python -m benchmark export {shlex.quote(str(run_dir))} --out {shlex.quote(str(out))}"
        write_atomic(staging / "README.md", model_card(config, record, command, onnx_info))
        if out.exists():  # --force (or an empty directory): replaced only now that the export is whole
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        staging.rename(out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return {p.name: p for p in sorted(out.iterdir())}
