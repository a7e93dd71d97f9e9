"""``python -m benchmark run [key=value ...]``: compose the config, train (or resume), evaluate, print the metrics."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from benchmark.config import compose_config, config_hash
from benchmark.engine import records

METRIC_LABELS = {
    "recall@1": "R@1",
    "recall@2": "R@2",
    "recall@4": "R@4",
    "recall@8": "R@8",
    "map@r": "MAP@R",
    "r_precision": "RP",
    "nmi": "NMI",
}


def _other_config(run_dir: Path, cfg: DictConfig, existing: dict[str, Any] | None) -> str | None:
    """The hash of another config whose run lives in ``run_dir`` (from its record or its config.yaml), else None."""
    if existing and existing.get("config_hash") not in (None, config_hash(cfg)):
        return existing.get("config_hash")
    saved = run_dir / "config.yaml"
    if existing is None and saved.is_file():  # killed before its first record: the resolved config says whose it is
        try:
            other = config_hash(OmegaConf.load(saved))
        except Exception:  # unreadable: the checkpoint's own check still guards the run
            return None
        return other if other != config_hash(cfg) else None
    return None


def run(cfg: DictConfig) -> tuple[dict[str, Any], Path]:
    """Run one config to completion; return its record and directory. A finished run is returned, not retrained.

    Nothing is written to the run directory before the run is accepted: another config's run (by its record,
    config.yaml or checkpoint) and an unusable checkpoint are refused first (``force=true`` moves a run whose
    checkpoint cannot be used aside, as it does a finished one).
    """
    from benchmark.engine.control import clear_stop, stop_on_signals

    clear_stop()  # a request left over from an earlier run in this process is not this run's
    with stop_on_signals():  # from here on, SIGTERM / Ctrl-C stop the run at its next step, checkpointed
        return _run(cfg)


def _run(cfg: DictConfig) -> tuple[dict[str, Any], Path]:
    from benchmark.engine.locks import run_directory_lock
    from benchmark.engine.trainer import Trainer

    started = time.time()
    # The run directory depends on card defaults resolved inside the Trainer, so look it up after building it.
    trainer = Trainer(cfg)
    if not trainer.dist.is_main:  # another rank of a data-parallel run: rank 0 holds the directory's lock
        return _run_locked(cfg, trainer, started)
    with run_directory_lock(trainer.run_dir):  # a second process on this directory is refused, told who holds it
        return _run_locked(cfg, trainer, started)


def _run_locked(cfg: DictConfig, trainer: Any, started: float) -> tuple[dict[str, Any], Path]:
    from benchmark.engine.preflight import preflight
    from benchmark.engine.trainer import CheckpointError, Trainer, TrainingError, archive_finished_run

    preflight(trainer)  # a run directory in the way, or a split that cannot give a result: refused before training
    existing = records.read_record(trainer.run_dir)
    other = _other_config(trainer.run_dir, cfg, existing)
    if other:
        raise TrainingError(
            f"{trainer.run_dir} holds a run of another config (hash {other}, this config "
            f"{config_hash(cfg)}). Use another run_name or out_dir; nothing was overwritten."
        )
    if records.is_complete(existing):
        if not cfg.force:
            print(
                f"This run is already complete: {trainer.run_dir / 'record.json'} (pass force=true to train it "
                "again; the finished run is then moved aside, not deleted)."
            )
            return existing, trainer.run_dir
        moved = archive_finished_run(trainer.run_dir)
        print(f"force=true: the finished run was moved to {moved}")
        trainer = Trainer(cfg)
    try:
        trainer.resume()
    except CheckpointError as err:
        if not cfg.force or not trainer.dist.is_main:
            raise
        moved = archive_finished_run(trainer.run_dir)
        print(f"force=true: {err.path} could not be used; the run directory was moved to {moved}")
        trainer = Trainer(cfg)
    record = trainer.fit()
    if not trainer.dist.is_main:  # another rank of a data-parallel run: rank 0 writes the record
        return record, trainer.run_dir
    if trainer.dist.enabled:
        record["distributed"] = trainer.dist.describe()
    record["timings"]["total_s"] = time.time() - started
    records.write_json_atomic(trainer.run_dir / "record.json", record)
    return records.read_record(trainer.run_dir), trainer.run_dir


def format_metrics(metrics: dict[str, float]) -> str:
    return "  ".join(
        f"{METRIC_LABELS.get(k, k)} {100 * v:.2f}" if k != "nmi" else f"NMI {v:.3f}" for k, v in metrics.items()
    )


def main(overrides: list[str], as_json: bool = False, cfg: DictConfig | None = None) -> int:
    """``python -m benchmark run``: run here (the CLI sends ``launcher=slurm`` runs to the sweeps' submitter)."""
    from benchmark.engine.control import StopRequested

    cfg = compose_config(overrides) if cfg is None else cfg
    try:
        record, run_dir = run(cfg)
    except StopRequested as stop:  # SIGTERM / Ctrl-C: the checkpoint is written; the same command resumes
        print(str(stop), file=sys.stderr)
        return stop.exit_status
    except KeyboardInterrupt:  # a second signal before the checkpoint was written
        print(
            "Stopped at once (a second signal). The run resumes from its last checkpoint, if it wrote one: run the "
            "same command again.",
            file=sys.stderr,
        )
        return 130
    if record is None:  # a rank other than 0 of a data-parallel run
        return 0
    if as_json:
        probe = {"attribute_probe": record["attribute_probe"]} if record.get("attribute_probe") else {}
        print(json.dumps({"record": str(run_dir / "record.json"), **record["metrics"], **probe}, indent=2))
        return 0
    print(
        f"\n{record['method']} on {record['dataset']} (seed {record['seed']}, backbone {record['backbone']['source']},"
        f" selection: {record['selection']['rule']}, epoch {record['selection']['epoch']})"
    )
    if record["metrics"].get("val"):
        print(f"  val : {format_metrics(record['metrics']['val'])}")
    print(f"  test: {format_metrics(record['metrics']['test'])}")
    if record.get("attribute_probe"):
        from benchmark.evaluation.attribute_probe import format_probe

        print(f"  {format_probe(record['attribute_probe'])}")
    print(f"Run record: {run_dir / 'record.json'}")
    return 0
