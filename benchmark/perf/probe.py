"""Performance check of the attribute probe: ``python -m benchmark.perf.probe [--dim 128 --repeats 3]``.

On the attributes dataset's real test input size (48 unseen classes x 30 images) with random embeddings it times

1. :func:`benchmark.evaluation.attribute_probe.probe_attributes`: per attribute, the class-disjoint probe plus its
   two reference levels (chance and "from the other attributes"), as every run on that dataset computes it;
2. the plain scikit-learn way to get the probe accuracies alone: ``cross_val_predict`` of the same
   ``StandardScaler + LogisticRegression`` pipeline over the same ``StratifiedGroupKFold`` folds, per attribute;

checks that both give the same probe accuracies, and prints the times (best of ``--repeats``) and their ratio.
The probe does more work than (2) (the other-attributes level is a second fit per fold), so a ratio near 2 is
expected; a much larger one means the probe's own loop costs something.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from benchmark.data.attributes import class_attribute_table
from benchmark.evaluation.attribute_probe import N_FOLDS, class_attributes_by_id, probe_attributes


def plain_sklearn_accuracies(x: np.ndarray, labels: np.ndarray, attrs: dict[int, dict[str, str]]) -> dict[str, float]:
    """Per attribute, the out-of-fold accuracy of the probe pipeline through ``cross_val_predict`` (no references)."""
    out = {}
    for attribute in attrs[int(labels[0])]:
        values = np.array([attrs[int(c)][attribute] for c in labels])
        if len(np.unique(values)) < 2:
            continue
        cv = StratifiedGroupKFold(n_splits=N_FOLDS, shuffle=True, random_state=0)
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
            predicted = cross_val_predict(probe, x, values, groups=labels, cv=cv)
        out[attribute] = float((predicted == values).mean())
    return out


def _best_of(repeats: int, fn) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main(argv: list[str] | None = None) -> int:
    """Time the probe against the plain scikit-learn computation and print the ratio."""
    parser = argparse.ArgumentParser(prog="python -m benchmark.perf.probe", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dim", type=int, default=128, help="embedding size (default 128)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats; the best is reported (default 3)")
    args = parser.parse_args(argv)
    table = class_attribute_table(seed=0, classes=96)
    attrs = class_attributes_by_id(list(table), table)
    labels = np.repeat(np.arange(48, 96), 30)  # the 48 test classes, 30 images each
    x = np.random.default_rng(2).normal(size=(len(labels), args.dim))
    t_probe, result = _best_of(args.repeats, lambda: probe_attributes(x, labels, attrs))
    t_plain, plain = _best_of(args.repeats, lambda: plain_sklearn_accuracies(x, labels, attrs))
    same = all(abs(result["accuracy"][a] - plain[a]) < 1e-12 for a in plain) and set(plain) == set(result["accuracy"])
    print(f"input: {len(labels)} embeddings x {args.dim}, {len(set(labels.tolist()))} classes, {len(plain)} attributes")
    print(f"probe_attributes (probe + chance + other-attributes level): {t_probe:.3f} s")
    print(f"plain sklearn cross_val_predict (probe accuracies only):    {t_plain:.3f} s")
    print(f"ratio probe / plain sklearn: {t_probe / t_plain:.2f}")
    print(f"same probe accuracies: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
