"""Shared pieces of the SAGA tests: a toy dataset card, the tiny encoders and method, a batch, one CPU thread."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from benchmark.backbones import mllm
from benchmark.engine.encoder import Encoder
from benchmark.method import TaskInfo
from benchmark.registry import get_method

CARD = {
    "name": "toy",
    "attributes": ["color", "shape"],
    "prompt": {
        "expert_noun": "expert",
        "what_to_identify": "toy shapes",
        "expert_prefix": "Toy",
        "target_plural": "shapes",
        "item": "shape",
        "ITEM": "Shape",
        "item_plural": "shapes",
        "example_description": "red, round",
        "verdict_label": "Same Class",
        "verdict_question": "same class",
        "verdict_key": "same_class",
    },
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny matrices: one thread avoids oversubscription on shared 2-core machines (10-50× faster here).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _encoder(name: str = mllm.TINY_NAME) -> Encoder:
    cfg = {"kind": "mllm_vision", "name": name, "pooling": "mean", "embedding_dim": 0, "freeze_bn": False}
    return Encoder(OmegaConf.create({**cfg, "pretrained": False, "checkpoint": None}))


def _method(encoder: Encoder, **overrides):
    cls = get_method("saga")
    base = dict(metric_loss="potential_field", embedding_dim=32, group_size=4, num_pairs=1, pairs_per_batch=2)
    base |= dict(max_new_tokens=160, rollout_constraint="json_skeleton", max_refill_batches=2)
    base |= dict(seed=0)  # a fixed sampling stream (the default, None, follows torch's seed, i.e. the run's)
    cfg = OmegaConf.structured(cls.config_class(**(base | overrides)))
    return cls(cfg, TaskInfo(num_classes=4, embedding_dim=encoder.embedding_dim, dataset="toy", card=CARD))


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(8, 3, 224, 224, generator=g), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
