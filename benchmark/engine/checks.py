"""Checks made before anything runs or is written: config values in range, the device, the output directory.

Each check returns the problem as one line (what is wrong, what is expected, what to do) or None; the caller raises
its own user error (``benchmark.config.ConfigError``, the leaderboard's ValueError). Nothing here imports from
``benchmark``, so the config and every wing may use it without an import cycle.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists (the directory that ``mkdir -p`` would write into first)."""
    current = path
    while not current.exists() and current != current.parent:
        current = current.parent
    return current


def unwritable_reason(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be used as an output directory, or None when it can (it may not exist yet).

    Nothing is created: the check looks at ``path`` if it exists, else at its nearest existing ancestor, which must be
    a directory this process may write into (``os.access``; a read-only file system counts as not writable).
    """
    target = Path(os.path.expanduser(os.fspath(path))).absolute()
    existing = _nearest_existing(target)
    if existing.exists() and not existing.is_dir():
        if existing == target:
            return f"{target} is a file, not a directory"
        return f"{existing} is a file, so {target} cannot be created under it"
    if not os.access(existing, os.W_OK | os.X_OK):
        if existing == target:
            return f"{target} is not writable (no write permission, or a read-only file system)"
        return (
            f"{target} cannot be created: {existing} is not writable (no write permission, or a read-only file system)"
        )
    return None


#: The longest name accepted as one path component, in UTF-8 bytes: file systems allow 255, and a run directory moved
#: aside by ``force=true`` gains ``.old-YYYYmmdd-HHMMSS``.
MAX_NAME_BYTES = 200


def path_component_problem(key: str, value: Any, root: str) -> str | None:
    """Why ``value`` cannot be one directory name inside ``root`` (``run_name``, a sweep's ``name``), or None.

    A name is one component: no ``/`` or ``\\``, not ``.`` or ``..``, no control characters, at most
    :data:`MAX_NAME_BYTES` bytes. So it never leads outside its root, and never overwrites another directory.
    """
    text = str(value)
    problem = None
    if not text.strip():
        problem = "it is empty"
    elif text in (".", ".."):
        problem = f"'{text}' names a directory outside (or instead of) a run of its own"
    elif "/" in text or "\\" in text:
        problem = "it holds a path separator, so it would lead elsewhere than a directory of its own"
    elif any(ord(ch) < 32 or ord(ch) == 127 for ch in text):
        problem = "it holds a control character"
    elif len(text.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        problem = f"it is {len(text.encode('utf-8', 'surrogateescape'))} bytes long (at most {MAX_NAME_BYTES})"
    if problem is None:
        return None
    shown = text if len(text) <= 60 else text[:57] + "..."
    return (
        f"{key}={shown!r} is not valid: {problem}. It names one directory inside {root}: give a plain name such as "
        f"{key}=baseline-lr1e-3 (to write elsewhere, change out_dir)."
    )


DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


#: Largest ``train.lr``: methods multiply it for their own parameters (ProxyNCA++'s proxies by 1e5), and a step
#: beyond float32's range is a traceback inside the optimiser, not a run.
MAX_LR = 10.0
#: Largest input side: a 4096² RGB float image is 200 MB; beyond, one batch exhausts a machine's memory.
MAX_PIXELS = 4096
#: float32's largest finite value: training runs in float32 (or bf16), so no setting may exceed it.
FLOAT32_MAX = 3.4028234663852886e38


def _is_int(value: Any, minimum: int, maximum: float = math.inf) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and minimum <= value <= maximum


def _is_number(value: Any, low: float, high: float = math.inf, open_low: bool = False) -> bool:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return ok and (value > low if open_low else value >= low) and value <= high


def value_problem(cfg: Any) -> str | None:
    """The first numeric field out of its range, as one line naming the key, the value, what is expected and an
    example; None when every field is in range."""
    t, e, d, b = cfg.train, cfg.eval, cfg.data, cfg.backbone
    optional = {None}
    rules = [  # (key, value, valid, what is expected)
        ("train.batch_size", t.batch_size, _is_int(t.batch_size, 1), "a positive integer, e.g. 64"),
        ("train.m_per_class", t.m_per_class, _is_int(t.m_per_class, 1), "a positive integer (images per class), e.g. 4"),
        ("train.grad_accum", t.grad_accum, _is_int(t.grad_accum, 1), "a positive integer (micro-batches per step), e.g. 1"),
        ("train.steps_per_epoch", t.steps_per_epoch, t.steps_per_epoch in optional or _is_int(t.steps_per_epoch, 1),
         "a positive integer, or null for len(train) // batch_size"),
        ("train.lr", t.lr, t.lr in optional or _is_number(t.lr, 0, MAX_LR, open_low=True),
         f"a positive number up to {MAX_LR:g}, e.g. 1e-4 (methods scale it for their own parameters, up to 1e5 times)"),
        ("train.weight_decay", t.weight_decay, _is_number(t.weight_decay, 0), "a number >= 0, e.g. 1e-4"),
        ("train.warmup_epochs", t.warmup_epochs, _is_number(t.warmup_epochs, 0), "a number of epochs >= 0"),
        ("train.min_lr_ratio", t.min_lr_ratio, _is_number(t.min_lr_ratio, 0, 1), "a fraction in [0, 1]"),
        ("train.freeze_backbone_epochs", t.freeze_backbone_epochs, _is_int(t.freeze_backbone_epochs, 0),
         "an integer >= 0"),
        ("train.grad_clip", t.grad_clip, t.grad_clip in optional or _is_number(t.grad_clip, 0, open_low=True),
         "a positive norm, or null for no clipping"),
        ("train.log_every", t.log_every, _is_int(t.log_every, 1), "a positive integer"),
        ("eval.every", e.every, _is_int(e.every, 1), "a positive integer (evaluate every N epochs), e.g. 1"),
        ("eval.batch_size", e.batch_size, _is_int(e.batch_size, 1), "a positive integer, e.g. 128"),
        ("eval.kmeans_restarts", e.kmeans_restarts, _is_int(e.kmeans_restarts, 1), "a positive integer, e.g. 10"),
        ("eval.ks", list(e.ks), len(e.ks) > 0 and all(_is_int(k, 1) for k in e.ks),
         "a non-empty list of positive integers, e.g. eval.ks=[1,2,4,8]"),
        ("data.image_size", d.image_size, d.image_size in optional or _is_int(d.image_size, 1, MAX_PIXELS),
         f"a positive number of pixels up to {MAX_PIXELS}, e.g. 224, or null for the dataset card's default"),
        ("data.num_workers", d.num_workers, _is_int(d.num_workers, 0), "an integer >= 0 (0: load in the main process)"),
        ("data.resize_ratio", d.resize_ratio, _is_number(d.resize_ratio, 0, open_low=True), "a positive number"),
        ("dataset.val_fraction", cfg.dataset.val_fraction, _is_number(cfg.dataset.val_fraction, 0, 1)
         and cfg.dataset.val_fraction < 1, "a fraction in [0, 1), e.g. 0.2"),
        ("backbone.embedding_dim", b.get("embedding_dim"), b.get("embedding_dim") in optional
         or _is_int(b.get("embedding_dim"), 1), "a positive integer, or null for no head"),
        ("backbone.img_size", b.get("img_size"), b.get("img_size") in optional
         or _is_int(b.get("img_size"), 1, MAX_PIXELS), f"a positive number of pixels up to {MAX_PIXELS}, or null"),
    ]  # fmt: skip
    for key, value, valid, expected in rules:
        if not valid:
            shown = "[" + ",".join(str(v) for v in value) + "]" if isinstance(value, list) else value
            return f"{key}={shown} is not valid: expected {expected}."
    return None


#: The Recall@K every record reports (``benchmark.engine.records.METRIC_KEYS``): a run must compute them.
RECORD_KS = (1, 2, 4, 8)


def ks_problem(ks: list[int], test_images: int | None) -> str | None:
    """``eval.ks`` must hold the Recall@K every record reports (else the record is never complete and the
    leaderboard skips it) and, where the card knows the test split's size, leave each query that many others."""
    shown = "[" + ",".join(str(k) for k in ks) + "]"
    missing = [k for k in RECORD_KS if k not in ks]
    if missing:
        wanted = ",".join(str(k) for k in sorted(set(RECORD_KS) | set(ks)))
        return (
            f"eval.ks={shown} lacks {', '.join(str(k) for k in missing)}: every record reports Recall@1, 2, 4 and 8 "
            f"(the leaderboard reads them). Add the others to them: eval.ks=[{wanted}]."
        )
    if test_images and max(ks) > test_images - 1:
        return (
            f"eval.ks={shown} asks for Recall@{max(ks)}, but this dataset's test split has {test_images} images "
            f"(each query has {test_images - 1} others): give eval.ks values of at most {test_images - 1}."
        )
    return None


def finite_problem(tree: Any, prefix: str = "") -> str | None:
    """The first number of the resolved config (any section, a method's own fields included) that is NaN, infinite
    or beyond float32's range, as one line naming its key; None when every number is usable."""
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else ()
    for key, value in items:
        dotted = f"{prefix}{key}" if isinstance(tree, dict) else f"{prefix.rstrip('.')}[{key}]"
        if isinstance(value, (dict, list)):
            found = finite_problem(value, f"{dotted}.")
            if found:
                return found
        elif isinstance(value, float) and not math.isfinite(value):
            return f"{dotted}={value} is not a finite number: every numeric setting must be finite (give a number)."
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) > FLOAT32_MAX:
            return (
                f"{dotted}={value:g} is beyond float32's range (±3.4e38), the precision training runs in: give a "
                "smaller value."
            )
    return None


def override_problem(key: str, value: str, path_keys: tuple[str, ...]) -> str | None:
    """What is wrong with one ``key=value`` override before it is composed, or None.

    - ``hydra.*`` keys: this command line is not a Hydra app; Hydra's settings (``hydra.run.dir``) would be dropped
      in silence. - ``~KEY`` (deleting a key) leaves the schema without a value it needs (``~method``: no method);
      only reader options (``dataset.options.*``) are free-form. - An empty path (``out_dir=``) would mean the
      working directory.
    """
    bare = key.lstrip("+~")
    if bare == "hydra" or bare.startswith("hydra."):
        return (
            f"{key}: Hydra's own settings are not used by this command line (a run's files go to "
            "out_dir/<dataset>/<method>/<run id>). Pass out_dir=DIR (and run_name=NAME) instead."
        )
    if key.startswith("~") and not bare.startswith("dataset.options."):
        return (
            f"{key}: removing a config key is not supported: every key of the schema has a value (a run needs a "
            f"{bare.split('.')[0]}). Leave the override out for the default, or give {bare}=VALUE."
        )
    if bare in path_keys and not value.strip().strip("'\"").strip():
        what = "a directory you can write to, e.g. out_dir=runs" if bare == "out_dir" else f"a value, or {bare}=null"
        return f"{bare}= is empty (it would mean the working directory): give {what}."
    return None


def warmup_problem(warmup: float, epochs: int | None, trains: bool) -> str | None:
    """``train.warmup_epochs`` must end before the run does (the learning rate would never reach its peak)."""
    if not trains or not epochs or not warmup or warmup < epochs:
        return None
    return (
        f"train.warmup_epochs={warmup:g} is not shorter than the run's {epochs} epoch(s): the learning rate would "
        f"still be warming up when training ends. Give train.warmup_epochs < {epochs} (e.g. 1), or more train.epochs."
    )


def epochs_problem(epochs: Any, method: str, trains: bool) -> str | None:
    """``train.epochs``: None (the card's default) or at least 1 for a method that ``trains`` (0 epochs would be
    recorded, and ranked, as a result of that method)."""
    if epochs is None:
        return None
    if not _is_int(epochs, 0):
        return (
            f"train.epochs={epochs} is not valid: expected a positive number of epochs, e.g. train.epochs=60 "
            "(or leave it unset for the dataset card's default)."
        )
    if epochs == 0 and trains:
        return (
            f"train.epochs=0 with method={method} would record an untrained backbone as a {method} result. Give "
            "train.epochs >= 1, or evaluate the backbone without training with method=pretrained."
        )
    return None


def device_problem(device: str) -> str | None:
    """Why ``device`` is not a device this benchmark runs on (the name only; see :func:`missing_device`)."""
    if not DEVICE_PATTERN.fullmatch(str(device)):
        return (
            f"device={device} is not a device this benchmark runs on: use device=auto (a GPU if there is one), "
            "cpu, cuda, cuda:N or mps."
        )
    return None


def missing_device(device: str) -> str | None:
    """Why this machine cannot run on ``device`` (checked where the run executes, not where a sweep is composed)."""
    name = str(device)
    if name in ("auto", "cpu"):
        return None
    import torch

    if name.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(name.partition(":")[2] or 0)
        if count == 0:
            return (
                f"device={name} but this machine has no usable CUDA GPU (torch.cuda.is_available() is False). "
                "Use device=auto or device=cpu, or run on a GPU node (launcher=slurm)."
            )
        if index >= count:
            return f"device={name} but this machine has {count} CUDA GPU(s): use cuda:0..cuda:{count - 1}."
    elif name == "mps" and not torch.backends.mps.is_available():
        return "device=mps but the MPS backend is not available here: use device=auto or device=cpu."
    return None
