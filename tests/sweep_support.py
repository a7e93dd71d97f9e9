"""Test support for the sweep tests: a tiny dataset card and reader, an evaluation stand-in while
``benchmark/evaluation/metrics.py`` is not on this branch, and a ``sitecustomize`` so that the subprocesses a sweep starts
(``python -m benchmark run``, submitit's job runner) see the same test dataset.

Environment switches read in every process (set by the tests):
``SWEEP_TEST_DATASETS`` the datasets dir to use; ``SWEEP_TEST_SAMPLE_DELAY`` seconds slept per image loaded (so a
run lasts long enough to be signalled mid-run), ``SWEEP_TEST_DELAY_FIRST_START`` set: only in a job's first start (not
once SLURM has requeued it, ``SLURM_RESTART_COUNT`` > 0); ``SWEEP_TEST_FAIL_SEED`` a seed whose run raises in its first
epoch.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
import types
from pathlib import Path

import numpy as np
import yaml

CARD = {
    "name": "sweepblobs",
    "title": "Sweep test blobs",
    "reader": "sweep_blobs",
    "needs_root": False,
    "expected": {"classes": 40, "images": 320, "train_classes": 20, "test_classes": 20},
    "defaults": {"image_size": 16, "backbone": {"name": "resnet10t", "pretrained": False}},
}

TINY = [
    "backbone.embedding_dim=16",
    "train.epochs=3",
    "train.batch_size=8",
    "train.m_per_class=2",
    "train.steps_per_epoch=3",
    "train.progress=false",
    "data.num_workers=0",
    "eval.kmeans_restarts=1",
    "device=cpu",
]


def read_blobs(card, root, strict, classes: int = 40, per_class: int = 8, size: int = 16, seed: int = 0):
    """Blobs under heavy noise (retrieval is imperfect, so runs that differ end with different metrics)."""
    try:  # subprocesses put tests/ itself on sys.path; the test process has the repository root
        from blobs import make_blobs
    except ImportError:
        from tests.blobs import make_blobs

    return make_blobs("sweepblobs", classes, per_class, size, seed, background=160, jitter=70)


def write_datasets_dir(target: Path) -> Path:
    """A datasets/ dir with the repository's cards (if any) and the test card."""
    import benchmark.data.base as base

    target.mkdir(parents=True, exist_ok=True)
    for card in base.DATASETS_DIR.glob("*.yaml"):
        (target / card.name).write_text(card.read_text())
    if (base.DATASETS_DIR / "splits").is_dir() and not (target / "splits").exists():
        (target / "splits").symlink_to(base.DATASETS_DIR / "splits")
    (target / "sweepblobs.yaml").write_text(yaml.safe_dump(CARD))
    return target


def _stub_evaluation() -> None:
    """Stand-in for benchmark.evaluation.metrics until the eval branch is merged (exact recall@k; the rest simple)."""
    import torch

    module = types.ModuleType("benchmark.evaluation.metrics")

    def evaluation_settings(**kw):
        return {"stub": True, **kw}

    def evaluate_embeddings(embeddings, labels, *, ks=(1, 2, 4, 8), backend="auto", **_):
        x = torch.nn.functional.normalize(torch.as_tensor(np.asarray(embeddings)).double(), dim=1)
        y = torch.as_tensor(np.asarray(labels))
        sim = x @ x.T
        sim.fill_diagonal_(-float("inf"))
        hit = y[sim.topk(max(ks), dim=1).indices] == y[:, None]
        out = {f"recall@{k}": float(hit[:, :k].any(1).double().mean()) for k in ks}
        out.update({"map@r": float(hit.double().mean()), "r_precision": float(hit[:, 0].double().mean()), "nmi": 0.0})
        return out

    module.evaluation_settings, module.evaluate_embeddings = evaluation_settings, evaluate_embeddings
    sys.modules["benchmark.evaluation.metrics"] = module
    import benchmark

    benchmark.evaluation.metrics = module


