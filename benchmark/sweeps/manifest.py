"""A sweep directory's ``manifest.json`` (cell -> jobs -> run directory), the git check made before submitting, and
the :class:`Prepared` sweep that SLURM submission (``submit``) and local runs (``local``) share."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmark.engine import records
from benchmark.sweeps.spec import Cell, Spec, SpecError

MANIFEST = "manifest.json"
DEFAULT_SWEEPS_ROOT = Path("runs") / "sweeps"


class DirtyTreeError(RuntimeError):
    """Refusal to submit from a checkout with uncommitted changes."""


# ----------------------------------------------------------------------------------------------- manifest
def read_manifest(sweep_dir: str | Path) -> dict[str, Any]:
    path = Path(sweep_dir) / MANIFEST
    if not path.exists():
        raise SpecError(
            f"{sweep_dir} is not a sweep directory (no {MANIFEST}). A sweep directory is made by "
            "python -m benchmark sweep SPEC (it prints where)."
        )
    return load_manifest_file(path)


def load_manifest_file(path: Path) -> dict[str, Any]:
    """Read and check a ``manifest.json``; a damaged file or one of the wrong shape is a :class:`SpecError` that
    says how to recover (the file itself is left as it is)."""
    recover = (
        f"Move it aside (mv {path} {path}.damaged) and submit the same spec again with --sweep-dir "
        f"{path.parent}: finished runs are found from their records and are not run again."
    )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SpecError(f"{path} is not valid JSON ({err}): the sweep's manifest is damaged. {recover}") from None
    problem = _manifest_problem(manifest)
    if problem:
        raise SpecError(f"{path} does not have the shape of a sweep manifest ({problem}). {recover}")
    return manifest


def _manifest_problem(manifest: Any) -> str | None:
    """What is wrong with the structure of a parsed manifest, or None."""
    if not isinstance(manifest, dict):
        return f"expected a JSON object, found {type(manifest).__name__}"
    if not isinstance(manifest.get("name"), str):
        return "no 'name' string"
    cells = manifest.get("cells")
    if not isinstance(cells, dict):
        return "no 'cells' object"
    if not isinstance(manifest.get("submissions", []), list):
        return "'submissions' is not a list"
    for cell_id, entry in cells.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("run_dir"), str):
            return f"cell '{cell_id}' has no 'run_dir'"
        jobs = entry.get("jobs", [])
        if not isinstance(jobs, list) or not all(isinstance(j, dict) and "job_id" in j and "mode" in j for j in jobs):
            return f"cell '{cell_id}': 'jobs' must be a list of objects with 'job_id' and 'mode'"
    return None


def _load_or_new_manifest(sweep_dir: Path, spec: Spec) -> dict[str, Any]:
    path = sweep_dir / MANIFEST
    if path.exists():
        manifest = load_manifest_file(path)
        manifest.setdefault("submissions", [])
        if manifest.get("name") != spec.name:
            raise SpecError(
                f"{sweep_dir} holds sweep '{manifest.get('name')}', not '{spec.name}'. Pass another --sweep-dir."
            )
        return manifest
    return {"schema_version": 1, "name": spec.name, "created": records.utc_now(), "submissions": [], "cells": {}}


def _update_manifest(manifest: dict[str, Any], spec: Spec, cells: list[Cell]) -> None:
    manifest["spec"] = {"path": str(spec.path.resolve()), "sha256": spec.sha256, "content": spec.data}
    for cell in cells:
        entry = manifest["cells"].setdefault(cell.cell_id, {"jobs": []})
        entry.update(
            index=cell.index,
            assign=cell.assign,
            overrides=cell.overrides,
            run_dir=cell.run_dir,
            config_hash=cell.config_hash,
            seed=cell.extra.get("seed"),  # with the config hash, what the run in run_dir must be (status checks it)
            resources=cell.resources,
        )


def write_manifest(sweep_dir: Path, manifest: dict[str, Any]) -> None:
    manifest["updated"] = records.utc_now()
    records.write_json_atomic(sweep_dir / MANIFEST, manifest)


@dataclass
class Prepared:
    """A spec expanded and validated: its cells, which of them are complete, and where the sweep lives."""

    spec: Spec
    sweep_dir: Path
    cells: list[Cell]
    complete: set[str]
    active: set[str] = field(default_factory=set)  # queued or running from an earlier submission
    unknown: dict[str, str] = field(default_factory=dict)  # cell -> why its state is unknown (possibly live): held back

    @property
    def pending(self) -> list[Cell]:
        held = self.complete | self.active | set(self.unknown)
        return [c for c in self.cells if c.cell_id not in held]


def check_git(allow_dirty: bool) -> dict[str, Any]:
    """The checkout's git state; refuse a dirty tree unless ``allow_dirty``."""
    git = records.git_info()
    if git.get("dirty") and not allow_dirty:
        raise DirtyTreeError(
            f"The checkout {records.REPO_ROOT} has uncommitted changes (HEAD {git.get('sha')}): "
            "the runs could not be traced to a commit. Commit them, or pass --allow-dirty to "
            "submit anyway (the records then say dirty=true)."
        )
    return git


def begin_submission(
    prepared: Prepared, mode: str, git: dict[str, Any], **fields: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The sweep's manifest (loaded or new, brought up to the prepared cells) and a new submission entry for it:
    time, mode, git state, ``fields``, and the cells skipped as complete or still active."""
    manifest = _load_or_new_manifest(prepared.sweep_dir, prepared.spec)
    _update_manifest(manifest, prepared.spec, prepared.cells)
    submission = {"time": records.utc_now(), "mode": mode, "git": git, **fields}
    submission |= {"skipped_complete": sorted(prepared.complete), "skipped_active": sorted(prepared.active)}
    if prepared.unknown:
        submission["skipped_unknown"] = sorted(prepared.unknown)
    return manifest, submission
