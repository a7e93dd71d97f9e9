"""The zoo's priority methods through the whole engine on the tiny 'blobs' dataset: a complete run record whose
method_info holds each learning-rate multiplier with its source (the fairness rule: the record says what a method
added to the engine's optimiser)."""

from __future__ import annotations

import pytest

from benchmark.config import compose_config
from benchmark.engine import records
from benchmark.engine.run import run


@pytest.mark.parametrize(
    "method,groups",
    [
        ("potential_field", {"proxies": (100.0, None)}),
        # blobs is not a paper dataset: the official train.py defaults (absolute --lr-ds 1e-1, HGNN factor 10)
        ("hist", {"class_distributions": (1.0, 1e-1), "hgnn": (10.0, None)}),
    ],
)
def test_zoo_method_completes_a_run_and_records_its_multipliers(tiny_overrides, method, groups):
    record, _ = run(compose_config(tiny_overrides + [f"method={method}", "train.epochs=1"]))
    assert records.is_complete(record) and record["status"] == "completed"
    recorded = {g["name"]: g for g in record["method_info"]["param_groups"]}
    assert {name: (g["lr_mult"], g["absolute_lr"]) for name, g in recorded.items()} == groups
    # the rate the group started from: the absolute one where the paper gives it, else lr_mult x the base rate
    base = record["config"]["train"]["lr"]
    expected_lr = {name: lr if lr is not None else mult * base for name, (mult, lr) in groups.items()}
    assert {name: g["lr"] for name, g in recorded.items()} == pytest.approx(expected_lr)
    assert all(g["source"] for g in recorded.values())
    assert 0.0 <= record["metrics"]["test"]["recall@1"] <= 1.0


@pytest.mark.parametrize("method,eps", [("proxynca_pp", 1.0), ("soft_triple", 0.01)])
def test_official_adam_eps_reaches_the_engine_optimizer_and_the_record(tiny_overrides, method, eps):
    from benchmark.engine.trainer import Trainer

    cfg = compose_config(tiny_overrides + [f"method={method}", "train.epochs=1"])
    trainer = Trainer(cfg)
    by_name = {g["name"]: g for g in trainer.optimizer.param_groups}
    assert by_name["proxies"]["eps"] == eps
    assert by_name["backbone"]["eps"] == 1e-8  # the encoder keeps the engine's AdamW settings
    record, _ = run(cfg)
    (group,) = record["method_info"]["param_groups"]
    assert group["eps"] == eps and "eps" in group["source"]
