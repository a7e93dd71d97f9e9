"""Linear attribute probes on frozen test embeddings: how well an embedding encodes each named attribute.

For a dataset whose classes are combinations of named attributes (the procedural ``attributes`` dataset), one
linear classifier per attribute (standardised features, multinomial logistic regression) predicts the attribute's
value of each test image from its embedding. The probe is scored **class-disjointly**: the test classes are split
in two folds (scikit-learn's ``StratifiedGroupKFold``, the classes as groups, stratified on the attribute's value),
the probe is fitted on the images of one fold's classes and scored on the other fold's, and the folds are swapped.
Every image is scored once, by a probe that never saw its class, so a probe cannot score by memorising which class
has which value: it has to read the attribute itself from the embedding.

Two reference levels come with each attribute, under the same folds: chance (the majority value of the training
fold, ``DummyClassifier``), and the accuracy the same probe reaches from the exact values of all the *other*
attributes. The second matters where attributes are correlated across the test classes (the ``attributes``
dataset grows its classes by one-attribute mutations, so they are): an embedding that encodes, say, body colour
alone is read as knowing the border style well above chance. Results are fractions in [0, 1].
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.dummy import DummyClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

#: The probe's settings, written into the run record with its results.
PROBE_SETTINGS = {
    "model": "StandardScaler + LogisticRegression(C=1.0, lbfgs, max_iter=1000)",
    "folds": "2-fold class-disjoint: StratifiedGroupKFold(n_splits=2, shuffle=True), groups = test classes",
    "chance": "majority value of the training fold (DummyClassifier most_frequent), same folds",
    "other_attributes": "the same probe on the one-hot values of every other attribute only, same folds",
}
N_FOLDS = 2
MIN_CLASSES = 4  # two classes per fold at least, so that a fold is not a single class


class ProbeError(ValueError):
    """Embeddings, labels or class attributes that cannot be probed."""


def class_attributes_by_id(
    class_names: Sequence[str], class_attributes: Mapping[str, Mapping[str, str]] | None
) -> dict[int, dict[str, str]] | None:
    """Attributes keyed by global class id (the labels' values), from a dataset's names and name-keyed table.

    ``class_names`` and ``class_attributes`` are :class:`~benchmark.data.base.DatasetSplits`'s fields; returns None
    when the dataset has no attribute table.
    """
    if not class_attributes:
        return None
    return {i: dict(class_attributes[name]) for i, name in enumerate(class_names) if name in class_attributes}


def _check(
    embeddings: np.ndarray, labels: np.ndarray, class_attributes: Mapping[int, Mapping[str, str]]
) -> tuple[np.ndarray, np.ndarray, list[int], list[str]]:
    x = np.asarray(embeddings)
    y = np.asarray(labels)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ProbeError(f"embeddings must be a non-empty N×D array, got shape {x.shape}.")
    if y.shape != (x.shape[0],):
        raise ProbeError(f"labels must be a vector of {x.shape[0]} class ids (one per embedding), got shape {y.shape}.")
    if not np.issubdtype(x.dtype, np.number) or not np.isfinite(x).all():
        raise ProbeError("embeddings hold NaN, infinite or non-numeric values; the probe needs finite embeddings.")
    if not np.issubdtype(y.dtype, np.integer):
        raise ProbeError(f"labels must be integer class ids, got dtype {y.dtype}.")
    classes = sorted(int(c) for c in np.unique(y))
    if len(classes) < MIN_CLASSES:
        raise ProbeError(
            f"A class-disjoint probe needs at least {MIN_CLASSES} classes ({N_FOLDS} folds of 2 or more), "
            f"got {len(classes)}."
        )
    missing = [c for c in classes if c not in class_attributes]
    if missing:
        raise ProbeError(
            f"class_attributes has no entry for class id(s) {missing[:10]}: key it by the labels' class ids "
            "(class_attributes_by_id(splits.class_names, splits.class_attributes) does)."
        )
    names = list(class_attributes[classes[0]])
    for c in classes:
        if set(class_attributes[c]) != set(names):
            raise ProbeError(
                f"Class {c} has attributes {sorted(class_attributes[c])}, class {classes[0]} has {sorted(names)}: "
                "every class must name the same attributes."
            )
    return x.astype(np.float64, copy=False), y, classes, names


def probe_attributes(
    embeddings: np.ndarray,
    labels: np.ndarray,
    class_attributes: Mapping[int, Mapping[str, str]],
    seed: int = 0,
) -> dict[str, Any]:
    """Class-disjoint linear-probe accuracy of every attribute, with two reference levels under the same folds.

    ``embeddings`` is N×D (frozen test embeddings), ``labels`` the N global class ids, ``class_attributes`` maps
    each class id to ``{attribute: value}``; ``seed`` draws the folds. Returns a JSON-ready dict::

        {"accuracy": {attribute: fraction}, "chance": {attribute: fraction},
         "other_attributes": {attribute: fraction},
         "mean_accuracy": fraction, "mean_chance": fraction, "mean_other_attributes": fraction,
         "skipped": {attribute: reason}, "n_images": N, "n_classes": C, "seed": seed, "settings": {...}}

    ``chance`` is the majority value of the training fold. ``other_attributes`` is what the same probe reaches
    from the exact values of every *other* attribute (one-hot) and nothing else: where attributes are correlated
    across the test classes, an embedding that encodes only some of them is read as knowing the others up to this
    level, so only accuracy above it shows the attribute itself in the embedding.

    An attribute with a single value over the given classes cannot be probed and is listed under ``skipped``.
    Deterministic: the same input gives the same numbers. Raises :class:`ProbeError` on bad input.
    """
    x, y, classes, names = _check(embeddings, labels, class_attributes)
    table = {a: np.array([class_attributes[int(c)][a] for c in y]) for a in names}
    accuracy, chance, others, skipped = {}, {}, {}, {}
    for attribute in names:
        values = table[attribute]
        if len(np.unique(values)) < 2:
            skipped[attribute] = f"one value ({str(values[0])!r}) over the {len(classes)} classes"
            continue
        folds = _class_disjoint_folds(values, y, seed)
        accuracy[attribute] = _probe_accuracy(x, values, folds)
        chance[attribute] = _chance_accuracy(values, folds)
        codes = [(table[a][:, None] == np.unique(table[a])[None, :]) for a in names if a != attribute]
        others[attribute] = _probe_accuracy(np.hstack(codes).astype(np.float64), values, folds) if codes else None
    if not accuracy:
        raise ProbeError(f"No attribute takes two values over these {len(classes)} classes; nothing to probe.")
    known = [v for v in others.values() if v is not None]
    return {
        "accuracy": accuracy,
        "chance": chance,
        "other_attributes": others,
        "mean_accuracy": float(np.mean(list(accuracy.values()))),
        "mean_chance": float(np.mean(list(chance.values()))),
        "mean_other_attributes": float(np.mean(known)) if known else None,
        "skipped": skipped,
        "n_images": int(len(y)),
        "n_classes": len(classes),
        "seed": int(seed),
        "settings": dict(PROBE_SETTINGS),
    }


Folds = list[tuple[np.ndarray, np.ndarray]]


def _class_disjoint_folds(values: np.ndarray, groups: np.ndarray, seed: int) -> Folds:
    """Two folds of whole classes (``groups``), each holding every value of the attribute where possible."""
    splitter = StratifiedGroupKFold(n_splits=N_FOLDS, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # A value held by a single class cannot be in both folds; the split still holds, sklearn only warns.
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        return list(splitter.split(np.zeros(len(values)), values, groups))


def _chance_accuracy(values: np.ndarray, folds: Folds) -> float:
    """Out-of-fold accuracy of predicting the training fold's majority value."""
    hits = 0
    for train, test in folds:
        majority = DummyClassifier(strategy="most_frequent").fit(np.zeros((len(train), 1)), values[train])
        hits += int((majority.predict(np.zeros((len(test), 1))) == values[test]).sum())
    return hits / len(values)


def _probe_accuracy(x: np.ndarray, values: np.ndarray, folds: Folds) -> float:
    """Out-of-fold accuracy of the linear probe (every image scored once, by the probe fitted on the other fold)."""
    # Hand-written fold loop rather than sklearn's cross_val_predict: a training fold may hold a single value of
    # the attribute (a value carried by one class only), where LogisticRegression refuses to fit and the only
    # sensible prediction is that value; cross_val_predict has no such fallback.
    hits = 0
    for train, test in folds:
        if len(np.unique(values[train])) < 2:
            hits += int((values[test] == values[train][0]).sum())
            continue
        # max_iter 1000: lbfgs on (nearly) separable embeddings needs more than sklearn's default 100 to converge.
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000))
        probe.fit(x[train], values[train])
        hits += int((probe.predict(x[test]) == values[test]).sum())
    return hits / len(values)


