"""A float64 brute-force reference for the evaluator benchmark, and the band float32 arithmetic allows around it.

Both the evaluator and pytorch-metric-learning score neighbours by float32 inner products (faiss' BLAS ``sgemm``;
the evaluator also rescores near-ties with a float32 ``einsum``), then compute the metrics from the neighbour
order in float64 (ours: numpy float64; pml 2.9: integer ``cumsum``, float64 division and ``torch.mean`` in float64).
So the two can differ only where float32 cannot order two neighbours, and by float64 rounding.

The bound, derived (Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., §3.1, eq. 3.5): a float32
inner product of ``D`` terms, in any summation order, with or without FMA, is within
``γ_D · Σ|x_i y_i| <= γ_D · ‖x‖‖y‖`` of the exact one, where ``γ_D = D·u / (1 - D·u)`` and ``u = 2**-24``. For
L2-normalised rows that is ``ε = γ_D · max‖x‖²`` (about 3.1e-5 at D = 512). Two neighbours whose exact
similarities differ by more than ``2ε`` are therefore ordered the same way by every float32 computation; within
``2ε`` either order is possible (a "float32 tie"), and a tie rule (ours: ascending index; faiss: descending index)
picks one. The exact similarities come from float64 (products of float32 numbers are exact in float64; the sum's own
error, ``γ_D`` with ``u = 2**-53``, is added to the link threshold).

For every query, the sorted float64 row is cut into *blocks* of neighbours chained by gaps ``<= 2ε``; any float32
order is the float64 order with items permuted within blocks. A metric is largest with the correct items first in
each block and smallest with them last (moving a correct item earlier never lowers Recall@K, AP@R or R-Precision),
so ``[lo, hi]``, the means of those per-query extremes, holds every value a float32 implementation can report.
The means themselves are float64 sums of ``n`` values in [0, 1] of at most ``L`` terms each: at most
``(n + L + 2)·2**-53`` off on either side, which is the slack ``tau``.

Hand-written (no library computes retrieval metrics in float64 together with their float32 band); kept apart from
:mod:`benchmark.evaluation` so the reference shares no code with what it checks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

U32 = 2.0**-24
U64 = 2.0**-53
#: Sorted float64 neighbours kept per row beyond the deepest metric; a row whose tie block runs past them is redone
#: from its whole row.
EXTRA = 16
#: Float64 similarity elements per chunk (2**24 = 128 MiB).
CHUNK_ELEMENTS = 2**24


def gamma(d: int, u: float) -> float:
    """``γ_d = d·u / (1 - d·u)``: relative error bound of a ``d``-term inner product with unit roundoff ``u``."""
    return d * u / (1.0 - d * u)


@dataclass
class Band:
    """One metric: its float64 reference value and the interval every float32 computation must fall in."""

    reference: float
    lo: float
    hi: float
    tau: float  # float64 rounding slack on either side

    def admits(self, value: float) -> bool:
        """Whether ``value`` is a result some float32 neighbour order (plus float64 rounding) can give."""
        return self.lo - self.tau <= value <= self.hi + self.tau


@dataclass
class Reference:
    """Bands per metric key (``recall@K``, ``map@r``, ``r_precision``) and how many queries hold a float32 tie."""

    bands: dict[str, Band]
    eps: float  # float32 similarity error bound ε
    tied_recall: int  # queries with a tie block that can change their Recall@K for some K
    tied_map: int  # queries with a tie block that can change their MAP@R or R-Precision
    n_valid: int  # queries with R > 0


def _metrics(match: np.ndarray, r: np.ndarray, ks: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-query hits (rows × len(ks)), AP@R and R-Precision from a rows × L boolean neighbour match matrix."""
    hits = np.stack([match[:, :k].any(axis=1) for k in ks], axis=1)
    pos = np.arange(1, match.shape[1] + 1)
    in_r = match & (pos[None, :] <= r[:, None])
    cum = np.cumsum(match, axis=1)
    denominator = np.maximum(r, 1).astype(np.float64)
    ap = (cum * in_r / pos[None, :]).sum(axis=1) / denominator
    rp = in_r.sum(axis=1) / denominator
    return hits, ap, rp


def _sorted(sim: np.ndarray, top: np.ndarray, qcodes: np.ndarray, codes: np.ndarray):
    """Candidates ``top`` of query rows ordered by (decreasing float64 score, ascending index): scores and matches."""
    order = np.lexsort((top, -np.take_along_axis(sim, top, axis=1)), axis=-1)
    idx = np.take_along_axis(top, order, axis=1)
    return np.take_along_axis(sim, idx, axis=1), codes[idx] == qcodes[:, None]


def _bounds(s: np.ndarray, match: np.ndarray, r: np.ndarray, ks: tuple[int, ...], link: float):
    """Lowest and highest per-query ``(hits, ap, rp)`` over orders permuting items within tie blocks (adjacent
    float64 gaps ``<= link``), and which rows end their kept columns inside a block reaching a depth the metrics
    read (their bounds are incomplete)."""
    block = np.zeros(s.shape, dtype=np.int64)
    block[:, 1:] = np.cumsum((s[:, :-1] - s[:, 1:]) > link, axis=1)
    worst = np.take_along_axis(match, np.lexsort((match, block), axis=-1), axis=1)
    best = np.take_along_axis(match, np.lexsort((~match, block), axis=-1), axis=1)
    reach = np.minimum(np.maximum(max(ks), r), s.shape[1])
    open_end = block[:, -1] == block[np.arange(len(s)), reach - 1]
    return (_metrics(worst, r, ks), _metrics(best, r, ks)), open_end


