"""``python -m benchmark prepare dataset=X dataset.root=DIR``: fetch a dataset where it can be fetched, then check it.

Steps: if the layout is not already under ``root``, download each archive the card names (streaming, to a temporary
file in ``root`` then renamed), verify its checksum where the card knows one, and extract it safely; then load the
dataset (layout, split, class names and counts) and decode every image with PIL, naming the corrupt ones. Where the
files cannot be downloaded (no network, a dead link, or no public URL at all, as for Cars-196), the error says
exactly what to fetch, from where, and where to put it.
"""

from __future__ import annotations

import errno
import hashlib
import os
import tarfile
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tqdm import tqdm

from benchmark.data._common import LayoutNotFoundError
from benchmark.data.base import DatasetError, DatasetSplits, check_counts, get_reader, load_card
from benchmark.engine.records import follow_umask

#: ``downloader(url, destination)`` writes the file at ``url`` to ``destination``
Downloader = Callable[[str, Path], None]


def download_url(url: str, destination: Path, timeout: float = 60.0) -> None:
    """Stream ``url`` to a temporary file next to ``destination``, then rename it (no half-written archive)."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".part", dir=destination.parent)
    try:
        follow_umask(handle)  # the archive is the user's file: the mode their umask gives, not mkstemp's 0600
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=destination.name, disable=None) as progress:
                for block in iter(lambda: response.read(1 << 20), b""):
                    out.write(block)
                    progress.update(len(block))
        os.replace(tmp, destination)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def file_digests(path: Path) -> dict[str, str]:
    """md5 and sha256 of a file in one pass (the published checksums are one or the other)."""
    md5, sha256 = hashlib.md5(), hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            md5.update(block)
            sha256.update(block)
    return {"md5": md5.hexdigest(), "sha256": sha256.hexdigest()}


def verify_checksum(path: Path, archive: dict[str, Any]) -> None:
    """Compare the archive with the card's ``md5``/``sha256`` where they are known; a mismatch names both values."""
    wanted = {kind: archive.get(kind) for kind in ("md5", "sha256") if archive.get(kind)}
    if not wanted:
        return
    found = file_digests(path)
    for kind, value in wanted.items():
        if found[kind] != value.lower():
            raise DatasetError(
                f"{path} has {kind} {found[kind]}, but the card expects {value}: the download is corrupt or a "
                f"different file. Delete it and run the prepare command again."
            )


def extract_archive(path: Path, destination: Path) -> None:
    """Extract a tar (any compression) or zip archive, refusing members that would land outside ``destination``."""
    if tarfile.is_tarfile(path):
        with tarfile.open(path) as archive:
            archive.extractall(destination, filter="data")  # the stdlib's safe filter (PEP 706)
        return
    if zipfile.is_zipfile(path):
        root = destination.resolve()
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                target = (destination / member).resolve()
                if target != root and root not in target.parents:
                    raise DatasetError(f"{path} holds an unsafe member path {member!r}; not extracting it.")
            archive.extractall(destination)
        return
    raise DatasetError(f"{path} is neither a tar nor a zip archive. Delete it and run the prepare command again.")


def _load(card: dict[str, Any], root: Path, strict: bool) -> DatasetSplits:
    splits = get_reader(card["reader"])(card=card, root=root, strict=strict)
    splits.card = card
    check_counts(card, splits, strict)
    return splits


def _manual(card: dict[str, Any], root: Path) -> str:
    text = (card.get("download") or {}).get("manual") or "Fetch the files from the dataset's homepage."
    return f"{text.strip()} (dataset.root is {root}; expected layout: {card.get('layout', '?')})"


def _fetch(card: dict[str, Any], root: Path, download: bool, downloader: Downloader, report: dict) -> None:
    """Download (when allowed), verify and extract every archive the card names."""
    archives = (card.get("download") or {}).get("archives") or []
    if not archives:
        raise DatasetError(f"'{card['name']}' has no public download. {_manual(card, root)}")
    for archive in archives:
        path = root / archive["archive"]
        if not path.exists():
            if not download:
                raise DatasetError(f"{path} is not there and downloading is off. {_manual(card, root)}")
            if not archive.get("url"):
                raise DatasetError(f"No URL for {archive['archive']}. {_manual(card, root)}")
            print(f"Downloading {archive['url']} -> {path}", flush=True)
            try:
                downloader(archive["url"], path)
            except Exception as error:  # URLError, HTTPError, timeouts, refused connections, disk errors
                raise DatasetError(f"Could not download {archive['url']} ({error}). {_manual(card, root)}") from error
            report["downloaded"].append(str(path))
        verify_checksum(path, archive)
        print(f"Extracting {path} into {root}", flush=True)
        extract_archive(path, root)
        report["extracted"].append(str(path))


def _decode_error(path: str) -> str | None:
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()  # a full decode: truncated or corrupt data fails here, not at training time
            image.convert("RGB")
    except Exception as error:  # PIL raises OSError, SyntaxError, ValueError… for bad files
        return f"{path}: {type(error).__name__}: {error}"
    return None


