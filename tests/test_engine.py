"""End-to-end engine behaviour on a tiny dataset: records, resume, selection, bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch

from benchmark.config import ConfigError, compose_config
from benchmark.data.base import DatasetError
from benchmark.engine import records
from benchmark.engine.run import run
from benchmark.engine.trainer import StopRequested, Trainer, TrainingError, request_stop
from benchmark.registry import UnknownNameError


def test_run_writes_a_complete_record(tiny_overrides):
    record, run_dir = run(compose_config(tiny_overrides))
    assert records.is_complete(record)
    on_disk = json.loads((run_dir / "record.json").read_text())
    assert on_disk["status"] == "completed"
    for split in ("test", "val"):
        assert set(records.METRIC_KEYS) <= set(on_disk["metrics"][split])
        assert all(0.0 <= v <= 1.0 for v in on_disk["metrics"][split].values())
    assert on_disk["splits"] == {
        "train": {"classes": 4, "images": 32},
        "val": {"classes": 2, "images": 16},
        "test": {"classes": 6, "images": 48},
    }
    assert on_disk["selection"]["rule"] == "val" and on_disk["selection"]["epoch"] in (1, 2)
    assert on_disk["method_info"]["param_groups"][0] == {
        "name": "proxies",
        "lr_mult": 100.0,
        "weight_decay": None,
        "absolute_lr": None,
        "lr": pytest.approx(100.0 * on_disk["config"]["train"]["lr"]),
        "eps": None,  # AdamW's default
        "source": "Proxy Anchor official train.py: proxies at lr * lr_mult, lr_mult = 100",
    }
    assert len(on_disk["protocol"]["hash"]) == 12 and on_disk["git"]["sha"]
    assert (run_dir / "config.yaml").exists() and (run_dir / "checkpoints" / "last.pt").exists()
    assert [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_finished_run_is_not_retrained_and_force_keeps_the_old_one(tiny_overrides, capsys):
    first, run_dir = run(compose_config(tiny_overrides))
    again, same_dir = run(compose_config(tiny_overrides))
    assert same_dir == run_dir and again == first
    assert "already complete" in capsys.readouterr().out
    forced, _ = run(compose_config(tiny_overrides + ["force=true"]))
    kept = [p for p in run_dir.parent.iterdir() if p.name.startswith(run_dir.name + ".old-")]
    assert len(kept) == 1 and records.is_complete(records.read_record(kept[0]))
    assert forced["metrics"] == first["metrics"]  # same config and seed: same result


def test_resume_after_stop_gives_identical_metrics(tiny_overrides, tmp_path, monkeypatch):
    uninterrupted, _ = run(compose_config(tiny_overrides + [f"out_dir={tmp_path / 'a'}"]))
    interrupted = compose_config(tiny_overrides + [f"out_dir={tmp_path / 'b'}"])
    import benchmark.engine.trainer as trainer_module

    calls = {"n": 0}
    original = trainer_module.Trainer.train_epoch

    def stop_mid_epoch(self):
        calls["n"] += 1
        if calls["n"] == 2:  # second epoch: stop after its first step
            original_step = self.method.training_step

            def step_then_stop(*args, **kwargs):
                request_stop()
                return original_step(*args, **kwargs)

            self.method.training_step = step_then_stop
        return original(self)

    monkeypatch.setattr(trainer_module.Trainer, "train_epoch", stop_mid_epoch)
    with pytest.raises(StopRequested):
        run(interrupted)
    assert trainer_module._STOP["requested"] is False  # the trainer consumed the request
    monkeypatch.setattr(trainer_module.Trainer, "train_epoch", original)
    partial = records.read_record(
        tmp_path
        / "b"
        / "blobs"
        / "proxy_anchor"
        / next(p.name for p in (tmp_path / "b" / "blobs" / "proxy_anchor").iterdir())
    )
    assert partial["status"] == "running"
    resumed, _ = run(compose_config(tiny_overrides + [f"out_dir={tmp_path / 'b'}"]))
    assert resumed["metrics"] == uninterrupted["metrics"]
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in uninterrupted["history"]]


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_overrides, monkeypatch):
    from methods.proxy_anchor import ProxyAnchor

    cfg = compose_config(tiny_overrides + ["train.epochs=3"])
    calls = {"n": 0}
    original = ProxyAnchor.loss

    def nan_in_epoch_two(self, embeddings, labels):
        calls["n"] += 1
        loss = original(self, embeddings, labels)
        return loss * math.nan if calls["n"] > 3 else loss

    monkeypatch.setattr(ProxyAnchor, "loss", nan_in_epoch_two)
    with pytest.raises(TrainingError, match="Loss is nan at epoch 2"):
        run(cfg)
    trainer = Trainer(cfg)
    record = records.read_record(trainer.run_dir)
    assert record["status"] == "failed" and "Loss is nan" in record["error"]
    state = torch.load(trainer.run_dir / "checkpoints" / "last.pt", weights_only=False)
    assert state["epoch"] == 1 and all(
        torch.isfinite(v).all() for v in state["encoder"].values() if v.is_floating_point()
    )


def test_checkpoint_from_another_config_is_refused(tiny_overrides):
    run(compose_config(tiny_overrides + ["run_name=shared", "train.epochs=1"]))
    other = compose_config(tiny_overrides + ["run_name=shared", "train.epochs=1", "train.lr=0.01"])
    with pytest.raises(TrainingError, match="holds a run of another config"):
        run(other)
    trainer = Trainer(compose_config(tiny_overrides + ["run_name=shared", "train.epochs=1", "train.lr=0.01"]))
    with pytest.raises(TrainingError, match="Checkpoint .* was written by a run with another config"):
        trainer.load_checkpoint(trainer.run_dir / "checkpoints" / "last.pt")


def test_selection_rules(tiny_overrides):
    last, _ = run(compose_config(tiny_overrides + ["eval.selection=last"]))
    assert last["selection"]["epoch"] == 2 and last["metrics"]["val"] is None
    assert last["splits"]["train"] == {"classes": 6, "images": 48}  # no validation carve
    on_test, _ = run(compose_config(tiny_overrides + ["eval.selection=test"]))
    assert "TEST" in on_test["selection"]["label"]
    best = max(h["test"]["recall@1"] for h in on_test["history"])
    assert on_test["metrics"]["test"]["recall@1"] == pytest.approx(best)
    assert last["protocol"]["hash"] != on_test["protocol"]["hash"] or last["selection"] != on_test["selection"]


def test_pretrained_does_not_train(tiny_overrides):
    record, run_dir = run(compose_config(tiny_overrides + ["method=pretrained"]))
    assert record["history"] == [] and records.is_complete(record)


def test_sampler_that_cannot_fill_a_batch(tiny_overrides):
    # Known from the card's class counts: refused when the config is composed, before any data is read.
    with pytest.raises(ConfigError, match="needs 8 classes per batch"):
        compose_config(tiny_overrides + ["train.batch_size=16"])
    # Reader options that change the classes skip that check; the sampler still refuses at run time.
    with pytest.raises(DatasetError, match="needs 8 classes per batch"):
        run(compose_config(tiny_overrides + ["train.batch_size=16", "dataset.options.per_class=8"]))


def test_unknown_names_suggest_the_nearest(datasets_dir):
    with pytest.raises(UnknownNameError, match="Did you mean 'proxy_anchor'"):
        compose_config(["method=proxy_anchr"])
    with pytest.raises(UnknownNameError, match="Unknown dataset 'blobz'. Did you mean 'blobs'"):
        compose_config(["dataset=blobz"])
    with pytest.raises(ConfigError, match="Unknown config key 'method.margn'.*Did you mean 'margin'"):
        compose_config(["method=proxy_anchor", "method.margn=0.2"])
    with pytest.raises(ConfigError, match="train.lrr"):
        compose_config(["train.lrr=0.1"])
    with pytest.raises(ConfigError, match="eval.selection=best"):
        compose_config(["eval.selection=best"])


def test_method_fields_are_validated_at_compose_time(datasets_dir):
    cfg = compose_config(["method=proxy_anchor", "method.margin=0.2"])
    assert cfg.method.margin == 0.2 and cfg.method.alpha == 32.0
    with pytest.raises(ConfigError):
        compose_config(["method=proxy_anchor", "method.margin=not_a_float"])


def test_dataset_root_errors_name_the_layout(datasets_dir, tmp_path):
    import benchmark.data.base as base

    card = {"name": "needsroot", "reader": "test_blobs", "layout": "ROOT/images/<class>/*.jpg"}
    (datasets_dir / "needsroot.yaml").write_text(json.dumps(card))
    with pytest.raises(DatasetError, match=r"needs its files: pass dataset.root=DIR \(expected layout: ROOT/images"):
        base.load_dataset("needsroot")
    with pytest.raises(DatasetError, match="is not a directory"):
        base.load_dataset("needsroot", str(tmp_path / "nowhere"))


def test_count_mismatch_fails_strict_and_warns_otherwise(datasets_dir):
    import benchmark.data.base as base

    with pytest.raises(DatasetError, match="images: expected 96, found 72"):
        base.load_dataset("blobs", per_class=6)
    with pytest.warns(UserWarning, match="dataset.strict=false"):
        base.load_dataset("blobs", strict=False, per_class=6)


def test_frozen_backbone_warmup_accumulation_and_tensorboard(tiny_overrides):
    cfg = compose_config(
        tiny_overrides
        + [
            "train.epochs=1",
            "train.freeze_backbone_epochs=1",
            "train.grad_accum=3",
            "train.tensorboard=true",
            "train.log_every=1",
            "eval.selection=last",
        ]
    )
    trainer = Trainer(cfg)
    before = {n: p.detach().clone() for n, p in trainer.encoder.backbone.named_parameters() if p.requires_grad}
    head_before = trainer.encoder.head.weight.detach().clone()
    trainer.fit()
    after = dict(trainer.encoder.backbone.named_parameters())
    assert before and all(torch.equal(before[n], after[n]) for n in before)  # backbone frozen in epoch 1
    assert not torch.equal(head_before, trainer.encoder.head.weight)  # the head trained
    assert trainer.scheduler.last_epoch == 1  # 3 micro-batches accumulated into one optimiser step
    assert list((trainer.run_dir / "tensorboard").glob("events.out.tfevents.*"))


def test_unreadable_image_is_named_never_skipped(tmp_path):
    from benchmark.engine.pipeline import open_image

    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(DatasetError, match=r"Cannot read image .*broken.jpg.*does not skip images"):
        open_image(str(bad))
    with pytest.raises(DatasetError, match="missing.jpg"):
        open_image(str(tmp_path / "missing.jpg"))
