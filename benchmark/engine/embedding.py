"""Embedding a split for evaluation (every rank its share, gathered back in split order) and scoring it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from benchmark.engine import distributed
from benchmark.engine.control import ignore_stop_signals_in_worker
from benchmark.engine.pipeline import ImageDataset, unwrap_worker_errors


@torch.no_grad()
def embed_split(
    split: Any,
    transform: Any,
    encoder: torch.nn.Module,
    method: Any,
    device: torch.device,
    dist: distributed.DistInfo,
    autocast: bool,
    cfg: Any,
    check_stop: Callable[[], None],
) -> tuple[np.ndarray, np.ndarray]:
    """``method.embed`` of every image of ``split`` (eval mode, the engine's autocast) and the labels; ``check_stop``
    runs before each batch (it raises to stop)."""
    dataset = ImageDataset(split, transform)
    shard = distributed.shard_indices(len(dataset), dist)  # each rank embeds its share
    if dist.enabled:
        dataset = torch.utils.data.Subset(dataset, shard.tolist())
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=cfg.eval.batch_size,
        shuffle=False,
        num_workers=cfg.data.num_workers,
        worker_init_fn=ignore_stop_signals_in_worker,
    )
    encoder.eval()
    method.eval()
    chunks, labels = [], []
    for images, y in unwrap_worker_errors(loader):
        check_stop()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            z = method.embed(images.to(device, non_blocking=True), encoder)
        chunks.append(z.float().cpu().numpy())
        labels.append(y.numpy())
    n = len(split)
    return (
        distributed.gather_in_order(np.concatenate(chunks), shard, n, dist),
        distributed.gather_in_order(np.concatenate(labels), shard, n, dist),
    )


def score_embeddings(embeddings: np.ndarray, labels: np.ndarray, eval_cfg: Any) -> dict[str, float]:
    """The protocol's metrics (Recall@K, MAP@R, R-Precision, NMI) with the run's evaluation settings."""
    from benchmark.evaluation.metrics import evaluate_embeddings

    return evaluate_embeddings(
        embeddings,
        labels,
        ks=tuple(eval_cfg.ks),
        kmeans_seed=eval_cfg.kmeans_seed,
        kmeans_restarts=eval_cfg.kmeans_restarts,
        backend=eval_cfg.backend,
    )
