"""Every field a record brings into the leaderboard comes out inert: in Markdown, LaTeX, HTML and the figures.

A record's method, backbone, transforms, hashes and dataset are whatever the file says; a hostile or merely unusual
value (``<script>``, ``|``, ``_``, ``&``, ``%``, ``#``, ``$``, ``\\``, a newline) must neither run, nor break a
table, nor compile into something else.
"""

from __future__ import annotations

import random
import re

import pytest

from benchmark.leaderboard import gather as lb
from benchmark.leaderboard.render import md_escape
from tests.test_leaderboard import make_record, random_metrics, write_run

SCRIPT = "<script>alert(1)</script>"
HOSTILE_METHOD = f"{SCRIPT}|x_y&z%w#v$u\\t"
HOSTILE_BACKBONE = "res|net_50 & co %1 #2 $3$ \\emph{x} [a](http://e.example) *b* `c` ~d~"
HOSTILE_DATASET = "cub\n\n## injected heading <img src=x onerror=alert(2)>"


@pytest.fixture
def hostile_board(tmp_path):
    rng = random.Random(7)
    for method, level in ((HOSTILE_METHOD, 0.6), ("proxy_anchor", 0.5)):
        for seed in range(2):
            rec = make_record(method, HOSTILE_DATASET, seed, random_metrics(rng, level))
            rec["backbone"]["name"] = HOSTILE_BACKBONE
            rec["data"]["train_transform"] = "RandomResizedCrop | <b>bold</b> & 100%"
            rec["protocol"]["hash"] = "a1b2$c3#d4_e5%f6"
            write_run(tmp_path / "runs", rec, name=f"run{method[:3]}-{seed}".replace("<", "x"))
    return lb.build_leaderboard([tmp_path / "runs"], tmp_path / "out", reference="proxy_anchor", reported_dir=None)


def _unescaped(pattern: str, text: str) -> list[str]:
    return re.findall(rf"(?<!\\){pattern}", text)


def _md_tables(md: str) -> list[list[str]]:
    """The Markdown tables of a document: runs of consecutive lines starting with '|'."""
    tables, current = [], []
    for line in md.splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    return tables


def test_markdown_holds_record_fields_as_inert_text(hostile_board):
    md = hostile_board["md"].read_text()
    assert SCRIPT not in md and "<img" not in md and "<b>" not in md
    assert "&lt;script&gt;" in md
    assert md_escape(HOSTILE_METHOD) in md and md_escape(HOSTILE_BACKBONE) in md
    assert "\n## injected heading" not in md  # a newline in a field never starts a line of its own
    tables = _md_tables(md)
    assert len(tables) >= 2
    for table in tables:
        widths = {len(_unescaped(r"\|", line)) for line in table}
        assert len(widths) == 1, table  # a '|' in a field never adds a column
        for line in table[2:]:
            cells = [c.strip().removeprefix("**").removesuffix("**") for c in re.split(r"(?<!\\)\|", line)]
            assert not _unescaped(r"[_*`\[\]$#~<>]", "".join(cells)), line  # no live Markdown or HTML in a cell


def test_latex_holds_record_fields_escaped(hostile_board):
    tex = hostile_board["tex"].read_text()
    assert "<" not in tex and ">" not in tex
    assert r"\textless{}script\textgreater{}" in tex and r"\textbackslash" in tex
    ours = (r"$\pm$", r"$\Delta$", r"$^\dagger$")  # the renderer's own maths
    for line in tex.splitlines():
        if line.startswith("%"):
            continue
        for token in ours:
            line = line.replace(token, "")
        assert not _unescaped(r"[_%#$]", line), line
    injected = [line for line in tex.splitlines() if "injected heading" in line]
    assert injected and all(" & " in line for line in injected)  # the newline did not leave the table cell
    assert tex.count(r"\begin{tabular}") == tex.count(r"\end{tabular}") >= 1


def test_html_holds_record_fields_escaped(hostile_board):
    page = hostile_board["html"].read_text()
    assert page.count("<script>") == 1  # the page's own sorting script, and nothing from a record
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<img" not in page and "<b>" not in page


def test_figures_are_written_for_fields_with_dollars_and_stay_in_their_folder(hostile_board, tmp_path):
    figures = [p for k, p in hostile_board.items() if k.startswith("figure:")]
    assert figures and all(p.parent == tmp_path / "out" / "figures" and p.stat().st_size > 0 for p in figures)
    assert all("$" not in p.name and "#" not in p.name for p in figures)