def decode_all(paths: list[str], workers: int | None = None) -> list[str]:
    """Decode every image; returns ``"path: error"`` for each one that fails (PIL releases the GIL while decoding)."""
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return [error for error in pool.map(_decode_error, paths, chunksize=64) if error]


def _check_root(root: Path, download: bool) -> None:
    """Refuse a ``dataset.root`` that cannot hold a copy, before anything is created: a symlink loop or dangling
    link, a file, and (with ``--no-download``, which only checks) a directory that does not exist."""
    if os.path.lexists(root) and not root.exists():
        try:
            os.stat(root)
            why = "cannot be followed"
        except OSError as err:
            why = "is a symlink loop" if err.errno == errno.ELOOP else f"is a link to nothing ({err.strerror})"
        raise DatasetError(f"dataset.root={root} {why}: give the directory that holds (or will hold) the dataset.")
    if root.exists() and not root.is_dir():
        raise DatasetError(f"dataset.root={root} is a file, not a directory: give the directory of the dataset.")
    if not root.exists() and not download:
        raise DatasetError(
            f"dataset.root={root} does not exist; --no-download only checks a copy that is already there (nothing "
            "is created). Give the directory that holds the dataset, or leave out --no-download to fetch it."
        )
    if not root.exists():
        _check_writable(root)


def _check_writable(root: Path) -> None:
    from benchmark.engine.checks import unwritable_reason

    reason = unwritable_reason(root)
    if reason:
        raise DatasetError(
            f"dataset.root={root}: {reason}, and prepare writes the downloaded archives there. Fetch into a writable "
            "directory, or put the files there yourself and check them with --no-download."
        )


def prepare_dataset(
    name: str,
    root: str,
    download: bool = True,
    *,
    strict: bool = True,
    decode: bool = True,
    card: dict[str, Any] | None = None,
    downloader: Downloader | None = None,
) -> dict[str, Any]:
    """Fetch (where possible) and check dataset ``name`` under ``root``; returns a report.

    The report holds ``name``, ``root`` (also as ``path``), ``ok``, the per-split ``counts``, ``classes``, the
    card's ``expected`` counts, the ``downloaded``/``extracted`` archives, ``decoded`` (images decoded) and
    ``corrupt`` (``"path: error"`` lines). A missing or unfetchable dataset raises :class:`DatasetError` saying what
    to fetch from where and where to put it; a corrupt image gives ``ok: False`` and is named. ``card`` and
    ``downloader`` let tests run without the network.
    """
    card = card or load_card(name)
    root_path = Path(root).expanduser()
    report: dict[str, Any] = {
        "name": card["name"],
        "root": str(root_path),
        "path": str(root_path),
        "ok": False,
        "downloaded": [],
        "extracted": [],
        "corrupt": [],
        "decoded": 0,
    }
    if card.get("needs_root", True):
        _check_root(root_path, download)
        if download:
            root_path.mkdir(parents=True, exist_ok=True)  # writable: checked above
        try:
            splits = _load(card, root_path, strict)
        except LayoutNotFoundError as first:
            # Only a copy that is not there at all is fetched; a present copy with problems is reported as it is.
            try:
                if download:
                    _check_writable(root_path)
                _fetch(card, root_path, download, downloader or download_url, report)
            except DatasetError as error:
                raise DatasetError(f"{error}\n(Loading the copy first said: {first})") from error
            except OSError as error:  # extracting into a directory that filled up or turned read-only
                raise DatasetError(
                    f"Could not write into dataset.root={root_path} ({error.strerror or error}): free space or "
                    "choose a writable directory, then run the prepare command again."
                ) from error
            splits = _load(card, root_path, strict)
    else:
        splits = get_reader(card["reader"])(card=card, root=None, strict=strict)
    report["counts"] = splits.summary()
    report["classes"] = len(splits.class_names)
    report["expected"] = card.get("expected") or {}
    if decode:  # embedded datasets hold arrays, not files: nothing to decode
        paths = [p for data in (splits.train, splits.test) if not hasattr(data.images, "shape") for p in data.images]
        report["corrupt"] = decode_all(paths)
        report["decoded"] = len(paths)
    report["ok"] = not report["corrupt"]
    return report


def format_report(report: dict[str, Any]) -> str:
    """The report as the lines the CLI prints."""
    lines = [f"Dataset {report['name']} at {report['root']}: {'OK' if report['ok'] else 'PROBLEMS FOUND'}"]
    for split, counts in report.get("counts", {}).items():
        lines.append(f"  {split}: {counts['classes']} classes, {counts['images']} images")
    for key in ("downloaded", "extracted"):
        if report.get(key):
            lines.append(f"  {key}: {', '.join(report[key])}")
    lines.append(f"  decoded {report.get('decoded', 0)} images")
    if report.get("corrupt"):
        lines.append(f"  {len(report['corrupt'])} corrupt image(s); replace them from the archive:")
        lines += [f"    {line}" for line in report["corrupt"][:50]]
        if len(report["corrupt"]) > 50:
            lines.append(f"    ... and {len(report['corrupt']) - 50} more")
    return "\n".join(lines)
