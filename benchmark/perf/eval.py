"""Performance check of the evaluator: ``python -m benchmark.perf.eval [--n 100000 --dim 512 --classes 1000]``.

On synthetic clustered data it times

1. :func:`benchmark.evaluation.metrics.evaluate_embeddings` without NMI (the retrieval metrics),
2. a bare faiss ``IndexFlatIP`` search with the same k on the same (normalised) data: the floor for exact kNN,
3. pytorch-metric-learning's ``AccuracyCalculator`` extended with Recall@K (:class:`RecallAtKCalculator`),

checks that (1) and (3) give the same numbers up to float32 ties, against a float64 brute-force reference (4) and
the band float32 scores allow around it (:mod:`benchmark.perf.reference`), and prints the time ratios and the peak
resident memory. (1) and (2) run ``--repeat`` times interleaved (default 5); the ratio printed is the median of the
paired ratios with their min and max. Targets: ours / bare faiss <= 1.1 and peak RSS < 4 GB at N=100k, D=512.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time

import numpy as np
import torch
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from pytorch_metric_learning.utils.inference import FaissKNN

from benchmark.evaluation import knn as _knn
from benchmark.evaluation.metrics import evaluate_embeddings
from benchmark.perf import reference as _reference

KS = (1, 2, 4, 8)


def _recall_at(k: int):
    def calculate(self, knn_labels, query_labels, **kwargs) -> float:
        # Over all queries, like ours: a query whose label has no other sample counts as a miss.
        same = knn_labels[:, :k] == query_labels[:, None]
        return torch.any(same, dim=1).double().mean().item()

    calculate.__name__ = f"calculate_recall_at_{k}"
    return calculate


class RecallAtKCalculator(AccuracyCalculator):
    """pml's AccuracyCalculator plus ``recall_at_{1,2,4,8}``: the documented way to add metrics is a subclass
    with ``calculate_<name>`` methods and the name listed in ``requires_knn``."""

    calculate_recall_at_1 = _recall_at(1)
    calculate_recall_at_2 = _recall_at(2)
    calculate_recall_at_4 = _recall_at(4)
    calculate_recall_at_8 = _recall_at(8)

    def requires_knn(self):
        return super().requires_knn() + [f"recall_at_{k}" for k in KS]


PML_KEYS = {
    "recall@1": "recall_at_1",
    "recall@2": "recall_at_2",
    "recall@4": "recall_at_4",
    "recall@8": "recall_at_8",
    "map@r": "mean_average_precision_at_r",
    "r_precision": "r_precision",
}


def pml_metrics(x_normalised: np.ndarray, labels: np.ndarray, k: int) -> dict[str, float]:
    """The same metrics from pml 2.9, apples to apples with ours: pml searches ``k + 1`` neighbours and removes the
    query by index (``inference.return_results``), so we give it the normalised embeddings, an inner-product
    index (its default is ``IndexFlatL2`` on raw embeddings) and our neighbour depth ``k``."""
    # pml warns when k < its max bin count, a count that includes the query itself (a spurious warning for our
    # k = max class size - 1); "max_bin_count" is the same depth without the warning.
    max_bin = int(np.unique(labels, return_counts=True)[1].max())
    calculator = RecallAtKCalculator(
        include=tuple(PML_KEYS.values()),
        k="max_bin_count" if k == max_bin - 1 else k,
        device=torch.device("cpu"),
        knn_func=FaissKNN(index_init_fn=_flat_ip),
    )
    result = calculator.get_accuracy(torch.from_numpy(x_normalised), torch.from_numpy(labels))
    return {ours: float(result[theirs]) for ours, theirs in PML_KEYS.items()}


def _flat_ip(d: int):
    import faiss

    return faiss.IndexFlatIP(d)


def synthetic(n: int, dim: int, classes: int, seed: int = 0, noise: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian clusters: ``labels`` uniform over ``classes``, ``x = centre[label] + noise · N(0, I)`` (float32,
    generated in blocks so the peak memory is the array itself)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, dim), dtype=np.float32)
    labels = rng.integers(0, classes, n)
    x = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, 8192):
        block = rng.standard_normal((min(8192, n - s), dim), dtype=np.float32)
        x[s : s + len(block)] = centres[labels[s : s + len(block)]] + np.float32(noise) * block
    return x, labels


def _spread(values: list[float], unit: str) -> str:
    return f"{np.median(values):.2f} {unit} (min {min(values):.2f}, max {max(values):.2f}, {len(values)} runs)"


def identical_check(
    xn: np.ndarray,
    labels: np.ndarray,
    scores: np.ndarray,
    idx: np.ndarray,
    ours: dict[str, float],
    theirs: dict[str, float],
) -> bool:
    """Print ours, pml's and the float64 reference's value of each metric with the band float32 allows, and return
    whether both sides lie in it (see :mod:`benchmark.perf.reference` for the derivation).

    ``scores``, ``idx``: the bare faiss search of every sample (query included), whose float32 scores are the ones
    both sides order by (the same index searched with the same queries); the evaluator rescores near-ties with float32
    ``einsum`` (:func:`benchmark.evaluation.knn.pair_scores`). The band uses the larger of the two kernels' actual
    errors on those candidate pairs; the worst case any float32 summation allows is printed for comparison."""
    qids = np.arange(len(xn))
    eps_blas = _reference.measured_eps(xn, qids, idx, scores)
    eps_einsum = _reference.measured_eps(xn, qids, idx, _knn.pair_scores(xn, qids, idx))
    eps_worst = _reference.worst_case_eps(xn)
    t = time.perf_counter()
    measured, worst = _reference.float64_reference(xn, labels, [max(eps_blas, eps_einsum), eps_worst], KS)
    print(f"(4) float64 brute-force reference: {time.perf_counter() - t:.2f} s")
    print(
        f"    float32 score error: faiss BLAS {eps_blas:.1e}, einsum {eps_einsum:.1e} (measured on the candidates), "
        f"worst case {eps_worst:.1e} (gamma_D); metrics in float64 on both sides"
    )
    print(
        f"    queries with a float32 tie in reach: {measured.tied_recall} (Recall@K), {measured.tied_map} "
        f"(MAP@R, R-Precision) of {measured.n_valid} (worst case: {worst.tied_recall}, {worst.tied_map})"
    )
    ok = True
    for key, value in theirs.items():
        band = measured.bands[key]
        same = band.admits(ours[key]) and band.admits(value)
        ok &= same
        print(
            f"    {key}: ours {ours[key]:.10f} pml {value:.10f} float64 {band.reference:.10f}; diff ours-pml "
            f"{ours[key] - value:+.1e}, float32 band [{band.lo:.10f}, {band.hi:.10f}] {'ok' if same else 'MISMATCH'}"
        )
    return ok


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # ru_maxrss is in KiB on Linux


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmark.perf.eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="samples (default 100000; e.g. 5000 for a quick run)")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="faiss/torch threads, same for all")
    parser.add_argument("--query-chunk", type=int, default=4096)
    parser.add_argument(
        "--repeat", type=int, default=5, help="interleaved repeats of (1) and (2) (default 5); median and spread shown"
    )
    parser.add_argument("--skip-pml", action="store_true", help="skip pytorch-metric-learning (3) and the check")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error(f"--repeat must be at least 1, got {args.repeat}")

    import faiss

    faiss.omp_set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    x, labels = synthetic(args.n, args.dim, args.classes)
    print(f"data: N={args.n} D={args.dim} classes={args.classes} threads={args.threads}; RSS {_peak_rss_gb():.2f} GB")

    xn = _knn.l2_normalise(x)
    counts = np.bincount(np.unique(labels, return_inverse=True)[1])
    k_needed = int(min(max(max(KS), counts.max() - 1), args.n - 1))
    k_search = min(k_needed + 2, args.n)  # what ours asks the index for (query + one to see past the boundary)

    def run_ours() -> dict[str, float]:
        return evaluate_embeddings(x, labels, compute_nmi=False, query_chunk=args.query_chunk, backend="faiss")

    def run_bare() -> tuple[np.ndarray, np.ndarray]:
        index = faiss.IndexFlatIP(args.dim)
        index.add(xn)
        return index.search(xn, k_search)

    # Interleaved repeats, the order alternating (ours first, then bare first), so that a load change on a shared
    # machine or a warm-up effect hits both sides alike; each repeat gives one paired ratio.
    t_ours, t_bare = [], []
    for rep in range(args.repeat):
        for side in ("ours", "bare") if rep % 2 == 0 else ("bare", "ours"):
            t = time.perf_counter()
            if side == "ours":
                ours = run_ours()
                t_ours.append(time.perf_counter() - t)
                if rep == 0:  # ours ran first: the peak so far is ours alone
                    rss_ours = _peak_rss_gb()
            else:
                scores, idx = run_bare()
                t_bare.append(time.perf_counter() - t)
        print(f"    repeat {rep + 1}/{args.repeat}: ours {t_ours[-1]:.2f} s, bare faiss {t_bare[-1]:.2f} s", flush=True)
    ratios = np.array(t_ours) / np.array(t_bare)
    print(f"(1) ours (faiss, no NMI): median {_spread(t_ours, 's')}; peak RSS after it {rss_ours:.2f} GB")
    print("    " + ", ".join(f"{k}={v:.6f}" for k, v in ours.items()))
    print(f"(2) bare faiss IndexFlatIP add + search, k={k_search}: median {_spread(t_bare, 's')}")
    print(
        f"    ratio ours / bare faiss = {np.median(ratios):.3f} (median of {args.repeat} interleaved pairs, "
        f"min {ratios.min():.3f}, max {ratios.max():.3f}; target <= 1.1); best time / best time "
        f"{min(t_ours) / min(t_bare):.3f}"
    )

    ok = True
    if not args.skip_pml:
        t = time.perf_counter()
        theirs = pml_metrics(xn, labels, k_needed)
        t_pml = time.perf_counter() - t
        print(f"(3) pml AccuracyCalculator + Recall@K, k={k_needed}: {t_pml:.2f} s")
        print(f"    ratio ours / pml = {np.median(t_ours) / t_pml:.3f} (ours' median time)")
        ok = identical_check(xn, labels, scores, idx, ours, theirs)
    print(f"peak RSS {_peak_rss_gb():.2f} GB (after (1): {rss_ours:.2f} GB; target < 4 GB)")
    if not args.skip_pml:
        print("numbers identical to pml (up to float32 ties): " + ("yes" if ok else "NO"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
