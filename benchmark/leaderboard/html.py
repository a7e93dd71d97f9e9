"""The leaderboard as one self-contained HTML page: inline CSS and JS, no network, sortable, filterable by dataset.

Written by hand (a page template and ~40 lines of JS): no library in the dependencies renders sortable tables
without fetching scripts from a CDN.
"""

from __future__ import annotations

import html
import math
import os
from pathlib import Path
from urllib.parse import quote

from benchmark.leaderboard import significance
from benchmark.leaderboard.cost import fmt_cost
from benchmark.leaderboard.keys import GROUP_KEYS, METRICS
from benchmark.leaderboard.render import (
    LABELS,
    MISSING,
    Context,
    dataset_name,
    fmt,
    fmt_cell,
    fmt_reported,
    ranks,
    table_groups,
    table_title,
)

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;max-width:1400px;color:#222;padding:0 1rem}
h1{font-size:1.6rem}h2{margin-top:2.2rem;border-bottom:1px solid #ddd;padding-bottom:.3rem}h3{font-size:1.05rem}
table{border-collapse:collapse;margin:.6rem 0 1.2rem;font-size:.9rem}
th,td{padding:.3rem .45rem;border-bottom:1px solid #e5e5e5;text-align:right;white-space:nowrap}
th{background:#f4f6f8;border-bottom:2px solid #999}
th.text,td.text{text-align:left}
table.sortable th{cursor:pointer;user-select:none}
table.sortable th[aria-sort=ascending]::after{content:" \\25B2"}
table.sortable th[aria-sort=descending]::after{content:" \\25BC"}
td.best{font-weight:700}td.second{text-decoration:underline}
.scroll{overflow-x:auto}
.note{color:#555;font-size:.85rem;max-width:60rem}
.reported{background:#fffbea;border-left:4px solid #e0b400;padding:.2rem 1rem;margin-top:1rem}
code{background:#f4f4f4;padding:.05rem .3rem;border-radius:3px}
"""

# Sorting: numbers by their data-value, text by its content; missing values always last; the sort is stable.
_JS = """
(function(){
  function key(cell){
    var v = cell.getAttribute('data-value');
    if (v !== null) { return v === '' ? null : parseFloat(v); }
    return cell.textContent.trim().toLowerCase();
  }
  function sortBy(th){
    var table = th.closest('table'), idx = Array.prototype.indexOf.call(th.parentNode.children, th);
    var dir = th.getAttribute('aria-sort') === 'ascending' ? 'descending' : 'ascending';
    th.parentNode.querySelectorAll('th').forEach(function(h){ h.removeAttribute('aria-sort'); });
    th.setAttribute('aria-sort', dir);
    var sign = dir === 'ascending' ? 1 : -1, body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function(a, b){
      var x = key(a.cells[idx]), y = key(b.cells[idx]);
      if (x === null || y === null) { return (x === null) - (y === null); }
      return x < y ? -sign : (x > y ? sign : 0);
    });
    rows.forEach(function(r){ body.appendChild(r); });
  }
  document.querySelectorAll('table.sortable th').forEach(function(th){
    th.addEventListener('click', function(){ sortBy(th); });
  });
  var filter = document.getElementById('dataset-filter');
  filter.addEventListener('change', function(){
    document.querySelectorAll('tr[data-dataset]').forEach(function(tr){
      tr.hidden = filter.value !== '' && tr.getAttribute('data-dataset') !== filter.value;
    });
  });
})();
"""


def _e(x: object) -> str:
    return html.escape(str(x), quote=True)


def _num(value: float) -> str:
    return "" if value is None or not math.isfinite(value) else repr(float(value))


def _td(text: str, value: float | None = None, cls: str = "") -> str:
    attrs = f' class="{cls}"' if cls else ""
    if value is not None:
        attrs += f' data-value="{_num(value)}"'
    return f"<td{attrs}>{_e(text)}</td>"


def _thead(header: list[tuple[str, bool]]) -> str:
    cells = "".join(f'<th class="text">{_e(h)}</th>' if text else f"<th>{_e(h)}</th>" for h, text in header)
    return f"<thead><tr>{cells}</tr></thead>"


def _gallery_links(ctx: Context) -> dict[int, list[tuple[int, str]]]:
    """Per aggregated row: (seed, link relative to the page) for each of its runs that saved a neighbours gallery
    (``gallery/gallery.png`` beside its record; older records have none)."""
    from benchmark.evaluation.gallery import DIRNAME

    if ctx.runs.empty:
        return {}
    runs = ctx.runs.copy()
    runs["_gallery"] = [Path(p).parent / DIRNAME / "gallery.png" for p in runs["path"]]
    runs = runs[[g.is_file() for g in runs["_gallery"]]]
    if runs.empty:
        return {}
    page_dir = Path(ctx.out_dir).resolve()
    keyed = ctx.agg[GROUP_KEYS].reset_index().merge(runs, on=GROUP_KEYS, how="inner")
    links: dict[int, list[tuple[int, str]]] = {}
    for _, r in keyed.sort_values(["index", "seed"]).iterrows():
        rel = Path(os.path.relpath(Path(r["_gallery"]).resolve(), page_dir)).as_posix()
        links.setdefault(int(r["index"]), []).append((int(r["seed"]), quote(rel)))
    return links


def _links_td(links: list[tuple[int, str]]) -> str:
    if not links:
        return f'<td class="text">{_e(MISSING)}</td>'
    anchors = " ".join(f'<a class="gallery" href="{_e(href)}">s{seed}</a>' for seed, href in links)
    return f'<td class="text">{anchors}</td>'


def _ours(ctx: Context) -> list[str]:
    out = []
    rk = ranks(ctx.agg)
    delta = f"delta_{ctx.metric}"
    galleries = _gallery_links(ctx)
    for (phash, rule), group in table_groups(ctx.agg):
        header = [(h, True) for h in ("Dataset", "Method", "Backbone")] + [("Dim", False), ("Seeds", False)]
        header += [(LABELS[m], False) for m in METRICS] + [("Cost", False)]
        if ctx.reference and delta in group:
            header.append((f"Δ{LABELS[ctx.metric]} vs {ctx.reference}", False))
            header += [(h, False) for h in significance.HEADER]
        with_links = any(i in galleries for i in group.index)  # a column only where some run has a gallery
        if with_links:
            header.append(("Neighbours", True))
        rows = []
        for i, r in group.iterrows():
            n = int(r["n_seeds"])
            cells = [_td(dataset_name(r["dataset"]), cls="text"), _td(r["entry"], cls="text")]
            cells += [_td(r["backbone"], cls="text"), _td(str(int(r["embedding_dim"])), r["embedding_dim"])]
            cells.append(_td(f"{n}{' *' if r['fewer_seeds'] else ''}", n))
            for m in METRICS:
                cls = {1: "best", 2: "second"}.get(rk.loc[i, m], "")
                cells.append(_td(fmt_cell(m, r[f"{m}_mean"], r[f"{m}_std"], n), r[f"{m}_mean"], cls))
            cost = r.get("cost_hours_mean")
            cells.append(_td(fmt_cost(cost, r.get("cost_unit")), cost if isinstance(cost, float) else None))
            if len(header) > len(cells) + with_links:
                d = r[delta]
                cells.append(_td(MISSING if r["method"] == ctx.reference else fmt(ctx.metric, d, signed=True), d))
                p_welch, p_holm, ci = significance.cells(r, 100.0)
                cells += [_td(p_welch, r.get("welch_p")), _td(p_holm, r.get("holm_p")), _td(ci, r.get("ci_low"))]
            if with_links:
                cells.append(_links_td(galleries.get(i, [])))
            rows.append(f'<tr data-dataset="{_e(r["dataset"])}">{"".join(cells)}</tr>')
        title = table_title(phash, rule, group["protocol_version"].iloc[0])
        out += [f"<h3>{_e(title)}</h3>", '<div class="scroll">']
        out += [f'<table class="sortable ours" data-protocol="{_e(phash)}">', _thead(header)]
        out += ["<tbody>", *rows, "</tbody></table></div>"]
        if group["fewer_seeds"].any():
            out.append('<p class="note">* fewer seeds than other rows of this table.</p>')
        if ctx.reference and delta in group:
            out.append(f'<p class="note">{_e(significance.note(LABELS[ctx.metric], ctx.reference))}</p>')
    return out


def _reported(ctx: Context) -> list[str]:
    """Published numbers in long form (one row per method and dataset), so the dataset filter applies to them too."""
    out = []
    df = ctx.reported
    for source, sdf in df.groupby("source", sort=False):
        metrics = [m for m in METRICS if m in set(sdf["metric"])]
        header = [(h, True) for h in ("Method", "Dataset", "Backbone")] + [("Dim", False)]
        header += [("Selection", True), *((LABELS[m], False) for m in metrics)]
        citations = list(dict.fromkeys(sdf["citation"]))
        header += [("Source", True)] if len(citations) > 1 else []
        rows = []
        keys = ["method", "dataset", "backbone", "embedding_dim", "selection_rule", "citation"]
        for key, rdf in sdf.groupby(keys, sort=False):
            method, ds, backbone, dim, sel, citation = key
            cells = [_td(method + (" †" if rdf["verify"].any() else ""), cls="text"), _td(dataset_name(ds), cls="text")]
            cells += [_td(backbone, cls="text"), _td(str(int(dim)), dim), _td(sel, cls="text")]
            for m in metrics:
                hit = rdf[rdf["metric"] == m]
                v, s = (hit["value"].iloc[0], hit["std"].iloc[0]) if len(hit) else (float("nan"), float("nan"))
                cells.append(_td(fmt_reported(m, v, s), v))
            if len(citations) > 1:
                cells.append(_td(f"[{citations.index(citation) + 1}]", cls="text"))
            rows.append(f'<tr data-dataset="{_e(ds)}">{"".join(cells)}</tr>')
        out += [f"<h3>{_e(sdf['title'].iloc[0])}</h3>", '<div class="scroll">']
        out += [f'<table class="sortable reported" data-source="{_e(source)}">', _thead(header)]
        out += ["<tbody>", *rows, "</tbody></table></div>"]
        cites = citations[0] if len(citations) == 1 else " ".join(f"[{i + 1}] {c}." for i, c in enumerate(citations))
        out.append(f'<p class="note">Source: {_e(cites)} {_e(sdf["notes"].iloc[0])}</p>')
    return out


def to_html(ctx: Context) -> str:
    """The whole page."""
    datasets = sorted(set(ctx.agg["dataset"]) | (set(ctx.reported["dataset"]) if ctx.reported is not None else set()))
    options = '<option value="">all datasets</option>' + "".join(
        f'<option value="{_e(d)}">{_e(dataset_name(d))}</option>' for d in datasets
    )
    body = ["<h1>Leaderboard</h1>", f'<p class="note">Regenerate with <code>{_e(ctx.command)}</code>. ']
    body[-1] += (
        "R@K, MAP@R and RP in percent, NMI as a fraction; mean ± sample std over seeds; bold = best, underlined = "
        "second within a dataset, backbone and embedding size. Cost: device-hours of the run, mean over seeds (GPU-h: "
        "wall hours × GPUs; CPU core-h: measured CPU time). Click a column header to sort.</p>"
    )
    body.append(f'<p><label for="dataset-filter">Dataset: </label><select id="dataset-filter">{options}</select></p>')
    body.append("<h2>Our runs</h2>")
    body += _ours(ctx) if not ctx.agg.empty else ['<p id="no-runs">No run records yet.</p>']
    body.append("<h2>Skipped records</h2>")
    if ctx.skipped:
        items = "".join(f"<li><code>{_e(s['path'])}</code>: {_e(s['reason'])}</li>" for s in ctx.skipped)
        body.append(f'<ul id="skipped">{items}</ul>')
    else:
        body.append("<p>None.</p>")
    if ctx.reported is not None and not ctx.reported.empty:
        body += ['<div class="reported"><h2>Reported numbers (from the papers; not ranked with our runs)</h2>']
        body.append(
            '<p class="note">Other backbones, recipes and selection rules: context, not competitors. '
            "As published: R@K in percent, NMI as a fraction. † marked verify in docs/protocol.md.</p>"
        )
        body += [*_reported(ctx), "</div>"]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n<title>Leaderboard</title>\n'
        f"<style>{_CSS}</style>\n</head>\n<body>\n" + "\n".join(body) + f"\n<script>{_JS}</script>\n</body>\n</html>\n"
    )
