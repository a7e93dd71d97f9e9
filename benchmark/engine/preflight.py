"""Checks made once a run's data is loaded and before it trains or writes anything (:func:`preflight`).

Splits: a run whose test (or validation) split cannot give a result is refused before any training time is spent.

``score`` refuses labels where no query has another sample of its class (:func:`labels_problem`); a run on such a
split used to train, then record ``completed`` with Recall@K 0, MAP@R NaN and NMI 1.0, a result that is not one.
The deepest ``eval.ks`` must also leave each query that many other samples (the split's size is only known once the
data is read; the card's expected counts are checked when the config is composed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmark.data.base import DatasetError
from benchmark.evaluation.metrics import labels_problem

#: What a run directory holds, and of which kind: something else in the way is refused before the run starts (a
#: ``checkpoints`` that is a file would otherwise fail the first checkpoint write, reported as a full disk).
RUN_FILES = ("config.yaml", "record.json", "metrics.jsonl", "jobs.json")
RUN_DIRS = ("checkpoints", "tensorboard")


class RunDirectoryError(RuntimeError):
    """A run directory whose layout is in the way of the run (a file where a directory belongs, or the reverse)."""


def preflight(trainer: Any) -> None:
    """Every check of this module, on a built (not yet trained) Trainer."""
    check_run_directory(trainer.run_dir)
    check_scorable_splits(trainer)


def check_run_directory(run_dir: Path) -> None:
    """Raise :class:`RunDirectoryError` when ``run_dir`` or a file or directory the run writes there has the wrong
    kind (a file where a directory belongs, or the reverse)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirectoryError(f"The run directory {run_dir} is a file: move it aside (or choose another out_dir).")
    wrong = [(run_dir / n, "a file") for n in RUN_FILES if (run_dir / n).exists() and not (run_dir / n).is_file()]
    wrong += [(run_dir / n, "a directory") for n in RUN_DIRS if (run_dir / n).exists() and not (run_dir / n).is_dir()]
    if wrong:
        path, kind = wrong[0]
        raise RunDirectoryError(
            f"{path} should be {kind}, the run keeps it there, but is not: move it aside and run the same command "
            "again. Nothing was written."
        )


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
