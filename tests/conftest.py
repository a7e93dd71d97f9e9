"""Shared fixtures: a tiny synthetic dataset with its own card, and tiny run overrides for CPU tests."""

from __future__ import annotations

import os

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmark.data.base import register_reader  # noqa: E402
from tests.blobs import make_blobs  # noqa: E402


@register_reader("test_blobs")
def read_test_blobs(card, root, strict, classes: int = 12, per_class: int = 8, size: int = 16, seed: int = 0):
    """Coloured squares whose colour and position depend on the class, plus noise: learnable in a few steps."""
    return make_blobs("blobs", classes, per_class, size, seed, background=60, jitter=20)


BLOBS_CARD = {
    "name": "blobs",
    "title": "Test blobs",
    "reader": "test_blobs",
    "needs_root": False,
    "expected": {"classes": 12, "images": 96, "train_classes": 6, "test_classes": 6},
    "defaults": {"image_size": 16, "backbone": {"name": "resnet10t", "pretrained": False}},
}


@pytest.fixture
def datasets_dir(tmp_path, monkeypatch):
    """A datasets/ directory holding the real cards plus the tiny 'blobs' card."""
    import benchmark.data.base as base

    target = tmp_path / "datasets"
    target.mkdir()
    for card in base.DATASETS_DIR.glob("*.yaml"):
        (target / card.name).write_text(card.read_text())
    if (base.DATASETS_DIR / "splits").is_dir():
        (target / "splits").symlink_to(base.DATASETS_DIR / "splits")
    (target / "blobs.yaml").write_text(yaml.safe_dump(BLOBS_CARD))
    monkeypatch.setattr(base, "DATASETS_DIR", target)
    return target


@pytest.fixture
def tiny_overrides(datasets_dir, tmp_path):
    """Overrides for a run that takes seconds on a CPU."""
    return [
        "dataset=blobs",
        "dataset.val_fraction=0.34",
        "backbone.embedding_dim=16",
        "train.epochs=2",
        "train.batch_size=8",
        "train.m_per_class=2",
        "train.steps_per_epoch=3",
        "train.progress=false",
        "data.num_workers=0",
        "eval.kmeans_restarts=2",
        f"out_dir={tmp_path / 'runs'}",
    ]
