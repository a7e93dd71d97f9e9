"""With one small budget on the embedded attribute dataset, every method's test Recall@1 beats the untrained
``pretrained`` baseline of the same backbone (the same engine settings for all: the engine owns the recipe)."""

from __future__ import annotations

import pytest

from benchmark.config import compose_config
from benchmark.engine.run import run
from benchmark.registry import list_methods
from tests.attribute_runs import attributes_budget

# A reduced attribute dataset (64 classes: 32 train, 32 unseen test, 16 images each, so 512 test queries) at 32 px, a
# small CNN from scratch, 3 epochs of 16 steps with a one-epoch linear learning-rate warm-up, final epoch evaluated.
# Same for every method (the engine owns the recipe); no method is exempt and none has a setting of its own here.
#
# Measured test R@1 at this budget (seed 0, CPU): untrained 0.236; arcface 0.320, circle 0.523, contrastive 0.615,
# hist 0.340, hyp_vit 0.527, multi_similarity 0.568, norm_softmax 0.350, potential_field 0.453, proxy_anchor 0.369,
# proxynca_pp 0.297, soft_triple 0.396, supcon 0.590, triplet 0.553. With seed=1 every method passes as well (untrained
# 0.225, lowest method proxynca_pp 0.326). The file took 4 min 25 s on a 2-core machine with one thread while another
# job kept the load at 2-3 (CPU time 4 min 4 s).
# After issue 12's zoo fixes (Hadsell's contrastive form; layer norm before the head for norm_softmax and proxynca_pp;
# official Adam eps for the proxynca_pp proxies and soft_triple centres), rerun for those four (seed 0): contrastive
# 0.650, norm_softmax 0.324, proxynca_pp 0.344, soft_triple 0.391 (untrained 0.236); the other rows are unchanged code.
#
# Why these settings (each measured on all 13 methods, seed 0):
# - BN trains (the card's from-scratch default). Frozen BN (eval mode, affine terms fixed) is the fine-tuning recipe
#   of a *pretrained* backbone; on an untrained timm ResNet it keeps the zero-initialised last BN scale of every
#   residual block (``zero_init_last``) at 0 for good, so every residual branch is dead and only the stem and the 1x1
#   shortcuts learn. With that crippled network, 3 x 8 steps left potential_field (0.156) and soft_triple (0.156)
#   below the untrained backbone (0.182) on the former 16 + 16 class, 12-image budget.
# - 32 training classes and 512 test queries: with BN training but 16 + 16 classes of 12 images (one query is 0.005
#   of R@1), hist, norm_softmax, proxy_anchor and proxynca_pp ended at 0.141, 0.182, 0.151 and 0.125 after 3 x 8
#   steps (untrained 0.182), and proxynca_pp still at 0.156 after 3 x 16.
# - The warm-up: without it proxynca_pp (whose proxies train at 1e5 x the base rate) reached 0.240 against the
#   untrained 0.236; with it 0.297. Every other method passes with or without it.
BUDGET = attributes_budget(classes=64, per_class=16, epochs=3, steps_per_epoch=16) + [
    "train.warmup_epochs=1",
    "eval.attribute_probe=false",  # an extra measurement this check does not read (it changes no R@1); ~4 s a run
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
