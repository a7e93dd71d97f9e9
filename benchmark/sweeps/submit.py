"""``python -m benchmark sweep SPEC``: submit a sweep to SLURM as a job array through submitit, and return at once.

The sweep directory (``runs/sweeps/<name>`` unless ``--sweep-dir``) holds ``manifest.json`` (cell → job id → run
directory, rewritten atomically at each submission), submitit's folder ``slurm/`` (sbatch scripts, pickled jobs,
logs) and, unless the spec says otherwise, the runs in ``runs/``. Every cell's config is composed before anything
is submitted; cells whose run record is complete are skipped, so submitting a sweep again runs only what is missing.

A job is a :class:`RunJob`: it composes its config, runs (or resumes) it and, when SLURM signals pre-emption or the
time limit, lets the trainer write a checkpoint at its next step, then requeues itself through submitit; the
requeued job finds ``checkpoints/last.pt`` in its run directory and continues.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from benchmark.engine import records
from benchmark.sweeps.cluster import make_executor, sbatch_script
from benchmark.sweeps.manifest import (
    DEFAULT_SWEEPS_ROOT,
    MANIFEST,
    Prepared,
    begin_submission,
    check_git,
    write_manifest,
)
from benchmark.sweeps.spec import Cell, expand_cells, load_spec, validate_cells


# ----------------------------------------------------------------------------------------------- the job
class RunJob:
    """A submitit job: one run of ``python -m benchmark run OVERRIDES``, checkpointed and requeued on pre-emption.

    The training code is imported inside ``__call__`` (on the compute node), so pickling the job is cheap.
    """

    def __init__(self, overrides: list[str], cell_id: str | None = None) -> None:
        self.overrides = list(overrides)
        self.cell_id = cell_id

    def __call__(self) -> dict[str, Any]:
        from benchmark.config import compose_config
        from benchmark.engine.run import run
        from benchmark.engine.trainer import StopRequested

        cfg = compose_config(self.overrides)
        handler = _install_deferred_requeue()
        _log_job_start(self.overrides)
        try:
            record, run_dir = run(cfg)
        except StopRequested as stop:
            print(f"{stop} Requeueing.", flush=True)
            if handler is None:
                raise
            handler.checkpoint_and_try_requeue(handler.signum)  # rank 0: checkpoint() → requeue → sys.exit(-1)
            handler.exit()  # other ranks of a data-parallel job: rank 0 requeues the whole job
        if record is None:  # rank > 0 of a data-parallel run
            return {"run_dir": str(run_dir), "status": "rank>0"}
        return {"run_dir": str(run_dir), "status": record["status"], "test": record["metrics"]["test"]}

    def checkpoint(self, *args: Any, **kwargs: Any):
        """Called by submitit when the job is to be requeued: resubmit the same job (it resumes by itself).

        The trainer has already written ``checkpoints/last.pt`` (see :func:`_install_deferred_requeue`); if
        submitit calls this directly instead, the stop is requested and the last epoch checkpoint is resumed.
        """
        import submitit

        from benchmark.engine.trainer import request_stop

        request_stop()
        return submitit.helpers.DelayedSubmission(RunJob(self.overrides, self.cell_id))

    def __repr__(self) -> str:
        return f"RunJob({self.cell_id or ' '.join(self.overrides)})"


class _DeferredRequeue:
    """submitit's signal handler, called at a safe point instead of from inside the signal.

    submitit's own handler runs ``checkpoint()`` inside the signal handler (in the middle of a training step) and
    exits at once; ours only asks the trainer to stop, and the requeue happens once the trainer has saved.
    (Hand-written: submitit has no hook for a deferred requeue.)
    """

    def __init__(self, submitit_handler: Any, signum: int) -> None:
        self._handler = submitit_handler
        self.signum = signum

    def __call__(self, signum: int, frame: Any) -> None:
        from benchmark.engine.trainer import request_stop

        print(f"Received signal {signal.Signals(signum).name}: checkpointing at the next step.", flush=True)
        request_stop()

    def checkpoint_and_try_requeue(self, signum: int) -> None:
        import subprocess

        try:
            self._handler.checkpoint_and_try_requeue(signum)
        except subprocess.CalledProcessError:  # submitit's `scontrol requeue` refused
            # Under PreemptMode=REQUEUE SLURM has already requeued a pre-empted job ("Job is pending execution"):
            # the checkpoint is written, so end this start quietly; the requeued job resumes from it.
            print(
                "SLURM refused `scontrol requeue` (a pre-empted job is requeued by SLURM itself); exiting.", flush=True
            )
            self.exit()

    def exit(self) -> None:
        self._handler._exit()


def _install_deferred_requeue() -> _DeferredRequeue | None:
    """Replace submitit's pre-emption signal handler by one that defers to the trainer (inside submitit only)."""
    if not os.environ.get("SUBMITIT_FOLDER"):
        return None
    import submitit
    from submitit.core.job_environment import SignalHandler
    from submitit.core.utils import DelayedSubmission

    env = submitit.JobEnvironment()
    delayed = DelayedSubmission.load(env.paths.submitted_pickle)  # carries the timeout budget submitit tracks
    signum = env._usr_sig()
    deferred = _DeferredRequeue(SignalHandler(env, env.paths, delayed), signum)
    signal.signal(signum, deferred)
    return deferred


