"""Assembles a run's ``record.json`` (schema in :mod:`benchmark.engine.records`) from the data a run hands it.

The writer knows nothing of the trainer: it is built from the config, the run directory, the dataset card and the
run's fixed description (backbone, data, splits, method), and each ``write`` adds what has changed since (status,
history, diagnostics, metrics).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from benchmark.config import config_hash
from benchmark.data.base import load_split_file
from benchmark.engine import records
from benchmark.evaluation.metrics import evaluation_settings


class RecordWriter:
    """Writes the record atomically at each stage of a run; ``write`` returns the record as written.

    ``described`` holds the record's fixed sections: ``backbone``, ``data``, ``splits`` and ``method_info``.
    """

    def __init__(self, cfg: DictConfig, run_dir: Path, card: dict[str, Any], described: dict[str, Any]) -> None:
        self.cfg, self.run_dir, self.described = cfg, run_dir, described
        run_dir.mkdir(parents=True, exist_ok=True)
        records.save_resolved_config(cfg, run_dir)
        e = cfg.eval
        self.eval_settings = evaluation_settings(
            ks=tuple(e.ks), kmeans_seed=e.kmeans_seed, kmeans_restarts=e.kmeans_restarts, backend=e.backend
        )
        split_spec = {"card": card["name"], "split": card.get("split"), "rule": load_split_file(card).get("rule")}
        if card.get("needs_root") is False:  # embedded datasets: the generator options define the data
            split_spec["options"] = dict(cfg.dataset.options or {})
        self.protocol_fields = records.protocol_fields(cfg, split_spec, self.eval_settings)
        self.config = records.config_dict(cfg)
        self.started = records.utc_now()
        self.git = records.git_info()
        self.history_path = run_dir / "metrics.jsonl"

    def append_history(self, history: list[dict[str, Any]]) -> None:
        # Rewritten whole (atomically) from the run's history, so a resumed run never duplicates lines.
        lines = "".join(json.dumps(h, default=float) + "\n" for h in history)
        records.write_text_atomic(self.history_path, lines)

    def write(
        self,
        status: str,
        history: list[dict[str, Any]],
        diagnostics: dict[str, Any],
        error: str | None = None,
        test: dict[str, float] | None = None,
        val: dict[str, float] | None = None,
        selected_epoch: int | None = None,
        train_s: float | None = None,
        eval_s: float | None = None,
        attribute_probe: dict[str, Any] | None = None,
        compute: dict[str, Any] | None = None,
        per_query: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        cfg, d = self.cfg, self.described
        record = {
            "schema_version": records.SCHEMA_VERSION,
            "run_id": f"{cfg.method.name}-{cfg.dataset.name}-{self.run_dir.name}",
            "status": status,
            "error": error,
            "method": cfg.method.name,
            "dataset": cfg.dataset.name,
            "seed": int(cfg.seed),
            "backbone": d["backbone"],
            "data": d["data"],
            "splits": d["splits"],
            "selection": {
                "rule": cfg.eval.selection,
                "metric": cfg.eval.selection_metric,
                "epoch": selected_epoch,
                "label": "best epoch on the TEST set (reproduces older papers; not a fair protocol)"
                if cfg.eval.selection == "test"
                else None,
            },
            "metrics": {"test": test, "val": val},
            "attribute_probe": attribute_probe,
            "history": history,
            "method_info": d["method_info"],
            "diagnostics": diagnostics,
            "protocol": {
                "name": cfg.get("protocol"),  # sweeps/protocols/<name>.yaml (its values are in "config")
                "hash": records.protocol_hash(self.protocol_fields),
                "version": records.PROTOCOL_VERSION,
                "fields": self.protocol_fields,
            },
            "config_hash": config_hash(cfg),
            "config": self.config,
            "git": self.git,
            **d.get("provenance", {}),  # method_code {hash, files}, starts [{started, git_sha, git_dirty, ...}]
            "versions": records.library_versions(),
            "timings": {"started": self.started, "updated": records.utc_now(), "train_s": train_s, "eval_s": eval_s},
            "evaluation": self.eval_settings,
            "compute": compute,  # benchmark.engine.compute: device, peak memory, seconds, images/s, device-hours
            "per_query": per_query,  # benchmark.evaluation.per_query: the test queries' R@1 hits (bootstrap CIs)
        }
        records.write_json_atomic(self.run_dir / "record.json", record)
        return record
