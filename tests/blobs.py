"""A tiny synthetic dataset for engine tests: coloured squares whose colour and position depend on the class."""

from __future__ import annotations

import numpy as np


def make_blobs(name: str, classes: int, per_class: int, size: int, seed: int, background: int, jitter: int):
    """``DatasetSplits`` with the first half of the classes in train. ``background`` and ``jitter`` set the noise:
    more of it makes retrieval imperfect, so that runs which differ end with different metrics."""
    from benchmark.data.base import DatasetSplits, SplitData

    rng = np.random.RandomState(seed)
    palette = rng.randint(0, 255, size=(classes, 3))
    images, labels = [], []
    for c in range(classes):
        for _ in range(per_class):
            img = rng.randint(0, background, size=(size, size, 3)).astype(np.uint8)
            x0 = (c * 3) % (size // 2)
            img[x0 : x0 + size // 2, 2 : 2 + size // 2] = np.clip(palette[c] + rng.randint(-jitter, jitter, 3), 0, 255)
            images.append(img)
            labels.append(c)
    images, labels = np.stack(images), np.array(labels)
    train = labels < classes // 2
    return DatasetSplits(
        name,
        SplitData(images[train], labels[train]),
        SplitData(images[~train], labels[~train]),
        [f"class{c}" for c in range(classes)],
    )