def _log_job_start(overrides: list[str]) -> None:
    """Append this start (job id, restart count, host, git SHA at run time) to ``<run_dir>/jobs.json``."""
    from benchmark.sweeps.spec import cell_run_dir

    if int(os.environ.get("SLURM_PROCID", 0)) != 0:  # rank 0 keeps the log
        return
    run_dir, _ = cell_run_dir(overrides)
    path = run_dir / "jobs.json"
    starts = json.loads(path.read_text()) if path.exists() else []
    env = os.environ
    job_id = env.get("SLURM_ARRAY_JOB_ID") and f"{env['SLURM_ARRAY_JOB_ID']}_{env.get('SLURM_ARRAY_TASK_ID')}"
    starts.append(
        {
            "job_id": job_id or env.get("SLURM_JOB_ID"),
            "restart": int(env.get("SLURM_RESTART_COUNT", 0)),
            "host": socket.gethostname(),
            "started": records.utc_now(),
            "git": records.git_info(),
        }
    )
    records.write_json_atomic(path, starts)


# ----------------------------------------------------------------------------------------------- submission
def prepare(spec_path: str | Path, sweep_dir: str | Path | None = None, force: bool = False) -> Prepared:
    """Load the spec, expand and validate every cell, and find those already complete, queued or running.

    A cell whose job the scheduler cannot account for (``sacct`` failed, or has no record of it) may still be
    live: it is held back (``Prepared.unknown``) unless ``force``, so that no run gets two jobs at once.
    """
    spec = load_spec(spec_path)
    sweep_dir = Path(sweep_dir or DEFAULT_SWEEPS_ROOT / spec.name).resolve()
    out_dir = spec.data.get("out_dir") or sweep_dir / "runs"
    cells = expand_cells(spec, out_dir)
    validate_cells(cells)
    complete = {c.cell_id for c in cells if records.is_complete(records.read_record(c.run_dir))}
    active: set[str] = set()
    unknown: dict[str, str] = {}
    if (sweep_dir / MANIFEST).exists():  # never start a second job on a run that is queued or running
        from benchmark.sweeps.status import sweep_status

        rows = sweep_status(sweep_dir)
        active = {r["cell"] for r in rows if r["state"] in ("pending", "running")}
        if not force:
            unknown = {r["cell"]: r["error"] for r in rows if r["state"] == "unknown" and r["cell"] not in complete}
    return Prepared(spec, sweep_dir, cells, complete, active - complete, unknown)


