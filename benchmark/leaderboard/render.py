"""Rendering of the leaderboard: number formats, table cells, Markdown, LaTeX (booktabs) and CSV files.

Everything here is deterministic: rows keep the order :func:`benchmark.leaderboard.gather.aggregate` gives them, numbers
have a fixed format, and nothing depends on the clock, so a regenerated table only differs where results do.
"""

from __future__ import annotations

import html
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import pandas as pd

from benchmark.engine.records import write_atomic
from benchmark.leaderboard import significance
from benchmark.leaderboard.cost import fmt_cost
from benchmark.leaderboard.keys import COMPARE_KEYS, METRICS, TABLE_KEYS

LABELS = {
    "recall@1": "R@1", "recall@2": "R@2", "recall@4": "R@4", "recall@8": "R@8",
    "map@r": "MAP@R", "r_precision": "RP", "nmi": "NMI",
}  # fmt: skip
DATASET_NAMES = {"cub": "CUB", "cars": "Cars", "aircraft": "Aircraft", "inat_aves": "iNat-Aves"}
SELECTION_NAMES = {
    "val": "checkpoint selected on a class-disjoint validation split",
    "last": "last epoch",
    "test": "BEST EPOCH ON THE TEST SET (labelled best-on-test: optimistic, for reproducing published numbers only)",
}
MISSING = "–"


@dataclass
class Context:
    """Everything a renderer needs (built once by :func:`benchmark.leaderboard.gather.build_leaderboard`)."""

    runs: pd.DataFrame
    agg: pd.DataFrame
    skipped: list[dict[str, str]]
    reported: pd.DataFrame | None
    reference: str | None
    metric: str
    command: str
    figures: dict[str, Path] = field(default_factory=dict)
    out_dir: Path = Path(".")


# Escaping: every field that comes from a record (method, backbone, dataset, transforms, hashes, paths) or from a
# reported-numbers file reaches the Markdown, LaTeX and HTML outputs as inert text. Written by hand for Markdown
# (no Markdown library escapes text); LaTeX through pandas' Styler escape="latex"; HTML through html.escape.
_MD_SPECIAL = re.compile(r"([\\`*_\[\]|#$~])")


def one_line(text: object) -> str:
    """``text`` as a string on one line (a newline in a field would end a table row or a comment)."""
    return re.sub(r"[\r\n\t\v\f]+", " ", str(text))


def md_escape(text: object) -> str:
    """Inert Markdown: Markdown's special characters backslash-escaped, ``& < >`` as HTML entities, one line."""
    return html.escape(_MD_SPECIAL.sub(r"\\\1", one_line(text)), quote=False)


def md_link_target(path: str) -> str:
    """A relative path as a Markdown link target (spaces, parentheses and brackets percent-encoded)."""
    return quote(path, safe="/@:+,=!$&'*;")


def dataset_name(key: str) -> str:
    """Display name of a dataset key (``cub`` -> ``CUB``); unknown keys are shown as they are."""
    return DATASET_NAMES.get(key, key)


def fmt(metric: str, value: float, signed: bool = False) -> str:
    """Our numbers (fractions in the records): R@K, MAP@R, RP in percent with 1 decimal, NMI with 3 decimals."""
    if value is None or not math.isfinite(value):
        return MISSING
    spec = "+" if signed else ""
    return f"{value:{spec}.3f}" if metric == "nmi" else f"{100 * value:{spec}.1f}"


def fmt_cell(metric: str, mean: float, std: float, n: int) -> str:
    """``mean ± std`` (the std only with two or more seeds)."""
    s = fmt(metric, mean)
    return f"{s} ± {fmt(metric, std)}" if n > 1 and std is not None and math.isfinite(std) else s


def fmt_reported(metric: str, value: float, std: float) -> str:
    """Published numbers as printed: percent with 1 decimal, NMI with 2."""
    if value is None or not math.isfinite(value):
        return MISSING
    d = 2 if metric == "nmi" else 1
    return f"{value:.{d}f}" + (f" ± {std:.{d}f}" if std is not None and math.isfinite(std) else "")


def ranks(agg: pd.DataFrame) -> pd.DataFrame:
    """Per metric, 1 = best and 2 = second best mean within each comparison group (NaN where a group has one row)."""
    out = pd.DataFrame(index=agg.index)
    sizes = agg.groupby(COMPARE_KEYS, dropna=False)["method"].transform("size")
    for m in METRICS:
        r = agg.groupby(COMPARE_KEYS, dropna=False)[f"{m}_mean"].rank(method="dense", ascending=False)
        out[m] = r.where(sizes > 1)
    return out


def safe_stem(text: object) -> str:
    """A record field made safe for a file name (figures are named by protocol hash and rule): no path separators."""
    return re.sub(r"[^A-Za-z0-9._@-]", "-", str(text)).lstrip(".") or "-"


