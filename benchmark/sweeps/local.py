"""``python -m benchmark sweep SPEC --local``: the same sweep on this machine, at most N runs at a time.

Each cell runs as ``python -m benchmark run OVERRIDES`` in a subprocess whose output goes to
``<sweep dir>/logs/<index>.log``; the manifest records each process and its exit status, so ``status`` tells
done from failed exactly as for SLURM jobs. Cells already complete are skipped.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmark.engine import records
from benchmark.sweeps.liveness import process_start
from benchmark.sweeps.manifest import Prepared, begin_submission, check_git, write_manifest


def _env() -> dict[str, str]:
    env = dict(os.environ)
    root = str(records.REPO_ROOT)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("HYDRA_FULL_ERROR", "1")
    return env


def run_local(
    prepared: Prepared, max_parallel: int = 2, allow_dirty: bool = False, poll_s: float = 0.2
) -> dict[str, Any]:
    """Run every pending cell as a subprocess, ``max_parallel`` at a time; return the final manifest."""
    if max_parallel < 1:
        raise ValueError(f"--max-parallel must be at least 1 (got {max_parallel}).")
    git = check_git(allow_dirty)
    sweep_dir = prepared.sweep_dir
    (sweep_dir / "logs").mkdir(parents=True, exist_ok=True)
    manifest, submission = begin_submission(
        prepared, "local", git, max_parallel=max_parallel, submitted=[c.cell_id for c in prepared.pending]
    )
    manifest["submissions"].append(submission)
    write_manifest(sweep_dir, manifest)
    queue = list(prepared.pending)
    running: list[tuple[Any, subprocess.Popen, Any, dict[str, Any]]] = []
    try:
        while queue or running:
            while queue and len(running) < max_parallel:
                cell = queue.pop(0)
                log = sweep_dir / "logs" / f"{cell.index:03d}.log"
                handle = open(log, "ab")
                proc = subprocess.Popen(
                    [sys.executable, "-m", "benchmark", "run", *cell.overrides],
                    stdout=handle,
                    stderr=subprocess.STDOUT,
                    env=_env(),
                    cwd=records.REPO_ROOT,
                )
                job = {
                    "mode": "local",
                    "job_id": f"local-{proc.pid}",
                    "pid": proc.pid,
                    "pid_start": process_start(proc.pid),  # with the pid, tells this process from a later one
                    "host": os.uname().nodename,
                    "submitted": records.utc_now(),
                    "git_sha": git.get("sha"),
                    "log_out": str(log),
                    "log_err": str(log),
                    "returncode": None,
                }
                manifest["cells"][cell.cell_id]["jobs"].append(job)
                write_manifest(sweep_dir, manifest)
                running.append((cell, proc, handle, job))
            time.sleep(poll_s)
            for item in list(running):
                cell, proc, handle, job = item
                if proc.poll() is not None:
                    handle.close()
                    job["returncode"], job["ended"] = proc.returncode, records.utc_now()
                    running.remove(item)
                    write_manifest(sweep_dir, manifest)
    finally:
        for _cell, proc, handle, job in running:  # interrupted (Ctrl-C): stop the children, say so
            proc.terminate()
            proc.wait(timeout=60)
            handle.close()
            job["returncode"], job["ended"] = proc.returncode, records.utc_now()
        if running:
            write_manifest(sweep_dir, manifest)
    return manifest


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not Path(f"/proc/{pid}/status").exists() or "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
