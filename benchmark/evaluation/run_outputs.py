"""What a run's final test evaluation leaves beside ``record.json``, besides the metrics: the neighbours gallery
(``gallery/``, unless ``eval.gallery=false``) and, with ``eval.save_neighbours=true``, ``neighbours.npz``.

Called once by the trainer with the test embeddings it has just scored; written before the record is marked
completed, so a completed record has its files (a run stopped in between writes them again when resumed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from benchmark.config import config_hash


def write_run_outputs(run_dir: Path, cfg: DictConfig, splits: Any, embeddings: np.ndarray, labels: np.ndarray) -> None:
    """Write the gallery and (when asked) the per-query neighbours of the test split into ``run_dir``."""
    about = {
        "run_id": f"{cfg.method.name}-{cfg.dataset.name}-{Path(run_dir).name}",
        "method": cfg.method.name,
        "dataset": cfg.dataset.name,
        "seed": int(cfg.seed),
        "config_hash": config_hash(cfg),
    }
    e = cfg.eval
    if e.get("gallery", True):
        from benchmark.evaluation.gallery import build_gallery, write_gallery

        gallery, sprite = build_gallery(embeddings, labels, splits.class_names, splits.test.images, about=about)
        write_gallery(run_dir, gallery, sprite)
    if e.get("save_neighbours", False):
        from benchmark.evaluation.neighbours import FILENAME, write_neighbours

        write_neighbours(
            Path(run_dir) / FILENAME,
            embeddings,
            labels,
            ks=tuple(e.ks),
            kmeans_seed=e.kmeans_seed,
            kmeans_restarts=e.kmeans_restarts,
            backend=e.backend,
            meta=about,
        )
