"""Cost beside recall: the leaderboard's view of a record's ``compute`` section (:mod:`benchmark.engine.compute`).

A run's cost is its device-hours: GPU-hours (wall hours × GPUs) where it ran on GPUs, else CPU core-hours (CPU
seconds / 3600, measured). Both cover the whole run (training and its evaluations). Records written before the
section existed have no cost (shown as a dash).
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

COST_COLUMNS = ["device", "device_count", "peak_memory_gb", "train_s", "train_images_per_s", "cost_hours", "cost_unit"]
UNITS = {"cuda": "GPU-h", "cpu": "CPU core-h"}


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def cost_fields(compute: Any) -> dict[str, Any]:
    """A run row's cost columns from its record's ``compute`` section (all None for an older record)."""
    if not isinstance(compute, dict):
        return dict.fromkeys(COST_COLUMNS)
    gpu = _num(compute.get("gpu_hours"))
    peak = _num(compute.get("peak_memory_bytes"))
    return {
        "device": compute.get("device"),
        "device_count": compute.get("device_count"),
        "peak_memory_gb": peak / 2**30 if peak is not None else None,
        "train_s": _num(compute.get("train_s")),
        "train_images_per_s": _num(compute.get("train_images_per_s")),
        "cost_hours": gpu if gpu is not None else _num(compute.get("cpu_core_hours")),
        "cost_unit": UNITS["cuda"] if gpu is not None else UNITS["cpu"],
    }


def aggregate_cost(out: pd.DataFrame, g: Any) -> pd.DataFrame:
    """Seed means of the cost columns per configuration (``g``: the runs grouped as in ``aggregate``); a unit
    shared by every seed, or ``mixed`` (then no mean cost is shown: GPU- and CPU-hours do not add up)."""
    units = g["cost_unit"].agg(lambda s: s.iloc[0] if s.nunique() == 1 and s.notna().all() else "mixed")
    known = g["cost_hours"].agg(lambda s: s.notna().all())
    out["cost_hours_mean"] = g["cost_hours"].mean().where(known & (units != "mixed"))
    out["cost_unit"] = units.where(out["cost_hours_mean"].notna())
    out["peak_memory_gb_mean"] = g["peak_memory_gb"].mean()
    out["train_images_per_s_mean"] = g["train_images_per_s"].mean()
    out["device"] = g["device"].agg(lambda s: ", ".join(sorted({str(x) for x in s if isinstance(x, str)})) or None)
    return out


def fmt_cost(hours: Any, unit: Any) -> str:
    """``0.0123 GPU-h`` (3 significant digits); a dash where the records hold no cost."""
    value = _num(hours)
    if value is None or not isinstance(unit, str):
        return "–"
    return f"{value:.3g} {unit}"
