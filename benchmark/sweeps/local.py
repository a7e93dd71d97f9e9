"""``python -m benchmark sweep SPEC --local``: the same sweep on this machine, at most N runs at a time.

Each cell runs as ``python -m benchmark run OVERRIDES`` in a subprocess whose output goes to
``<sweep dir>/logs/<index>.log``; the manifest records each process and its exit status, so ``status`` tells
done from failed exactly as for SLURM jobs. Cells already complete are skipped.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmark.engine import records
from benchmark.engine.control import StopRequested
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
    """Run every pending cell as a subprocess, ``max_parallel`` at a time; return the final manifest.

    Ctrl-C (SIGINT) or SIGTERM: no new cell starts, the running cells get that one signal (they checkpoint at their
    next step and stop), and once they have all stopped :class:`StopRequested` says so in one line; a second signal
    is passed on too (the cells then stop at once). Each cell runs in a session of its own, so a Ctrl-C in the
    terminal reaches the cells only through this process, exactly once; and each cell gets SIGTERM if this process
    dies without passing a signal on (Linux: ``PR_SET_PDEATHSIG``), so no cell outlives the sweep.
    """
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
    stop = _SignalForwarder(running)
    try:
        with stop.installed():
            while (queue and not stop.signals) or running:
                while queue and not stop.signals and len(running) < max_parallel:
                    cell = queue.pop(0)
                    running.append(_start(cell, sweep_dir, git, manifest))
                    write_manifest(sweep_dir, manifest)
                time.sleep(poll_s)
                stop.forward()
                for item in list(running):
                    cell, proc, handle, job = item
                    if proc.poll() is not None:
                        handle.close()
                        job["returncode"], job["ended"] = proc.returncode, records.utc_now()
                        running.remove(item)
                        write_manifest(sweep_dir, manifest)
    finally:
        for _cell, proc, handle, job in running:  # an unexpected error here: stop the cells (one signal), say so
            if not stop.signals:
                proc.terminate()
            try:
                proc.wait(timeout=600)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            handle.close()
            job["returncode"], job["ended"] = proc.returncode, records.utc_now()
        if running:
            write_manifest(sweep_dir, manifest)
    if stop.signals:
        name = signal.Signals(stop.signals[0]).name
        raise StopRequested(
            f"Sweep stopped ({name}): {stop.stopped} running cell(s) were passed the signal and stopped (each writes a "
            f"checkpoint first), {len(queue)} cell(s) not started. Run the same command again to resume: "
            f"python -m benchmark sweep {prepared.spec.path} --local --sweep-dir {sweep_dir}",
            stop.signals[0],
        )
    return manifest


def _start(cell: Any, sweep_dir: Path, git: dict[str, Any], manifest: dict[str, Any]) -> tuple:
    log = sweep_dir / "logs" / f"{cell.index:03d}.log"
    handle = open(log, "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmark", "run", *cell.overrides],
        stdout=handle,
        stderr=subprocess.STDOUT,
        env=_env(),
        cwd=records.REPO_ROOT,
        start_new_session=True,  # a terminal's Ctrl-C reaches it only through the sweep (once)
        preexec_fn=_end_with_parent,
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
    return cell, proc, handle, job


def _end_with_parent() -> None:
    """In a cell's process before exec: SIGTERM (a checkpointed stop) when the sweep process dies (Linux only).

    Hand-written on ``prctl`` through ctypes: the standard library has no wrapper for it.
    """
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


class _SignalForwarder:
    """While installed, SIGINT and SIGTERM are recorded; :meth:`forward` passes each one on, once, to every running
    cell (from the main loop, not the handler: a cell started just as the signal came still gets it)."""

    def __init__(self, running: list) -> None:
        self.running = running
        self.signals: list[int] = []
        self.stopped = 0
        self._sent: dict[int, int] = {}  # pid -> how many of the signals it was passed

    def __call__(self, signum: int, frame: Any) -> None:
        self.signals.append(signum)
        if len(self.signals) == 1:
            self.stopped = len(self.running)
            message = (
                f"\nReceived {signal.Signals(signum).name}: passing it on to the running cell(s), which checkpoint "
                "and stop; no new cell starts (a second signal stops them at once)."
            )
        else:
            message = f"\nReceived {signal.Signals(signum).name} again: passing it on; the cells stop at once."
        os.write(2, (message + "\n").encode())  # os.write: safe while the main thread prints

    def forward(self) -> None:
        for _cell, proc, _handle, _job in self.running:
            while self._sent.get(proc.pid, 0) < len(self.signals):
                signum = self.signals[self._sent.get(proc.pid, 0)]
                self._sent[proc.pid] = self._sent.get(proc.pid, 0) + 1
                if proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.send_signal(signum)

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {signum: signal.signal(signum, self) for signum in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
