"""Per-query Recall@1 hits of a run's test queries, stored in the record for the leaderboard's bootstrap intervals.

The hits come from the evaluator's own exact kNN (:mod:`benchmark.evaluation.knn`: same similarity, tie rule and
query removal), so their mean is the record's ``recall@1`` exactly. In the record they are one bit per query in the
test split's order (``numpy.packbits``, base64): 60,502 SOP queries take 10 kB.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

ENCODING = "numpy.packbits (big-endian bit order), base64; one bit per test query in the test split's order"


def recall_at_1_hits(
    embeddings: np.ndarray, labels: np.ndarray, *, backend: str = "auto", device: str | None = None
) -> np.ndarray:
    """A boolean per query: is its nearest other sample of its label (the per-query term of Recall@1)?"""
    from benchmark.evaluation import knn as _knn  # here: the leaderboard decodes hits without importing torch
    from benchmark.evaluation.metrics import _check_arrays, _resolve_backend

    x, codes = _check_arrays(embeddings, labels)
    backend = _resolve_backend(backend)
    device = _knn.resolve_device(backend, device)
    x = _knn.l2_normalise(x)
    n = len(x)
    plan = _knn.make_plan(n, 1, backend, device, 4096)
    hits = np.zeros(n, dtype=bool)
    for start, stop, idx in _knn.iter_neighbours(x, np.ones(n, dtype=np.int64), plan):
        hits[start:stop] = codes[idx[:, 0]] == codes[start:stop]
    return hits


def encode_hits(hits: np.ndarray) -> dict[str, Any]:
    """The record's ``per_query.test`` entry: ``{"recall@1": str, "n": int, "encoding": str}``."""
    hits = np.asarray(hits, dtype=bool)
    return {
        "recall@1": base64.b64encode(np.packbits(hits).tobytes()).decode("ascii"),
        "n": int(len(hits)),
        "encoding": ENCODING,
    }


def decode_hits(entry: Any) -> np.ndarray | None:
    """The hits of a record's ``per_query.test`` entry (None when absent or malformed: an older record)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("recall@1"), str) or not isinstance(entry.get("n"), int):
        return None
    try:
        packed = np.frombuffer(base64.b64decode(entry["recall@1"], validate=True), dtype=np.uint8)
    except ValueError:
        return None
    n = entry["n"]
    if n < 1 or len(packed) != -(-n // 8):
        return None
    return np.unpackbits(packed, count=n).astype(bool)


def per_query_section(embeddings: np.ndarray, labels: np.ndarray, eval_cfg: Any) -> dict[str, Any]:
    """The record's ``per_query`` section for the test split (``eval_cfg``: the run's ``eval`` config)."""
    return {"test": encode_hits(recall_at_1_hits(embeddings, labels, backend=eval_cfg.backend))}
