"""The evaluator: Recall@K, MAP@R, R-Precision and NMI on test embeddings (docs/protocol.md §3).

Methods change what is embedded, never how it is scored: every method's embeddings go through
:func:`evaluate_embeddings` unchanged.

- **Similarity**: cosine, i.e. the inner product of L2-normalised float32 embeddings (normalised here).
- **Queries**: every sample is a query against all the others; the query is removed by its index.
- **Ties**: neighbours are ordered by decreasing similarity, ties broken by ascending sample index, exactly (also
  when a tie straddles the retrieval depth; see :mod:`benchmark.evaluation.knn`).
- **Recall@K**: 1 if any of the K nearest neighbours shares the query's label; mean over *all* queries (a query
  whose label has no other sample counts as a miss).
- **MAP@R**: R = number of other samples with the query's label; ``(1/R) Σ_{i≤R} P(i)·[i-th neighbour correct]``.
  **R-Precision**: correct neighbours in the top R, divided by R. Both are means over the queries with R > 0
  (queries whose label has a single sample are excluded from these two).
- **NMI**: faiss k-means with k = number of distinct labels (fixed seed, restarts and iterations, all points, no
  subsampling) on the normalised embeddings, then scikit-learn's ``normalized_mutual_info_score`` (arithmetic
  mean) between labels and cluster assignments.
- **Degenerate input**: an all-zero embedding has no direction, so its cosine similarity to every other sample is
  undefined and only the tie rule (the sample order) would rank its neighbours (all-zero embeddings of sorted labels
  would score Recall@8 1.0): such rows are refused (:class:`DegenerateEmbeddingsError`), naming how many and which.
  ``score`` also refuses embeddings that all point the same way (a collapsed model: every neighbour ties). Scale
  never matters (cosine): rows whose largest value lies outside [2^-50, 2^50] are divided by it before the float32
  conversion, so float64 values near 1e300 (or 1e-300) score as what they show instead of overflowing to inf (or
  underflowing to zero vectors). Labels must give some query a neighbour of its class (:func:`labels_problem`):
  ``score`` and ``run`` (before training) refuse a split where every class has one sample.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from benchmark.evaluation import knn as _knn

METRIC_KEYS = ("recall@1", "recall@2", "recall@4", "recall@8", "map@r", "r_precision", "nmi")
BACKENDS = ("auto", "faiss", "torch")
#: Lloyd iterations per k-means run: pytorch-metric-learning's AccuracyCalculator also uses niter=20.
KMEANS_NITER = 20
TIE_RULE = "decreasing cosine similarity (float32), ties broken by ascending sample index; query removed by index"


class ScoreInputError(ValueError):
    """An embeddings file that cannot be scored; the message says what was expected."""


class DegenerateEmbeddingsError(ScoreInputError):
    """Embeddings whose metrics would be decided by the tie rule alone (all-zero rows, or all one direction)."""


#: Rows whose largest absolute value lies outside [2**-50, 2**50] are rescaled by it before the float32 conversion:
#: their squared norm would otherwise overflow (or underflow) float32 (cosine similarity does not depend on scale).
SAFE_SCALE = (2.0**-50, 2.0**50)


def evaluation_settings(
    *,
    ks: Sequence[int] = (1, 2, 4, 8),
    compute_nmi: bool = True,
    kmeans_seed: int = 0,
    kmeans_restarts: int = 10,
    query_chunk: int = 4096,
    device: str | torch.device | None = None,
    backend: str = "auto",
) -> dict[str, Any]:
    """What a run record stores about the evaluation: tie rule, k-means settings, kNN backend and ks."""
    ks = _check_ks(ks)
    backend = _resolve_backend(backend)
    import faiss

    return {
        "ks": list(ks),
        "similarity": "cosine (inner product of L2-normalised float32 embeddings)",
        "tie_rule": TIE_RULE,
        "recall_queries": "all samples; a query with no other sample of its label counts as a miss",
        "map_r_queries": "samples with at least one other sample of their label (R > 0)",
        "knn": {"backend": backend, "device": _knn.resolve_device(backend, device), "exact": True},
        "nmi": {
            "computed": bool(compute_nmi),
            "kmeans": "faiss.Kmeans on the L2-normalised embeddings, k = number of distinct labels",
            "kmeans_seed": int(kmeans_seed),
            "kmeans_restarts": int(kmeans_restarts),
            "kmeans_niter": KMEANS_NITER,
            "subsampling": "none (all points)",
            "average_method": "arithmetic",
        },
        "versions": {"faiss": faiss.__version__, "torch": torch.__version__},
    }


def evaluate_embeddings(
    embeddings: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor | Sequence[int],
    *,
    ks: Sequence[int] = (1, 2, 4, 8),
    compute_nmi: bool = True,
    kmeans_seed: int = 0,
    kmeans_restarts: int = 10,
    query_chunk: int = 4096,
    device: str | torch.device | None = None,
    backend: str = "auto",
    keep: dict[str, Any] | None = None,
) -> dict[str, float]:
    """Score ``embeddings`` (``N×D``) against ``labels`` (``N`` ints); see the module docstring for definitions.

    Returns fractions in [0, 1]: ``recall@K`` for each K in ``ks``, ``map@r``, ``r_precision`` and (when
    ``compute_nmi``) ``nmi``. ``map@r`` and ``r_precision`` are NaN when no label has two samples. kNN is exact
    (faiss ``IndexFlatIP``, on the GPU when faiss sees one and ``device`` allows, or a chunked torch search with
    ``backend="torch"``; both give the same numbers) and runs over chunks of ``query_chunk`` queries so memory stays
    bounded. ``keep``: a dict that receives every query's ranked neighbour indices (``"indices"``, ``N×k``: k =
    the deepest rank a metric reads, ``max(ks)`` or the largest class size − 1) and the k-means cluster ids
    (``"kmeans_assignments"``), for :mod:`benchmark.evaluation.neighbours`.
    """
    x, codes = _check_arrays(embeddings, labels)
    ks = _check_ks(ks)
    backend = _resolve_backend(backend)
    if int(query_chunk) < 1:
        raise ValueError(f"query_chunk must be a positive integer, got {query_chunk}")
    if int(kmeans_restarts) < 1:
        raise ValueError(f"kmeans_restarts must be at least 1, got {kmeans_restarts}")
    device = _knn.resolve_device(backend, device)
    x = _knn.l2_normalise(x)
    zero = ~x.any(axis=1)
    if zero.any():
        rows = np.flatnonzero(zero)
        raise DegenerateEmbeddingsError(
            f"{len(rows)} of {len(x)} embeddings are all-zero vectors (first rows: {rows[:5].tolist()}): a zero "
            "vector has no direction, so its cosine similarity to every other sample is undefined and only the sample "
            "order would rank its neighbours. A model that outputs zeros has collapsed (check its loss and "
            "learning rate); embeddings must be non-zero in every row"
        )
    n = len(x)

    counts = np.bincount(codes)
    r = counts[codes] - 1  # other samples with the query's label
    k_needed = int(min(max(max(ks), r.max()), n - 1))
    depth = np.minimum(np.maximum(max(ks), r), k_needed)
    plan = _knn.make_plan(n, k_needed, backend, device, int(query_chunk))
    chunks = _knn.iter_neighbours(x, depth, plan)
    if keep is not None:  # the caller keeps every query's neighbours (eval.save_neighbours)
        chunks = _kept(chunks, keep, n, k_needed)
    out = rank_metrics(chunks, codes, ks, k_needed)
    if compute_nmi:
        assignments = kmeans_assignments(x, int(counts.size), seed=kmeans_seed, restarts=kmeans_restarts, device=device)
        from sklearn.metrics import normalized_mutual_info_score

        out["nmi"] = float(normalized_mutual_info_score(codes, assignments, average_method="arithmetic"))
        if keep is not None:
            keep["kmeans_assignments"] = assignments
    return out


def _kept(
    chunks: Iterator[tuple[int, int, np.ndarray]], keep: dict[str, Any], n: int, k: int
) -> Iterator[tuple[int, int, np.ndarray]]:
    """Pass the chunks on, copying each query's neighbour indices into ``keep["indices"]`` (``N×k``)."""
    keep["indices"] = np.empty((n, k), dtype=np.int64)
    for start, stop, idx in chunks:
        keep["indices"][start:stop] = idx
        yield start, stop, idx


