"""With one small budget on the embedded attribute dataset, every method's test Recall@1 beats the untrained
``pretrained`` baseline of the same backbone (the same engine settings for all: the engine owns the recipe)."""

from __future__ import annotations

import pytest

from benchmark.config import compose_config
from benchmark.registry import list_methods
from benchmark.run import run

# A reduced attribute dataset (32 classes: 16 train, 16 unseen test) at 32 px, a small CNN from scratch,
# 3 epochs of 8 steps, final epoch evaluated. Same for every method.
BUDGET = [
    "dataset=attributes", "dataset.strict=false", "dataset.options.classes=32", "dataset.options.per_class=12",
    "dataset.options.image_size=32", "backbone.name=resnet10t", "backbone.pretrained=false",
    "backbone.embedding_dim=64", "train.epochs=3", "train.steps_per_epoch=8", "train.batch_size=32",
    "train.m_per_class=4", "train.progress=false", "data.num_workers=0", "eval.selection=last",
    "eval.kmeans_restarts=1",
]
TRAINED = sorted(name for name, cls in list_methods().items() if cls.trains and name != "saga")


@pytest.fixture(scope="module")
def budget(tmp_path_factory):
    return BUDGET + [f"out_dir={tmp_path_factory.mktemp('zoo_runs')}"]


@pytest.fixture(scope="module")
def pretrained_recall(budget):
    record, _ = run(compose_config(budget + ["method=pretrained"]))
    return record["metrics"]["test"]["recall@1"]


@pytest.mark.parametrize("method", TRAINED)
def test_method_beats_the_untrained_backbone(method, budget, pretrained_recall):
    record, _ = run(compose_config(budget + [f"method={method}"]))
    recall = record["metrics"]["test"]["recall@1"]
    assert recall > pretrained_recall, f"{method}: R@1 {recall:.3f} <= untrained {pretrained_recall:.3f}"
