"""``python -m benchmark status SWEEP_DIR``: pending / running / done / failed for every cell of a sweep.

A cell is *done* only when its run record is complete (:func:`benchmark.engine.records.is_complete`), whatever the
scheduler says: a job SLURM calls COMPLETED whose record is not complete is reported as failed. The scheduler's
state (``sacct``, or the local runner's process table) tells pending and running apart; a failed cell shows the
error from its record (or its job's end state) and the tail of its log.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from benchmark.engine import records
from benchmark.sweeps.manifest import read_manifest

#: PREEMPTED lasts the KillWait seconds before SLURM (PreemptMode=REQUEUE) or submitit requeues the job.
PENDING_STATES = {
    "PENDING",
    "REQUEUED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "RESIZING",
    "SUSPENDED",
    "CONFIGURING",
    "PREEMPTED",
}
RUNNING_STATES = {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING"}
TAIL_LINES = 15
#: submitit's own log lines ("submitit WARNING (date) - Bypassing signal SIGCONT"); its ERROR lines are kept.
SUBMITIT_NOISE = re.compile(r"^submitit (DEBUG|INFO|WARNING) \(")
ERROR_WORDS = re.compile(r"error|exception|cancelled|killed|oom|out of memory|time limit|segmentation", re.I)


def sacct_query(job_ids: list[str]) -> tuple[dict[str, str], str | None]:
    """SLURM states by job id (``ARRAY_TASK`` form for arrays) from ``sacct``, and why sacct could not answer
    (``None`` when it did). A job sacct does not list is absent from the states."""
    if not job_ids:
        return {}, None
    if shutil.which("sacct") is None:
        return {}, "sacct is not on PATH on this machine"
    from submitit.slurm.slurm import SlurmInfoWatcher

    command = ["sacct", "-o", "JobID,State,NodeList", "--parsable2"]
    for main_id in sorted({j.split("_")[0] for j in job_ids}):
        command += ["-j", main_id]
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True).stdout
    except subprocess.CalledProcessError as err:
        last = (err.stderr or "").strip().splitlines()[-1:] or [f"exit status {err.returncode}"]
        return {}, f"sacct failed: {last[0]}"
    except (OSError, subprocess.SubprocessError) as err:
        return {}, f"sacct failed: {err}"
    info = SlurmInfoWatcher(delay_s=0).read_info(out)  # submitit's parser (array ranges included)
    return {job_id: stats.get("State", "UNKNOWN").split()[0] for job_id, stats in info.items()}, None


def sacct_states(job_ids: list[str]) -> dict[str, str]:
    """SLURM states by job id from ``sacct``; empty where it cannot say (see :func:`sacct_query` for why)."""
    return sacct_query(job_ids)[0]


def _job_lines(path: str | None) -> list[str]:
    """A job log's non-empty lines without submitit's own log lines (its INFO/WARNING chatter such as
    "Bypassing signal SIGCONT" is never the cause of a failure)."""
    if not path or not Path(path).exists():
        return []
    text = Path(path).read_text(errors="replace").replace("\r", "\n")
    return [line for line in text.splitlines() if line.strip() and not SUBMITIT_NOISE.match(line)]


def log_tail(path: str | None, lines: int = TAIL_LINES) -> str:
    """The last ``lines`` lines of a job log, submitit's own chatter left out."""
    return "\n".join(_job_lines(path)[-lines:])


def log_cause(*paths: str | None) -> str:
    """The line(s) of a job's logs that say why it ended: the exception of the last Python traceback, else the
    last lines that report an error (``slurmstepd: error: *** JOB 7 CANCELLED ...``), else the last line."""
    for path in paths:
        lines = _job_lines(path)
        starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last)")]
        if starts:
            after = [line for line in lines[starts[-1] + 1 :] if not line.startswith((" ", "\t"))]
            if after:
                return after[0].strip()
        errors = [line.strip() for line in lines if ERROR_WORDS.search(line)]
        if errors:
            return " | ".join(errors[-2:])
    for path in paths:
        lines = _job_lines(path)
        if lines:
            return lines[-1].strip()
    return ""


def record_mismatch(entry: dict[str, Any], record: dict[str, Any] | None) -> str | None:
    """Why the record in a cell's ``run_dir`` is not that cell's run (another config or seed), or None.

    The manifest names each cell's run directory, but a manifest edited by hand (or a run directory moved) may point
    a cell at another run: its record would then be reported as this cell's result.
    """
    if not isinstance(record, dict):
        return None
    wanted = {"config_hash": entry.get("config_hash"), "seed": entry.get("seed")}
    found = {key: record.get(key) for key in wanted}
    differs = [key for key, value in wanted.items() if value is not None and found[key] != value]
    if not differs:
        return None
    shown = ", ".join(f"{key} {found[key]} (this cell: {wanted[key]})" for key in differs)
    return (
        f"{entry['run_dir']} holds another run ({shown}): the manifest points this cell at the wrong run directory. "
        "Submit the sweep again: its cells' run directories are derived from the spec anew"
    )