def rank_metrics(
    chunks: Iterable[tuple[int, int, np.ndarray]], codes: np.ndarray, ks: Sequence[int], k_needed: int
) -> dict[str, float]:
    """Recall@K, MAP@R and R-Precision from each query's ranked neighbours.

    ``chunks`` yields ``(start, stop, idx)``: ``idx[i]`` are query ``start + i``'s neighbours (``k_needed`` columns,
    the query itself removed, exact up to depth ``max(max(ks), R)``); ``codes`` are label codes ``0..C-1``. Used by
    :func:`evaluate_embeddings` and to re-score a saved neighbour table, so both give the same numbers.
    """
    n = len(codes)
    r = np.bincount(codes)[codes] - 1  # other samples with the query's label
    hits = np.zeros(len(ks), dtype=np.int64)
    # Per-query values, summed once at the end so the result does not depend on the chunking.
    ap = np.zeros(n, dtype=np.float64)
    rp = np.zeros(n, dtype=np.float64)
    positions = np.arange(1, k_needed + 1)
    for start, stop, idx in chunks:
        match = codes[idx] == codes[start:stop, None]  # chunk × k_needed
        # Recall@K: the first correct rank (never, when there is none).
        first = np.where(match.any(axis=1), match.argmax(axis=1), np.iinfo(np.int64).max)
        hits += (first[:, None] < np.asarray(ks)[None, :]).sum(axis=0)
        # MAP@R and R-Precision over the first R ranks (Musgrave et al., "A Metric Learning Reality Check", §3.2).
        rq = r[start:stop]
        correct_in_r = match & (positions[None, :] <= rq[:, None])
        cum = np.cumsum(match, axis=1)
        denominator = np.maximum(rq, 1)  # R = 0 rows are excluded below
        ap[start:stop] = (cum * correct_in_r / positions[None, :]).sum(axis=1) / denominator
        rp[start:stop] = correct_in_r.sum(axis=1) / denominator

    valid = r > 0
    out = {f"recall@{k}": float(h) / n for k, h in zip(ks, hits, strict=True)}
    out["map@r"] = float(ap[valid].mean()) if valid.any() else float("nan")
    out["r_precision"] = float(rp[valid].mean()) if valid.any() else float("nan")
    return out


