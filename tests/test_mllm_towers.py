"""MLLM vision towers loaded from a checkpoint directory: fp32 master weights whatever dtype the checkpoint's
vision_config names, and InternViT fed at its native tile (448 px in InternVL3.5: the position table as it is,
256 tokens) with a one-time warning at any other size. Tiny models of the real architectures, built from a config."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from benchmark.backbones import _mllm_tiny, mllm
from benchmark.engine.encoder import Encoder


def _save(directory: Path, name: str, internvl_geometry: bool = False) -> Path:
    """A tiny checkpoint stored in bf16 whose vision_config says ``dtype: bfloat16`` (as InternVL3.5-8B-HF's)."""
    from transformers import InternVLForConditionalGeneration, Qwen3VLForConditionalGeneration

    config = _mllm_tiny.tiny_config(name)
    if internvl_geometry:  # InternVL3.5's InternViT tiling: 448-px tiles of 14-px patches (a 32×32 position table)
        config.vision_config.image_size, config.vision_config.patch_size = [448, 448], [14, 14]
    cls = Qwen3VLForConditionalGeneration if name == _mllm_tiny.TINY_QWEN else InternVLForConditionalGeneration
    torch.manual_seed(0)
    cls(config).to(torch.bfloat16).save_pretrained(directory)
    stored = json.loads((directory / "config.json").read_text())
    stored["vision_config"]["dtype"] = "bfloat16"
    (directory / "config.json").write_text(json.dumps(stored))
    return directory


def _encoder(path: Path) -> Encoder:
    cfg = {"kind": "mllm_vision", "name": str(path), "pooling": "mean", "embedding_dim": 0, "freeze_bn": False}
    return Encoder(OmegaConf.create({**cfg, "pretrained": True, "checkpoint": None}))


@pytest.fixture(scope="module")
def internvl_448(tmp_path_factory) -> Path:
    return _save(tmp_path_factory.mktemp("internvl448"), _mllm_tiny.TINY_INTERNVL, internvl_geometry=True)


@pytest.mark.parametrize("name", [_mllm_tiny.TINY_QWEN, _mllm_tiny.TINY_INTERNVL])
def test_towers_keep_fp32_master_weights_when_the_checkpoint_is_bf16(tmp_path, name):
    encoder = _encoder(_save(tmp_path, name))
    dtypes = {p.dtype for p in encoder.backbone.parameters() if p.requires_grad}
    assert dtypes == {torch.float32}, "AdamW must update fp32 parameters; autocast does the bf16 compute"
    stored = mllm._vision_state(tmp_path, mllm.VISION_PREFIXES[_mllm_tiny.TINY_FAMILIES[name]])
    assert {t.dtype for t in stored.values()} == {torch.bfloat16}  # the checkpoint really holds bf16 weights
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(encoder(torch.randn(1, 3, 224, 224))).all()


def test_internvl_at_448_uses_its_native_position_table_and_gives_256_tokens(internvl_448, monkeypatch):
    tower = _encoder(internvl_448).backbone
    assert tower.native_size == 448 and tower.tokens_per_image(448, 448) == 256

    def no_interpolation(*args, **kwargs):
        raise AssertionError("the position table was interpolated")

    monkeypatch.setattr(torch.nn.functional, "interpolate", no_interpolation)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no size warning at the native tile
        tokens = tower(torch.randn(2, 3, 448, 448))
    assert tokens.shape == (2, 256, 64)


def test_internvl_warns_once_when_fed_another_size(internvl_448):
    tower = _encoder(internvl_448).backbone
    with pytest.warns(UserWarning, match=r"448×448 tiles \(256 tokens.*224×224.*64 tokens.*data.image_size=448"):
        assert tower(torch.randn(1, 3, 224, 224)).shape == (1, 64, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per tower, not once per batch
        tower(torch.randn(1, 3, 224, 224))
