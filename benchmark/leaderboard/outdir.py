"""The leaderboard's output directory: nothing a user already has there is replaced or deleted without ``--force``.

Every build writes ``.leaderboard-files.json`` into its ``--out`` directory: the files it wrote, each with its
SHA-256. A later build may replace (or, for figures it no longer has, delete) exactly those files, unchanged since;
any other file it would replace or delete (one it did not write, one edited since, a committed leaderboard built
before this manifest existed) stops it before anything is written, unless ``force``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

MANIFEST = ".leaderboard-files.json"
#: The fixed file names of each output format (figures are ``figures/runs_*.png`` and ``figures/reported_*.png``).
FORMAT_FILES = {
    "md": ("README.md",),
    "csv": ("runs.csv", "leaderboard.csv", "skipped.csv", "reported.csv"),
    "tex": ("leaderboard.tex",),
    "html": ("leaderboard.html",),
}


class OutputExistsError(ValueError):
    """``--out`` holds files the build would replace or delete that it did not write (or that changed since)."""


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _written_before(out: Path) -> dict[str, str]:
    try:
        data = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    files = data.get("files") if isinstance(data, dict) else None
    return {str(k): str(v) for k, v in files.items()} if isinstance(files, dict) else {}


def at_risk(out: Path, formats: Iterable[str]) -> list[Path]:
    """The existing files under ``out`` that a build of ``formats`` may replace or delete."""
    formats = set(formats)
    paths = [out / name for fmt in formats for name in FORMAT_FILES.get(fmt, ())]
    if "png" in formats and (out / "figures").is_dir():
        paths += sorted(p for p in (out / "figures").glob("*.png") if p.name.startswith(("runs_", "reported_")))
    return [p for p in paths if p.is_file()]


def check_out_dir(out: Path, formats: Iterable[str], force: bool) -> None:
    """Refuse (:class:`OutputExistsError`) when ``out`` holds files this command did not write, unless ``force``."""
    if force or not out.is_dir():
        return
    known = _written_before(out)
    foreign = [p for p in at_risk(out, formats) if known.get(p.relative_to(out).as_posix()) != _sha256(p)]
    if foreign:
        tables = [p.name for p in foreign if p.parent == out]
        figures = len(foreign) - len(tables)
        shown = ", ".join(tables + ([f"{figures} figure(s) in figures/"] if figures else []))
        raise OutputExistsError(
            f"--out {out} holds {len(foreign)} file(s) this command would replace or delete but did not write (or "
            f"that changed since): {shown}. Nothing was written. Choose another --out directory, or pass --force to "
            "replace them."
        )


def record_written(out: Path, written: Iterable[Path]) -> None:
    """Write the manifest of what this build wrote (atomically), so that the next build may replace exactly those."""
    from benchmark.engine.records import write_json_atomic

    files = {}
    for path in written:
        path = Path(path)
        if path.is_file() and path.resolve().is_relative_to(out.resolve()):
            files[path.resolve().relative_to(out.resolve()).as_posix()] = _sha256(path)
    write_json_atomic(out / MANIFEST, {"written_by": "python -m benchmark leaderboard", "files": files})
