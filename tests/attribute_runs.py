"""Run overrides for small end-to-end runs on the embedded ``attributes`` dataset (no tests in this file)."""

from __future__ import annotations


def attributes_budget(classes: int, per_class: int, epochs: int, steps_per_epoch: int) -> list[str]:
    """A reduced attributes dataset at 32 px (``classes // 2`` unseen test classes), ResNet-10t from scratch with BN
    training, 64-d head, batches of 8 classes x 4, the last epoch evaluated."""
    return [
        "dataset=attributes",
        "dataset.strict=false",
        f"dataset.options.classes={classes}",
        f"dataset.options.per_class={per_class}",
        "dataset.options.image_size=32",
        "backbone.name=resnet10t",
        "backbone.pretrained=false",
        "backbone.embedding_dim=64",
        "backbone.freeze_bn=false",
        f"train.epochs={epochs}",
        f"train.steps_per_epoch={steps_per_epoch}",
        "train.batch_size=32",
        "train.m_per_class=4",
        "train.progress=false",
        "data.num_workers=0",
        "eval.selection=last",
        "eval.kmeans_restarts=1",
    ]
