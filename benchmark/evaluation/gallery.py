"""Neighbours as pictures: a small gallery of fixed test queries with their top-8 neighbours, saved beside a record.

Every run that evaluates writes ``gallery/`` in its run directory (``eval.gallery=false`` skips it):

- ``gallery.json``: the queries, each with its neighbours' test indices, labels, class names, cosine scores and
  hit (same class) flags, plus the split's fingerprint (dataset, size, a hash of the labels);
- ``thumbnails.png``: every image shown, as 64×64 cells of one sprite (order in ``gallery.json``), so a gallery is
  drawn again, or compared with another run's, without the dataset;
- ``gallery.png``: the picture (:mod:`benchmark.evaluation.gallery_figure`).

The queries depend only on the test split, never on the run: one per k-th test class (classes with at least two
test images, sorted by class id, k chosen so that :data:`QUERIES` classes are drawn), the image within the class
drawn by ``numpy.random.default_rng(SEED)``. So every method on a dataset and split shows the same queries, and
``python -m benchmark neighbours RUN_A RUN_B ...`` (:func:`compare_runs`) lays runs side by side on them. The
neighbours come from the evaluator's own kNN (:func:`benchmark.evaluation.knn.exact_neighbours`: same
similarity, tie rule and order as the metrics).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from benchmark.engine.records import write_atomic, write_json_atomic
from benchmark.evaluation import knn as _knn

DIRNAME = "gallery"
FORMAT = "dml-benchmark gallery v1"
QUERIES = 8  # queries per gallery
TOP = 8  # neighbours shown per query
SEED = 0  # draws the image of each chosen class
CELL = 64  # thumbnail cell, pixels
SPRITE_COLUMNS = 16
QUERY_RULE = (
    "one query per k-th test class (classes with >= 2 test images, sorted by class id, starting at the first; "
    f"k = ceil(classes / {QUERIES})), its image drawn with numpy.random.default_rng({SEED}) among the class's test "
    "images in split order"
)


class GalleryError(ValueError):
    """A gallery that cannot be read or compared; the message says what to do."""


def choose_queries(labels: np.ndarray, n_queries: int = QUERIES, seed: int = SEED) -> np.ndarray:
    """Test indices of the gallery's queries (see the module docstring): a function of the labels alone."""
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    eligible = classes[counts >= 2]
    if not len(eligible):
        return np.zeros(0, dtype=np.int64)
    step = max(1, math.ceil(len(eligible) / n_queries))
    rng = np.random.default_rng(seed)
    picks = [int(rng.choice(np.flatnonzero(labels == c))) for c in eligible[::step][:n_queries]]
    return np.asarray(picks, dtype=np.int64)


def split_fingerprint(dataset: str, labels: np.ndarray) -> dict[str, Any]:
    """What identifies a test split: the dataset, its size and a hash of its labels in order."""
    labels = np.ascontiguousarray(np.asarray(labels, dtype=np.int64))
    return {"dataset": dataset, "split": "test", "images": int(len(labels)), "labels_sha1": _sha1(labels)}


def _sha1(array: np.ndarray) -> str:
    return hashlib.sha1(array.tobytes()).hexdigest()[:16]


def thumbnail(image: Image.Image, cell: int = CELL) -> Image.Image:
    """``image`` fitted into a ``cell``×``cell`` grey square, aspect kept (PIL's ``ImageOps.pad``)."""
    return ImageOps.pad(image.convert("RGB"), (cell, cell), color=(235, 235, 235), method=Image.Resampling.LANCZOS)


