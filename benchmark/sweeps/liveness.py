"""Whether a local cell's process still runs: its process id alone does not say (ids are reused).

A local job records its process id, the host and the process's start time (``/proc/<pid>/stat``, field 22: clock
ticks since boot). ``status`` calls the cell running only when a process with that id runs on this host *and*
started at that time; a process that merely has the same id (the id was reused after the run died without its exit
status being recorded) is reported as lost, so the cell is neither "running" forever nor held back from the next
submission. (Hand-written: psutil would do the same, but it is not a dependency of the suite and the /proc read is
two lines; elsewhere than Linux the start time is unknown and the command line is checked instead.)
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any


def process_start(pid: int) -> int | None:
    """The start time of process ``pid`` in clock ticks since boot, or None where /proc cannot say."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2 :].split()  # the name in parentheses may hold spaces
    try:
        return int(fields[19])  # field 22 of the file; the list starts at field 3 (state)
    except (IndexError, ValueError):
        return None


def exists(pid: int) -> bool:
    """Whether process ``pid`` exists on this host and has not ended (a zombie has)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    status = Path(f"/proc/{pid}/status")
    try:
        return "State:\tZ" not in status.read_text()  # a zombie has ended
    except OSError:
        return True


def _runs_the_benchmark(pid: int) -> bool | None:
    """Whether process ``pid`` runs ``python -m benchmark run`` (None where its command line cannot be read)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    return b"benchmark" in argv and b"run" in argv


def local_job_state(job: dict[str, Any]) -> tuple[str, str | None]:
    """The scheduler-like state of a local job (``RUNNING``, ``EXITED <code>``, ``LOST`` or ``UNKNOWN``) and, for
    ``LOST`` and ``UNKNOWN``, why."""
    code = job.get("returncode")
    if code is not None:
        return f"EXITED {code}", None
    pid, host = job.get("pid"), job.get("host")
    if host and host != socket.gethostname() and host != os.uname().nodename:
        return "UNKNOWN", f"job {job.get('job_id')} ran on host {host}; run status there to see whether it still runs"
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0 or not exists(pid):
        return "LOST", f"process {pid} is gone and no exit status was recorded (killed with its sweep?)"
    started = job.get("pid_start")
    now = process_start(pid)
    if started is not None and now is not None:
        same = started == now
    else:  # an older manifest (no start time recorded), or no /proc: the command line tells
        same = _runs_the_benchmark(pid) is not False
    if not same:
        return "LOST", (
            f"process id {pid} now belongs to another process (the run's own process ended without an exit status "
            "being recorded)"
        )
    return "RUNNING", None
