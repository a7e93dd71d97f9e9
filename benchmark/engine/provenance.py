"""What code a run was trained with: the method's source files (hashed) and the git SHA of every start and resume.

A checkpoint stores ``code`` (the method's source hash and files) and ``starts`` (one entry per start of the run: git
SHA, dirty flag, time, and the position it resumed from); the record carries both. Resuming a checkpoint written by
other method code is refused (:class:`~benchmark.engine.checkpoints.CheckpointError`, so ``force=true`` moves the run
aside and trains again): the epochs already trained and the ones still to come would not be the same method. The
resolved config is guarded by the config hash, which the checkpoint holds and :func:`checkpoints.read` compares.
"""

from __future__ import annotations

import hashlib
import inspect
import sys
import types
from pathlib import Path
from typing import Any

from benchmark.engine.checkpoints import CheckpointError


def _method_modules(method_cls: type) -> list[types.ModuleType]:
    """The modules of the ``methods`` package a method is made of: those of its classes (its MRO), every module of
    its own sub-package (``methods/saga/*``), and the ``methods`` modules those import from (``methods/_pml.py``)."""
    found: dict[str, types.ModuleType] = {}

    def add(name: str | None) -> None:
        module = sys.modules.get(name or "")
        if module is not None and (name == "methods" or str(name).startswith("methods.")) and name not in found:
            found[name] = module

    for cls in method_cls.__mro__:
        add(cls.__module__)
        module = sys.modules.get(cls.__module__)
        package = cls.__module__ if hasattr(module, "__path__") else cls.__module__.rpartition(".")[0]
        if package.startswith("methods."):
            add(package)
            for name in list(sys.modules):
                if name.startswith(package + "."):
                    add(name)
    for module in list(found.values()):  # one level of imports: shared helpers of the methods package
        for value in vars(module).values():
            add(value.__name__ if isinstance(value, types.ModuleType) else getattr(value, "__module__", None))
    found.pop("methods", None)  # the package's __init__ only discovers the methods
    return [found[name] for name in sorted(found)]


def method_code(method_cls: type) -> dict[str, Any]:
    """``{"hash", "files": {path: sha256}}`` of the method's source files (paths relative to the repository)."""
    from benchmark.engine.records import REPO_ROOT

    files: dict[str, str] = {}
    for module in _method_modules(method_cls):
        try:
            path = Path(inspect.getsourcefile(module) or "")
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        except (TypeError, OSError):  # a built-in or frozen module: nothing to hash
            continue
        shown = path.resolve().relative_to(REPO_ROOT) if path.resolve().is_relative_to(REPO_ROOT) else path
        files[shown.as_posix()] = digest
    joined = "".join(f"{name}:{digest}\n" for name, digest in sorted(files.items()))
    return {"hash": hashlib.sha256(joined.encode()).hexdigest()[:16], "files": files}


def start_entry(resumed_from: tuple[int, int] | None) -> dict[str, Any]:
    """One start of a run, for the record: git SHA and dirty flag, time, and the (epoch, step) it resumed from."""
    from benchmark.engine.records import git_info, utc_now

    git = git_info()
    where = {"epoch": resumed_from[0], "step": resumed_from[1]} if resumed_from else None
    return {"started": utc_now(), "git_sha": git.get("sha"), "git_dirty": git.get("dirty"), "resumed_from": where}


def record_start(starts: list[dict[str, Any]], resumed_from: tuple[int, int] | None) -> None:
    """Append this start to ``starts``; on a resume from another git commit (the method's code being the same, or
    :func:`check_same_code` would have refused it), say so."""
    entry = start_entry(resumed_from)
    before = starts[-1].get("git_sha") if starts and isinstance(starts[-1], dict) else None
    if resumed_from and before and entry["git_sha"] and before != entry["git_sha"]:
        print(
            f"Note: this run was trained so far at git {before[:10]} and resumes at {entry['git_sha'][:10]} (the "
            "method's code is the same; the record lists every start).",
            flush=True,
        )
    starts.append(entry)


def check_same_code(state: dict[str, Any], current: dict[str, Any], path: Path, method: str) -> str | None:
    """Refuse (CheckpointError) a checkpoint written by other code of the method; return a note when it cannot tell.

    A checkpoint from before this check (no ``code``) is resumed with a note saying so.
    """
    written = state.get("code")
    if not isinstance(written, dict) or not isinstance(written.get("files"), dict):
        return f"{path} does not say which code wrote it (older than this check): resuming it as it is."
    if written.get("hash") == current["hash"]:
        return None
    before, now = written["files"], current["files"]
    changed = sorted(name for name in set(before) | set(now) if before.get(name) != now.get(name))
    starts = state.get("starts") or [{}]
    sha = (starts[-1] or {}).get("git_sha")
    at = f" (last trained at git {str(sha)[:10]})" if sha else ""
    raise CheckpointError(
        path,
        f"method '{method}' has changed since it was written{at}: {', '.join(changed[:5])}"
        + (" ..." if len(changed) > 5 else "")
        + "; resuming would mix two versions of the method in one run",
    )
