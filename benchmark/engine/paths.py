"""Checks on the directories a command will write to, made before anything is written (no imports from benchmark).

``unwritable_reason(path)`` says why ``path`` cannot be a directory that this process writes into, without creating
it: a regular file on the way, a directory without write permission, or a read-only file system.
"""

from __future__ import annotations

import os
from pathlib import Path


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