def _resource_groups(cells: list[Cell]) -> list[tuple[dict[str, Any], list[Cell]]]:
    """Cells grouped by identical resources: each group is one job array."""
    groups: dict[str, tuple[dict[str, Any], list[Cell]]] = {}
    for cell in cells:
        key = json.dumps(cell.resources, sort_keys=True)
        groups.setdefault(key, (cell.resources, []))[1].append(cell)
    return list(groups.values())


def dry_run(prepared: Prepared) -> str:
    """The cells (state, run directory) and the sbatch script(s) a submission would use, as text."""
    lines = [
        f"Sweep '{prepared.spec.name}' ({prepared.spec.path}): {len(prepared.cells)} cells, "
        f"{len(prepared.complete)} complete, {len(prepared.pending)} to submit. Sweep dir: {prepared.sweep_dir}",
        "",
    ]
    width = max(len(c.cell_id) for c in prepared.cells)
    for cell in prepared.cells:
        state = (
            "complete (skipped)"
            if cell.cell_id in prepared.complete
            else "queued/running (skipped)"
            if cell.cell_id in prepared.active
            else "state unknown (skipped; --force submits it)"
            if cell.cell_id in prepared.unknown
            else "to submit"
        )
        lines.append(f"  {cell.index:3d}  {cell.cell_id:<{width}}  {state:<18}  {cell.run_dir}")
    for resources, group in _resource_groups(prepared.pending):
        lines += [
            "",
            f"# sbatch script for {len(group)} cell(s) (cells {', '.join(str(c.index) for c in group)}):",
            sbatch_script(resources, prepared.sweep_dir / "slurm", prepared.spec.name, len(group)),
        ]
    return "\n".join(lines)


def submit(prepared: Prepared, allow_dirty: bool = False) -> dict[str, Any]:
    """Submit every pending cell through submitit (one job array per resource set); return the manifest.

    Returns as soon as ``sbatch`` has answered: the jobs' results are never waited on.
    """
    git = check_git(allow_dirty)
    sweep_dir = prepared.sweep_dir
    sweep_dir.mkdir(parents=True, exist_ok=True)
    manifest, submission = begin_submission(prepared, "slurm", git, submitted=[], job_ids=[])
    for resources, group in _resource_groups(prepared.pending):
        executor = make_executor(sweep_dir / "slurm", resources, prepared.spec.name)
        with executor.batch():
            jobs = [executor.submit(RunJob(cell.overrides, cell.cell_id)) for cell in group]
        for cell, job in zip(group, jobs, strict=True):
            manifest["cells"][cell.cell_id]["jobs"].append(
                {
                    "mode": "slurm",
                    "job_id": str(job.job_id),
                    "submitted": submission["time"],
                    "git_sha": git.get("sha"),
                    "log_out": str(job.paths.stdout),
                    "log_err": str(job.paths.stderr),
                }
            )
            submission["submitted"].append(cell.cell_id)
        submission["job_ids"].append(str(jobs[0].job_id).split("_")[0])
    manifest["submissions"].append(submission)
    write_manifest(sweep_dir, manifest)
    return manifest


def submit_single(overrides: list[str], cfg: Any) -> dict[str, Any]:
    """``run launcher=slurm``: submit this one run as a SLURM job and return its job id, log and run directory."""
    from benchmark.sweeps.cluster import resolve_resources
    from benchmark.sweeps.spec import cell_run_dir

    git = check_git(allow_dirty=True)  # a single run may come from a dirty tree; its record says so
    run_dir, _ = cell_run_dir(overrides)
    if records.is_complete(records.read_record(run_dir)) and not cfg.force:
        return {
            "job_id": None,
            "run_dir": str(run_dir),
            "log_out": None,
            "log_err": None,
            "git": git,
            "note": "already complete: nothing submitted (force=true trains it again)",
        }
    resources = resolve_resources(cfg.cluster)
    executor = make_executor(Path(cfg.out_dir).resolve() / "slurm", resources, f"{cfg.method.name}-{cfg.dataset.name}")
    job = executor.submit(RunJob(overrides))
    info = {
        "job_id": str(job.job_id),
        "run_dir": str(run_dir),
        "log_out": str(job.paths.stdout),
        "log_err": str(job.paths.stderr),
        "git": git,
    }
    records.write_json_atomic(
        Path(cfg.out_dir).resolve() / "slurm" / f"{job.job_id}.submitted.json", {**info, "overrides": list(overrides)}
    )
    return info


