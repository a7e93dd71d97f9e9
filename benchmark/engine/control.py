"""How a run stops: errors that end it, and stop requests (a signal, SLURM's pre-emption) that the trainer answers by
writing a checkpoint at its next step.

Every run installs :func:`stop_on_signals` for SIGTERM and Ctrl-C (SIGINT) unless another handler is already in
place (submitit's, inside a SLURM job, stays as it is). The first signal asks the trainer to checkpoint and stop;
a second one stops at once (the run then resumes from its previous checkpoint).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any


class TrainingError(RuntimeError):
    """A run that cannot go on (NaN loss, a checkpoint from another config); the record says why."""


class StopRequested(RuntimeError):
    """Raised after a checkpoint was written because a stop was requested (a signal, pre-emption, time limit)."""

    def __init__(self, message: str, signum: int | None = None) -> None:
        super().__init__(message)
        self.signum = signum

    @property
    def exit_status(self) -> int:
        """The shell's convention for a process ended by a signal: 128 + its number (1 without a signal)."""
        return 128 + self.signum if self.signum else 1


_STOP: dict[str, Any] = {"requested": False, "signal": None}


def request_stop(*_: Any) -> None:
    """Ask the running trainer to checkpoint at the next step and stop (usable as a signal handler)."""
    _STOP["requested"] = True


def clear_stop() -> int | None:
    """Forget a handled stop request (a later run in this process starts clean); return the signal that asked."""
    signum = _STOP["signal"]
    _STOP["requested"], _STOP["signal"] = False, None
    return signum


def _on_signal(signum: int, frame: Any) -> None:
    name = signal.Signals(signum).name
    if _STOP["requested"]:  # a second signal: stop now, without waiting for the checkpoint
        raise KeyboardInterrupt(f"{name} received twice")
    _STOP["requested"], _STOP["signal"] = True, signum
    # os.write, not print: a signal can arrive while the main thread is printing to the same stream.
    message = (
        f"\nReceived {name}: writing a checkpoint at the next step, then stopping (a second signal stops at once)."
    )
    os.write(2, (message + "\n").encode())


@contextlib.contextmanager
def stop_on_signals(signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)) -> Iterator[None]:
    """While the block runs, SIGTERM and SIGINT request a checkpointed stop instead of killing the process.

    A signal whose handler is not Python's default (e.g. submitit's SIGTERM handler in a SLURM job) keeps it.
    Outside the main thread (where Python cannot install handlers) nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    for signum in signals:
        current = signal.getsignal(signum)
        if current in (signal.SIG_DFL, signal.default_int_handler):
            previous[signum] = current
            signal.signal(signum, _on_signal)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def ignore_stop_signals_in_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: Ctrl-C reaches the whole process group; the main process decides when to stop,
    and a worker that died of the signal would break the checkpointed stop. (Orphaned workers still exit: the
    DataLoader's watchdog ends them when the main process is gone.)"""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
