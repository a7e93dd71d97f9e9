"""The untrained backbone: zero-shot retrieval with the encoder as built (the "Pre-trained backbone" row)."""

from __future__ import annotations

from dataclasses import dataclass

from benchmark.method import Method, MethodConfig
from benchmark.registry import register_method


@dataclass
class PretrainedConfig(MethodConfig):
    name: str = "pretrained"


@register_method
class Pretrained(Method):
    """No training: evaluates the backbone's pooled (and, if configured, linearly projected) features.

    With ``backbone.embedding_dim`` set, the head is a fixed random projection (seeded), as in the SAGA paper's
    512/128-d "pre-trained backbone" rows whose reduction is unstated; ``backbone.embedding_dim=null`` evaluates
    the pooled features themselves.
    """

    name = "pretrained"
    paper = "Zero-shot baseline: the backbone's own features, no metric learning"
    year = 0
    config_class = PretrainedConfig
    trains = False
