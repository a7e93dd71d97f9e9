"""The evaluator benchmark's float64 reference and float32 band (benchmark/perf/reference.py, perf/eval.py's check):
a real float32 tie widens the band just enough for either order, no tie leaves no room at all."""

from __future__ import annotations

import faiss
import numpy as np

from benchmark.evaluation import knn as _knn
from benchmark.evaluation.metrics import evaluate_embeddings
from benchmark.perf.eval import identical_check
from benchmark.perf.reference import float64_reference, measured_eps, worst_case_eps

KEYS = ("recall@1", "recall@2", "recall@4", "recall@8", "map@r", "r_precision")


def _query_with_two_neighbours(tie: bool, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Sample 0 is a query; samples 1 (its class) and 2 (another class) are its two nearest neighbours, equal up
    to two swapped components; sample 3 is a farther sample of its class (R = 2), then 20 far singletons. With
    ``tie`` the swapped components are 1 ulp apart, so the two similarities differ by about 1e-9 in exact
    arithmetic, far below float32's resolution there (6e-8)."""
    rng = np.random.default_rng(seed)
    d = 32
    q = rng.standard_normal(d).astype(np.float32)
    a = (q + np.float32(0.05) * rng.standard_normal(d).astype(np.float32)).astype(np.float32)
    if tie:
        a[1] = np.nextafter(a[0], np.float32(np.inf))
    b = a.copy()
    b[0], b[1] = a[1], a[0]
    c = (q + np.float32(0.6) * rng.standard_normal(d).astype(np.float32)).astype(np.float32)
    far = rng.standard_normal((20, d)).astype(np.float32)
    return np.vstack([q, a, b, c, far]), np.array([0, 0, 1, 0, *range(2, 22)])


def _metrics(x: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return evaluate_embeddings(x, labels, compute_nmi=False, backend="faiss", device="cpu")


def _bare_search(xn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    index = faiss.IndexFlatIP(xn.shape[1])
    index.add(xn)
    return index.search(xn, len(xn))


SWAP = np.array([0, 2, 1, *range(3, 24)])  # exchanges samples 1 and 2: the tie rule's index order flips


def test_real_float32_tie_is_admitted_both_ways(capsys):
    x, labels = _query_with_two_neighbours(tie=True)
    xn = _knn.l2_normalise(x)
    exact = xn[[1, 2]].astype(np.float64) @ xn[0].astype(np.float64)
    float32 = _knn.pair_scores(xn, np.array([0]), np.array([[1, 2]]))[0]
    # the premise: a real float32 tie (equal float32 scores, different exact ones)
    assert float32[0] == float32[1] and 0 < abs(exact[0] - exact[1]) < np.spacing(float32[0])
    ours, other_order = _metrics(x, labels), _metrics(x[SWAP], labels[SWAP])
    assert ours["map@r"] != other_order["map@r"]  # the index decides the tie, so the two orders really differ

    (reference,) = float64_reference(xn, labels, [worst_case_eps(xn)])
    band = reference.bands["map@r"]
    assert band.lo < band.hi and reference.tied_map >= 1
    # float64 orders the two by their exact scores: as the index does in one of the two data sets
    assert band.reference == (ours if exact[0] > exact[1] else other_order)["map@r"]
    assert band.admits(ours["map@r"]) and band.admits(other_order["map@r"])
    assert not band.admits(band.hi + 1e-6) and not band.admits(band.lo - 1e-6)

    # the benchmark's check: a side breaking the tie the other way (faiss: descending index) is still "identical"
    scores, idx = _bare_search(xn)
    assert identical_check(xn, labels, scores, idx, ours, other_order)
    out = capsys.readouterr().out
    assert "map@r: ours" in out and "MISMATCH" not in out


def test_no_tie_leaves_no_room(capsys):
    x, labels = _query_with_two_neighbours(tie=False)
    xn = _knn.l2_normalise(x)
    exact = xn[[1, 2]].astype(np.float64) @ xn[0].astype(np.float64)
    assert abs(exact[0] - exact[1]) > 1e3 * worst_case_eps(xn)  # the premise: far apart for float32
    ours, other_order = _metrics(x, labels), _metrics(x[SWAP], labels[SWAP])
    assert ours == other_order  # scores decide, not indices

    (reference,) = float64_reference(xn, labels, [worst_case_eps(xn)])
    assert reference.tied_recall == reference.tied_map == 0
    for key in KEYS:
        band = reference.bands[key]
        assert band.lo == band.reference == band.hi
        assert band.admits(ours[key]) and not band.admits(ours[key] + 1e-9) and not band.admits(ours[key] - 1e-9)

    scores, idx = _bare_search(xn)
    assert identical_check(xn, labels, scores, idx, ours, dict(ours))
    swapped_query = ours | {"map@r": ours["map@r"] + 1e-6}  # far less than one query's tie could move it
    assert not identical_check(xn, labels, scores, idx, ours, swapped_query)
    assert "map@r: ours" in capsys.readouterr().out


def test_tie_block_longer_than_the_kept_columns_is_bounded_from_the_whole_row():
    # 40 identical samples in 20 classes of 2 (each one's partner is somewhere in a 39-way exact tie, longer than
    # the 8 + 16 kept columns), then 10 far singletons
    rng = np.random.default_rng(1)
    x = np.vstack([np.repeat(rng.standard_normal((1, 16)), 40, axis=0), rng.standard_normal((10, 16))])
    labels = np.array([*np.repeat(np.arange(20), 2), *range(20, 30)])
    xn = _knn.l2_normalise(x)
    (reference,) = float64_reference(xn, labels, [worst_case_eps(xn)])
    # best case: every partner first; worst: every partner last (39th), outside the first R = 1 and K <= 8
    assert reference.bands["map@r"].lo == 0.0 and reference.bands["map@r"].hi == 1.0
    assert reference.bands["recall@8"].lo == 0.0 and reference.bands["recall@8"].hi == 40 / 50
    ours = _metrics(x, labels)
    assert all(reference.bands[key].admits(ours[key]) for key in KEYS)


def test_measured_float32_error_is_within_the_worst_case():
    rng = np.random.default_rng(2)
    xn = _knn.l2_normalise(rng.standard_normal((200, 64)))
    scores, idx = _bare_search(xn)
    error = measured_eps(xn, np.arange(200), idx[:, :20], scores[:, :20])
    assert 0 < error <= worst_case_eps(xn)
