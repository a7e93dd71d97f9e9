"""Checks on the loaded splits made before a run trains: a run whose test (or validation) split cannot give a
result is refused before any training time is spent or any file is written.

``score`` refuses labels where no query has another sample of its class (:func:`labels_problem`); a run on such a
split used to train, then record ``completed`` with Recall@K 0, MAP@R NaN and NMI 1.0, a result that is not one.
The deepest ``eval.ks`` must also leave each query that many other samples (the split's size is only known once the
data is read; the card's expected counts are checked when the config is composed).
"""

from __future__ import annotations

from typing import Any

from benchmark.data.base import DatasetError
from benchmark.evaluation.metrics import labels_problem


def check_scorable_splits(trainer: Any) -> None:
    """Raise :class:`DatasetError` when the run's test or validation split cannot be scored meaningfully."""
    cfg = trainer.cfg
    splits = [("test", trainer.splits.test)]
    if cfg.eval.selection == "val" and trainer.val_split is not None:
        splits.append(("validation", trainer.val_split))
    for name, split in splits:
        problem = labels_problem(split.labels)
        if problem:
            fix = (
                "Use a copy of the dataset with several images per class"
                if name == "test"
                else "Raise dataset.val_fraction, or select the last epoch with eval.selection=last"
            )
            raise DatasetError(
                f"The {name} split of {cfg.dataset.name} ({len(split)} images): {problem}; the run would record a "
                f"result that is not one. {fix}. Nothing was trained or written."
            )
    deepest, n = max(cfg.eval.ks), len(trainer.splits.test)
    if deepest > n - 1:
        raise DatasetError(
            f"eval.ks asks for Recall@{deepest}, but the test split of {cfg.dataset.name} has {n} images (each query "
            f"has {n - 1} others): give eval.ks values of at most {n - 1}, e.g. eval.ks=[1,2,4,8]."
        )
