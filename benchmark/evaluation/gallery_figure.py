"""Draws galleries (:mod:`benchmark.evaluation.gallery`) with matplotlib: one run, or several side by side.

Each query is a block: the query image, then its top neighbours, best first. A neighbour of the query's class (a
hit) has a thick solid border and a tick (✓), any other (a miss) a dashed border and a cross (✗), so the marks read
in greyscale and without colour vision too; every image has its class name under it and its rank and cosine score
above it. Several runs give one line per run in each block; blocks where the runs disagree at R@1 are shaded and
labelled. Axes are placed by hand (fixed sizes in inches) so a gallery's size depends only on its content.
"""

from __future__ import annotations

import io
import textwrap
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from PIL import Image  # noqa: E402

HIT, MISS = "#1b7837", "#b2182b"  # dark green / dark red: also far apart in lightness from each other's dash style
CELL, GAP, QUERY_GAP = 0.8, 0.1, 0.25  # inches
ABOVE, BELOW = 0.16, 0.46  # caption heights above and below an image
LINE = ABOVE + CELL + BELOW
HEADER, BLOCK_GAP, MARGIN, TITLE = 0.2, 0.16, 0.2, 0.62
LABEL = 1.35  # the run label column (several runs only)
DPI = 100
FONT = 6


def _class_text(name: str, width: int = 17, lines: int = 4) -> str:
    wrapped = textwrap.wrap(str(name), width) or [""]
    if len(wrapped) > lines:
        wrapped = [*wrapped[: lines - 1], textwrap.shorten(" ".join(wrapped[lines - 1 :]), width, placeholder="…")]
    return "\n".join(wrapped)


def _run_label(g: dict[str, Any]) -> str:
    return f"{g.get('method')}\nseed {g.get('seed')} [{str(g.get('config_hash', ''))[:8]}]"


def draw_gallery(
    galleries: list[dict[str, Any]],
    thumbs: list[Any],
    highlight: set[int] | None = None,
    disagreeing: int | None = None,
) -> bytes:
    """PNG bytes of the galleries (one or several runs on the same queries); ``highlight``: positions of the drawn
    queries to shade (the runs disagree there at R@1); ``disagreeing``: how many of all the queries disagree (for
    the title, when only some are drawn)."""
    highlight = highlight or set()
    several = len(galleries) > 1
    first = galleries[0]
    top = max((len(q["neighbours"]) for g in galleries for q in g["queries"]), default=0)
    n_queries = len(first["queries"])
    label_w = LABEL if several else 0.0
    width = 2 * MARGIN + label_w + (top + 1) * (CELL + GAP) + QUERY_GAP
    block = (HEADER if several else 0.0) + len(galleries) * LINE
    height = TITLE + MARGIN + n_queries * (block + BLOCK_GAP) + (0.3 if not n_queries else 0.0)
    fig = plt.figure(figsize=(width, height), dpi=DPI)
    _title(fig, galleries, len(highlight) if disagreeing is None else disagreeing, top, height)

    def axes(x: float, y: float) -> Any:  # x, y: the image's lower-left corner, inches from the lower-left
        return fig.add_axes((x / width, y / height, CELL / width, CELL / height))

    y = height - TITLE
    if not n_queries:
        fig.text(0.5, (y - 0.15) / height, "no query: no test class has two images", ha="center", fontsize=8)
    for pos in range(n_queries):
        y_top = y
        if pos in highlight:
            fig.add_artist(
                Rectangle(
                    (MARGIN / 2 / width, (y_top - block - BLOCK_GAP / 2) / height),
                    1 - MARGIN / width,
                    (block + BLOCK_GAP / 2) / height,
                    transform=fig.transFigure,
                    facecolor="#fde9a9",
                    edgecolor="#7a5c00",
                    linewidth=1.5,
                    zorder=0,
                )
            )
        if several:
            q = first["queries"][pos]
            text = f"query {q.get('position', pos + 1)}: {q['class_name']}"
            fig.text(MARGIN / width, (y - HEADER + 0.05) / height, text, fontsize=FONT + 1, va="bottom")
            if pos in highlight:
                fig.text(
                    1 - MARGIN / width, (y - HEADER + 0.05) / height, "R@1 differs", fontsize=FONT + 2,
                    ha="right", va="bottom", weight="bold",
                )  # fmt: skip
            y -= HEADER
        for g, t in zip(galleries, thumbs, strict=True):
            q = g["queries"][pos]
            base = y - ABOVE - CELL
            x = MARGIN + label_w
            if several:
                mark = "✓" if q["hit@1"] else "✗"
                fig.text(MARGIN / width, (base + CELL / 2) / height, f"{_run_label(g)}\nR@1 {mark}",
                         fontsize=FONT + 1, va="center")  # fmt: skip
            _cell(axes(x, base), t[q["index"]], "query", q["class_name"], "black", "solid", 2.0)
            x += CELL + GAP + QUERY_GAP
            for rank, nb in enumerate(q["neighbours"], start=1):
                hit = nb["hit"]
                caption = f"{'✓' if hit else '✗'} {rank}   {nb['score']:.2f}"
                _cell(axes(x, base), t[nb["index"]], caption, nb["class_name"], HIT if hit else MISS,
                      "solid" if hit else (0, (3, 2)), 4.0 if hit else 2.2)  # fmt: skip
                x += CELL + GAP
            y -= LINE
        y = y_top - block - BLOCK_GAP
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, facecolor="white")
    plt.close(fig)
    # An adaptive 256-colour palette (PIL) keeps a gallery a few hundred KB; undithered, so flat areas stay flat.
    image = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB").quantize(256, dither=Image.Dither.NONE)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()


def _cell(ax: Any, image: Any, above: str, below: str, colour: str, style: Any, lw: float) -> None:
    ax.imshow(image, interpolation="lanczos")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(lw)
        spine.set_linestyle(style)
    ax.set_title(above, fontsize=FONT + 1, color=colour, pad=2, weight="bold")
    ax.text(0.5, -0.06, _class_text(below), transform=ax.transAxes, ha="center", va="top", fontsize=FONT)


def _title(fig: Any, galleries: list[dict[str, Any]], disagreeing: int, top: int, height: float) -> None:
    g = galleries[0]
    n = len(g["queries"])
    if len(galleries) == 1:
        head = f"{g.get('method')} on {g.get('dataset')} (test split), seed {g.get('seed')}, run {g.get('run_id')}"
    else:
        head = (
            f"{len(galleries)} runs on {g.get('dataset')} (test split), {n} of the same fixed queries; "
            f"they disagree at R@1 on {disagreeing} of all {g.get('n_queries', n)} (shaded)"
        )
    legend = (
        f"Top-{top} neighbours of fixed test queries (the same for every run on this split). "
        "Thick solid border ✓ = same class as the query (hit); dashed border ✗ = another class (miss); "
        "above: rank and cosine score."
    )
    fig.text(MARGIN / fig.get_figwidth(), 1 - 0.22 / height, head, fontsize=FONT + 3, weight="bold", va="center")
    fig.text(MARGIN / fig.get_figwidth(), 1 - 0.44 / height, textwrap.fill(legend, 150), fontsize=FONT, va="center")
