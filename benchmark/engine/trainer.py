"""The training loop, readable top to bottom: the engine owns optimiser, schedule, sampler, augmentation, evaluation
and model selection; a method contributes its loss and parameter groups only.

A run lives in ``<out_dir>/<dataset>/<method>/<run_name>`` (run_name defaults to the config hash and seed, so
starting the same run again resumes it from its latest checkpoint). Checkpoints are written atomically at every
epoch, every ``train.checkpoint_every`` steps, and when a stop is requested (SIGTERM, Ctrl-C, SLURM's pre-emption
signal; see :mod:`benchmark.engine.control`); ``record.json`` is rewritten atomically as the run progresses.
"""

from __future__ import annotations

import math
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from benchmark.config import config_hash
from benchmark.data.base import DatasetSplits, carve_validation, load_dataset
from benchmark.engine import checkpoints, distributed, provenance
from benchmark.engine.backprop import Backprop
from benchmark.engine.checkpoints import CheckpointError
from benchmark.engine.compute import ComputeMeter
from benchmark.engine.control import (  # noqa: F401 (re-exported: the sweeps and tests import them from here)
    _STOP,
    StopRequested,
    TrainingError,
    clear_stop,
    ignore_stop_signals_in_worker,
    request_stop,
    stop_on_signals,
)
from benchmark.engine.describe import describe_run, epoch_line, progress_bar
from benchmark.engine.embedding import embed_split, score_embeddings
from benchmark.engine.encoder import Encoder, preflight_backbone
from benchmark.engine.optim import create_optimizer, create_scheduler, engine_optimizer_groups
from benchmark.engine.pipeline import (
    ImageDataset,
    ListBatchSampler,
    build_transforms,
    epoch_batches,
    unwrap_worker_errors,
)
from benchmark.engine.record_writer import RecordWriter
from benchmark.engine.setup import (  # noqa: F401 (re-exported: the sweeps import them from here)
    FALLBACKS,
    resolve_card_defaults,
    resolve_device,
    run_directory,
    seed_everything,
)
from benchmark.evaluation.per_query import per_query_section
from benchmark.evaluation.run_outputs import write_run_outputs
from benchmark.method import Method, TaskInfo
from benchmark.registry import get_method