def table_groups(agg: pd.DataFrame) -> list[tuple[tuple[str, str], pd.DataFrame]]:
    """The aggregated rows split into tables, one per (protocol hash, selection rule), in sorted order."""
    return [(tuple(k), g) for k, g in agg.groupby(TABLE_KEYS, sort=True)]


def table_title(protocol_hash: str, rule: str, version: object) -> str:
    v = f" (version {version})" if version is not None and not pd.isna(version) else ""
    return f"Protocol {protocol_hash}{v} · selection: {rule} — {SELECTION_NAMES.get(rule, rule)}"


def our_table(ctx: Context, group: pd.DataFrame) -> tuple[list[str], list[list[str]], list[list[int]]]:
    """Header, cell strings and per-cell rank (0 none, 1 best, 2 second) for one of our tables."""
    header = ["Dataset", "Method", "Backbone", "Dim", "Seeds", *(LABELS[m] for m in METRICS), "Cost"]
    delta = f"delta_{ctx.metric}"
    if ctx.reference and delta in group:
        header += [f"Δ{LABELS[ctx.metric]} vs {ctx.reference}", *significance.HEADER]
    rk = ranks(ctx.agg).loc[group.index]
    rows, marks = [], []
    for i, r in group.iterrows():
        cells = [dataset_name(r["dataset"]), r["entry"], r["backbone"], str(int(r["embedding_dim"]))]
        cells.append(f"{int(r['n_seeds'])}{' *' if r['fewer_seeds'] else ''}")
        cells += [fmt_cell(m, r[f"{m}_mean"], r[f"{m}_std"], int(r["n_seeds"])) for m in METRICS]
        cells.append(fmt_cost(r.get("cost_hours_mean"), r.get("cost_unit")))
        mark = [0] * 5 + [int(x) if x in (1, 2) else 0 for x in rk.loc[i, list(METRICS)]] + [0]
        if len(header) > len(cells):
            cells.append(MISSING if r["method"] == ctx.reference else fmt(ctx.metric, r[delta], signed=True))
            cells += significance.cells(r, 100.0)
            mark += [0] * (1 + len(significance.HEADER))
        rows.append(cells)
        marks.append(mark)
    return header, rows, marks


def details_table(group: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """What each row of one of our tables ran: config hash, pooling, image size, transforms, source, seeds, git."""
    header = ["Dataset", "Method", "Config", "Pooling", "Image", "Train transform", "Test transform", "Backbone source"]
    header += ["Seeds", "Git", "Device", "Peak memory (GiB)", "Train img/s"]
    rows = []
    for _, r in group.iterrows():
        vals = [dataset_name(r["dataset"]), r["entry"], r["config_hash"], r["pooling"], r["image_size"]]
        vals += [r["train_transform"], r["test_transform"], r["backbone_source"], r["seeds"], r["git_shas"]]
        vals += [r.get("device"), _fixed(r.get("peak_memory_gb_mean"), 2), _fixed(r.get("train_images_per_s_mean"), 0)]
        rows.append([MISSING if v is None or (isinstance(v, float) and math.isnan(v)) else str(v) for v in vals])
    return header, rows


def _fixed(value: object, digits: int) -> str | None:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) and math.isfinite(value) else None


def reported_tables(reported: pd.DataFrame) -> list[dict]:
    """One wide table per published source: rows = (method, backbone, dim, selection), columns = dataset × metric."""
    tables = []
    for source, df in reported.groupby("source", sort=False):
        first = df.iloc[0]
        keys = ["method", "backbone", "embedding_dim", "selection_rule", "citation"]
        varying = [k for k in ("backbone", "embedding_dim", "selection_rule") if df[k].nunique() > 1]
        datasets = list(dict.fromkeys(df["dataset"]))
        metrics = [m for m in METRICS if m in set(df["metric"])]
        cols = [(d, m) for d in datasets for m in metrics if ((df["dataset"] == d) & (df["metric"] == m)).any()]
        citations = list(dict.fromkeys(df["citation"]))
        header = [
            "Method",
            *({"backbone": "Backbone", "embedding_dim": "Dim", "selection_rule": "Selection"}[k] for k in varying),
        ]
        header += [f"{dataset_name(d)} {LABELS[m]}" for d, m in cols]
        rows = []
        for key, rdf in df.groupby(keys, sort=False):
            method = key[0] + (f" [{citations.index(key[4]) + 1}]" if len(citations) > 1 else "")
            method += " †" if rdf["verify"].any() else ""
            cells = [method, *(str(rdf.iloc[0][k]) for k in varying)]
            for d, m in cols:
                hit = rdf[(rdf["dataset"] == d) & (rdf["metric"] == m)]
                cells.append(fmt_reported(m, hit["value"].iloc[0], hit["std"].iloc[0]) if len(hit) else MISSING)
            rows.append(cells)
        tables.append(
            dict(
                source=source,
                title=first["title"],
                header=header,
                rows=rows,
                citations=citations,
                backbone=None if "backbone" in varying else first["backbone"],
                embedding_dim=None if "embedding_dim" in varying else first["embedding_dim"],
                selection_rule=None if "selection_rule" in varying else first["selection_rule"],
                notes=first["notes"],
                verify=bool(df["verify"].any()),
            )
        )
    return tables


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def md_table(header: list[str], rows: list[list[str]], marks: list[list[int]] | None = None) -> str:
    """A GitHub Markdown table (written by hand: 5 lines, and no extra dependency); every cell escaped
    (:func:`md_escape`), rank 1 cells in bold."""
    lines = [_md_row([md_escape(h) for h in header]), "|" + "|".join("---" for _ in header) + "|"]
    for i, row in enumerate(rows):
        cells = [f"**{md_escape(c)}**" if marks and marks[i][j] == 1 else md_escape(c) for j, c in enumerate(row)]
        lines.append(_md_row(cells))
    return "\n".join(lines)


