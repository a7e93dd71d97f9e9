"""Per-query results: every test query's ranked neighbours, saved beside the record and re-scored from the file.

``eval.save_neighbours=true`` writes ``neighbours.npz`` in the run directory, from the evaluator's own kNN (the
same search, tie rule and depth as the record's metrics):

- ``indices`` (N×K int64): query ``i``'s neighbours, best first, the query itself removed. K is the deepest rank
  any metric reads: ``max(eval.ks)``, or for MAP@R / R-Precision the largest test class size − 1. Ranks up to
  ``max(max(ks), R_i)`` are exact under the tie rule; deeper ones are exact up to the order of tied items.
- ``scores`` (N×K float32): the cosine similarity of each neighbour, scored pair by pair as the tie rule does;
- ``labels`` (N int64): the test labels (dataset class ids), in test-split order;
- ``ks`` (int64): the Recall@K values the run reported;
- ``kmeans_assignments`` (N int64, where NMI was computed): the evaluator's k-means cluster of each query, so the
  NMI is re-scored too;
- ``format`` and ``meta`` (strings; ``meta`` is JSON: run, dataset, method, tie rule).

``python -m benchmark score --neighbours FILE`` re-scores such a file (or one whose ``indices`` a re-ranker has
reordered) with :func:`benchmark.evaluation.metrics.rank_metrics`, the evaluator's own code. The file is read with
``allow_pickle=False``: only plain arrays are loaded, nothing in it is executed.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Sequence
from typing import Any

import numpy as np

from benchmark.engine.records import write_atomic
from benchmark.evaluation import knn as _knn
from benchmark.evaluation.metrics import TIE_RULE, ScoreInputError, evaluate_embeddings, rank_metrics

FILENAME = "neighbours.npz"
FORMAT = "dml-benchmark neighbours v1"
#: Rows re-scored at once (bounds the memory of the per-chunk match matrix).
CHUNK = 4096


def write_neighbours(
    path: str | os.PathLike,
    embeddings: np.ndarray,
    labels: np.ndarray,
    *,
    ks: Sequence[int],
    kmeans_seed: int = 0,
    kmeans_restarts: int = 10,
    backend: str = "auto",
    meta: dict[str, Any] | None = None,
) -> dict[str, float]:
    """Evaluate ``embeddings`` as the evaluator does, keep every query's neighbours, and write them to ``path``
    atomically; returns the metrics (the same as the record's, from the same settings)."""
    keep: dict[str, Any] = {}
    metrics = evaluate_embeddings(
        embeddings, labels, ks=ks, kmeans_seed=kmeans_seed, kmeans_restarts=kmeans_restarts, backend=backend, keep=keep
    )
    idx = keep["indices"]
    x = _knn.l2_normalise(np.asarray(embeddings))
    arrays: dict[str, np.ndarray] = {
        "format": np.array(FORMAT),
        "indices": idx,
        "scores": _knn.pair_scores(x, np.arange(len(x)), idx),
        "labels": np.asarray(labels, dtype=np.int64),
        "ks": np.asarray(sorted(set(int(k) for k in ks)), dtype=np.int64),
        "meta": np.array(json.dumps({**(meta or {}), "tie_rule": TIE_RULE, "metrics": metrics})),
    }
    if "kmeans_assignments" in keep:
        arrays["kmeans_assignments"] = np.asarray(keep["kmeans_assignments"], dtype=np.int64)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_atomic(path, buffer.getvalue())
    return metrics


def load_neighbours(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read and check a neighbours file; :class:`ScoreInputError` says what is wrong and what to do."""
    path = os.fspath(path)
    expected = (
        "expected a neighbours.npz written by a run with eval.save_neighbours=true (arrays 'indices' N×K, "
        "'labels' N, 'ks')"
    )
    if not os.path.isfile(path):
        raise ScoreInputError(f"{path}: no such file; {expected}.")
    try:
        archive = np.load(path, allow_pickle=False)  # plain arrays only: nothing in the file is executed
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise ScoreInputError(f"{path}: cannot be read as an .npz ({err}); {expected}.") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ScoreInputError(f"{path}: is a single .npy array, not an .npz archive; {expected}.")
    with archive:
        missing = [name for name in ("indices", "labels", "ks") if name not in archive.files]
        if missing:
            hint = " (it holds embeddings: score it without --neighbours)" if "embeddings" in archive.files else ""
            raise ScoreInputError(f"{path}: no array(s) {', '.join(repr(m) for m in missing)}{hint}; {expected}.")
        try:
            data = {name: archive[name] for name in archive.files}
        except (OSError, ValueError, zipfile.BadZipFile) as err:  # e.g. an object array (needs pickle: refused)
            raise ScoreInputError(f"{path}: cannot read its arrays ({err}); {expected}.") from None
    _check(path, data)
    return data


def _check(path: str, data: dict[str, np.ndarray]) -> None:
    idx, labels, ks = data["indices"], data["labels"], data["ks"]
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ScoreInputError(f"{path}: 'labels' must be 1-D integers, got shape {labels.shape} {labels.dtype}.")
    n = len(labels)
    if idx.ndim != 2 or len(idx) != n or not np.issubdtype(idx.dtype, np.integer):
        raise ScoreInputError(
            f"{path}: 'indices' must be an N×K integer array with N = {n} (one row per label), got shape "
            f"{idx.shape} {idx.dtype}."
        )
    if ks.ndim != 1 or not len(ks) or not np.issubdtype(ks.dtype, np.integer) or (ks < 1).any():
        raise ScoreInputError(f"{path}: 'ks' must list positive integers (the Recall@K values), got {ks.tolist()}.")
    if n < 2:
        raise ScoreInputError(f"{path}: at least 2 queries are needed, got {n}.")
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise ScoreInputError(f"{path}: 'indices' must lie in 0..{n - 1} (rows of 'labels'); re-ranked rows too.")
    if (idx == np.arange(n)[:, None]).any():
        rows = np.flatnonzero((idx == np.arange(n)[:, None]).any(axis=1))
        raise ScoreInputError(
            f"{path}: {len(rows)} row(s) list the query itself as its neighbour (first: {rows[:5].tolist()}); "
            "every query is scored against the others only: remove it from its row."
        )
    ordered = np.sort(idx, axis=1)
    if (ordered[:, 1:] == ordered[:, :-1]).any():
        rows = np.flatnonzero((ordered[:, 1:] == ordered[:, :-1]).any(axis=1))
        raise ScoreInputError(
            f"{path}: {len(rows)} row(s) list a neighbour twice (first: {rows[:5].tolist()}); each row must be a "
            "ranking of distinct samples."
        )
    _, codes = np.unique(labels, return_inverse=True)
    r = np.bincount(codes)[codes] - 1
    needed = int(min(max(int(ks.max()), int(r.max())), n - 1))
    if idx.shape[1] < needed:
        raise ScoreInputError(
            f"{path}: rows hold {idx.shape[1]} neighbours but the metrics read {needed} (max(ks) = {int(ks.max())}, "
            f"MAP@R the largest class size − 1 = {int(r.max())}); keep at least {needed} per row."
        )
    if "kmeans_assignments" in data and data["kmeans_assignments"].shape != (n,):
        raise ScoreInputError(f"{path}: 'kmeans_assignments' must hold one cluster id per label ({n}).")


def score_neighbours(path: str | os.PathLike) -> dict[str, float]:
    """The protocol's metrics from a neighbours file, computed by the evaluator's own ranking code (NMI from the
    stored k-means clusters, where the file has them)."""
    data = load_neighbours(path)
    idx, labels = data["indices"].astype(np.int64, copy=False), data["labels"]
    ks = tuple(int(k) for k in data["ks"])
    _, codes = np.unique(labels, return_inverse=True)
    codes = codes.reshape(-1).astype(np.int64)
    r = np.bincount(codes)[codes] - 1
    k = int(min(max(max(ks), int(r.max())), len(codes) - 1))  # the evaluator's depth; deeper columns are not read
    chunks = ((s, min(s + CHUNK, len(idx)), idx[s : s + CHUNK, :k]) for s in range(0, len(idx), CHUNK))
    out = rank_metrics(chunks, codes, ks, k)
    if "kmeans_assignments" in data:
        from sklearn.metrics import normalized_mutual_info_score

        out["nmi"] = float(normalized_mutual_info_score(codes, data["kmeans_assignments"], average_method="arithmetic"))
    return out
