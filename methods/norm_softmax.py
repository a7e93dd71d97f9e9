"""NormSoftmax, normalised softmax with temperature (Zhai, Wu. "Classification is a Strong Baseline for Deep Metric
Learning". BMVC 2019), through pytorch-metric-learning's ``NormalizedSoftmaxLoss``.

Paper default: temperature 0.05 (pml's default is the same). The paper's layer normalisation (no affine parameters,
right after the backbone's final pooling layer) is this method's own step: with ``layer_norm=true`` (the default) the
encoder's pooled features are layer-normalised before the encoder's head, in training and for the retrieval
embeddings. The paper's class-balanced sampling is the engine's m-per-class sampler (``train.m_per_class``), the same
for every method. The class weights train at the base learning rate (multiplier 1; the paper states no separate rate).
"""

from __future__ import annotations

from dataclasses import dataclass

from pytorch_metric_learning import losses
from torch import nn

from benchmark.method import MethodConfig
from benchmark.registry import register_method
from methods._pml import PmlLossMethod


@dataclass
class NormSoftmaxConfig(MethodConfig):
    name: str = "norm_softmax"
    temperature: float = 0.05  # paper's temperature
    proxy_lr_mult: float = 1.0  # class weights at the base rate (paper states no separate rate)
    layer_norm: bool = True  # paper: layer normalisation without affine parameters after the final pooling layer


@register_method
class NormSoftmax(PmlLossMethod):
    """NormSoftmax: cross-entropy over cosine similarities to L2-normalised class weights, divided by a temperature."""

    name = "norm_softmax"
    paper = "Zhai, Wu. Classification is a Strong Baseline for Deep Metric Learning. BMVC 2019"
    year = 2019
    url = "https://arxiv.org/abs/1811.12649"
    config_class = NormSoftmaxConfig
    proxy_lr_source = "NormSoftmax paper: no separate learning rate for the class weights"

    def build_criterion(self) -> nn.Module:
        return losses.NormalizedSoftmaxLoss(
            num_classes=self.task.num_classes, embedding_size=self.task.embedding_dim, temperature=self.cfg.temperature
        )
