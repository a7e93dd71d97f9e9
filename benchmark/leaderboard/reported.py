"""Published numbers (``leaderboard/reported/*.yaml``) for the leaderboard's "reported" tables.

Each file is one published table: ``position`` (its place on the page), ``source``, ``title``, ``citation``, ``metrics`` (the columns it reports) and
``rows`` of ``{method, dataset, <metric>: value, std: {<metric>: value}, seeds}``. ``backbone``,
``embedding_dim``, ``image_size``, ``selection_rule``, ``citation`` and ``verify`` may be set per file and
overridden per row. R@K, MAP@R and R-Precision are percentages and NMI a fraction, as the papers print them. These
numbers come from other backbones, recipes and selection rules: they are shown, never ranked with our runs.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import yaml

from benchmark.leaderboard.keys import METRICS

REPORTED_COLUMNS = [
    "position", "source", "title", "order", "method", "dataset", "backbone", "embedding_dim", "image_size", "selection_rule",
    "metric", "value", "std", "seeds", "unit", "citation", "verify", "notes", "file",
]  # fmt: skip
_PER_ROW = ("backbone", "embedding_dim", "image_size", "selection_rule", "citation", "verify")


class ReportedDataError(ValueError):
    """A reported-numbers file that does not have the expected shape; the message names the file and the fix."""


def _unit(metric: str) -> str:
    return "fraction" if metric == "nmi" else "percent"


def _check_value(where: str, metric: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ReportedDataError(f"{where}: {metric} = {value!r} is not a number.")
    hi = 1.0 if metric == "nmi" else 100.0
    if not 0.0 <= float(value) <= hi:
        raise ReportedDataError(
            f"{where}: {metric} = {value} is outside [0, {hi:g}] (R@K, MAP@R, R-Precision in percent, NMI as a fraction)."
        )
    return float(value)


def load_reported_file(path: Path) -> list[dict]:
    """The rows of one reported-numbers YAML file in long form (one row per method, dataset and metric)."""
    try:
        doc = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ReportedDataError(f"{path}: not valid YAML ({e}).") from e
    need = ("source", "title", "citation", "metrics", "rows")
    if not isinstance(doc, dict) or any(k not in doc for k in need):
        raise ReportedDataError(f"{path}: expected a mapping with the keys {', '.join(need)}.")
    bad = [m for m in doc["metrics"] if m not in METRICS]
    if bad:
        raise ReportedDataError(f"{path}: unknown metric(s) {bad}; use the record's names: {', '.join(METRICS)}.")
    out = []
    for i, row in enumerate(doc["rows"]):
        where = f"{path} row {i + 1}"
        if not isinstance(row, dict) or "method" not in row or "dataset" not in row:
            raise ReportedDataError(f"{where}: each row needs 'method' and 'dataset'.")
        extra = set(row) - {"method", "dataset", "std", "seeds", *METRICS, *_PER_ROW}
        if extra:
            raise ReportedDataError(f"{where}: unknown key(s) {sorted(extra)}.")
        std = row.get("std") or {}
        values = {m: row[m] for m in doc["metrics"] if row.get(m) is not None}
        undeclared = [m for m in (*(m for m in METRICS if m in row), *std) if m not in doc["metrics"]]
        if not values or undeclared:
            raise ReportedDataError(f"{where}: give values only for the file's metrics {doc['metrics']}.")
        meta = {k: row.get(k, doc.get(k)) for k in _PER_ROW}
        if meta["embedding_dim"] is None or meta["backbone"] is None:
            raise ReportedDataError(f"{where}: backbone and embedding_dim are needed (in the file or the row).")
        for m, v in values.items():
            out.append(
                dict(
                    position=int(doc.get("position", 0)),
                    source=doc["source"],
                    title=doc["title"],
                    order=i,
                    method=str(row["method"]),
                    dataset=str(row["dataset"]),
                    **meta,
                    metric=m,
                    value=_check_value(where, m, v),
                    std=_check_value(where, m, std[m]) if m in std else float("nan"),
                    seeds=row.get("seeds"),
                    unit=_unit(m),
                    notes=str(doc.get("notes") or "").strip(),
                    file=Path(path).name,
                )
            )
    return out


def load_reported(directory: str | os.PathLike) -> pd.DataFrame:
    """All published numbers under ``directory`` (``*.yaml``, sorted by name) as one long DataFrame."""
    d = Path(directory)
    if not d.is_dir():
        raise FileNotFoundError(
            f"Reported-numbers directory {d} does not exist: pass --reported DIR (the repository keeps them in "
            "leaderboard/reported/) or --no-reported."
        )
    tables = [load_reported_file(f) for f in sorted(d.glob("*.yaml"))]
    tables.sort(key=lambda rows: (rows[0]["position"], rows[0]["file"]) if rows else (0, ""))
    df = pd.DataFrame([r for rows in tables for r in rows], columns=REPORTED_COLUMNS)
    df["verify"] = df["verify"].fillna(False).astype(bool)
    return df
