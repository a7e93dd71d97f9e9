"""Tests of the evaluator (benchmark/evaluation/metrics.py, benchmark/evaluation/knn.py) against plain references."""

from __future__ import annotations

import math

import faiss
import numpy as np
import pytest
import torch
from sklearn.metrics import normalized_mutual_info_score

from benchmark.evaluation import knn as _knn
from benchmark.evaluation.metrics import (
    METRIC_KEYS,
    ScoreInputError,
    evaluate_embeddings,
    evaluation_settings,
    kmeans_assignments,
    load_score_input,
    score_file,
)
from benchmark.perf.eval import RecallAtKCalculator, pml_metrics


def brute_force(x: np.ndarray, labels: np.ndarray, ks=(1, 2, 4, 8)) -> dict[str, float]:
    """The definitions of protocol.md §3 written plainly: full float32 similarity matrix, one query at a time, the
    query removed by index, a stable sort of the other samples (so ties go to the lower index)."""
    x = np.asarray(x, dtype=np.float32)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    sim = x @ x.T
    n = len(x)
    hits = dict.fromkeys(ks, 0)
    aps, rps = [], []
    for q in range(n):
        others = np.array([j for j in range(n) if j != q])
        ranked = others[np.argsort(-sim[q, others], kind="stable")]
        correct = labels[ranked] == labels[q]
        for k in ks:
            hits[k] += bool(correct[:k].any())
        r = int(correct.sum())
        if r > 0:
            precisions = [correct[: i + 1].sum() / (i + 1) for i in range(r) if correct[i]]
            aps.append(sum(precisions) / r)
            rps.append(correct[:r].sum() / r)
    out = {f"recall@{k}": hits[k] / n for k in ks}
    out["map@r"] = float(np.mean(aps))
    out["r_precision"] = float(np.mean(rps))
    return out


def assert_metrics_close(ours: dict, expected: dict, tol: float = 1e-12) -> None:
    for key, value in expected.items():
        assert math.isclose(ours[key], value, rel_tol=0, abs_tol=tol), (key, ours[key], value)


