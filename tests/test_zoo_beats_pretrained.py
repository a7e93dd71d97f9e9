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
    "dataset=attributes",
    "dataset.strict=false",
    "dataset.options.classes=32",
    "dataset.options.per_class=12",
    "dataset.options.image_size=32",
    "backbone.name=resnet10t",
    "backbone.pretrained=false",
    "backbone.embedding_dim=64",
    "backbone.freeze_bn=true",  # pinned: the xfail evidence below was measured with BN frozen
    "train.epochs=3",
    "train.steps_per_epoch=8",
    "train.batch_size=32",
    "train.m_per_class=4",
    "train.progress=false",
    "data.num_workers=0",
    "eval.selection=last",
    "eval.kmeans_restarts=1",
]
# Methods shown NOT to beat the untrained backbone at this budget as a property of the method, not a bug (strict:
# the case fails as soon as the method does beat it, so the mark cannot outlive its reason).
KNOWN_SHORTFALLS = {
    "potential_field": (
        "PF's loss has zero force once same-class charges are within delta and other classes beyond it. Starting"
        " from an untrained CNN's collapsed embeddings (mean pairwise distance 0.19, over half of them < delta = 0.2)"
        " it reaches that configuration on the training classes within one epoch (loss 587 -> 561; the zero-force"
        " floor is 550), and test R@1 then stays at 0.161-0.167 for 6 epochs (untrained 0.182), at lr 1e-3 and"
        " 3e-3 (0.156 with 16 steps per epoch). The energy matches a literal double loop over the docstring's"
        " equations; the paper's setting starts from a pretrained backbone."
    ),
    "soft_triple": (
        "SoftTriple (parity with the official code checked in test_zoo_parity_pml; centres at the official absolute"
        " --centerlr 0.01) learns too slowly for this budget: test R@1 0.156 after 3 epochs (untrained 0.182), and"
        " over 6 epochs 0.156, 0.146, 0.161, 0.177, 0.188, 0.182, i.e. level with the untrained backbone only after"
        " ~40 steps. A shared lr of 3e-3 lifts it to 0.198 but drops arcface, circle, hist and multi_similarity below"
        " the untrained backbone; 3 epochs of 16 steps give exactly 0.182 (and drop norm_softmax to 0.177)."
    ),
}
TRAINED = [
    pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=KNOWN_SHORTFALLS[name]))
    if name in KNOWN_SHORTFALLS
    else name
    for name in sorted(name for name, cls in list_methods().items() if cls.trains and name != "saga")
]


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