def submit_single_command(overrides: list[str], cfg: Any, as_json: bool = False) -> int:
    """``run launcher=slurm`` outside an allocation: submit the run, print its job id and run directory."""
    info = submit_single(overrides, cfg)
    if as_json:
        print(json.dumps(info, indent=2))
    elif info["job_id"] is None:
        print(f"{info['run_dir']} is {info['note']}.")
    else:
        print(
            f"Submitted SLURM job {info['job_id']}; run directory {info['run_dir']}; log {info['log_out']}."
            " Submitting it again resumes it, or skips it once complete."
        )
    return 0


def main(
    spec: str,
    sweep_dir: str | None = None,
    dry: bool = False,
    local: bool = False,
    max_parallel: int = 2,
    allow_dirty: bool = False,
    force: bool = False,
) -> int:
    """The ``sweep`` command (exit status 1 when cells of unknown state were held back)."""
    prepared = prepare(spec, sweep_dir, force=force)
    if dry:
        print(dry_run(prepared))
        if records.git_info().get("dirty") and not allow_dirty:
            print("\nNote: the checkout has uncommitted changes; submitting needs a commit or --allow-dirty.")
        return 0
    from benchmark.engine.locks import sweep_directory_lock

    with sweep_directory_lock(prepared.sweep_dir):  # one submitting (or --local) process per sweep directory
        return _submit_or_run(prepared, local, max_parallel, allow_dirty)


def _submit_or_run(prepared: Prepared, local: bool, max_parallel: int, allow_dirty: bool) -> int:
    held = _report_unknown(prepared)
    if local:
        from benchmark.sweeps.local import run_local

        manifest = run_local(prepared, max_parallel=max_parallel, allow_dirty=allow_dirty)
        from benchmark.sweeps.status import format_status, not_done_reason, sweep_status

        rows = sweep_status(prepared.sweep_dir)
        print(format_status(rows, manifest["name"]))
        reason = not_done_reason(rows)
        if reason:
            print(f"\n{reason}", file=sys.stderr)
        return 0 if reason is None else 1
    if not prepared.pending:
        print(
            f"Nothing to submit: of {len(prepared.cells)} cells of '{prepared.spec.name}', "
            f"{len(prepared.complete)} are complete, {len(prepared.active)} queued or running"
            + (f" and {len(prepared.unknown)} of unknown state." if prepared.unknown else ".")
        )
        return held
    manifest = submit(prepared, allow_dirty=allow_dirty)
    last = manifest["submissions"][-1]
    print(
        f"Submitted {len(last['submitted'])} cell(s) of '{prepared.spec.name}' as job array(s) "
        f"{', '.join(last['job_ids'])}; skipped {len(last['skipped_complete'])} complete cell(s)."
    )
    print(f"Manifest: {prepared.sweep_dir / MANIFEST}")
    print(f"Follow it with: {Path(sys.executable).name} -m benchmark status {prepared.sweep_dir}")
    return held


def _report_unknown(prepared: Prepared) -> int:
    """Say which cells were held back because their job's state is unknown; 1 if any were."""
    if not prepared.unknown:
        return 0
    why = next(iter(prepared.unknown.values()))
    print(
        f"Not resubmitting {len(prepared.unknown)} cell(s) whose job state is unknown ({why}): "
        f"{', '.join(sorted(prepared.unknown))}. A second job would train the same run twice. Check with "
        "squeue/sacct; once they are not queued or running, submit again with --force.",
        file=sys.stderr,
    )
    return 1