def build_gallery(
    embeddings: np.ndarray,
    labels: np.ndarray,
    class_names: list[str],
    images: Any,
    *,
    about: dict[str, Any],
    top: int = TOP,
) -> tuple[dict[str, Any], Image.Image]:
    """The gallery's JSON and thumbnail sprite for one run's test embeddings.

    ``images[i]`` is test image ``i`` (a path or an H×W×3 array, as the split holds them); ``about`` names the run
    (method, dataset, seed, run_id, config_hash).
    """
    from benchmark.engine.pipeline import open_image

    labels = np.asarray(labels, dtype=np.int64)
    qids = choose_queries(labels)
    x = _knn.l2_normalise(np.asarray(embeddings))
    idx, scores = _knn.exact_neighbours(x, qids, top) if len(qids) else (np.zeros((0, top), int), None)
    shown = sorted({int(i) for i in qids} | {int(i) for i in idx.ravel()})
    queries = []
    for row, q in enumerate(qids):
        neighbours = [
            {
                "index": int(j),
                "label": int(labels[j]),
                "class_name": class_names[int(labels[j])],
                "score": float(scores[row, col]),
                "hit": bool(labels[j] == labels[q]),
            }
            for col, j in enumerate(idx[row])
        ]
        queries.append(
            {
                "index": int(q),
                "label": int(labels[q]),
                "class_name": class_names[int(labels[q])],
                "hit@1": bool(neighbours and neighbours[0]["hit"]),
                "neighbours": neighbours,
            }
        )
    rows = max(1, math.ceil(len(shown) / SPRITE_COLUMNS))
    sprite = Image.new("RGB", (SPRITE_COLUMNS * CELL, rows * CELL), (255, 255, 255))
    for pos, i in enumerate(shown):
        sprite.paste(thumbnail(open_image(images[i])), ((pos % SPRITE_COLUMNS) * CELL, (pos // SPRITE_COLUMNS) * CELL))
    gallery = {
        "format": FORMAT,
        **about,
        "test_split": split_fingerprint(str(about.get("dataset")), labels),
        "query_rule": QUERY_RULE,
        "top": int(top),
        "similarity": "cosine of L2-normalised embeddings; the evaluator's kNN and tie rule",
        "queries": queries,
        "thumbnails": {"file": "thumbnails.png", "cell": CELL, "columns": SPRITE_COLUMNS, "order": shown},
        "image": "gallery.png",
    }
    return gallery, sprite


def write_gallery(run_dir: str | os.PathLike, gallery: dict[str, Any], sprite: Image.Image) -> Path:
    """Write ``gallery/`` (thumbnails, picture, then the JSON last, each atomically); returns the picture's path."""
    from benchmark.evaluation.gallery_figure import draw_gallery

    target = Path(run_dir) / DIRNAME
    write_atomic(target / "thumbnails.png", _png_bytes(sprite))
    thumbs = Thumbnails(gallery, sprite)
    picture = write_atomic(target / "gallery.png", draw_gallery([gallery], [thumbs]))
    write_json_atomic(target / "gallery.json", gallery)
    return picture


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


class Thumbnails:
    """Cells of a gallery's sprite by test index."""

    def __init__(self, gallery: dict[str, Any], sprite: Image.Image) -> None:
        spec = gallery["thumbnails"]
        self.cell, self.columns = int(spec["cell"]), int(spec["columns"])
        self.position = {int(i): pos for pos, i in enumerate(spec["order"])}
        self.sprite = sprite.convert("RGB")

    def __getitem__(self, index: int) -> np.ndarray:
        pos = self.position[int(index)]
        left, top = (pos % self.columns) * self.cell, (pos // self.columns) * self.cell
        return np.asarray(self.sprite.crop((left, top, left + self.cell, top + self.cell)))


# ----------------------------------------------------------------------------------------------- reading, comparing
def load_gallery(run_dir: str | os.PathLike) -> tuple[dict[str, Any], Thumbnails]:
    """A run's gallery and thumbnails; :class:`GalleryError` (one line) for a run without one."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise GalleryError(f"{run_dir}: not a directory; give run directories (the folders holding record.json).")
    if not (run_dir / "record.json").is_file():
        raise GalleryError(f"{run_dir}: no record.json here, so it is not a run directory; give the run's folder.")
    path = run_dir / DIRNAME / "gallery.json"
    if not path.is_file():
        raise GalleryError(
            f"{run_dir}: this run has no gallery ({DIRNAME}/gallery.json): its record was written before runs saved "
            "galleries, or with eval.gallery=false. Run it again with this version and force=true (the old run is "
            "moved aside), or leave it out."
        )
    try:
        gallery = json.loads(path.read_text(encoding="utf-8"))
        if gallery.get("format") != FORMAT:
            raise ValueError(f"format {gallery.get('format')!r}, expected {FORMAT!r}")
        with Image.open(run_dir / DIRNAME / gallery["thumbnails"]["file"]) as sprite:
            thumbs = Thumbnails(gallery, sprite)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise GalleryError(
            f"{path}: cannot be read ({err}); run the same command again with force=true to rewrite the run."
        ) from None
    return gallery, thumbs


def disagreements(galleries: list[dict[str, Any]]) -> list[int]:
    """Positions of the queries whose R@1 (top neighbour of the same class or not) differs between the runs."""
    hits = np.array([[q["hit@1"] for q in g["queries"]] for g in galleries], dtype=bool)
    return [int(i) for i in np.flatnonzero(hits.any(axis=0) & ~hits.all(axis=0))]


def compare_runs(
    run_dirs: list[str], out: str | os.PathLike, force: bool = False, queries: list[int] | None = None
) -> tuple[Path, list[int]]:
    """Lay the galleries of ``run_dirs`` side by side on their (shared) queries, the queries where they disagree at
    R@1 highlighted, into the PNG ``out``; returns its path and the disagreeing query positions (0-based, among all
    the queries). ``queries``: 1-based positions to draw (default: all)."""
    from benchmark.evaluation.gallery_figure import draw_gallery

    out = Path(out)
    if out.is_dir():
        raise GalleryError(f"--out {out} is a directory; give a file name, e.g. --out {out / 'neighbours.png'}.")
    if out.exists() and out.stat().st_size > 0 and not force:
        raise GalleryError(f"--out {out} exists and is not empty; pass --force to replace it, or choose another --out.")
    loaded = [load_gallery(d) for d in run_dirs]
    galleries = [g for g, _ in loaded]
    first, name0 = galleries[0], run_dirs[0]
    for g, name in zip(galleries[1:], run_dirs[1:], strict=True):
        a, b = first["test_split"], g["test_split"]
        if a["dataset"] != b["dataset"]:
            raise GalleryError(
                f"{name} is a run on dataset '{b['dataset']}' but {name0} is on '{a['dataset']}': neighbours compares "
                "runs of one dataset and split (the same queries); give runs of one dataset."
            )
        if a != b or [q["index"] for q in g["queries"]] != [q["index"] for q in first["queries"]]:
            raise GalleryError(
                f"{name} and {name0} are on '{a['dataset']}' but not on the same test split ({b['images']} vs "
                f"{a['images']} images, or other labels, e.g. other dataset.options), so their queries differ; "
                "give runs of one split."
            )
    differ = disagreements(galleries) if len(galleries) > 1 else []
    n = len(first["queries"])
    keep = list(range(n)) if not queries else [q - 1 for q in queries]
    if any(not 0 <= q < n for q in keep):
        raise GalleryError(f"--queries {','.join(map(str, queries or []))}: these galleries hold queries 1..{n}.")
    shown = [dict(g, n_queries=n, queries=[dict(g["queries"][q], position=q + 1) for q in keep]) for g in galleries]
    highlight = {pos for pos, q in enumerate(keep) if q in differ}
    write_atomic(out, draw_gallery(shown, [t for _, t in loaded], highlight=highlight, disagreeing=len(differ)))
    return out, differ
