"""Exact, chunked k-nearest-neighbour retrieval with a deterministic tie rule (private helper of the evaluator).

Every sample is a query against all the others. Neighbours are ordered by decreasing cosine similarity (inner
product of L2-normalised float32 embeddings) with ties broken by ascending index, and the query itself is removed
by its index, never by dropping rank 0.

faiss does not follow that tie rule (it returns tied items by *descending* index, also at the retrieval
boundary), and neither does ``torch.topk``. Worse, a BLAS kernel may round the same inner product differently at
different positions of its output tile: on an AMD EPYC host, faiss' bundled OpenBLAS (Zen kernel) scored two
*identical* database vectors 1 ulp apart, so they no longer tied. No library offers the rule, so it is enforced
here by hand:

1. the backend (faiss or torch) retrieves ``k_needed + 2`` candidates (the query itself plus one extra to see past
   the boundary);
2. remove the query by index (if a tie pushed it out of the list, drop the last neighbour instead);
3. candidates whose backend scores lie within a few ulps of a neighbour's (exact ties, as a BLAS kernel rounds
   them) are rescored pair by pair (:func:`pair_scores`: one einsum reduction per pair, never a BLAS tile, so
   identical vectors always score identically) and their rows ordered by (decreasing score, ascending index);
4. a row whose score at its needed depth is within a few ulps of the backend's last retrieved score may have tied
   items that were not retrieved (with lower indices than retrieved ones): recompute such rows from their full
   similarity row, scored the same way, with a stable sort. Otherwise every unretrieved item scores strictly lower,
   so the retrieved prefix is exact.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

#: Largest k that faiss' GPU flat index can select (faiss/gpu/utils/DeviceDefs.cuh: GPU_MAX_SELECTION_K).
FAISS_GPU_MAX_K = 2048
#: Budget (in elements) for one chunk's full similarity block (torch backend, recomputed rows): 2**26 float32 =
#: 256 MiB, which keeps N=100k, D=512 well under 4 GB of resident memory.
SIM_BLOCK_ELEMENTS = 2**26
#: Budget (in elements) for one chunk's neighbour arrays (scores + indices + per-query metric work).
NEIGHBOUR_BLOCK_ELEMENTS = 2**24
#: Budget (in elements) for the gathered vectors of one rescoring block (2**21 float32 = 8 MiB).
RESCORE_BLOCK_ELEMENTS = 2**21
#: A backend score may differ from :func:`pair_scores` by this many float32 ulps (BLAS rounding); within it, an
#: unretrieved item may tie with the row's boundary, so the row is recomputed.
BOUNDARY_ULPS = 4


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation in float32; an all-zero row stays zero (like ``torch.nn.functional.normalize``)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, np.float32(1e-12)), dtype=np.float32)


@dataclass
class SearchPlan:
    """How one evaluation retrieves: the resolved backend, device, neighbour depth and chunk size."""

    backend: str  # "faiss" or "torch"
    device: str  # "cpu" or "cuda:<i>"
    k_needed: int  # neighbours per query after removing the query itself
    k_search: int  # neighbours asked from the index (k_needed + 2, at most N)
    chunk: int  # queries per chunk


def resolve_device(backend: str, device: str | torch.device | None) -> str:
    """``None`` means: a GPU when the backend can use one, else the CPU."""
    if device is not None:
        device = str(torch.device(device))
        if device == "cuda":
            device = "cuda:0"
        return device
    if backend == "faiss":
        import faiss

        return "cuda:0" if faiss.get_num_gpus() > 0 else "cpu"
    return "cuda:0" if torch.cuda.is_available() else "cpu"


def make_plan(n: int, k_needed: int, backend: str, device: str, query_chunk: int) -> SearchPlan:
    """Choose the search depth and a chunk size that bounds memory (results do not depend on the chunk size)."""
    k_search = min(k_needed + 2, n)
    chunk = max(1, min(query_chunk, NEIGHBOUR_BLOCK_ELEMENTS // k_search))
    if backend == "torch":
        chunk = max(1, min(chunk, SIM_BLOCK_ELEMENTS // n))
    return SearchPlan(backend, device, k_needed, k_search, chunk)


def iter_neighbours(x: np.ndarray, depth: np.ndarray, plan: SearchPlan) -> Iterator[tuple[int, int, np.ndarray]]:
    """Yield ``(start, stop, idx)`` per query chunk; ``idx[i, :depth[q]]`` are query ``q = start + i``'s exact
    nearest neighbours under the tie rule (``idx`` has ``plan.k_needed`` columns; beyond ``depth[q]`` a column is
    correct up to the order of items tied across the boundary).

    ``x``: L2-normalised float32 ``N×D``; ``depth``: per-query needed depth, ``1 <= depth <= plan.k_needed``.
    """
    n = len(x)
    if plan.backend == "faiss":
        search = _faiss_search_fn(x, plan)
    elif plan.backend == "torch":
        search = _torch_search_fn(x, plan)
    else:  # pragma: no cover - validated by the caller
        raise ValueError(plan.backend)
    for start in range(0, n, plan.chunk):
        stop = min(start + plan.chunk, n)
        scores, idx = search(start, stop)
        idx = _finalise(x, scores, idx, start, depth[start:stop], plan.k_needed)
        yield start, stop, idx


def _faiss_search_fn(x: np.ndarray, plan: SearchPlan) -> Callable[[int, int], tuple[np.ndarray, np.ndarray]]:
    import faiss

    cpu_index = faiss.IndexFlatIP(x.shape[1])
    cpu_index.add(x)
    index, resources = cpu_index, None
    if plan.device.startswith("cuda") and faiss.get_num_gpus() > 0 and plan.k_search <= FAISS_GPU_MAX_K:
        resources = faiss.StandardGpuResources()
        index = faiss.index_cpu_to_gpu(resources, torch.device(plan.device).index or 0, cpu_index)

    def search(start: int, stop: int, _keep_alive=resources) -> tuple[np.ndarray, np.ndarray]:
        # _keep_alive: the GPU resources must outlive the GPU index
        return index.search(x[start:stop], plan.k_search)

    return search


def _torch_search_fn(x: np.ndarray, plan: SearchPlan) -> Callable[[int, int], tuple[np.ndarray, np.ndarray]]:
    xt = torch.from_numpy(x).to(plan.device)

    def search(start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            scores, idx = torch.topk(xt[start:stop] @ xt.T, plan.k_search, dim=1, largest=True, sorted=True)
        return scores.cpu().numpy(), idx.cpu().numpy()

    return search


def pair_scores(x: np.ndarray, qids: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``out[i, j] = <x[qids[i]], x[idx[i, j]]>`` in float32, each pair reduced on its own by ``np.einsum``'s
    contiguous sum-of-products loop (no BLAS tile): the result depends only on the two vectors, never on where they
    sit in an output tile, so identical vectors score identically (hand-written: no library guarantees that)."""
    out = np.empty(idx.shape, dtype=np.float32)
    step = max(1, RESCORE_BLOCK_ELEMENTS // max(1, idx.shape[1] * x.shape[1]))
    for b in range(0, len(qids), step):
        out[b : b + step] = np.einsum("qd,qkd->qk", x[qids[b : b + step]], x[idx[b : b + step]])
    return out


def _full_rows(x: np.ndarray, qids: np.ndarray) -> np.ndarray:
    """Each query's similarity to every sample, scored like :func:`pair_scores` (for the few recomputed rows)."""
    n = len(x)
    sim = np.empty((len(qids), n), dtype=np.float32)
    cols = max(1, RESCORE_BLOCK_ELEMENTS // x.shape[1])
    for r, q in enumerate(qids):
        for c in range(0, n, cols):
            stop = min(c + cols, n)
            sim[r, c:stop] = pair_scores(x, np.array([q]), np.arange(c, stop)[None, :])[0]
    return sim


def _finalise(
    x: np.ndarray,
    scores: np.ndarray,
    idx: np.ndarray,
    start: int,
    depth: np.ndarray,
    k_needed: int,
) -> np.ndarray:
    """Steps 2-4 of the module docstring, vectorised over the chunk."""
    n = len(x)
    c, k_search = idx.shape
    qids = np.arange(start, start + c)
    # 2. remove the query by index; if a tie pushed it out of the list, drop the last (lowest-ranked) neighbour.
    drop = idx == qids[:, None]
    drop[~drop.any(axis=1), -1] = True
    keep = ~drop
    idx = idx[keep].reshape(c, k_search - 1)
    backend_last = scores[keep].reshape(c, k_search - 1)[:, -1]
    # 3. near-ties (adjacent backend scores within a few ulps: exact ties as a BLAS kernel rounds them) are rescored
    #    pair by pair, and their rows ordered by (decreasing score, ascending index).
    scores = scores[keep].reshape(c, k_search - 1)
    slack = BOUNDARY_ULPS * np.spacing(np.abs(scores).max(axis=1, keepdims=True).astype(np.float32))
    near = (scores[:, :-1] - scores[:, 1:]) <= slack
    marked = np.zeros(scores.shape, dtype=bool)
    marked[:, :-1] |= near
    marked[:, 1:] |= near
    rows = np.flatnonzero(marked.any(axis=1))
    if len(rows):
        sub_idx, sub_scores = idx[rows], scores[rows]
        r, j = np.nonzero(marked[rows])
        sub_scores[r, j] = pair_scores(x, qids[rows][r], sub_idx[r, j][:, None])[:, 0]
        order = np.lexsort((sub_idx, -sub_scores), axis=-1)
        idx[rows] = np.take_along_axis(sub_idx, order, axis=1)
        scores[rows] = np.take_along_axis(sub_scores, order, axis=1)
    # 4. a tie that may straddle the retrieval boundary: recompute the row exactly from its full similarity row.
    if k_search < n:
        slack = BOUNDARY_ULPS * np.spacing(np.abs(backend_last).astype(np.float32))
        straddle = np.flatnonzero(scores[np.arange(c), depth - 1] <= backend_last + slack)
        if len(straddle):
            block = max(1, SIM_BLOCK_ELEMENTS // n)
            for b in range(0, len(straddle), block):
                rows = straddle[b : b + block]
                idx[rows, :k_needed] = _exact_rows(_full_rows(x, rows + start), rows + start, k_needed)
    return idx[:, :k_needed]


def _exact_rows(sim: np.ndarray, qids: np.ndarray, k_needed: int) -> np.ndarray:
    """Neighbours of ``qids`` from their full similarity rows: stable sort, query removed by index."""
    order = np.argsort(-sim, axis=1, kind="stable")
    keep = order != qids[:, None]
    return order[keep].reshape(len(qids), sim.shape[1] - 1)[:, :k_needed]


def exact_neighbours(x: np.ndarray, qids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest neighbours of a few queries ``qids`` (rows of the L2-normalised ``x``) and their scores.

    Computed from the queries' full similarity rows, scored pair by pair and stably sorted (step 4 above): the same
    neighbours, in the same order, as :func:`iter_neighbours` gives the evaluator. For a handful of queries (the
    gallery of :mod:`benchmark.evaluation.gallery`), so the cost is ``len(qids)`` similarity rows.
    """
    qids = np.asarray(qids, dtype=np.int64)
    k = int(min(k, len(x) - 1))
    sim = _full_rows(x, qids)
    idx = _exact_rows(sim, qids, k)
    return idx, np.take_along_axis(sim, idx, axis=1)
