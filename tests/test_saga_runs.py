"""SAGA through the engine and the tools: an external timm encoder with a projector, end-to-end runs on the
embedded attribute dataset, baselines and zero-shot evaluation on the MLLM tower, and the perf script."""

from __future__ import annotations

import json
import math

import pytest
from omegaconf import OmegaConf

from benchmark.backbones import mllm
from benchmark.engine.encoder import Encoder
from benchmark.method import TaskInfo
from benchmark.registry import get_method
from tests._saga_common import CARD, _batch, one_thread  # noqa: F401  (fixture)


def test_external_timm_encoder_with_a_trainable_projector():
    cfg = {"kind": "timm", "name": "vit_tiny_patch16_224", "pooling": "mean", "embedding_dim": 0, "freeze_bn": False}
    enc = Encoder(OmegaConf.create({**cfg, "pretrained": False, "checkpoint": None}))
    cls = get_method("saga")
    base = dict(metric_loss="multi_similarity", embedding_dim=32, group_size=4, num_pairs=1, pairs_per_batch=2)
    base |= dict(max_new_tokens=160, rollout_constraint="json_skeleton", supervisor=mllm.TINY_NAME, use_kl=False)
    method = cls(OmegaConf.structured(cls.config_class(**base)), TaskInfo(4, enc.embedding_dim, "toy", card=CARD))
    assert [g.name for g in method.param_groups()] == ["saga_pooler", "projector"]
    images, labels = _batch()
    out = method.training_step(images, labels, enc)
    assert out["pairs_contributing"] == 1
    assert method.projector.weight.grad is not None and method.projector.weight.grad.abs().sum() > 0
    assert enc.backbone.model.patch_embed.proj.weight.grad.abs().sum() > 0
    assert method.embed(images, enc).shape == (8, 32)


@pytest.mark.filterwarnings("ignore:Dataset 'attributes' does not have the expected counts")
def test_end_to_end_run_on_the_attribute_dataset_writes_a_complete_record(tmp_path):
    from benchmark.config import compose_config
    from benchmark.engine import records
    from benchmark.engine.run import run

    overrides = [
        "method=saga", "dataset=attributes", "dataset.strict=false", "+dataset.options.per_class=6",
        "backbone=tiny_qwen3_vl", "data.transform=saga", "data.image_size=64",
        "train.epochs=1", "train.steps_per_epoch=2", "train.batch_size=8", "train.m_per_class=2",
        "train.progress=false", "data.num_workers=0", "eval.kmeans_restarts=2", "eval.selection=last",
        "method.metric_loss=proxy_anchor", "method.group_size=4", "method.num_pairs=1", "method.pairs_per_batch=2",
        "method.max_new_tokens=300", "method.rollout_constraint=json_skeleton", "method.embedding_dim=32",
        "method.grad_norm_every=1", "seed=3", f"out_dir={tmp_path / 'runs'}",
    ]  # fmt: skip
    record, run_dir = run(compose_config(overrides))
    assert records.is_complete(record)
    on_disk = json.loads((run_dir / "record.json").read_text())
    assert on_disk["status"] == "completed" and on_disk["backbone"]["kind"] == "mllm_vision"
    diag = on_disk["diagnostics"]
    assert diag["steps"] == 2 and diag["parse_failure_rate"] == 0.0 and diag["gen_tokens_per_s"] > 0
    for key in ("reward_mean", "contributing_fraction", "refills_per_step", "loss_dml_mean", "loss_grpo_mean"):
        assert math.isfinite(diag[key])
    assert {g["name"] for g in on_disk["method_info"]["param_groups"]} == {"saga_pooler", "metric_proxies"}
    assert diag["stream_seed"] == 3 == on_disk["seed"]  # the sampling streams follow the run's seed
    assert diag["grad_norm_steps"] == 2 and diag["grad_norm_dml_pooler_out"] > 0 and diag["grad_norm_grpo_tower"] > 0
    epoch = on_disk["history"][0]
    assert {"loss_dml", "loss_grpo", "loss_kl", "reward_mean", "time_rollout_s"} <= set(epoch)


def test_perf_script_reports_ratios_and_prefix_speedup(tmp_path, capsys):
    from benchmark.perf import saga as perf_saga

    out = tmp_path / "perf.json"
    args = ["--group-size", "2", "--num-pairs", "1", "--batch-size", "4", "--m-per-class", "2", "--image-size", "64"]
    args += ["--max-new-tokens", "300", "--prefix-repeat", "1", "--prefix-new-tokens", "2", "--out", str(out)]
    assert perf_saga.main(args) == 0
    result = json.loads(out.read_text())
    assert result["ratio"] > 0 and set(result["phases_s"]) == {
        "metric_s",
        "rollout_s",
        "replay_s",
        "step_s",
    }
    assert result["prefix"]["prefix_speedup"] > 0 and "prefix" in capsys.readouterr().out


@pytest.mark.filterwarnings("ignore:Dataset 'attributes' does not have the expected counts")
@pytest.mark.parametrize("method", ["pretrained", "proxy_anchor"])
def test_baselines_run_on_the_mllm_tower_without_loading_its_language_model(tmp_path, method):
    from benchmark.config import compose_config
    from benchmark.engine import records
    from benchmark.engine.run import run

    mllm.clear_supervisors()
    overrides = [
        f"method={method}", "dataset=attributes", "dataset.strict=false", "+dataset.options.per_class=6",
        "backbone=tiny_qwen3_vl", "data.transform=saga",
        "data.image_size=64", "train.epochs=1", "train.steps_per_epoch=1", "train.batch_size=8",
        "train.m_per_class=2", "train.progress=false", "data.num_workers=0", "eval.kmeans_restarts=1",
        "eval.selection=last", f"out_dir={tmp_path / 'runs'}",
    ]  # fmt: skip
    record, _ = run(compose_config(overrides))
    assert records.is_complete(record) and record["backbone"]["pooling"] == "mean"
    assert record["backbone"]["feature_dim"] == 64 and not mllm._SUPERVISORS  # inference never loads the LM