class Trainer:
    """Builds everything a run needs from its config, trains, selects, evaluates and writes the record."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.method_cls = get_method(cfg.method.name)
        preflight_backbone(cfg.backbone)  # missing weights fail here, before the dataset is read
        self.splits: DatasetSplits = load_dataset(
            cfg.dataset.name, cfg.dataset.root, strict=cfg.dataset.strict, **dict(cfg.dataset.options or {})
        )
        resolve_card_defaults(cfg, self.splits.card)
        self.run_dir = run_directory(cfg)
        self.dist, self.device = distributed.init(resolve_device(cfg.device))  # one rank of several, or alone
        self.autocast = self.device.type == "cuda" and cfg.train.precision in ("auto", "bf16")
        if cfg.train.precision == "bf16" and self.device.type == "cpu":
            self.autocast = True
        if cfg.eval.selection == "val":
            self.train_split, self.val_split = carve_validation(self.splits.train, cfg.dataset.val_fraction)
        else:
            self.train_split, self.val_split = self.splits.train, None
        train_classes = self.train_split.classes
        self.label_map = {int(c): i for i, c in enumerate(train_classes)}
        self.deterministic = bool(cfg.train.deterministic and self.method_cls.cuda_deterministic)  # on CUDA (README)
        seed_everything(cfg.seed, self.deterministic, self.device)
        self.encoder = Encoder(cfg.backbone).to(self.device)
        info = self.encoder.info
        self.transforms = build_transforms(cfg.data.transform, cfg.data.image_size, info.mean, info.std,
                                           info.interpolation, cfg.data.resize_ratio, cfg.dataset.name)  # fmt: skip
        task = TaskInfo(
            num_classes=len(train_classes),
            embedding_dim=self.encoder.embedding_dim,
            dataset=cfg.dataset.name,
            class_names=[self.splits.class_names[c] for c in train_classes],
            card=self.splits.card,
            feature_dim=self.encoder.feature_dim,
        )
        self.method: Method = self.method_cls(cfg.method, task).to(self.device)
        self.step_module = distributed.wrap(self.encoder, self.method, self.dist, self.device)  # DDP if distributed
        self._backbone_params = self.encoder.backbone_parameters()  # trainable ones (frozen BN excluded)
        if hasattr(self.method, "next_batch"):  # methods that draw extra micro-batches within a step
            self.method.next_batch = self.next_batch
        ddp = self.step_module if isinstance(self.step_module, torch.nn.parallel.DistributedDataParallel) else None
        self.backprop = Backprop(cfg.train.grad_accum, self._nonfinite_loss, ddp)
        self.method.backprop = self.backprop  # the method's backward_part(): the same checks, scale and DDP handling
        self.train_set = ImageDataset(self.train_split, self.transforms.train, self.label_map)
        self.steps_per_epoch = cfg.train.steps_per_epoch or max(1, len(self.train_split) // cfg.train.batch_size)
        self.history: list[dict[str, Any]] = []
        self.epoch = 0  # epochs completed
        self.step_in_epoch = 0
        self.epoch_sums: dict[str, float] = {}  # running sums of the logged scalars within the current epoch
        self.best: dict[str, Any] = {"score": -math.inf, "epoch": None, "metrics": None}
        self.param_group_info: list[dict[str, Any]] = []
        self.optimizer = self._build_optimizer() if self.method_cls.trains else None
        self.scheduler = self._build_scheduler() if self.optimizer else None
        self.writer = None
        self._resumed = False
        self._final_eval = False  # a stop during the final evaluation stops at once (last.pt holds the training)
        self._saved: tuple[int, int] | None = None  # (epoch, step) of the last.pt this run holds
        self.code = provenance.method_code(self.method_cls)  # checked on resume: the method's code must not change
        self.starts: list[dict[str, Any]] = []  # one entry per start and resume (git SHA), kept in the checkpoint

    # ----------------------------------------------------------------- optimisation
    def _build_optimizer(self) -> torch.optim.Optimizer:
        cfg = self.cfg.train
        groups, self.param_group_info = engine_optimizer_groups(self.encoder, self.method, cfg.lr)
        self._optimised_params = [p for g in groups for p in g["params"]]
        return create_optimizer(groups, cfg.lr, cfg.weight_decay)

    def _build_scheduler(self) -> torch.optim.lr_scheduler.LambdaLR:
        cfg = self.cfg.train
        return create_scheduler(self.optimizer, cfg.epochs * self.steps_per_epoch // cfg.grad_accum,
                                int(cfg.warmup_epochs * self.steps_per_epoch // cfg.grad_accum), cfg.min_lr_ratio)  # fmt: skip

    # ----------------------------------------------------------------- checkpoints
    def _state(self) -> dict[str, Any]:
        return {
            "config_hash": config_hash(self.cfg),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "encoder": self.encoder.state_dict(),
            "method": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer else None,
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "history": self.history,
            "best": self.best,
            "epoch_sums": self.epoch_sums,
            "rng": checkpoints.rng_state(),
            "code": self.code,
            "starts": self.starts,
        }

    def save_checkpoint(self, name: str = "last.pt") -> Path:
        """Write ``checkpoints/<name>`` atomically; weights holding NaN or inf are never written (TrainingError)."""
        path = self.run_dir / "checkpoints" / name
        self.check_finite()  # on every rank (they hold the same weights), so that they all stop together
        if not self.dist.is_main:  # rank 0 writes; the ranks hold the same state
            return path
        checkpoints.write(self._state(), path)
        if name == "last.pt":
            self._saved = (self.epoch, self.step_in_epoch)
        return path

    def check_finite(self) -> None:
        """Raise a TrainingError saying what is kept if the weights hold NaN or infinite values."""
        bad = checkpoints.non_finite_count(self.encoder.state_dict(), self.method.state_dict())
        if bad:
            raise TrainingError(
                f"The weights hold {bad} NaN or infinite values at {self._position()} (training diverged). "
                f"Stopped: {self.kept_checkpoint()}. Lower train.lr or set train.grad_clip."
            )

    def _position(self) -> str:
        if self.step_in_epoch:
            return f"epoch {self.epoch + 1}, step {self.step_in_epoch}"
        return f"the end of epoch {self.epoch}"

    def kept_checkpoint(self) -> str:
        """What a failed run keeps, in words: the last good checkpoint's path, or that none was written."""
        path = self.run_dir / "checkpoints" / "last.pt"
        if not path.exists():
            return "no checkpoint was written: the NaN came before the first epoch ended"
        where = f" (epoch {self._saved[0] + 1}, step {self._saved[1]})" if self._saved and self._saved[1] else ""
        if self._saved and not self._saved[1]:
            where = f" (after epoch {self._saved[0]})"
        return f"the last good checkpoint is kept: {path}{where}"

    def load_checkpoint(self, path: Path) -> None:
        """Resume from ``path`` (weights-only; refused if unsafe, truncated, foreign or from another config)."""
        state = checkpoints.read(path, self.device, config_hash(self.cfg))
        note = provenance.check_same_code(state, self.code, path, self.cfg.method.name)  # refuses other code
        if note:
            warnings.warn(note, stacklevel=2)
        self.starts = list(state.get("starts") or [])
        try:
            self.encoder.load_state_dict(state["encoder"])
            self.method.load_state_dict(state["method"])
            if self.optimizer and state["optimizer"]:
                self.optimizer.load_state_dict(state["optimizer"])
                self.scheduler.load_state_dict(state["scheduler"])
            checkpoints.set_rng_state(state["rng"])
        except (KeyError, RuntimeError, ValueError, TypeError) as err:
            raise CheckpointError(path, f"it does not fit this run's model ({str(err).splitlines()[0]})") from None
        self.epoch, self.step_in_epoch = state["epoch"], state["step_in_epoch"]
        self.history, self.best = state["history"], state["best"]
        self.epoch_sums = state.get("epoch_sums") or {}
        self._saved = (self.epoch, self.step_in_epoch)

    def resume(self) -> None:
        """Accepted run: remove what interrupted writes left, and resume from ``checkpoints/last.pt`` if it exists.

        ``best.pt`` is checked too (mapped, not read), so a broken one is found now rather than after training.
        """
        if self._resumed:
            return
        self._resumed = True
        checkpoint = self.run_dir / "checkpoints" / "last.pt"
        if checkpoint.exists():
            self.load_checkpoint(checkpoint)
            best = self.run_dir / "checkpoints" / "best.pt"
            if self.best.get("epoch") is not None and best.exists():
                checkpoints.read(best, "cpu", config_hash(self.cfg), mmap=True)
            print(f"Resuming {self.run_dir} from epoch {self.epoch} step {self.step_in_epoch}.", flush=True)
        provenance.record_start(self.starts, (self.epoch, self.step_in_epoch) if checkpoint.exists() else None)
        if self.dist.is_main and self.run_dir.is_dir():  # accepted: only now is anything in the directory touched
            litter = checkpoints.remove_litter(self.run_dir)
            if litter:
                print(
                    f"Removed {len(litter)} temporary file(s) left by an interrupted write: "
                    f"{', '.join(p.name for p in litter)}"
                )

    def _stop(self, where: str) -> StopRequested:
        signum = clear_stop()  # handled: a later run in this process starts clean
        path = self.run_dir / "checkpoints" / "last.pt"
        return StopRequested(
            f"Stop requested: checkpoint written at {where} to {path}. Run the same command again to resume.",
            signum,
        )

    # ----------------------------------------------------------------- evaluation
    def embed(self, split) -> tuple[np.ndarray, np.ndarray]:
        """The method's embeddings of ``split`` (every rank embeds its share) and their labels, in split order."""
        return embed_split(split, self.transforms.test, self.encoder, self.method, self.device, self.dist, self.autocast,
                           self.cfg, self._stop_in_evaluation)  # fmt: skip

    def _stop_in_evaluation(self) -> None:
        if _STOP["requested"] and self._final_eval and not self.dist.enabled:  # last.pt holds the training
            raise self._stop("evaluation (the training is saved; the evaluation runs again on resume)")

    def evaluate(self, split) -> dict[str, float]:
        return score_embeddings(*self.embed(split), self.cfg.eval)

    def _score(self, embeddings: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        return score_embeddings(embeddings, labels, self.cfg.eval)

    # ----------------------------------------------------------------- training
    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
        """One micro-batch: the method's step under autocast, its loss back-propagated (whole here, or in parts by the
        method as it goes: ``Method.backward_part``), and every ``grad_accum`` micro-batches one optimiser step."""
        cfg, bp = self.cfg.train, self.backprop
        images, labels = images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
        self._refills = 0
        boundary = (self.step_in_epoch + 1) % cfg.grad_accum == 0 or self.step_in_epoch + 1 == self.steps_per_epoch
        in_parts = self.method_cls.backward_in_parts
        bp.begin_step()
        with bp.context(in_parts, boundary):
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                out = self.step_module(images, labels)  # method.training_step(images, labels, encoder), DDP-wrapped
            loss = out["loss"]
            if bp.parts and loss.requires_grad:
                raise TrainingError(
                    f"Method '{self.cfg.method.name}' back-propagated {bp.parts} part(s) of its loss and also returned "
                    "a loss with a graph: return the total detached once its parts are back-propagated."
                )
            if not bp.parts:
                bp(loss)
            elif not torch.isfinite(loss):
                self._nonfinite_loss(float(loss))
        self.step_in_epoch += 1
        if boundary:
            bp.sync(self._optimised_params)  # only where the parts ran under no_sync
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(self._optimised_params, cfg.grad_clip)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
        return out

    def _nonfinite_loss(self, value: float) -> None:
        raise TrainingError(
            f"Loss is {value} at epoch {self.epoch + 1}, step {self.step_in_epoch + 1}. Stopped: "
            f"{self.kept_checkpoint()}. Lower train.lr or set train.grad_clip."
        )

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One more class-balanced micro-batch for methods that draw extra ones within a step (SAGA's DAPO refill).

        Drawn from the same m-per-class sampler and augmentation, under a stream keyed by (epoch, step, refill index),
        so refills never shift the epoch's own batches and a resumed run draws the same ones.
        """
        cfg = self.cfg.train
        self._refills = getattr(self, "_refills", 0) + 1
        key = (self.epoch * 1_000_003 + self.step_in_epoch) * 1_009 + self._refills
        (batch,) = epoch_batches(self.train_set.labels, cfg.batch_size, cfg.m_per_class, 1, self.cfg.seed + 7_919, key)
        items = [self.train_set[item] for item in batch]
        return torch.stack([image for image, _ in items]), torch.tensor([label for _, label in items])

    def train_epoch(self) -> dict[str, float]:
        cfg = self.cfg.train
        batches = epoch_batches(
            self.train_set.labels, cfg.batch_size, cfg.m_per_class, self.steps_per_epoch, self.cfg.seed, self.epoch
        )
        batches = [distributed.rank_slice(b, self.dist, cfg.m_per_class) for b in batches]
        loader = torch.utils.data.DataLoader(
            self.train_set,
            batch_sampler=ListBatchSampler(batches, self.step_in_epoch),
            num_workers=self.cfg.data.num_workers,
            persistent_workers=False,
            worker_init_fn=ignore_stop_signals_in_worker,
        )
        frozen = self.epoch < cfg.freeze_backbone_epochs
        for p in self._backbone_params:
            p.requires_grad_(not frozen)
        self.encoder.train()
        self.method.train()
        if self.step_in_epoch == 0:  # else: resumed mid-epoch, keep the running sums from the checkpoint
            self.epoch_sums = {}
        sums = self.epoch_sums
        count, images_seen, t0 = sums.pop("_count", 0), 0, time.time()
        progress = progress_bar(len(loader), f"epoch {self.epoch + 1}/{cfg.epochs}", cfg.progress)
        for images, labels in unwrap_worker_errors(loader):
            out = self.train_step(images, labels)
            loss = out["loss"]
            count += 1
            images_seen += len(labels)
            for key, value in out.items():
                sums[key] = sums.get(key, 0.0) + float(value.detach() if torch.is_tensor(value) else value)
            rate = images_seen / max(time.time() - t0, 1e-9)
            progress.update(1)
            progress.set_postfix(loss=f"{loss.item():.4f}", img_s=f"{rate:.0f}")
            if self.writer and self.step_in_epoch % cfg.log_every == 0:
                step = self.epoch * self.steps_per_epoch + self.step_in_epoch
                for key, value in out.items():
                    self.writer.add_scalar(f"train/{key}", float(value), step)
            stop = distributed.any_rank(_STOP["requested"], self.dist, self.device)
            every = cfg.checkpoint_every
            # Checkpoints fall on optimiser steps only (accumulated gradients are not saved) and never on the last
            # step, whose checkpoint fit() writes once the epoch is closed.
            if self.step_in_epoch % cfg.grad_accum == 0 and self.step_in_epoch < self.steps_per_epoch:
                if stop or (every and self.step_in_epoch % every == 0):
                    sums["_count"] = count
                    self.save_checkpoint()
                    del sums["_count"]
                if stop:
                    progress.close()
                    raise self._stop(f"epoch {self.epoch + 1}, step {self.step_in_epoch}")
        progress.close()
        stats = {key: value / max(count, 1) for key, value in sums.items()}
        stats["images_per_s"] = images_seen / max(time.time() - t0, 1e-9)
        stats["lr"] = self.optimizer.param_groups[0]["lr"]
        return stats

    def fit(self) -> dict[str, Any]:
        """Train (resuming if a checkpoint exists), select, evaluate on test, and return the final record."""
        with stop_on_signals():  # SIGTERM / Ctrl-C: checkpoint at the next step, then StopRequested
            self.resume()  # refuses an unusable checkpoint before anything is written
            self.compute = ComputeMeter(self.run_dir, self.device, self.dist.world_size)  # the record's cost
            recorder = (
                RecordWriter(self.cfg, self.run_dir, self.splits.card, self.describe())
                if self.dist.is_main
                else distributed.NoRecord()
            )
            self._write(recorder, status="running")
            try:
                return self._train_and_finish(recorder)
            except StopRequested:
                raise
            except Exception as err:
                told = err
                if isinstance(err, OSError):  # e.g. a full disk while writing the record or metrics.jsonl
                    told = TrainingError(
                        f"Could not write {err.filename or 'a run file'}: {err.strerror or err}. Free space (or "
                        "choose another out_dir) and run the same command again: it resumes from the last "
                        "checkpoint written."
                    )
                try:
                    self._write(recorder, status="failed", error=f"{type(told).__name__}: {told}")
                except OSError as write_err:  # the disk may still be full: the error below is what matters
                    warnings.warn(f"Could not mark the record failed: {write_err}", stacklevel=2)
                if told is not err:
                    raise told from err
                raise

    def _train_and_finish(self, recorder) -> dict[str, Any]:
        if self.cfg.train.tensorboard and self.dist.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.run_dir / "tensorboard"))
        ecfg, epochs = self.cfg.eval, self.cfg.train.epochs if self.method_cls.trains else 0
        train_time = 0.0
        while self.epoch < epochs:
            t0 = time.time()
            stats = self.train_epoch()
            train_time += time.time() - t0
            self.epoch, self.step_in_epoch = self.epoch + 1, 0
            self.check_finite()  # diverged weights are neither evaluated nor saved
            entry = {"epoch": self.epoch, **stats}
            if ecfg.selection in ("val", "test") and (self.epoch % ecfg.every == 0 or self.epoch == epochs):
                split = self.val_split if ecfg.selection == "val" else self.splits.test
                metrics = self.evaluate(split)
                entry[ecfg.selection] = metrics
                if metrics[ecfg.selection_metric] > self.best["score"]:
                    self.best = {"score": metrics[ecfg.selection_metric], "epoch": self.epoch, "metrics": metrics}
                    self.save_checkpoint("best.pt")
            self.history.append(entry)
            recorder.append_history(self.history)
            self.save_checkpoint()
            self._write(recorder, status="running", train_s=train_time)
            print(epoch_line(entry), flush=True)
            if distributed.any_rank(_STOP["requested"], self.dist, self.device):
                raise self._stop(f"the end of epoch {self.epoch}")
        return self._finish(recorder, train_time)

    def _finish(self, recorder, train_time: float) -> dict[str, Any]:
        ecfg = self.cfg.eval
        t0 = time.time()
        selected_epoch = self.epoch
        self._final_eval = True
        if ecfg.selection in ("val", "test") and self.best["epoch"] is not None:
            distributed.barrier(self.dist)  # rank 0 has written best.pt
            best = checkpoints.read(self.run_dir / "checkpoints" / "best.pt", self.device, config_hash(self.cfg))
            self.encoder.load_state_dict(best["encoder"])
            self.method.load_state_dict(best["method"])
            selected_epoch = self.best["epoch"]
        val_metrics = self.evaluate(self.val_split) if self.val_split is not None else None
        test_embeddings, test_labels = self.embed(self.splits.test)
        test_metrics = self._score(test_embeddings, test_labels)
        if self.dist.is_main:  # gallery/ and (eval.save_neighbours) neighbours.npz beside the record
            write_run_outputs(self.run_dir, self.cfg, self.splits, test_embeddings, test_labels)
        probe = self._attribute_probe(test_embeddings, test_labels)
        return self._write(
            recorder,
            status="completed",
            test=test_metrics,
            val=val_metrics,
            selected_epoch=selected_epoch,
            train_s=train_time,
            eval_s=time.time() - t0,
            attribute_probe=probe,
            per_query=per_query_section(test_embeddings, test_labels, ecfg) if self.dist.is_main else None,
        )

    def _write(self, recorder, **fields: Any) -> dict[str, Any] | None:
        diagnostics, step = self.method.diagnostics(), self.epoch * self.steps_per_epoch + self.step_in_epoch
        compute = self.compute.section(
            step=step, batch_size=self.cfg.train.batch_size, steps_per_epoch=self.steps_per_epoch,
            history=self.history, diagnostics=diagnostics, train_s=fields.get("train_s"), eval_s=fields.get("eval_s"),
        )  # fmt: skip
        return recorder.write(history=self.history, diagnostics=diagnostics, compute=compute, **fields)

    def describe(self) -> dict[str, Any]:
        """The record's fixed sections: backbone, data (transforms, normalisation), split sizes, method."""
        fixed = describe_run(self.cfg, self.encoder, self.transforms, self.train_split, self.splits.test,
                             self.val_split, self.method_cls, self.param_group_info)  # fmt: skip
        return fixed | {"provenance": {"method_code": self.code, "starts": self.starts}}

    def _attribute_probe(self, embeddings: np.ndarray, labels: np.ndarray) -> dict[str, Any] | None:
        """Linear probes of the dataset's class attributes on the test embeddings (None: off, or no attributes)."""
        if not (self.cfg.eval.attribute_probe and self.splits.class_attributes and self.dist.is_main):
            return None
        from benchmark.evaluation.attribute_probe import probe_run_embeddings

        return probe_run_embeddings(embeddings, labels, self.splits)


def archive_finished_run(run_dir: Path) -> Path:
    """Move a finished run aside (``force=true``) so nothing a user ran is lost."""
    target = run_dir.with_name(f"{run_dir.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
    shutil.move(str(run_dir), str(target))
    return target