def kmeans_assignments(x: np.ndarray, k: int, *, seed: int, restarts: int, device: str = "cpu") -> np.ndarray:
    """Cluster ids from faiss k-means (best of ``restarts`` runs of ``KMEANS_NITER`` iterations, all points)."""
    import faiss

    x = np.ascontiguousarray(x, dtype=np.float32)
    gpu = str(device).startswith("cuda") and faiss.get_num_gpus() > 0
    kmeans = faiss.Kmeans(
        x.shape[1],
        k,
        niter=KMEANS_NITER,
        nredo=int(restarts),
        seed=int(seed),
        verbose=False,
        gpu=gpu,
        min_points_per_centroid=1,  # k = number of classes may leave few points per centroid; no warning spam
        max_points_per_centroid=max(1, -(-len(x) // k)),  # never subsample: every point takes part
    )
    kmeans.train(x)
    _, assignment = kmeans.index.search(x, 1)
    return assignment[:, 0]


def load_score_input(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read an ``.npz`` holding ``embeddings`` (``N×D`` float) and ``labels`` (``N`` ints); raise
    :class:`ScoreInputError` saying what was expected when the file is missing or malformed."""
    expected = (
        "expected an .npz file (numpy.savez) with arrays 'embeddings' (N×D float) and 'labels' (N integers), N >= 2"
    )
    path = os.fspath(path)
    if not os.path.isfile(path):
        if os.path.isdir(path):
            raise ScoreInputError(f"{path}: is a directory, not a file; {expected}.")
        if os.path.exists(path):  # a FIFO, socket or device: reading it could block or never end
            raise ScoreInputError(f"{path}: is not a regular file (a pipe, socket or device); {expected}.")
        raise ScoreInputError(f"{path}: no such file; {expected}.")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise ScoreInputError(f"{path}: cannot be read as an .npz ({err}); {expected}.") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ScoreInputError(f"{path}: is a single .npy array, not an .npz archive; {expected}.")
    with archive:
        names = sorted(archive.files)
        missing = [name for name in ("embeddings", "labels") if name not in names]
        if missing:
            raise ScoreInputError(
                f"{path}: missing array(s) {', '.join(repr(m) for m in missing)}; the file holds "
                f"{', '.join(repr(m) for m in names) or 'no arrays'}; {expected}. "
                "Save with numpy.savez(path, embeddings=..., labels=...)."
            )
        try:
            embeddings, labels = archive["embeddings"], archive["labels"]
        except (OSError, ValueError, zipfile.BadZipFile) as err:
            raise ScoreInputError(f"{path}: cannot read its arrays ({err}); {expected}.") from None
    try:
        x, codes = _check_arrays(embeddings, labels)
    except ValueError as err:
        raise ScoreInputError(f"{path}: {err}") from None
    _check_scorable(path, codes, x)
    return embeddings, labels


def labels_problem(labels: np.ndarray) -> str | None:
    """Why labels give meaningless metrics, or None: one class (every metric 1.0) or no class with two samples
    (Recall@K 0, MAP@R and R-Precision undefined, NMI 1.0 by construction)."""
    _, counts = np.unique(np.asarray(labels), return_counts=True)
    if counts.size == 1:
        return (
            f"all {int(counts.sum())} labels are the same class, so every neighbour matches and every metric would "
            "be 1.0"
        )
    if counts.max() < 2:
        return (
            f"every one of the {int(counts.sum())} labels is unique (each class has one sample), so no query has "
            "another sample of its class: Recall@K would be 0 and MAP@R / R-Precision are undefined"
        )
    return None


def _check_scorable(path: str, codes: np.ndarray, embeddings: np.ndarray) -> None:
    """Refuse labels whose metrics would be meaningless, and embeddings that all point the same way."""
    problem = labels_problem(codes)
    if problem:
        fix = (
            "Score the embeddings of 2 or more classes together (e.g. every test class)"
            if "same class" in problem
            else "Labels are class ids (several samples per class), not sample ids"
        )
        raise ScoreInputError(f"{path}: {problem}. {fix}.")
    x = _knn.l2_normalise(embeddings)
    if x.any() and (x == x[0]).all():
        raise DegenerateEmbeddingsError(
            f"{path}: all {len(x)} embeddings point the same way (a collapsed model), so every neighbour ties and "
            "only the sample order would decide the metrics. Score embeddings of a model that separates samples."
        )


def score_file(path: str | os.PathLike) -> dict[str, float]:
    """:func:`load_score_input` then :func:`evaluate_embeddings` with the default settings."""
    return evaluate_embeddings(*load_score_input(path))


def _check_arrays(embeddings: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert: float32 ``N×D`` embeddings and label codes ``0..C-1``."""
    if isinstance(embeddings, torch.Tensor):
        embeddings = embeddings.detach().cpu().numpy()
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    embeddings, labels = np.asarray(embeddings), np.asarray(labels)
    if embeddings.ndim != 2:
        raise ValueError(f"'embeddings' must be 2-D (N×D), got shape {embeddings.shape}")
    if not (np.issubdtype(embeddings.dtype, np.floating) or np.issubdtype(embeddings.dtype, np.integer)):
        raise ValueError(f"'embeddings' must hold floats, got dtype {embeddings.dtype}")
    if embeddings.shape[1] < 1:
        raise ValueError(f"'embeddings' must have at least one dimension, got shape {embeddings.shape}")
    if labels.ndim != 1:
        raise ValueError(f"'labels' must be 1-D (N), got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"'labels' must hold integers, got dtype {labels.dtype}; convert with labels.astype(int)")
    if len(embeddings) != len(labels):
        raise ValueError(
            f"'embeddings' has {len(embeddings)} rows but 'labels' has {len(labels)} entries; they must match"
        )
    if len(labels) < 2:
        raise ValueError(f"at least 2 samples are needed (each is a query against the others), got {len(labels)}")
    bad = ~np.isfinite(embeddings).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise ValueError(
            f"'embeddings' holds NaN or inf in {len(rows)} row(s) (first: {rows[:5].tolist()}); "
            "all values must be finite"
        )
    _, codes = np.unique(labels, return_inverse=True)
    return _to_float32(embeddings), codes.reshape(-1).astype(np.int64)


def _to_float32(embeddings: np.ndarray) -> np.ndarray:
    """float32 embeddings; rows of extreme scale (see :data:`SAFE_SCALE`) divided by their largest absolute value
    first, in their own precision (other rows are converted unchanged, so ordinary input scores bit-identically)."""
    if np.issubdtype(embeddings.dtype, np.integer):
        embeddings = embeddings.astype(np.float64)
    peak = np.abs(embeddings).max(axis=1)
    extreme = (peak > 0) & ((peak < SAFE_SCALE[0]) | (peak > SAFE_SCALE[1]))
    if extreme.any():
        embeddings = embeddings.copy()
        embeddings[extreme] /= peak[extreme, None]
    return embeddings.astype(np.float32, copy=False)


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    values = tuple(int(k) for k in ks)
    if not values or any(k < 1 for k in values) or any(int(k) != k for k in ks):
        raise ValueError(f"ks must be positive integers, got {tuple(ks)}")
    return tuple(sorted(set(values)))


def _resolve_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return "faiss" if backend == "auto" else backend
