"""Assembles a run's ``record.json`` (schema in :mod:`benchmark.records`) from a :class:`~benchmark.trainer.Trainer`."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from benchmark import records
from benchmark.config import config_hash
from benchmark.data.base import load_split_file

if TYPE_CHECKING:
    from benchmark.trainer import Trainer


class RecordWriter:
    """Writes the record atomically at each stage of a run; ``write`` returns the record as written."""

    def __init__(self, trainer: Trainer) -> None:
        from benchmark.evaluation import evaluation_settings
        from benchmark.trainer import config_dict, save_resolved_config

        self.t = trainer
        cfg = trainer.cfg
        trainer.run_dir.mkdir(parents=True, exist_ok=True)
        save_resolved_config(cfg, trainer.run_dir)
        e = cfg.eval
        self.eval_settings = evaluation_settings(
            ks=tuple(e.ks), kmeans_seed=e.kmeans_seed, kmeans_restarts=e.kmeans_restarts, backend=e.backend
        )
        card = trainer.splits.card
        split_spec = {"card": card["name"], "split": card.get("split"), "rule": load_split_file(card).get("rule")}
        if card.get("needs_root") is False:  # embedded datasets: the generator options define the data
            split_spec["options"] = dict(cfg.dataset.options or {})
        self.protocol_fields = records.protocol_fields(cfg, split_spec, self.eval_settings)
        self.config = config_dict(cfg)
        self.started = records.utc_now()
        self.git = records.git_info()
        self.history_path = trainer.run_dir / "metrics.jsonl"

    def append_history(self, entry: dict[str, Any]) -> None:
        # Rewritten whole (atomically) from the trainer's history, so a resumed run never duplicates lines.
        lines = "".join(json.dumps(h, default=float) + "\n" for h in self.t.history)
        records.write_text_atomic(self.history_path, lines)

    def write(
        self,
        status: str,
        error: str | None = None,
        test: dict[str, float] | None = None,
        val: dict[str, float] | None = None,
        selected_epoch: int | None = None,
        train_s: float | None = None,
        eval_s: float | None = None,
        attribute_probe: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        t, cfg = self.t, self.t.cfg
        enc = t.encoder
        splits = {"train": _count(t.train_split), "test": _count(t.splits.test)}
        if t.val_split is not None:
            splits["val"] = _count(t.val_split)
        record = {
            "schema_version": records.SCHEMA_VERSION,
            "run_id": f"{cfg.method.name}-{cfg.dataset.name}-{t.run_dir.name}",
            "status": status,
            "error": error,
            "method": cfg.method.name,
            "dataset": cfg.dataset.name,
            "seed": int(cfg.seed),
            "backbone": {
                "name": cfg.backbone.name,
                "kind": cfg.backbone.kind,
                "pretrained": bool(cfg.backbone.pretrained),
                "source": enc.info.source,
                "pooling": cfg.backbone.pooling,
                "embedding_dim": enc.embedding_dim,
                "feature_dim": enc.feature_dim,
                "freeze_bn": bool(cfg.backbone.freeze_bn),
            },
            "data": {
                "image_size": int(cfg.data.image_size),
                "train_transform": t.transforms.description["train"],
                "test_transform": t.transforms.description["test"],
                "transform": cfg.data.transform,
                "normalization": {"mean": t.transforms.description["mean"], "std": t.transforms.description["std"]},
                "interpolation": t.transforms.description["interpolation"],
            },
            "splits": splits,
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
            "history": t.history,
            "method_info": {
                "paper": t.method_cls.paper,
                "year": t.method_cls.year,
                "url": t.method_cls.url,
                "param_groups": t.param_group_info,
            },
            "diagnostics": t.method.diagnostics(),
            "protocol": {
                "hash": records.protocol_hash(self.protocol_fields),
                "version": records.PROTOCOL_VERSION,
                "fields": self.protocol_fields,
            },
            "config_hash": config_hash(cfg),
            "config": self.config,
            "git": self.git,
            "versions": records.library_versions(),
            "timings": {"started": self.started, "updated": records.utc_now(), "train_s": train_s, "eval_s": eval_s},
            "evaluation": self.eval_settings,
        }
        records.write_json_atomic(t.run_dir / "record.json", record)
        return record


def _count(split) -> dict[str, int]:
    return {"classes": int(len(split.classes)), "images": int(len(split))}
