"""Significance of each row's difference to the reference method (``leaderboard --reference METHOD``).

- **Two or more seeds on both sides**: Welch's t-test over the seeds' values of the table's metric
  (``scipy.stats.ttest_ind(equal_var=False)``), and the p-values Holm-corrected across the table's comparisons
  (one family per table: protocol hash and selection rule). Holm is written here (a few lines; statsmodels is not a
  dependency and scipy has no Holm).
- **One seed on either side**: no test over seeds is possible; instead a 95 % bootstrap confidence interval of ΔR@1
  over the test queries (``scipy.stats.bootstrap``, percentile method, :data:`RESAMPLES` resamples, seed
  :data:`BOOTSTRAP_SEED`). Queries are resampled paired (both methods are scored on the same test queries, in the same
  order within one protocol); each side's per-query hit is its mean over its seeds. It needs the per-query hits a
  record stores (``per_query.test``); records written before they were stored get no interval, and say so.

Adds to the aggregated table the columns of :data:`COLUMNS`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from benchmark.evaluation.per_query import decode_hits
from benchmark.leaderboard.keys import COMPARE_KEYS, GROUP_KEYS, TABLE_KEYS

RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95
#: ``sig_test``: "welch", "bootstrap", or why the row has neither (reference row: empty).
COLUMNS = ["sig_metric", "sig_test", "welch_t", "welch_p", "holm_p", "ci_low", "ci_high", "ci_resamples"]
NO_HITS = "no interval: one seed, and a record without per-query hits (written before they were stored)"
NOT_R1 = "no interval: one seed; per-query hits are stored for R@1 only"


def holm(pvalues: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1), in the input order; NaN stays NaN."""
    finite = [(p, i) for i, p in enumerate(pvalues) if p is not None and math.isfinite(p)]
    adjusted = [float("nan")] * len(pvalues)
    m, running = len(finite), 0.0
    for rank, (p, i) in enumerate(sorted(finite)):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


def _hits(path: str, cache: dict[str, np.ndarray | None]) -> np.ndarray | None:
    if path not in cache:
        try:
            record = json.loads(Path(path).read_text(encoding="utf-8"))
            cache[path] = decode_hits((record.get("per_query") or {}).get("test"))
        except (OSError, ValueError, AttributeError):
            cache[path] = None
    return cache[path]


def _mean_hits(paths: list[str], cache: dict[str, np.ndarray | None]) -> np.ndarray | None:
    """The mean over seeds of the runs' per-query hits; None when any run lacks them or the query counts differ."""
    hits = [_hits(p, cache) for p in paths]
    if not hits or any(h is None for h in hits) or len({len(h) for h in hits}) != 1:
        return None
    return np.mean(np.stack(hits).astype(np.float64), axis=0)


def bootstrap_interval(row_hits: np.ndarray, ref_hits: np.ndarray) -> tuple[float, float]:
    """The 95 % percentile interval of mean(row - reference) over queries resampled with replacement."""
    from scipy.stats import bootstrap

    diff = np.asarray(row_hits, dtype=np.float64) - np.asarray(ref_hits, dtype=np.float64)
    result = bootstrap(
        (diff,),
        np.mean,
        n_resamples=RESAMPLES,
        confidence_level=CONFIDENCE,
        method="percentile",
        batch=max(1, 2**24 // max(len(diff), 1)),  # bounded memory on large test sets
        rng=np.random.default_rng(BOOTSTRAP_SEED),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def add_significance(agg: pd.DataFrame, runs: pd.DataFrame, reference: str, metric: str) -> pd.DataFrame:
    """``agg`` with the :data:`COLUMNS` filled for every row of a group that has one reference configuration."""
    from scipy.stats import ttest_ind

    out = agg.copy()
    for col in COLUMNS:
        out[col] = None if col in ("sig_metric", "sig_test") else float("nan")
    if out.empty:
        return out
    values = {key: g for key, g in runs.groupby(GROUP_KEYS, sort=False, dropna=False)}
    cache: dict[str, np.ndarray | None] = {}
    for _, group in out.groupby(COMPARE_KEYS, sort=False, dropna=False):
        ref_rows = group[group["method"] == reference]
        if len(ref_rows) != 1:  # no reference, or several configurations of it: no comparison, never a guess
            continue
        ref = values[tuple(ref_rows.iloc[0][GROUP_KEYS])]
        for i, r in group.iterrows():
            if i == ref_rows.index[0]:
                continue
            mine = values[tuple(r[GROUP_KEYS])]
            out.at[i, "sig_metric"] = metric
            if len(mine) >= 2 and len(ref) >= 2:
                test = ttest_ind(mine[metric].to_numpy(float), ref[metric].to_numpy(float), equal_var=False)
                out.at[i, "sig_test"] = "welch"
                out.at[i, "welch_t"], out.at[i, "welch_p"] = float(test.statistic), float(test.pvalue)
                continue
            if metric != "recall@1":
                out.at[i, "sig_test"] = NOT_R1
                continue
            row_hits, ref_hits = _mean_hits(list(mine["path"]), cache), _mean_hits(list(ref["path"]), cache)
            if row_hits is None or ref_hits is None or len(row_hits) != len(ref_hits):
                out.at[i, "sig_test"] = NO_HITS
                continue
            out.at[i, "sig_test"] = "bootstrap"
            out.at[i, "ci_low"], out.at[i, "ci_high"] = bootstrap_interval(row_hits, ref_hits)
            out.at[i, "ci_resamples"] = float(RESAMPLES)
    for _, table in out.groupby(TABLE_KEYS, sort=False):
        welch = table.index[table["sig_test"] == "welch"]
        out.loc[welch, "holm_p"] = holm(list(out.loc[welch, "welch_p"]))
    return out


def fmt_p(p: float) -> str:
    """A p-value with 2 significant digits (scientific below 0.001); missing as the tables' dash."""
    if p is None or not math.isfinite(p):
        return "–"
    return f"{p:.1e}" if p < 1e-3 else f"{p:.2g}"


def cells(row: pd.Series, scale: float) -> list[str]:
    """The three significance cells of one row: Welch p, Holm p, bootstrap interval (points, like the Δ column)."""
    test = row.get("sig_test")
    if test == "welch":
        return [fmt_p(row["welch_p"]), fmt_p(row["holm_p"]), "–"]
    if test == "bootstrap":
        low, high = scale * row["ci_low"], scale * row["ci_high"]
        return ["–", "–", f"{low:+.1f} to {high:+.1f}"]
    if isinstance(test, str) and test:
        return ["–", "–", "n/a ‡"]
    return ["–", "–", "–"]


HEADER = ["p (Welch)", "p (Holm)", "95% CI"]


def note(metric_label: str, reference: str) -> str:
    """The table's footnote: what the three columns are."""
    return (
        f"p (Welch): Welch's t-test of {metric_label} over seeds against {reference} (scipy.stats.ttest_ind, "
        "equal_var=False); p (Holm): Holm-corrected across this table's Welch comparisons. 95% CI: with one seed on "
        f"either side, a bootstrap interval of ΔR@1 in points over the test queries (paired, {RESAMPLES:,} resamples, "
        f"percentile method, seed {BOOTSTRAP_SEED}). ‡ no interval: one seed and no per-query hits in the record "
        "(written before they were stored; re-run the configuration to get one), or a metric other than R@1 "
        "(per-query hits are stored for R@1 only); leaderboard.csv's sig_test says which."
    )