def format_probe(result: Mapping[str, Any]) -> str:
    """One line for the console: mean probe accuracy and chance, then each attribute (percent)."""
    if "error" in result:
        return f"attribute probe: not computed ({result['error']})"
    per = "  ".join(f"{a} {100 * v:.1f}" for a, v in result["accuracy"].items())
    others = result.get("mean_other_attributes")
    reference = f", from the other attributes {100 * others:.1f}" if others is not None else ""
    return (
        f"attribute probe (linear, class-disjoint): mean {100 * result['mean_accuracy']:.1f} "
        f"(chance {100 * result['mean_chance']:.1f}{reference}) | {per}"
    )


def probe_run_embeddings(embeddings: np.ndarray, labels: np.ndarray, splits: Any) -> dict[str, Any]:
    """A finished run's probes on its test embeddings, or ``{"error": why}`` where they cannot be fitted (e.g. a
    miniature test split: the trained run is kept and its record says why). Folds are drawn with seed 0 for every
    run, so methods and seeds are probed on the same folds."""
    try:
        return probe_attributes(embeddings, labels, class_attributes_by_id(splits.class_names, splits.class_attributes))
    except ProbeError as err:
        warnings.warn(f"Attribute probe skipped: {err}", stacklevel=2)
        return {"error": str(err)}
