"""Encoder: poolings, head, normalisation from the backbone's config, local checkpoints, BN freezing."""

from __future__ import annotations

import pytest
import timm
import torch
from omegaconf import OmegaConf

from benchmark.config import BackboneConfig
from benchmark.engine.encoder import BackboneWeightsError, Encoder
from benchmark.registry import UnknownNameError


def _cfg(**kw):
    base = {"name": "resnet10t", "pretrained": False, "embedding_dim": 8}
    return OmegaConf.structured(BackboneConfig(**{**base, **kw}))


@pytest.mark.parametrize("pooling", ["mean", "max", "maxavg", "gem"])
def test_cnn_poolings_give_unit_embeddings(pooling):
    torch.manual_seed(0)
    enc = Encoder(_cfg(pooling=pooling)).eval()
    x = torch.randn(3, 3, 32, 32)
    z = enc(x)
    assert z.shape == (3, 8)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(3))
    tokens = enc.tokens(x)
    feats = enc.pool(tokens)
    expected = {
        "mean": tokens.mean(1),
        "max": tokens.amax(1),
        "maxavg": tokens.mean(1) + tokens.amax(1),
        "gem": tokens.clamp(min=1e-6).pow(3).mean(1).pow(1 / 3),
    }[pooling]
    torch.testing.assert_close(feats, expected)


def test_vit_cls_and_mean_pooling_skip_prefix_tokens_and_take_its_normalisation():
    cfg = _cfg(name="vit_tiny_patch16_224", img_size=32, pooling="cls", embedding_dim=None)
    enc = Encoder(cfg).eval()
    x = torch.randn(2, 3, 32, 32)
    tokens = enc.tokens(x)
    assert enc.num_prefix_tokens == 1 and tokens.shape[1] == 1 + 4
    torch.testing.assert_close(enc.pool(tokens), tokens[:, 0])
    assert enc.embedding_dim == enc.feature_dim == 192
    # timm's ViT config normalises with 0.5 / 0.5, not ImageNet statistics
    assert enc.info.mean == (0.5, 0.5, 0.5) and enc.info.std == (0.5, 0.5, 0.5)
    mean_enc = Encoder(_cfg(name="vit_tiny_patch16_224", img_size=32, pooling="mean", embedding_dim=None))
    mean_enc.load_state_dict(enc.state_dict())
    torch.testing.assert_close(mean_enc.eval().pool(tokens), tokens[:, 1:].mean(1))


def test_cls_pooling_on_a_cnn_is_a_clear_error():
    with pytest.raises(ValueError, match="needs a backbone with a CLS token"):
        Encoder(_cfg(pooling="cls"))


def test_local_checkpoint_file_is_loaded(tmp_path):
    reference = timm.create_model("resnet10t", pretrained=False, num_classes=0)
    path = tmp_path / "weights.pth"
    torch.save(reference.state_dict(), path)
    enc = Encoder(_cfg(checkpoint=str(path)))
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(enc.backbone.model.state_dict()[key], value)
    assert "local file" in enc.info.source


def test_missing_checkpoint_and_unfetchable_weights_say_how_to_pass_a_file(tmp_path, monkeypatch):
    with pytest.raises(BackboneWeightsError, match="does not exist"):
        Encoder(_cfg(checkpoint=str(tmp_path / "nope.pth")))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BackboneWeightsError, match="backbone.checkpoint=/path/to/file"):
        Encoder(_cfg(pretrained=True))


def test_unknown_backbone_suggests_a_name():
    with pytest.raises(UnknownNameError, match="Did you mean 'resnet18'"):
        Encoder(_cfg(name="resnet18x"))


def test_frozen_bn_keeps_statistics_and_affine_terms():
    enc = Encoder(_cfg(freeze_bn=True)).train()
    bn = next(m for m in enc.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    enc(torch.randn(4, 3, 32, 32) * 3 + 1)
    torch.testing.assert_close(bn.running_mean, before)
    assert not bn.training and not bn.weight.requires_grad
    assert all(not p.requires_grad for p in bn.parameters())
    live = Encoder(_cfg(freeze_bn=False)).train()
    bn_live = next(m for m in live.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
    live(torch.randn(4, 3, 32, 32) * 3 + 1)
    assert not torch.equal(bn_live.running_mean, torch.zeros_like(bn_live.running_mean))


def test_frozen_zero_scale_batchnorm_is_warned_about():
    """Freezing BN on an untrained timm ResNet keeps its zero-initialised residual branches dead: say so."""
    import warnings

    with pytest.warns(UserWarning, match="freeze_bn=false"):
        Encoder(_cfg(name="resnet10t", pretrained=False, freeze_bn=True))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Encoder(_cfg(name="resnet10t", pretrained=False, freeze_bn=False))