def to_markdown(ctx: Context) -> str:
    """The README of the leaderboard directory."""
    out = ["# Leaderboard", ""]
    out += ["Generated by `benchmark/leaderboard/gather.py`: do not edit by hand. Regenerate it with one command:", ""]
    out += [f"    {one_line(ctx.command)}", ""]
    out += [
        "R@K, MAP@R and R-Precision (RP) are in percent, NMI is a fraction. Our rows give the mean ± sample standard "
        "deviation (ddof = 1) over seeds; **bold** is the best mean within a dataset, backbone and embedding size. "
        "Each table holds one protocol hash and one checkpoint-selection rule: tables are never merged. "
        "Cost: the run's device-hours, mean over seeds (GPU-h: wall hours × GPUs; CPU core-h: measured CPU time; "
        "training and evaluation; – for records written before cost was recorded). "
        "Published numbers are in their own section below and are never ranked with our runs.",
        "",
        "## Our runs",
        "",
    ]
    if ctx.agg.empty:
        out += ["No run records yet. Pass run or sweep directories to the command above to add them.", ""]
    for (phash, rule), group in table_groups(ctx.agg):
        out += [f"### {md_escape(table_title(phash, rule, group['protocol_version'].iloc[0]))}", ""]
        header, rows, marks = our_table(ctx, group)
        out += [md_table(header, rows, marks), ""]
        if group["fewer_seeds"].any():
            out += ["\\* fewer seeds than other rows of this table.", ""]
        if ctx.reference:
            out += [
                f"Δ: difference in {LABELS[ctx.metric]} (points) to {md_escape(ctx.reference)} in the same group. "
                + md_escape(significance.note(LABELS[ctx.metric], ctx.reference)),
                "",
            ]
        out += [
            "<details><summary>What each row ran</summary>",
            "",
            md_table(*details_table(group)),
            "",
            "</details>",
            "",
        ]
        for name, path in ctx.figures.items():
            if name.startswith(f"runs_{safe_stem(phash)}_{safe_stem(rule)}_"):
                out += [
                    f"![{md_escape(name)}]({md_link_target(Path(os.path.relpath(path, ctx.out_dir)).as_posix())})",
                    "",
                ]
    out += ["## Skipped records", ""]
    if ctx.skipped:
        out += ["These records were not used (each is listed once, with the reason):", ""]
        out += [md_table(["Path", "Reason"], [[s["path"], s["reason"]] for s in ctx.skipped]), ""]
    else:
        out += ["None.", ""]
    out += ["## Reported numbers (from the papers; not ranked with our runs)", ""]
    if ctx.reported is None or ctx.reported.empty:
        out += ["Not included in this build.", ""]
    else:
        out += [
            "> Transcribed from the publications (`leaderboard/reported/*.yaml`, with their citations). Their "
            "backbones, training recipes and checkpoint-selection rules differ from ours and from each other, so they "
            "are context, not competitors. R@K in percent and NMI as a fraction, as published; ± as published.",
            "",
        ]
        for t in reported_tables(ctx.reported):
            out += [f"### {md_escape(t['title'])}", "", md_table(t["header"], t["rows"]), ""]
            out += [_reported_caption(t), ""]
        for name, path in ctx.figures.items():
            if name.startswith("reported_"):
                out += [
                    f"![{md_escape(name)}]({md_link_target(Path(os.path.relpath(path, ctx.out_dir)).as_posix())})",
                    "",
                ]
    out += ["## Files", ""]
    out += ["`runs.csv` (one row per run), `leaderboard.csv` (aggregated), `reported.csv` (published numbers), "]
    out += ["`skipped.csv`, `leaderboard.tex` (booktabs), `leaderboard.html` (sortable, filterable), `figures/`.", ""]
    return "\n".join(out)


