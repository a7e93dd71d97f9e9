"""Exclusive locks on a run directory and a sweep directory: a second process is refused, told who holds it.

The lock is ``fcntl.flock`` on a small file that the holder fills with its pid, host and start time. The kernel
releases it when the holder exits, however it exits (a crash or SIGKILL included), so a lock is never stale; a holder
that ends normally also removes the file.
Hand-written on ``fcntl`` rather than the ``filelock`` package: the refusal names the holder, read from the lock file
itself, and ``filelock`` truncates that file on every attempt to acquire it.

A run's lock lies next to its directory (``<out_dir>/<dataset>/<method>/.<run_name>.lock``), not inside it: a refused
run writes nothing into the directory, and ``force=true`` moves the directory aside while the lock stays held.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from benchmark.engine.control import TrainingError


class LockedError(TrainingError):
    """Another process holds the lock of this run or sweep directory."""


def run_lock_path(run_dir: Path) -> Path:
    return run_dir.parent / f".{run_dir.name}.lock"


def _holder(handle) -> str:
    try:
        handle.seek(0)
        info = json.loads(handle.read() or "{}")
    except (OSError, ValueError):
        info = {}
    if not isinstance(info, dict) or "pid" not in info:
        return "another process (it has not written its name yet)"
    return f"process {info.get('pid')} on {info.get('host')}, started {info.get('started')}"


@contextlib.contextmanager
def exclusive(lock_path: Path, what: str, why: str) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path`` for the block; :class:`LockedError` at once if another holds it.

    ``what`` names the locked thing in the error (``"run directory /x/runs/cub/proxy_anchor/r"``), ``why`` says
    what two holders would do.
    """
    from benchmark.engine.records import utc_now

    lock_path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        handle = open(lock_path, "a+")  # a+: never truncates the holder's line before the lock is ours
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(handle)
            handle.close()
            raise LockedError(
                f"The {what} is in use by {holder}: {why}. Nothing was done. Wait for it to finish (or stop it), "
                "then run the same command again."
            ) from None
        try:  # the holder before us may have removed the file after we opened it: then lock the new one
            same = os.fstat(handle.fileno()).st_ino == os.stat(lock_path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        handle.close()
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": utc_now()}) + "\n")
        handle.flush()
        yield
    finally:
        with contextlib.suppress(OSError):  # removed while still held, so no one locks a file about to vanish
            lock_path.unlink()
        handle.close()  # closing the file releases the lock


def run_directory_lock(run_dir: Path) -> contextlib.AbstractContextManager[None]:
    """The lock of one run directory (taken before anything in it is read or written)."""
    why = "two processes would train the same run and overwrite each other's checkpoints"
    return exclusive(run_lock_path(run_dir), f"run directory {run_dir}", why)


def sweep_directory_lock(sweep_dir: Path) -> contextlib.AbstractContextManager[None]:
    """The lock of a sweep directory (held while a sweep submits, and while ``--local`` runs its cells)."""
    why = "two sweeps would start the same cells twice and both write its manifest"
    return exclusive(Path(sweep_dir) / ".sweep.lock", f"sweep directory {sweep_dir}", why)