def _cell_state(entry: dict[str, Any], sacct: dict[str, str], sacct_error: str | None = None) -> dict[str, Any]:
    from benchmark.sweeps.liveness import local_job_state

    record = records.read_record(entry["run_dir"])
    mismatch = record_mismatch(entry, record)
    if mismatch:  # another run's record is never this cell's result (nor its failure)
        record = None
    job = entry["jobs"][-1] if entry.get("jobs") else None
    row: dict[str, Any] = {
        "run_dir": entry["run_dir"],
        "job_id": job and job["job_id"],
        "error": None,
        "log": None,
        "scheduler": None,
    }
    if records.is_complete(record):
        row["state"] = "done"
        row["test"] = record["metrics"]["test"]
        return row
    if job is None:
        row["state"] = "not submitted"
        row["error"] = mismatch
        return row
    why = None
    if job["mode"] == "local":
        scheduler, why = local_job_state(job)
    else:
        scheduler = sacct.get(job["job_id"], "UNKNOWN")
    row["scheduler"] = scheduler
    if scheduler in PENDING_STATES:
        row["state"] = "pending"
    elif scheduler in RUNNING_STATES:
        row["state"] = "running"
    elif record and record.get("status") == "failed":
        row["state"], row["error"] = "failed", record.get("error")
    elif scheduler == "UNKNOWN":  # possibly still queued or running: never resubmitted without --force
        row["state"] = "unknown"
        why = why or sacct_error or f"sacct has no record of job {job['job_id']} (purged, or another cluster's)"
        row["error"] = f"{why}; the job may still be queued or running"
    else:  # the job ended (even COMPLETED) without a complete record
        row["state"] = "failed"
        row["error"] = f"job {job['job_id']} ended ({scheduler}) without a complete run record"
        if why:
            row["error"] += f" ({why})"
    if mismatch:
        row["error"] = f"{mismatch}; {row['error']}" if row["error"] else mismatch
    if row["state"] == "failed":
        row["log"] = log_tail(job.get("log_err")) or log_tail(job.get("log_out"))
        cause = log_cause(job.get("log_err"), job.get("log_out"))
        if row["error"] and "without a complete run record" in row["error"] and cause:
            row["error"] += ": " + cause
    return row


def sweep_status(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """One row per cell: ``cell``, ``state`` (done | pending | running | failed | not submitted | unknown),
    ``job_id``, ``run_dir``, ``error`` and ``log`` (tail) for failed cells, ``test`` metrics for done cells."""
    manifest = read_manifest(sweep_dir)
    cells = manifest["cells"]
    slurm_ids = [e["jobs"][-1]["job_id"] for e in cells.values() if e.get("jobs") and e["jobs"][-1]["mode"] == "slurm"]
    sacct, sacct_error = sacct_query(slurm_ids)
    rows = []
    for cell_id, entry in sorted(cells.items(), key=lambda kv: kv[1].get("index", 0)):
        rows.append({"cell": cell_id, **_cell_state(entry, sacct, sacct_error)})
    return rows


def format_status(rows: list[dict[str, Any]], name: str = "") -> str:
    """A table of the cells, a count per state, and the error and log tail of each failed cell."""
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    width = max((len(r["cell"]) for r in rows), default=4)
    lines = [f"Sweep {name}: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())), ""]
    for row in rows:
        r1 = f"R@1 {100 * row['test']['recall@1']:.2f}" if row.get("test") else ""
        lines.append(f"  {row['cell']:<{width}}  {row['state']:<13} {row['job_id'] or '-':<16} {r1}")
    for row in rows:
        if row["state"] == "failed":
            lines += [
                "",
                f"FAILED {row['cell']} (job {row['job_id']}, run dir {row['run_dir']})",
                f"  error: {row['error']}",
            ]
            if row["log"]:
                lines += ["  log tail:"] + [f"    {line}" for line in row["log"].splitlines()]
    unknown = [row for row in rows if row["state"] == "unknown"]
    if unknown:
        lines += ["", f"UNKNOWN ({len(unknown)} cell(s)): {unknown[0]['error']}."]
        lines += ["  Submitting the sweep again skips them; check with squeue/sacct, then --force resubmits them."]
    return "\n".join(lines)


def not_done_reason(rows: list[dict[str, Any]]) -> str | None:
    """Why a sweep that was just run here is not complete, one line (None when every cell is done)."""
    not_done = [r for r in rows if r["state"] != "done"]
    if not not_done:
        return None
    why = {
        "running": "still running from an earlier submission (not started twice)",
        "pending": "queued from an earlier submission",
        "unknown": "of unknown state (held back; --force resubmits)",
        "failed": "failed (see above)",
        "not submitted": "not submitted",
    }
    parts = []
    for state in sorted({r["state"] for r in not_done}):
        cells = [r for r in not_done if r["state"] == state]
        detail = f": {cells[0]['error']}" if state != "failed" and cells[0].get("error") else ""
        names = ", ".join(r["cell"] for r in cells[:5]) + (f" and {len(cells) - 5} more" if len(cells) > 5 else "")
        parts.append(f"{len(cells)} {why.get(state, state)} ({names}{detail})")
    return f"{len(not_done)} of {len(rows)} cell(s) are not done: " + "; ".join(parts) + "."


def main(sweep_dir: str, as_json: bool = False) -> int:
    """The ``status`` command; exit status 1 when a cell failed."""
    import json

    rows = sweep_status(sweep_dir)
    print(json.dumps(rows, indent=2) if as_json else format_status(rows, read_manifest(sweep_dir)["name"]))
    return 1 if any(r["state"] == "failed" for r in rows) else 0
