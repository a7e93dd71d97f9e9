"""The zoo's priority methods through the whole engine on the tiny 'blobs' dataset: a complete run record whose
method_info holds each learning-rate multiplier with its source (the fairness rule: the record says what a method
added to the engine's optimiser)."""

from __future__ import annotations

import pytest

from benchmark import records
from benchmark.config import compose_config
from benchmark.run import run


@pytest.mark.parametrize(
    "method,groups",
    [
        ("potential_field", {"proxies": 100.0}),
        ("hist", {"class_distributions": 1e-1 / 1e-4, "hgnn": 10.0}),  # blobs is not a paper dataset: train.py defaults
    ],
)
def test_zoo_method_completes_a_run_and_records_its_multipliers(tiny_overrides, method, groups):
    record, _ = run(compose_config(tiny_overrides + [f"method={method}", "train.epochs=1"]))
    assert records.is_complete(record) and record["status"] == "completed"
    recorded = {g["name"]: g for g in record["method_info"]["param_groups"]}
    assert {name: g["lr_mult"] for name, g in recorded.items()} == pytest.approx(groups)
    assert all(g["source"] for g in recorded.values())
    assert 0.0 <= record["metrics"]["test"]["recall@1"] <= 1.0