def _reported_caption(t: dict) -> str:
    parts, e = [], md_escape
    if len(t["citations"]) == 1:
        parts.append(f"*Source:* {e(t['citations'][0])}")
    else:
        parts.append("*Sources:* " + " ".join(f"\\[{i + 1}\\] {e(c)}." for i, c in enumerate(t["citations"])))
    if t["backbone"] is not None:
        parts.append(f"*Backbone:* {e(t['backbone'])}")
    if t["embedding_dim"] is not None:
        parts.append(f"*Embedding:* {int(t['embedding_dim'])}-d")
    if t["selection_rule"] is not None:
        parts.append(f"*Checkpoint selection:* {e(t['selection_rule'])}")
    text = ". ".join(p.rstrip(".") for p in parts) + "."
    if t["notes"]:
        text += f" {e(t['notes'])}"
    if t["verify"]:
        text += " † marked *verify* in docs/protocol.md: check against the paper before citing."
    return text


_TEXT_COLUMNS = {"Dataset", "Method", "Backbone", "Selection"}


def _latex_tabular(header: list[str], rows: list[list[str]], marks: list[list[int]] | None = None) -> str:
    """One booktabs tabular through pandas' Styler (best \\textbf, second \\underline)."""
    df = pd.DataFrame([[one_line(c) for c in row] for row in rows], columns=[one_line(h) for h in header])
    styles = pd.DataFrame("", index=df.index, columns=df.columns)
    for i, row in enumerate(marks or []):
        for j, m in enumerate(row):
            styles.iat[i, j] = {1: "textbf:--rwrap;", 2: "underline:--rwrap;"}.get(m, "")
    styler = df.style.hide(axis="index").format(escape="latex").format_index(escape="latex", axis=1)
    styler = styler.apply(lambda _: styles, axis=None)
    tex = styler.to_latex(hrules=True, column_format="".join("l" if h in _TEXT_COLUMNS else "r" for h in header))
    tex = tex.replace("<", r"\textless{}").replace(">", r"\textgreater{}")  # not escaped by pandas (OT1 shows ¡ ¿)
    return (
        tex.replace("±", r"$\pm$")
        .replace("Δ", r"$\Delta$")
        .replace(MISSING, "--")
        .replace("†", r"$^\dagger$")
        .replace("‡", r"$^\ddagger$")
    )


def to_latex(ctx: Context) -> str:
    """Every table as a booktabs ``tabular`` (ours first, then the reported ones), each after a comment line."""
    out = [
        "% Generated by benchmark/leaderboard/gather.py (needs \\usepackage{booktabs}); regenerate with:",
        f"% {one_line(ctx.command)}",
    ]
    if ctx.agg.empty:
        out.append("% No run records yet.")
    for (phash, rule), group in table_groups(ctx.agg):
        header, rows, marks = our_table(ctx, group)
        out += ["", f"% Ours: {one_line(table_title(phash, rule, group['protocol_version'].iloc[0]))}"]
        out.append(_latex_tabular(header, rows, marks).rstrip())
        if ctx.reference:
            out.append(f"% {one_line(significance.note(LABELS[ctx.metric], ctx.reference))}")
    if ctx.reported is not None and not ctx.reported.empty:
        for t in reported_tables(ctx.reported):
            out += ["", f"% Reported (not ranked with our runs): {one_line(t['title'])}"]
            out.append(_latex_tabular(t["header"], t["rows"]).rstrip())
    return "\n".join(out) + "\n"


def _csv(df: pd.DataFrame) -> str:
    """CSV text whose cells a spreadsheet never runs as formulas (:mod:`benchmark.leaderboard.spreadsheet`)."""
    from benchmark.leaderboard.spreadsheet import spreadsheet_safe

    return spreadsheet_safe(df).to_csv(index=False, lineterminator="\n")


def write_csvs(
    out: Path, runs: pd.DataFrame, agg: pd.DataFrame, skipped: list[dict[str, str]], reported: pd.DataFrame | None
) -> dict[str, Path]:
    """runs.csv, leaderboard.csv, skipped.csv and (with published numbers) reported.csv; full float precision."""
    written = {
        "runs_csv": write_atomic(out / "runs.csv", _csv(runs)),
        "leaderboard_csv": write_atomic(out / "leaderboard.csv", _csv(agg)),
        "skipped_csv": write_atomic(out / "skipped.csv", _csv(pd.DataFrame(skipped, columns=["path", "reason"]))),
    }
    if reported is not None:
        written["reported_csv"] = write_atomic(out / "reported.csv", _csv(reported))
    return written
