"""The record's ``compute`` section: what a run cost, measured while it ran.

One *session* per process that worked on the run (a resumed run has several; earlier sessions are read back from the
run's own ``record.json``, so a pre-empted run's cost is not lost). Per session: device name and count, peak memory
(``torch.cuda.max_memory_allocated`` on a GPU; the process's max RSS from ``resource.getrusage`` on a CPU), wall
seconds of the session, of training and of the final evaluation, training images (optimiser-step batches, refills
not counted), and CPU seconds (user + system, this process and its finished data-loader workers). Totals over the
sessions: ``train_images_per_s``, ``gpu_hours`` (wall hours × GPUs, where the run used GPUs) and ``cpu_core_hours``
(CPU seconds / 3600, measured, not wall × cores).

Method phases, read generically from the history: every ``time_<phase>_s`` a method logs per step (SAGA: metric,
rollout, replay, step) is totalled as ``phases_s[<phase>]``; counts a method logs per step (:data:`COUNTS`, SAGA's
``pairs_rolled_out``: the pairs the supervisor judged, offered to the buffer or not) are totalled too; ``generated_tokens`` is taken from the
method's diagnostics when it exposes a ``gen_tokens`` total (null otherwise).
"""

from __future__ import annotations

import json
import platform
import resource
import time
from pathlib import Path
from typing import Any

import torch

#: Per-step counts a method may log, totalled over the run under the record's name for them.
COUNTS = {"pairs_rolled_out": "pairs_judged"}


def device_name(device: torch.device) -> str:
    """``torch.cuda.get_device_name`` on a GPU; the CPU's model name (``/proc/cpuinfo``) or ``platform`` on a CPU."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _previous_sessions(run_dir: Path) -> list[dict[str, Any]]:
    """The sessions an unfinished earlier process recorded for this run (empty for a new run or an older record)."""
    try:
        record = json.loads((run_dir / "record.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    if not isinstance(record, dict) or record.get("status") == "completed":
        return []
    sessions = (record.get("compute") or {}).get("sessions") if isinstance(record.get("compute"), dict) else None
    return [s for s in sessions if isinstance(s, dict)] if isinstance(sessions, list) else []


class ComputeMeter:
    """Measures one session of a run; :meth:`section` returns the record's ``compute`` section at any write."""

    def __init__(self, run_dir: Path, device: torch.device, device_count: int = 1) -> None:
        self.device, self.count = device, int(device_count)
        self.previous = _previous_sessions(Path(run_dir))
        self.start_wall, self.start_cpu = time.time(), _cpu_seconds()
        self.start_step: int | None = None
        self.name = device_name(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

    def _peak(self) -> tuple[int, str]:
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device)), "torch.cuda.max_memory_allocated"
        # ru_maxrss is in KiB on Linux (bytes on macOS)
        scale = 1 if platform.system() == "Darwin" else 1024
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * scale, "max RSS (resource.getrusage)"

    def section(
        self,
        *,
        step: int,
        batch_size: int,
        steps_per_epoch: int,
        history: list[dict[str, Any]],
        diagnostics: dict[str, Any] | None,
        train_s: float | None,
        eval_s: float | None,
    ) -> dict[str, Any]:
        """The ``compute`` section now; ``step`` is the run's global optimiser-batch position (epoch × steps + step)."""
        if self.start_step is None:
            self.start_step = int(step)
        peak, kind = self._peak()
        session = {
            "device": self.name,
            "device_type": self.device.type,
            "device_count": self.count,
            "peak_memory_bytes": peak,
            "peak_memory_kind": kind,
            "wall_s": time.time() - self.start_wall,
            "train_s": float(train_s or 0.0),
            "eval_s": float(eval_s or 0.0),
            "cpu_s": _cpu_seconds() - self.start_cpu,
            "train_images": (int(step) - self.start_step) * int(batch_size),
        }
        sessions = [*self.previous, session]
        total = {key: sum(float(s.get(key) or 0.0) for s in sessions) for key in ("wall_s", "train_s", "eval_s")}
        images = sum(int(s.get("train_images") or 0) for s in sessions)
        gpu_wall = sum(float(s.get("wall_s") or 0.0) * int(s.get("device_count") or 1) for s in sessions
                       if s.get("device_type") == "cuda")  # fmt: skip
        phases: dict[str, float] = {}
        counts: dict[str, float] = {}
        for entry in history:
            for key, value in entry.items():
                if not isinstance(value, (int, float)):
                    continue
                if key.startswith("time_") and key.endswith("_s"):
                    phase = key.removeprefix("time_").removesuffix("_s")
                    phases[phase] = phases.get(phase, 0.0) + float(value) * steps_per_epoch
                elif key in COUNTS:
                    counts[COUNTS[key]] = counts.get(COUNTS[key], 0.0) + float(value) * steps_per_epoch
        tokens = (diagnostics or {}).get("gen_tokens")
        return {
            "device": session["device"],
            "device_type": session["device_type"],
            "device_count": self.count,
            "peak_memory_bytes": max(int(s.get("peak_memory_bytes") or 0) for s in sessions),
            "peak_memory_kind": kind,
            **total,
            "phases_s": phases,
            "train_images": images,
            "train_images_per_s": images / total["train_s"] if total["train_s"] > 0 else None,
            "gpu_hours": gpu_wall / 3600 if gpu_wall else None,
            "cpu_core_hours": sum(float(s.get("cpu_s") or 0.0) for s in sessions) / 3600,
            "generated_tokens": int(tokens) if isinstance(tokens, (int, float)) else None,
            **{name: int(round(v)) for name, v in counts.items()},
            "sessions": sessions,
        }
