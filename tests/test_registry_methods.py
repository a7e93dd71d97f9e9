"""Every registered method, on a tiny timm backbone (CPU): it builds, a training step gives a finite loss, every
trainable parameter of the encoder and the method gets a finite gradient and changes after an optimiser step, and
the method touches nothing it does not own (timm ``tests/test_models.py`` style, parametrised over the registry).
"""

from __future__ import annotations

import importlib
import math
import os

import pytest
import torch
from omegaconf import OmegaConf

from benchmark.config import BackboneConfig
from benchmark.engine.encoder import Encoder
from benchmark.method import TaskInfo
from benchmark.registry import list_methods

os.environ.setdefault("HF_HUB_OFFLINE", "1")

METHODS = sorted(list_methods())
NUM_CLASSES, PER_CLASS = 4, 3


def _encoder(pooling: str) -> Encoder:
    cfg = OmegaConf.structured(
        BackboneConfig(
            name="test_vit", pretrained=False, img_size=32, pooling=pooling, embedding_dim=8, freeze_bn=False
        )
    )
    torch.manual_seed(0)
    return Encoder(cfg)


def _build(name: str):
    cls = list_methods()[name]
    pooling = getattr(cls, "recommended", {}).get("backbone.pooling", "mean")
    encoder = _encoder("cls" if pooling == "cls" else "mean")
    method_cfg = OmegaConf.structured(cls.config_class)  # what the engine passes: the composed config node
    task = TaskInfo(num_classes=NUM_CLASSES, embedding_dim=encoder.embedding_dim, dataset="cub")
    torch.manual_seed(1)
    return cls, cls(method_cfg, task), encoder


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(2)
    labels = torch.arange(NUM_CLASSES).repeat(PER_CLASS)  # class-balanced, interleaved
    images = torch.randn(len(labels), 3, 32, 32, generator=gen) + labels.view(-1, 1, 1, 1).float()
    return images, labels


@pytest.mark.parametrize("name", METHODS)
def test_method_is_a_documented_plugin_with_paper_defaults(name):
    cls = list_methods()[name]
    module = importlib.import_module(cls.__module__)
    assert module.__name__ == f"methods.{name}", "a method's registry name is its file name"
    assert module.__doc__ and cls.paper
    if cls.trains:  # a training method cites its paper (the zero-shot ``pretrained`` row has none)
        assert cls.year > 1990 and cls.url.startswith("http")
    cfg = OmegaConf.structured(cls.config_class)
    assert cfg.name == name


# SAGA's step needs a multimodal LLM (its supervisor) and a dataset card with the attribute prompt, which this
# timm harness does not have; tests/test_saga.py makes the same checks on the tiny Qwen3-VL and InternVL.
ON_TIMM = [n for n in METHODS if not getattr(list_methods()[n], "needs_mllm", False)]


@pytest.mark.parametrize("name", ON_TIMM)
def test_training_step_trains_every_parameter_and_touches_nothing_else(name):
    cls, method, encoder = _build(name)
    images, labels = _batch()
    embedded = method.embed(images, encoder)
    assert embedded.ndim == 2 and torch.allclose(embedded.norm(dim=-1), torch.ones(len(images)), atol=1e-5)
    if not cls.trains:
        assert not [p for p in method.parameters() if p.requires_grad]
        return

    groups = method.param_groups()
    owned = {id(p) for p in method.parameters()}
    grouped = [p for g in groups for p in g.params]
    assert {id(p) for p in grouped} <= owned, "param_groups() may only hold the method's own parameters"
    assert {id(p) for p in method.parameters() if p.requires_grad} <= {id(p) for p in grouped}
    assert all(g.source and g.lr_mult > 0 for g in groups), "each multiplier cites where it comes from"

    encoder_before = {k: v.clone() for k, v in encoder.state_dict().items()}
    flags_before = {n: p.requires_grad for n, p in encoder.named_parameters()}
    encoder.train()
    method.train()
    out = method.training_step(images, labels, encoder)
    loss = out["loss"]
    assert loss.ndim == 0 and loss.requires_grad and math.isfinite(loss.item())
    assert all(not torch.is_tensor(v) or not v.requires_grad for k, v in out.items() if k != "loss")
    # The forward pass must leave the encoder's weights and trainable flags alone (BN statistics aside).
    for key, value in encoder.state_dict().items():
        if "running_" not in key and "num_batches" not in key:
            assert torch.equal(value, encoder_before[key]), f"{name} modified encoder tensor {key}"
    assert flags_before == {n: p.requires_grad for n, p in encoder.named_parameters()}

    loss.backward()
    trainable = [(f"encoder.{n}", p) for n, p in encoder.named_parameters() if p.requires_grad]
    trainable += [(f"method.{n}", p) for n, p in method.named_parameters() if p.requires_grad]
    for pname, p in trainable:
        assert p.grad is not None, f"{name}: no gradient reaches {pname}"
        assert torch.isfinite(p.grad).all(), f"{name}: non-finite gradient in {pname}"
    before = {pname: p.detach().clone() for pname, p in trainable}
    optimiser = torch.optim.AdamW(
        [{"params": [p for n, p in trainable if n.startswith("encoder.")], "lr": 1e-3}]
        + [{"params": g.params, "lr": g.lr if g.lr is not None else 1e-3 * g.lr_mult} for g in groups],
        lr=1e-3,
    )
    optimiser.step()
    for pname, p in trainable:
        assert not torch.equal(p.detach(), before[pname]), f"{name}: {pname} did not change after a step"


@pytest.mark.parametrize("name", [n for n in METHODS if getattr(list_methods()[n], "recommended", None)])
def test_recommended_engine_settings_name_real_config_fields(name):
    from dataclasses import fields

    from benchmark.config import DataConfig, EvalConfig, TrainConfig

    sections = {"backbone": BackboneConfig, "data": DataConfig, "train": TrainConfig, "eval": EvalConfig}
    for key in list_methods()[name].recommended:
        section, _, field_name = key.partition(".")
        assert section in sections, f"{name}: recommended key {key} is not an engine setting"
        assert field_name in {f.name for f in fields(sections[section])}, f"{name}: no engine field {key}"