def setup_process() -> None:
    """Register the test reader, point the cards at the test datasets dir, apply the test switches."""
    import benchmark.data.base as base

    if os.environ.get("SWEEP_TEST_DATASETS"):
        base.DATASETS_DIR = Path(os.environ["SWEEP_TEST_DATASETS"])
    if "sweep_blobs" not in base._READERS:
        base.register_reader("sweep_blobs")(read_blobs)
    if (
        importlib.util.find_spec("benchmark.evaluation.metrics") is None
        and "benchmark.evaluation.metrics" not in sys.modules
    ):
        _stub_evaluation()
    if os.environ.get("SWEEP_TEST_WRITE_LOG"):  # log who writes the record and checkpoints (DDP test)
        _log_writes(Path(os.environ["SWEEP_TEST_WRITE_LOG"]))
    delay = float(os.environ.get("SWEEP_TEST_SAMPLE_DELAY", 0) or 0)
    if os.environ.get("SWEEP_TEST_DELAY_FIRST_START") and int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0:
        delay = 0.0
    fail_seed = os.environ.get("SWEEP_TEST_FAIL_SEED")
    if delay or fail_seed:
        import benchmark.engine.pipeline as pipeline
        import benchmark.engine.trainer as trainer

        if delay and not getattr(pipeline.ImageDataset, "_slowed", False):
            original = pipeline.ImageDataset.__getitem__

            def slow_getitem(self, key):
                time.sleep(delay)
                return original(self, key)

            pipeline.ImageDataset.__getitem__ = slow_getitem
            pipeline.ImageDataset._slowed = True
        if fail_seed and not getattr(trainer.Trainer, "_failing", False):
            original_epoch = trainer.Trainer.train_epoch

            def failing_epoch(self):
                if str(self.cfg.seed) == fail_seed:
                    raise RuntimeError(f"injected failure for seed {fail_seed} (test)")
                return original_epoch(self)

            trainer.Trainer.train_epoch = failing_epoch
            trainer.Trainer._failing = True


def _log_writes(log: Path) -> None:
    import torch

    import benchmark.engine.records as records

    rank = os.environ.get("SLURM_PROCID", "?")
    write_json, save = records.write_json_atomic, torch.save

    def logged_write_json(path, obj):
        with open(log, "a") as handle:
            handle.write(f"{rank} {Path(path).name}\n")
        return write_json(path, obj)

    def logged_save(obj, path, *args, **kwargs):  # path: a file name, or the open file checkpoints.write passes
        with open(log, "a") as handle:
            handle.write(f"{rank} {Path(getattr(path, 'name', path)).name}\n")
        return save(obj, path, *args, **kwargs)

    records.write_json_atomic, torch.save = logged_write_json, logged_save


def write_sitecustomize(directory: Path) -> Path:
    """A sitecustomize.py that runs :func:`setup_process` in every Python process started with it on PYTHONPATH."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "sitecustomize.py").write_text(
        "import os, sys\n"
        "if os.environ.get('SWEEP_TEST_DATASETS'):\n"
        f"    sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})\n"
        "    import sweep_support\n"
        "    sweep_support.setup_process()\n"
    )
    return directory


def sweep_test_env(root: Path, mp) -> Path:
    """Make this process and the jobs it starts see the test dataset (``mp``: a ``pytest.MonkeyPatch``); return the
    datasets dir. Sets the test card, a sitecustomize on PYTHONPATH, one thread, offline Hugging Face, no SLURM job."""
    import benchmark.data.base as base

    datasets = write_datasets_dir(root / "datasets")
    mp.setattr(base, "DATASETS_DIR", datasets)
    mp.setenv("SWEEP_TEST_DATASETS", str(datasets))
    site = write_sitecustomize(root / "site")
    mp.setenv("PYTHONPATH", f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    mp.setenv("OMP_NUM_THREADS", "1")
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.delenv("SLURM_JOB_ID", raising=False)
    setup_process()
    from hydra.core.config_store import ConfigStore

    from benchmark.config import DatasetConfig, register_configs

    register_configs()  # the committed register_configs reads the cards once: make sure the test card is one
    ConfigStore.instance().store(group="dataset", name="sweepblobs", node=DatasetConfig(name="sweepblobs"))
    return datasets