def worst_case_eps(xn: np.ndarray) -> float:
    """``γ_D · max‖x‖²``: no float32 inner product of two rows of ``xn`` is further than this from the exact one."""
    x64 = xn.astype(np.float64)
    return gamma(xn.shape[1], U32) * float(np.max(np.einsum("nd,nd->n", x64, x64)))


def measured_eps(xn: np.ndarray, qids: np.ndarray, idx: np.ndarray, scores: np.ndarray) -> float:
    """Largest ``|scores[i, j] - <xn[qids[i]], xn[idx[i, j]]>|`` (the exact value from float64): the actual error of
    float32 scores a kernel returned for those pairs."""
    x64 = xn.astype(np.float64)
    worst = 0.0
    step = max(1, 2**22 // max(1, idx.shape[1] * xn.shape[1]))
    for b in range(0, len(qids), step):
        exact = np.einsum("qd,qkd->qk", x64[qids[b : b + step]], x64[idx[b : b + step]])
        worst = max(worst, float(np.abs(scores[b : b + step].astype(np.float64) - exact).max()))
    return worst


def float64_reference(
    xn: np.ndarray, labels: np.ndarray, eps: Sequence[float], ks: Sequence[int] = (1, 2, 4, 8)
) -> list[Reference]:
    """Brute-force float64 kNN on the (float32, L2-normalised) ``xn``, chunked over queries, the query removed by
    index and ties broken by ascending index; for each float32 error bound in ``eps``, each metric's reference value
    and the band of values float32 scores within that bound can give."""
    n, d = xn.shape
    ks = tuple(sorted(set(int(k) for k in ks)))
    x64 = xn.astype(np.float64)
    codes = np.unique(labels, return_inverse=True)[1].reshape(-1)
    r = np.bincount(codes)[codes] - 1
    width = int(min(n - 1, max(max(ks), r.max()) + EXTRA))
    # an order flips only if the exact gap is within both items' float32 errors, plus the reference's own float64
    # error on each side
    links = [2 * e + 2 * gamma(d, U64) for e in eps]
    ref: list[tuple] = []
    bounds: list[list[tuple]] = [[] for _ in links]
    for start in range(0, n, max(1, CHUNK_ELEMENTS // n)):
        rows = np.arange(start, min(start + max(1, CHUNK_ELEMENTS // n), n))
        sim = x64[rows] @ x64.T
        sim[rows - start, rows] = -np.inf  # the query itself, removed by index (it sorts last)
        if width < n - 1:
            top = np.argpartition(-sim, width - 1, axis=1)[:, :width]
        else:
            top = np.argsort(-sim, axis=1)[:, : n - 1]
        s, match = _sorted(sim, top, codes[rows], codes)
        ref.append(_metrics(match, r[rows], ks))
        for link, out in zip(links, bounds, strict=True):
            (lo, hi), open_end = _bounds(s, match, r[rows], ks, link)
            redo = np.flatnonzero(open_end) if width < n - 1 else np.array([], dtype=np.int64)
            if len(redo):  # a tie block runs past the kept columns: bound those rows from their whole row
                s_all, m_all = _sorted(sim[redo], np.argsort(-sim[redo], axis=1)[:, : n - 1], codes[rows[redo]], codes)
                whole, _ = _bounds(s_all, m_all, r[rows[redo]], ks, link)
                for part, fix in zip((lo, hi), whole, strict=True):
                    for array, value in zip(part, fix, strict=True):
                        array[redo] = value
            out.append((lo, hi))
    valid = r > 0
    tau = (n + width + 2) * U64

    def mean(parts: list[tuple], j: int, mask: np.ndarray | None = None) -> np.ndarray:
        values = np.concatenate([p[j] for p in parts])
        return values[mask] if mask is not None else values

    results = []
    for e, out in zip(eps, bounds, strict=True):
        lo, hi = [t[0] for t in out], [t[1] for t in out]
        bands = {
            f"recall@{k}": Band(
                float(mean(ref, 0)[:, j].mean()), float(mean(lo, 0)[:, j].mean()), float(mean(hi, 0)[:, j].mean()), tau
            )
            for j, k in enumerate(ks)
        }
        for j, key in ((1, "map@r"), (2, "r_precision")):
            values = [float(mean(p, j, valid).mean()) if valid.any() else float("nan") for p in (ref, lo, hi)]
            bands[key] = Band(*values, tau)
        tied_recall = (mean(lo, 0) != mean(hi, 0)).any(axis=1)
        tied_map = ((mean(lo, 1) != mean(hi, 1)) | (mean(lo, 2) != mean(hi, 2))) & valid
        results.append(Reference(bands, float(e), int(tied_recall.sum()), int(tied_map.sum()), int(valid.sum())))
    return results
