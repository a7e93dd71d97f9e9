"""Run records: ``record.json`` (atomically written), the protocol hash, provenance (git SHA, library versions).

Schema (version 1), one file per run directory::

    schema_version, run_id, status ("running" | "completed" | "failed"), error, method, dataset, seed,
    backbone {...}, data {...}, splits {train|val|test: {classes, images}},
    selection {rule, metric, epoch}, metrics {test: {...}, val: {...} | null}, attribute_probe {...} | null,
    history [...], method_info {...}, diagnostics {...}, protocol {name, hash, version, fields}, config_hash, config {...},
    git {sha, dirty}, versions {...}, timings {...}, evaluation {...}

Metric keys: ``recall@1``, ``recall@2``, ``recall@4``, ``recall@8``, ``map@r``, ``r_precision``, ``nmi`` (fractions).

``attribute_probe`` (an optional addition to version 1: absent in older records, null where the dataset names no
class attributes or ``eval.attribute_probe=false``) holds the class-disjoint linear probe of each attribute on the
test embeddings, as :func:`benchmark.evaluation.attribute_probe.probe_attributes` returns it: ``accuracy {attribute:
fraction}``, ``chance {attribute: fraction}``, ``mean_accuracy``, ``mean_chance``, ``skipped``, counts and settings;
or ``{error}`` saying why it could not be computed (e.g. fewer than 4 test classes).

``method_code`` and ``starts`` (optional additions to version 1, absent in older records): ``method_code`` is
``{hash, files: {path: sha256}}`` of the method's source files (:mod:`benchmark.engine.provenance`); ``starts`` lists
every start of the run, the first and each resume: ``{started, git_sha, git_dirty, resumed_from: {epoch, step} |
null}``. ``git`` is the checkout of the latest start. A run is never resumed by other code of its method.

``compute`` and ``per_query`` (optional additions to version 1: absent in older records) hold what the run cost
(:mod:`benchmark.engine.compute`: device, peak memory, seconds per phase, training images/s, GPU-hours or CPU
core-hours, per-session) and the test queries' Recall@1 hits (:mod:`benchmark.evaluation.per_query`), from which
the leaderboard draws bootstrap intervals for one-seed comparisons.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from benchmark.config import stable_hash, to_container

SCHEMA_VERSION = 1
#: Bump when the evaluation or split definitions change: records with different versions never share a table.
PROTOCOL_VERSION = 1
METRIC_KEYS = ("recall@1", "recall@2", "recall@4", "recall@8", "map@r", "r_precision", "nmi")
REPO_ROOT = Path(__file__).resolve().parents[2]


def umask() -> int:
    """This process's file-creation mask (``/proc/self/status`` where it says, else set and restored at once)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(fd: int) -> None:
    """Give a file made by ``tempfile.mkstemp`` (always mode 0600) the mode a plain ``open`` would: 0666 less the
    umask, so a run's files are readable by the group where the user's umask says so (a shared cluster)."""
    os.fchmod(fd, 0o666 & ~umask())


def write_atomic(path: str | Path, data: str | bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same directory, fsync and ``os.replace``; the file
    gets the mode the umask gives (:func:`follow_umask`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        follow_umask(fd)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data.encode("utf-8") if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    write_atomic(path, json.dumps(obj, indent=2, default=str) + "\n")


write_text_atomic = write_atomic


def read_record(run_dir: str | Path) -> dict[str, Any] | None:
    path = Path(run_dir) / "record.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def is_complete(record: dict[str, Any] | None) -> bool:
    """A finished result: completed status, this schema, every test metric present."""
    if not record or record.get("status") != "completed" or record.get("schema_version") != SCHEMA_VERSION:
        return False
    test = (record.get("metrics") or {}).get("test") or {}
    return all(key in test for key in METRIC_KEYS)


def git_info(cwd: Path = REPO_ROOT) -> dict[str, Any]:
    """The repository's HEAD SHA and whether the tree has uncommitted changes (None outside a checkout)."""

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    sha = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"sha": sha, "dirty": bool(status) if status is not None else None}


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for dist in (
        "torch",
        "torchvision",
        "timm",
        "pytorch-metric-learning",
        "faiss-gpu",
        "faiss-cpu",
        "numpy",
        "scikit-learn",
        "transformers",
        "hydra-core",
    ):
        try:
            versions[dist] = version(dist)
        except PackageNotFoundError:
            continue
    return versions


def protocol_fields(cfg: Any, split_spec: dict[str, Any], eval_settings: dict[str, Any]) -> dict[str, Any]:
    """What defines the protocol: its name (``sweeps/protocols/<name>.yaml``), dataset and split version, input size and
    transforms, the metric definitions. Runs under different protocols never share a leaderboard table."""
    return {
        "protocol_version": PROTOCOL_VERSION,
        "protocol": cfg.get("protocol"),
        "dataset": cfg.dataset.name,
        "split": split_spec,
        "val_fraction": cfg.dataset.val_fraction if cfg.eval.selection == "val" else None,
        "image_size": cfg.data.image_size,
        "transform": cfg.data.transform,
        "evaluation": eval_settings,
    }


def protocol_hash(fields: dict[str, Any]) -> str:
    return stable_hash(fields, 12)


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def config_dict(cfg: DictConfig) -> dict[str, Any]:
    tree = to_container(cfg)
    tree.pop("defaults", None)
    return tree


def save_resolved_config(cfg: DictConfig, run_dir: Path) -> None:
    write_text_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(cfg))
