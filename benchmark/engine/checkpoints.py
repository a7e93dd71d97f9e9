"""Checkpoints: only tensors and plain values, written atomically, read back with ``torch.load(weights_only=True)``.

A checkpoint is a dict of tensors, numbers, strings, lists, tuples and dicts: the RNG states are stored in that form
(numpy's ``get_state`` tuple holds an ndarray, which the weights-only unpickler refuses, so its keys become a
tensor; Python's ``random.getstate`` is a tuple of ints and passes as it is). Nothing is added to torch's allowlist
(``add_safe_globals``). A file that needs anything else to load (a pickle that would run code, an extra object) is
refused without running it, and so is a truncated file or one of another shape.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmark.engine.control import TrainingError

#: The keys (and their types) every checkpoint of this benchmark holds.
REQUIRED: dict[str, type | tuple[type, ...]] = {
    "config_hash": str,
    "epoch": int,
    "step_in_epoch": int,
    "encoder": dict,
    "method": dict,
    "history": list,
    "best": dict,
    "rng": dict,
}


class CheckpointError(TrainingError):
    """A checkpoint that cannot be resumed (unsafe, truncated, foreign); ``force=true`` moves the run aside."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = Path(path)
        super().__init__(
            f"Checkpoint {path} cannot be used: {reason}. Nothing in it was run. Pass force=true to move the run "
            f"directory aside and train again, or remove {self.path.parent.parent}."
        )


def rng_state() -> dict[str, Any]:
    """Torch's, numpy's and Python's global RNG states, as tensors and plain values."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["name"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def non_finite_count(*state_dicts: dict[str, Any]) -> int:
    """How many NaN or infinite values the floating-point tensors of these state dicts hold."""
    total = 0
    for state in state_dicts:
        for value in state.values():
            if torch.is_tensor(value) and value.is_floating_point():
                total += int((~torch.isfinite(value)).sum())
    return total


def write(state: dict[str, Any], path: Path) -> Path:
    """Save ``state`` to ``path`` through ``<name>.tmp`` and ``os.replace``; a failed write leaves no temporary.

    Any failure becomes a :class:`TrainingError` in one line: torch reports a full disk as a ``RuntimeError``
    (``[enforce fail at inline_container.cc:...]``), not an ``OSError``. An interrupt (a second Ctrl-C) removes
    the temporary too and goes on as it is.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    try:
        # Through a file object of our own: torch's writer keeps a path it opened until it is garbage-collected, and
        # the error's traceback keeps it alive, so the space of an unlinked temporary would stay used.
        with open(tmp, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except Exception as err:
        tmp.unlink(missing_ok=True)
        kept = f"{path} is kept as it was" if path.exists() else f"no earlier {path.name} exists"
        raise TrainingError(
            f"Could not write checkpoint {path}: {write_error_reason(err)}{free_space(path.parent)}. {kept}. Free "
            "space (or choose another out_dir) and run the same command again: it resumes from the last checkpoint "
            "written."
        ) from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_error_reason(err: BaseException) -> str:
    """Why a write failed, in one line: the OS's words, else the first line of the library's message."""
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def free_space(directory: Path) -> str:
    """`` (N MB free there)``, or nothing when the file system cannot say."""
    try:
        return f" ({shutil.disk_usage(directory).free / 1e6:.1f} MB free there)"
    except OSError:
        return ""


def read(path: Path, device: torch.device | str = "cpu", config_hash: str | None = None, mmap: bool = False) -> dict:
    """Load a checkpoint weights-only and check its shape (and, given ``config_hash``, that this config wrote it).

    ``mmap=True`` maps the tensors instead of reading them (a cheap check that the file is whole and safe).
    """
    try:
        state = torch.load(path, map_location=device, weights_only=True, mmap=mmap)
    except Exception as err:  # anything a user-supplied file can make torch.load raise: refuse it, in one line
        raise CheckpointError(path, load_error_reason(err)) from None
    if not isinstance(state, dict):
        raise CheckpointError(path, f"it holds a {type(state).__name__}, not a checkpoint of this benchmark")
    wrong = [k for k, kind in REQUIRED.items() if not isinstance(state.get(k), kind) or isinstance(state.get(k), bool)]
    if wrong:
        raise CheckpointError(path, f"it is not a checkpoint of this benchmark (missing or malformed: {wrong})")
    if config_hash is not None and state["config_hash"] != config_hash:
        raise TrainingError(
            f"Checkpoint {path} was written by a run with another config (hash {state['config_hash']}, "
            f"this config {config_hash}). Use another run_name or out_dir, or remove the directory."
        )
    return state


def load_error_reason(err: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, in one line (torch's own message is many lines)."""
    text = str(err)
    if "Weights only load failed" in text or "Unsupported global" in text:
        found = next((line.strip() for line in text.splitlines() if "Unsupported global" in line), "")
        return "it holds objects other than tensors and plain values, which are never loaded" + (
            f" ({found.rstrip('.')})" if found else ""
        )
    first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    return f"it is truncated or not a checkpoint file ({first})"


def remove_litter(run_dir: Path) -> list[Path]:
    """Delete what an interrupted write left: ``.<name>.*.tmp`` (atomic text writes) and ``checkpoints/*.tmp``."""
    found = [*run_dir.glob(".*.tmp"), *(run_dir / "checkpoints").glob("*.tmp")]
    for path in found:
        path.unlink(missing_ok=True)
    return found