def random_data(seed: int = 0, dim: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Classes of several sizes (one singleton), arbitrary (negative, sparse) label values, shuffled order."""
    rng = np.random.default_rng(seed)
    sizes = [1, 2, 3, 5, 8, 13, 21, 30]
    label_values = np.array([-3, 7, 100, 4, 0, 55, 9, 12])
    labels = np.repeat(label_values, sizes)
    rng.shuffle(labels)
    centres = rng.normal(size=(len(sizes), dim))
    codes = np.searchsorted(np.sort(label_values), labels)
    x = centres[codes] + 1.5 * rng.normal(size=(len(labels), dim))
    return x.astype(np.float32), labels


def tied_data(seed: int = 0, n: int = 160) -> tuple[np.ndarray, np.ndarray]:
    """Heavy exact ties: unit vectors with entries ±0.25 (D=16), drawn from 5 patterns, so every inner product is
    an exact multiple of 1/16 whatever the summation order; random labels, so ties straddle every depth."""
    rng = np.random.default_rng(seed)
    patterns = rng.choice([-0.25, 0.25], size=(5, 16))
    x = patterns[rng.integers(0, 5, n)].astype(np.float32)
    labels = rng.integers(0, 6, n)
    return x, labels


def duplicated_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random embeddings each repeated 1-6 times at scattered positions, duplicates carrying different labels."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(40, 12)).astype(np.float32)
    rows = np.repeat(np.arange(40), rng.integers(1, 7, 40))
    rng.shuffle(rows)
    return base[rows], rng.integers(0, 8, len(rows))


@pytest.mark.parametrize("backend", ["faiss", "torch"])
@pytest.mark.parametrize("make_data", [random_data, tied_data, duplicated_data])
def test_matches_brute_force(make_data, backend):
    x, labels = make_data()
    expected = brute_force(x, labels)
    for chunk in (4096, 7):
        ours = evaluate_embeddings(x, labels, compute_nmi=False, backend=backend, query_chunk=chunk)
        assert_metrics_close(ours, expected)
        assert set(ours) == set(METRIC_KEYS) - {"nmi"}
        assert all(0.0 <= v <= 1.0 for v in ours.values())


def test_large_k_and_unsorted_ks():
    x, labels = random_data(seed=1)
    ks = (300, 3, 1)  # K beyond N - 1 = 82: recall is then "has any other sample of its label"
    ours = evaluate_embeddings(x, labels, ks=ks, compute_nmi=False)
    assert_metrics_close(ours, brute_force(x, labels, ks=(1, 3, 300)))
    assert ours["recall@300"] == pytest.approx((len(labels) - 1) / len(labels))  # one singleton label


def test_tie_rule_hand_computed():
    # Four identical embeddings: every neighbour is tied, so ranks follow the sample index.
    x = np.ones((4, 3), dtype=np.float32)
    labels = np.array([0, 1, 1, 0])
    # q0: 1,2,3 (labels 1,1,0); q1: 0,2,3 (0,1,0); q2: 0,1,3 (0,1,0); q3: 0,1,2 (0,1,1)
    expected = {"recall@1": 1 / 4, "recall@2": 3 / 4, "recall@4": 1.0, "map@r": 1 / 4, "r_precision": 1 / 4}
    for backend in ("faiss", "torch"):
        ours = evaluate_embeddings(x, labels, ks=(1, 2, 4), compute_nmi=False, backend=backend)
        assert_metrics_close(ours, expected)


def test_ties_straddling_the_boundary_are_recomputed(monkeypatch):
    # faiss returns tied items by descending index, also at the retrieval boundary; those rows must be redone.
    calls = []
    exact_rows = _knn._exact_rows
    monkeypatch.setattr(_knn, "_exact_rows", lambda *a: calls.append(len(a[1])) or exact_rows(*a))
    x, labels = tied_data(seed=3, n=200)
    ours = evaluate_embeddings(x, labels, ks=(1,), compute_nmi=False, backend="faiss")
    assert sum(calls) > 0
    assert_metrics_close(ours, brute_force(x, labels, ks=(1,)))


def test_rank_zero_dropping_would_differ():
    # The reason for removing the query by index: with duplicates, rank 0 is not always the query itself.
    x, labels = duplicated_data(seed=2)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(xn)
    _, idx = index.search(xn, 2)
    assert (idx[:, 0] != np.arange(len(x))).any()
    rank0_dropped = float(np.mean(labels[idx[:, 1]] == labels))
    ours = evaluate_embeddings(x, labels, ks=(1,), compute_nmi=False)
    assert ours["recall@1"] == pytest.approx(brute_force(x, labels, ks=(1,))["recall@1"], abs=1e-12)
    assert ours["recall@1"] != pytest.approx(rank0_dropped)


@pytest.mark.parametrize("make_data", [random_data, tied_data, duplicated_data])
def test_backends_identical(make_data):
    x, labels = make_data(seed=5)
    faiss_result = evaluate_embeddings(x, labels, backend="faiss", kmeans_restarts=2)
    for chunk in (1, 16, 4096):
        assert evaluate_embeddings(x, labels, backend="torch", query_chunk=chunk, kmeans_restarts=2) == faiss_result


def test_torch_and_float64_inputs():
    x, labels = random_data(seed=2)
    expected = evaluate_embeddings(x, labels, compute_nmi=False)
    assert evaluate_embeddings(torch.from_numpy(x).requires_grad_(), torch.from_numpy(labels), compute_nmi=False) == (
        expected
    )
    assert evaluate_embeddings(x.astype(np.float64), labels.tolist(), compute_nmi=False) == expected


def test_against_pytorch_metric_learning():
    # pml 2.9 searches k+1 neighbours and removes the query by index (inference.return_results), like ours; it
    # excludes queries whose label has no other sample from every metric, and we from MAP@R / R-precision only.
    x, labels = random_data(seed=4, dim=16)
    xn = _knn.l2_normalise(x)
    k = int(np.bincount(np.unique(labels, return_inverse=True)[1]).max() - 1)
    theirs = pml_metrics(xn, labels, k)  # recall@K by our RecallAtKCalculator, over all queries
    ours = evaluate_embeddings(x, labels, compute_nmi=False)
    assert_metrics_close(ours, theirs)
    calculator = RecallAtKCalculator(include=("precision_at_1",), k=k, device=torch.device("cpu"))
    p_at_1 = calculator.get_accuracy(torch.from_numpy(xn), torch.from_numpy(labels))["precision_at_1"]
    n_lone = 1  # one singleton label in random_data
    assert p_at_1 * (len(labels) - n_lone) == pytest.approx(ours["recall@1"] * len(labels), abs=1e-9)


def test_nmi_is_sklearn_on_the_recorded_kmeans():
    x, labels = random_data(seed=6)
    ours = evaluate_embeddings(x, labels, kmeans_seed=3, kmeans_restarts=4)
    codes = np.unique(labels, return_inverse=True)[1]
    clusters = kmeans_assignments(_knn.l2_normalise(x), 8, seed=3, restarts=4)
    assert ours["nmi"] == pytest.approx(normalized_mutual_info_score(codes, clusters), abs=1e-12)
    assert evaluate_embeddings(x, labels, kmeans_seed=3, kmeans_restarts=4)["nmi"] == ours["nmi"]


def test_nmi_separated_clusters_is_one():
    rng = np.random.default_rng(0)
    centres = np.eye(6, 32, dtype=np.float32) * 10
    labels = np.repeat(np.arange(6), 20)
    x = centres[labels] + 0.01 * rng.normal(size=(120, 32)).astype(np.float32)
    result = evaluate_embeddings(x, labels)
    assert result["nmi"] == pytest.approx(1.0)
    assert result["recall@1"] == 1.0 and result["map@r"] == 1.0


def test_all_singletons_give_nan_map():
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    result = evaluate_embeddings(x, np.arange(5), compute_nmi=False)
    assert result["recall@8"] == 0.0 and math.isnan(result["map@r"]) and math.isnan(result["r_precision"])


def test_chunk_sizes_bound_memory():
    plan = _knn.make_plan(100_000, 101, "torch", "cpu", 4096)
    assert plan.chunk * 100_000 <= _knn.SIM_BLOCK_ELEMENTS and plan.k_search == 103
    plan = _knn.make_plan(100_000, 60_000, "faiss", "cpu", 4096)
    assert plan.chunk * plan.k_search <= _knn.NEIGHBOUR_BLOCK_ELEMENTS


def test_evaluation_settings_records_the_protocol():
    settings = evaluation_settings(ks=(4, 1), kmeans_seed=7, kmeans_restarts=3, backend="torch", device="cpu")
    assert settings["ks"] == [1, 4]
    assert "ascending sample index" in settings["tie_rule"]
    assert settings["nmi"]["kmeans_seed"] == 7 and settings["nmi"]["kmeans_restarts"] == 3
    assert settings["nmi"]["kmeans_niter"] > 0
    assert settings["knn"] == {"backend": "torch", "device": "cpu", "exact": True}
    assert evaluation_settings(device="cpu")["knn"]["backend"] == "faiss"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"backend": "sklearn"}, "backend must be one of"),
        ({"ks": (0, 1)}, "ks must be positive integers"),
        ({"query_chunk": 0}, "query_chunk must be a positive integer"),
        ({"kmeans_restarts": 0}, "kmeans_restarts must be at least 1"),
    ],
)
def test_bad_arguments(kwargs, message):
    x, labels = random_data()
    with pytest.raises(ValueError, match=message):
        evaluate_embeddings(x, labels, **kwargs)


def _write(tmp_path, name="scores.npz", **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def test_score_file_round_trip(tmp_path):
    x, labels = random_data()
    path = _write(tmp_path, embeddings=x, labels=labels)
    loaded_x, loaded_labels = load_score_input(path)
    np.testing.assert_array_equal(loaded_x, x)
    np.testing.assert_array_equal(loaded_labels, labels)
    assert score_file(path) == evaluate_embeddings(x, labels)


def test_single_sample_label_is_accepted(tmp_path):
    x, labels = random_data()  # holds a singleton label
    assert len(load_score_input(_write(tmp_path, embeddings=x, labels=labels))[1]) == len(labels)


GOOD_X = np.zeros((4, 3), dtype=np.float32)
GOOD_Y = np.array([0, 0, 1, 1])


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"embeddings": GOOD_X}, r"missing array\(s\) 'labels'; the file holds 'embeddings'"),
        ({"emb": GOOD_X, "y": GOOD_Y}, r"missing array\(s\) 'embeddings', 'labels'; the file holds 'emb', 'y'"),
        ({"embeddings": GOOD_X[0], "labels": GOOD_Y}, r"'embeddings' must be 2-D \(N×D\), got shape \(3,\)"),
        ({"embeddings": GOOD_X, "labels": GOOD_Y[:, None]}, r"'labels' must be 1-D \(N\), got shape \(4, 1\)"),
        ({"embeddings": GOOD_X, "labels": GOOD_Y[:3]}, "'embeddings' has 4 rows but 'labels' has 3 entries"),
        ({"embeddings": GOOD_X, "labels": GOOD_Y + 0.5}, "'labels' must hold integers, got dtype float64"),
        ({"embeddings": GOOD_X.astype(str), "labels": GOOD_Y}, "'embeddings' must hold floats"),
        ({"embeddings": np.where(np.eye(4, 3) > 0, np.nan, 1.0), "labels": GOOD_Y}, r"NaN or inf in 3 row\(s\)"),
        ({"embeddings": np.full((4, 3), np.inf), "labels": GOOD_Y}, r"NaN or inf in 4 row\(s\)"),
        ({"embeddings": GOOD_X[:1], "labels": GOOD_Y[:1]}, "at least 2 samples are needed"),
    ],
)
def test_bad_npz_contents(tmp_path, arrays, message):
    path = _write(tmp_path, **arrays)
    with pytest.raises(ScoreInputError, match=message) as err:
        load_score_input(path)
    assert str(path) in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(ScoreInputError, match=r"no such file; expected an \.npz file .* 'embeddings' \(N×D float\)"):
        load_score_input(tmp_path / "nope.npz")


def test_not_an_npz(tmp_path):
    text = tmp_path / "scores.npz"
    text.write_text("embeddings,labels\n1,2\n")
    with pytest.raises(ScoreInputError, match=r"cannot be read as an \.npz .*expected an \.npz file"):
        load_score_input(text)
    npy = tmp_path / "scores.npy"
    np.save(npy, GOOD_X)
    with pytest.raises(ScoreInputError, match=r"is a single \.npy array, not an \.npz archive"):
        load_score_input(npy)
    pickled = _write(tmp_path, "pickled.npz", embeddings=np.array([None, 1], dtype=object), labels=GOOD_Y[:2])
    with pytest.raises(ScoreInputError, match="cannot read its arrays"):
        load_score_input(pickled)


def test_perf_script_quick_run(capsys):
    from benchmark.perf.eval import main

    assert main(["--n", "600", "--dim", "16", "--classes", "20", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "ratio ours / bare faiss" in out and "numbers identical to pml (up to float32 ties): yes" in out
