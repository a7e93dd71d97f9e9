"""Leaderboard figures (seaborn on matplotlib's object API, PNG through the Agg canvas; no pyplot state).

Per table of our runs: the chosen metric per method and dataset with ± std error bars over seeds, Recall@K curves
(K = 1, 2, 4, 8), and, with a reference method, the gain of each method over it. Plus one figure of the published
SAGA Table 1 R@1, titled as reported numbers.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from benchmark.leaderboard.keys import GROUP_KEYS, RECALL_KS
from benchmark.leaderboard.render import LABELS, dataset_name, safe_stem, table_groups, write_atomic

REPORTED_FIGURE_SOURCE = "SAGA Table 1"
_STYLE = ("whitegrid", "notebook")


def _mpl(text: object) -> str:
    """Text from a record shown literally by matplotlib (a ``$`` would start mathtext, or fail to parse)."""
    return str(text).replace("$", r"\$")


def _slug(metric: str) -> str:
    return metric.replace("@", "").replace("_", "-")


def _save(fig: Figure, path: Path) -> Path:
    buf = io.BytesIO()
    # No "Software" entry: the file only changes when the plot does (not with the matplotlib version string).
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    return write_atomic(path, buf.getvalue())


def _scale(metric: str) -> float:
    return 1.0 if metric == "nmi" else 100.0


def _labelled_runs(runs: pd.DataFrame, group: pd.DataFrame) -> pd.DataFrame:
    """The runs of one table with a plot label: the entry, plus backbone and size when the table has several."""
    df = runs.merge(group[[*GROUP_KEYS, "entry"]], on=GROUP_KEYS, how="inner")
    several = df[["backbone", "embedding_dim"]].drop_duplicates().shape[0] > 1
    df["label"] = df["entry"] + (
        (" · " + df["backbone"] + " " + df["embedding_dim"].astype(str) + "d") if several else ""
    )
    df["label"] = df["label"].map(_mpl)
    df["Dataset"] = df["dataset"].map(dataset_name).map(_mpl)
    return df


def _bars(tr: pd.DataFrame, metric: str, title: str) -> Figure:
    order = sorted(tr["Dataset"].unique())
    hue_order = sorted(tr["label"].unique())
    data = tr.assign(value=tr[metric] * _scale(metric))
    with sns.axes_style(_STYLE[0]), sns.plotting_context(_STYLE[1]):
        fig = Figure(layout="constrained", figsize=(2.2 + 1.6 * len(order) + 0.25 * len(hue_order), 4.2))
        ax = fig.subplots()
        sns.barplot(data=data, x="Dataset", y="value", hue="label", order=order, hue_order=hue_order,
                    errorbar="sd", capsize=0.15, ax=ax)  # fmt: skip
        unit = "" if metric == "nmi" else " (%)"
        ax.set(title=title, ylabel=f"{LABELS[metric]}{unit}", xlabel="")
        ax.legend(title="method", bbox_to_anchor=(1.01, 1), loc="upper left", frameon=False)
    return fig


def _recall_curves(tr: pd.DataFrame, title: str) -> Figure:
    long = tr.melt(id_vars=["Dataset", "label", "seed"], value_vars=[f"recall@{k}" for k in RECALL_KS], var_name="K")
    long["K"] = long["K"].str.removeprefix("recall@").astype(int)
    long["value"] *= 100
    datasets = sorted(long["Dataset"].unique())
    hue_order = sorted(long["label"].unique())
    with sns.axes_style(_STYLE[0]), sns.plotting_context(_STYLE[1]):
        fig = Figure(layout="constrained", figsize=(1.5 + 3.6 * len(datasets), 4.0))
        axes = np.atleast_1d(fig.subplots(1, len(datasets), sharey=False))
        for ax, d in zip(axes, datasets, strict=True):
            sns.lineplot(data=long[long["Dataset"] == d], x="K", y="value", hue="label", hue_order=hue_order,
                         marker="o", errorbar="sd", err_style="bars", ax=ax, legend=ax is axes[-1])  # fmt: skip
            ax.set_xscale("log", base=2)
            ax.set_xticks(list(RECALL_KS), [str(k) for k in RECALL_KS])
            ax.set(title=d, xlabel="K", ylabel="Recall@K (%)" if ax is axes[0] else "")
        axes[-1].legend(title="method", bbox_to_anchor=(1.01, 1), loc="upper left", frameon=False)
        fig.suptitle(title)
    return fig


def _gain(group: pd.DataFrame, reference: str, metric: str, title: str) -> Figure | None:
    df = group[(group["method"] != reference) & group[f"delta_{metric}"].notna()].copy()
    if df.empty:
        return None
    df["Dataset"] = df["dataset"].map(dataset_name).map(_mpl)
    df["entry"] = df["entry"].map(_mpl)
    df["gain"] = df[f"delta_{metric}"] * _scale(metric)
    order, hue_order = sorted(df["Dataset"].unique()), sorted(df["entry"].unique())
    with sns.axes_style(_STYLE[0]), sns.plotting_context(_STYLE[1]):
        fig = Figure(layout="constrained", figsize=(2.2 + 1.6 * len(order) + 0.25 * len(hue_order), 4.0))
        ax = fig.subplots()
        sns.barplot(data=df, x="Dataset", y="gain", hue="entry", order=order, hue_order=hue_order, errorbar=None, ax=ax)
        ax.axhline(0, color="black", linewidth=0.8)
        unit = "" if metric == "nmi" else " (points)"
        ax.set(title=title, ylabel=f"Δ{LABELS[metric]} vs {_mpl(reference)}{unit}", xlabel="")
        ax.legend(title="method", bbox_to_anchor=(1.01, 1), loc="upper left", frameon=False)
    return fig


def _cost(group: pd.DataFrame, metric: str, title: str) -> Figure | None:
    """The metric (mean ± std over seeds) against the run's device-hours (mean over seeds), one point per entry;
    None when no row of the table has a cost (older records). One unit per figure: the most common one."""
    df = group[group["cost_hours_mean"].notna() & (group["cost_hours_mean"] > 0)]
    if df.empty:
        return None
    unit = df["cost_unit"].mode().iloc[0]
    df = df[df["cost_unit"] == unit]
    scale = _scale(metric)
    with sns.axes_style(_STYLE[0]), sns.plotting_context(_STYLE[1]):
        fig = Figure(layout="constrained", figsize=(7.5, 4.5))
        ax = fig.subplots()
        palette = sns.color_palette("tab20", n_colors=max(len(df), 1))
        for colour, (_, r) in zip(palette, df.sort_values("entry").iterrows(), strict=False):
            std = r[f"{metric}_std"] * scale if np.isfinite(r[f"{metric}_std"]) else 0.0
            label = _mpl(f"{r['entry']} ({dataset_name(r['dataset'])})")
            ax.errorbar(r["cost_hours_mean"], r[f"{metric}_mean"] * scale, yerr=std, fmt="o", capsize=3,
                        color=colour, label=label)  # fmt: skip
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # minor-tick labels overlap on a short log range
        ax.set(
            title=title,
            xlabel=f"cost: {unit} per run (mean over seeds, log scale)",
            ylabel=f"{LABELS[metric]}{'' if metric == 'nmi' else ' (%)'}",
        )
        ax.legend(title="method", bbox_to_anchor=(1.01, 1), loc="upper left", frameon=False, fontsize="small")
    return fig


def _reported_bars(reported: pd.DataFrame) -> Figure | None:
    """Grouped bars of published R@1 with the published ± as error bars (drawn directly: values are given)."""
    df = reported[(reported["source"] == REPORTED_FIGURE_SOURCE) & (reported["metric"] == "recall@1")]
    if df.empty:
        return None
    datasets = list(dict.fromkeys(df["dataset"]))
    methods = list(dict.fromkeys(df["method"]))
    palette = sns.color_palette(n_colors=len(methods))
    width = 0.8 / len(methods)
    with sns.axes_style(_STYLE[0]), sns.plotting_context(_STYLE[1]):
        fig = Figure(layout="constrained", figsize=(2.2 + 1.6 * len(datasets) + 0.3 * len(methods), 4.2))
        ax = fig.subplots()
        x = np.arange(len(datasets))
        for i, m in enumerate(methods):
            sub = df[df["method"] == m].set_index("dataset").reindex(datasets)
            bars = ax.bar(x + (i - (len(methods) - 1) / 2) * width, sub["value"].to_numpy(), width,
                          yerr=sub["std"].to_numpy(), capsize=3, label=m, color=palette[i])  # fmt: skip
            ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
        ax.set_xticks(x, [dataset_name(d) for d in datasets])
        first = df.iloc[0]
        ax.set(ylabel="R@1 (%)", title=f"Reported: {first['title']}\n(published numbers, not our runs)")
        ax.legend(bbox_to_anchor=(1.01, 1), loc="upper left", frameon=False)
    return fig


def write_figures(
    fig_dir: Path,
    runs: pd.DataFrame,
    agg: pd.DataFrame,
    reported: pd.DataFrame | None,
    reference: str | None,
    metric: str,
) -> dict[str, Path]:
    """Write every figure into ``fig_dir``; remove figures of an earlier build that this one no longer has."""
    fig_dir = Path(fig_dir)
    figs: dict[str, Figure] = {}
    for (phash, rule), group in table_groups(agg):
        tr = _labelled_runs(runs, group)
        stem, what = f"runs_{safe_stem(phash)}_{safe_stem(rule)}", _mpl(f"protocol {phash}, selection {rule}")
        figs[f"{stem}_{_slug(metric)}"] = _bars(tr, metric, f"{LABELS[metric]}, mean ± std over seeds ({what})")
        figs[f"{stem}_recall-at-k"] = _recall_curves(tr, f"Recall@K, mean ± std over seeds ({what})")
        cost = _cost(group, metric, f"{LABELS[metric]} against cost ({what})")
        if cost is not None:
            figs[f"{stem}_cost-{_slug(metric)}"] = cost
        if reference:
            gain = _gain(group, reference, metric, f"Gain over {_mpl(reference)} ({what})")
            if gain is not None:
                figs[f"{stem}_gain-{_slug(metric)}"] = gain
    if reported is not None and not reported.empty:
        fig = _reported_bars(reported)
        if fig is not None:
            figs[f"reported_{REPORTED_FIGURE_SOURCE.lower().replace(' ', '-')}_recall1"] = fig
    written = {name: _save(fig, fig_dir / f"{name}.png") for name, fig in figs.items()}
    if fig_dir.is_dir():
        for old in sorted(fig_dir.glob("*.png")):
            if old.name.startswith(("runs_", "reported_")) and old.stem not in written:
                old.unlink()
    return written
