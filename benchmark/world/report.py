"""The attribute-world report: retrieval and per-attribute linear probes, one row per method (SAGA by ablation).

``write_world_report(runs_dir, out_dir)`` reads every finished run record under ``runs_dir`` (through the
leaderboard's gathering: the same validation, the same skipped-record reasons, duplicates dropped), labels each run
with its row (the method; SAGA runs by ablation from the resolved config: ``saga`` with GRPO and KL, ``saga (GRPO
only)``, ``saga (KL only)``) and writes, atomically, into ``out_dir``:

- ``results.csv``: one line per run (row, method, seed, retrieval metrics, and per attribute the probe accuracy,
  chance, and the level the other attributes alone reach: see :mod:`benchmark.evaluation.attribute_probe`);
- ``summary.md``: mean ± sample std over seeds and the number of seeds per row, for test R@1/2/4/8 and MAP@R, and
  for the probe accuracy of each attribute, its mean and its chance level (plus the other-attributes level);
- ``probe.png``: probe accuracy per attribute per row (mean, ± std over seeds, chance and the other-attributes
  level marked) beside R@1 per row.

The records must come from one experiment (one dataset, protocol and selection rule); a row label that covers
several configurations (e.g. two learning rates of one method) is split by config hash, never averaged together.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmark.engine.records import write_atomic
from benchmark.leaderboard.gather import gather

#: Rows in this order first; any other row label follows, sorted.
ROW_ORDER = (
    "pretrained",
    "proxy_anchor",
    "potential_field",
    "saga (KL only)",
    "saga (GRPO only)",
    "saga",
    "saga (λ_kl = 1)",  # the paper's literal Eq. 8 weight (SAGA's default lambda_kl is ours)
    "saga (no GRPO, no KL)",  # SAGA's pooler trained by its metric loss alone: what GRPO and KL are measured against
    "saga (GRPO only, shuffled advantages)",  # control: the same advantage values, no information
    "saga (GRPO only, rule judge)",  # control: the verdict computed by code from the answer's own descriptions
)
#: The row every SAGA row is compared with (Welch's t-test on R@1 over seeds).
BASELINE_ROW = "saga (no GRPO, no KL)"
RETRIEVAL = {"recall@1": "R@1", "recall@2": "R@2", "recall@4": "R@4", "recall@8": "R@8", "map@r": "MAP@R"}
PROBE_PREFIX, CHANCE_PREFIX, OTHER_PREFIX = "probe:", "chance:", "other:"
#: Per-run columns besides retrieval and probes: R@1 on the queries confusable in the hard attribute X and on the
#: rest, SAGA's mean training reward, and the GRPO/DML gradient-norm ratio at the tower.
EXTRA = ("recall@1_confusable_in_x", "recall@1_rest", "reward_mean", "grad_ratio_grpo_dml")
#: results.csv column prefix -> the record's attribute_probe field; mean column -> its field
_PER_ATTRIBUTE = {PROBE_PREFIX: "accuracy", CHANCE_PREFIX: "chance", OTHER_PREFIX: "other_attributes"}
_MEANS = {"probe_mean": "mean_accuracy", "chance_mean": "mean_chance", "other_mean": "mean_other_attributes"}


def row_label(method: str, config: Mapping[str, Any] | None) -> str:
    """The report row of a run: its method, or for SAGA its ablation (Table 2 switches ``use_grpo``/``use_kl``)."""
    if method != "saga":
        return method
    method_cfg = (config or {}).get("method") or {}
    # SAGA's config defaults both switches to true; a resolved record always holds them.
    grpo, kl = bool(method_cfg.get("use_grpo", True)), bool(method_cfg.get("use_kl", True))
    label = {(True, True): "saga", (True, False): "saga (GRPO only)", (False, True): "saga (KL only)"}.get(
        (grpo, kl), "saga (no GRPO, no KL)"
    )
    # the paper's literal unit weight on the KL term (records before issue 15 all ran with it) is its own row
    extras = []
    if kl and method_cfg.get("lambda_kl") == 1.0:
        extras.append("λ_kl = 1")
    if grpo and method_cfg.get("lambda_grpo", 1.0) != 1.0:
        extras.append(f"λ_grpo = {float(method_cfg['lambda_grpo']):g}")
    if grpo and method_cfg.get("advantages", "group") == "shuffled":
        extras.append("shuffled advantages")
    if grpo and method_cfg.get("reward", "verdict") == "descriptions":
        extras.append("rule judge")
    if extras:
        label = f"saga ({', '.join(extras)})" if label == "saga" else f"{label[:-1]}, {', '.join(extras)})"
    return label


def _fraction(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else np.nan


def _row_key(label: str) -> tuple[int, str]:
    base = label.split(" [", 1)[0]
    return (ROW_ORDER.index(base), label) if base in ROW_ORDER else (len(ROW_ORDER), label)


def _test_classes(record: dict[str, Any]) -> tuple[np.ndarray, dict[int, dict[str, str]]] | None:
    """The test split's labels (in query order) and each test class's attributes, for the record's dataset options;
    None when the dataset has no class attributes."""
    from benchmark.data.base import load_dataset

    dataset = (record.get("config") or {}).get("dataset") or {}
    options = dict(dataset.get("options") or {})
    key = json.dumps([record.get("dataset"), options], sort_keys=True, default=str)
    if key not in _TEST_CLASSES:
        splits = load_dataset(str(record.get("dataset")), strict=False, **options)
        table = splits.class_attributes
        labels = np.asarray(splits.test.labels)
        _TEST_CLASSES[key] = (
            (labels, {int(c): dict(table[splits.class_names[int(c)]]) for c in np.unique(labels)}) if table else None
        )
    return _TEST_CLASSES[key]


_TEST_CLASSES: dict[str, Any] = {}


def confusable_in(classes: dict[int, dict[str, str]], attribute: str) -> set[int]:
    """The classes with a one-attribute neighbour (another class differing in exactly one attribute) that differs in
    ``attribute``: the queries a retrieval only gets right if it tells ``attribute`` apart."""
    from benchmark.world.data import single_differences

    return {c for c, _, attr in single_differences(classes) if attr == attribute}


def _confusable_recall(record: dict[str, Any], attribute: str | None) -> dict[str, float]:
    """R@1 over the test queries whose class is confusable in ``attribute`` (:func:`confusable_in`) and over the
    others, from the record's per-query hits (NaN for records without them)."""
    from benchmark.evaluation.per_query import decode_hits

    empty = {"recall@1_confusable_in_x": np.nan, "recall@1_rest": np.nan}
    hits = decode_hits((record.get("per_query") or {}).get("test"))
    if hits is None or not attribute or record.get("dataset") != "attributes":
        return empty
    found = _test_classes(record)
    if found is None or len(found[0]) != len(hits):
        return empty
    labels, classes = found
    if attribute not in next(iter(classes.values())):
        return empty
    mask = np.isin(labels, sorted(confusable_in(classes, attribute)))
    return {
        "recall@1_confusable_in_x": float(hits[mask].mean()) if mask.any() else np.nan,
        "recall@1_rest": float(hits[~mask].mean()) if (~mask).any() else np.nan,
    }


def load_runs(
    runs_dir: str | os.PathLike, hard_attribute: str | None = None
) -> tuple[pd.DataFrame, list[dict[str, str]], list[str]]:
    """One line per finished run under ``runs_dir``: ``(runs, skipped records, attribute names in order)``.

    Columns: row, method, seed, dataset, backbone, embedding_dim, config_hash, use_grpo, use_kl, the retrieval
    metrics (fractions), ``probe:<attribute>`` / ``chance:<attribute>`` / ``other:<attribute>``, probe_mean,
    chance_mean, other_mean (NaN where a run has no probe), probe_note (why not), path. Raises ValueError when there is nothing to report, or when the runs
    mix datasets, protocols or selection rules.
    """
    runs, skipped = gather([runs_dir])
    if runs.empty:
        raise ValueError(
            f"No finished run records under {runs_dir} ({len(skipped)} skipped). Run the experiment first, or "
            "pass the directory that holds its runs (<out>/<dataset>/<method>/<run>/record.json)."
        )
    experiments = runs[["dataset", "protocol_hash", "selection_rule"]].drop_duplicates()
    if len(experiments) > 1:
        found = "; ".join(f"{d} (protocol {p}, selection {s})" for d, p, s in experiments.itertuples(index=False))
        raise ValueError(
            f"The runs under {runs_dir} mix experiments: {found}. The report compares methods within one dataset, "
            "protocol and selection rule: pass a directory holding one experiment's runs."
        )
    lines, attributes = [], {}
    for run in runs.to_dict("records"):
        record = json.loads(Path(run["path"]).read_text(encoding="utf-8"))
        config = record.get("config") or {}
        method_cfg = config.get("method") or {}
        is_saga = run["method"] == "saga"
        line = {
            "row": row_label(run["method"], config),
            **{k: run[k] for k in ("method", "seed", "dataset", "backbone", "embedding_dim", "config_hash")},
            "use_grpo": method_cfg.get("use_grpo", True) if is_saga else None,
            "use_kl": method_cfg.get("use_kl", True) if is_saga else None,
            **{m: run[m] for m in RETRIEVAL},
        }
        probe = record.get("attribute_probe")
        if isinstance(probe, dict) and isinstance(probe.get("accuracy"), dict):
            for name in probe["accuracy"]:
                attributes.setdefault(name, None)
                for prefix, field in _PER_ATTRIBUTE.items():
                    line[prefix + name] = _fraction((probe.get(field) or {}).get(name))
            line.update({col: _fraction(probe.get(field)) for col, field in _MEANS.items()})
            line["probe_note"] = ""
        else:
            line["probe_note"] = (probe or {}).get("error") or "no probe in the record (eval.attribute_probe=false?)"
        diagnostics = record.get("diagnostics") or {}
        rolled_out = is_saga and bool(method_cfg.get("use_grpo", True) or method_cfg.get("use_kl", True))
        line["reward_mean"] = _fraction(diagnostics.get("reward_mean")) if rolled_out else np.nan  # no rollouts
        grpo_norm, dml_norm = diagnostics.get("grad_norm_grpo_tower"), diagnostics.get("grad_norm_dml_tower")
        line["grad_ratio_grpo_dml"] = (
            _fraction(grpo_norm) / _fraction(dml_norm)
            if _fraction(grpo_norm) > 0 and _fraction(dml_norm) > 0
            else np.nan
        )
        line.update(_confusable_recall(record, hard_attribute))
        line["path"] = run["path"]
        lines.append(line)
    names = list(attributes)
    df = pd.DataFrame(lines)
    for name in names:
        for prefix in _PER_ATTRIBUTE:
            if prefix + name not in df:
                df[prefix + name] = np.nan
    for col in _MEANS:
        if col not in df:
            df[col] = np.nan
    # One row label per configuration: a label shared by several configurations is told apart by config hash.
    several = df.groupby("row")["config_hash"].transform("nunique") > 1
    df["row"] = df["row"].where(~several, df["row"] + " [" + df["config_hash"].str[:8] + "]")
    df["_order"] = df["row"].map(_row_key)
    df = df.sort_values(["_order", "seed", "path"], kind="stable").drop(columns="_order").reset_index(drop=True)
    probe_cols = [p + n for n in names for p in _PER_ATTRIBUTE]
    head = ["row", "method", "seed", "dataset", "backbone", "embedding_dim", "config_hash", "use_grpo", "use_kl"]
    columns = [*head, *RETRIEVAL, *EXTRA, *probe_cols, *_MEANS, "probe_note", "path"]
    return df[columns], skipped, names


def summarise(runs: pd.DataFrame, attributes: list[str]) -> pd.DataFrame:
    """Per row (in report order): ``n_seeds``, and ``<column>_mean`` / ``<column>_std`` (sample std, ddof=1) for the
    retrieval metrics, each attribute's probe accuracy and reference levels, and their means (NaN: no run has them)."""
    cols = [*RETRIEVAL, *EXTRA, *(p + a for a in attributes for p in _PER_ATTRIBUTE), *_MEANS]
    g = runs.groupby("row", sort=False)
    out = pd.DataFrame({"n_seeds": g["seed"].nunique(), "n_probed": g["probe_mean"].count()})
    for c in cols:
        out[f"{c}_mean"] = g[c].mean()
        out[f"{c}_std"] = g[c].std(ddof=1)
    return out.loc[sorted(out.index, key=_row_key)]


def _pm(mean: float, std: float) -> str:
    if pd.isna(mean):
        return "—"
    return f"{100 * mean:.1f}" + ("" if pd.isna(std) else f" ± {100 * std:.1f}")


def welch(a: Any, b: Any) -> tuple[float, float]:
    """``(mean(a) - mean(b), two-sided p of Welch's t-test)``; p is NaN with fewer than two values on a side."""
    from scipy import stats

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    a, b = a[~np.isnan(a)], b[~np.isnan(b)]
    if not len(a) or not len(b):
        return np.nan, np.nan
    p = float(stats.ttest_ind(a, b, equal_var=False).pvalue) if len(a) > 1 and len(b) > 1 else np.nan
    return float(a.mean() - b.mean()), p


def _grpo_section(runs: pd.DataFrame, hard: str | None) -> list[str]:
    """What the MLLM terms do against SAGA's pooler alone: ΔR@1 and Welch's p per SAGA row, R@1 on the queries
    confusable in X, X's probe above its other-attributes level, the training reward, the GRPO/DML gradient ratio."""
    saga = runs[runs["method"] == "saga"]
    if saga.empty:
        return []
    base = runs.loc[runs["row"] == BASELINE_ROW, "recall@1"]
    x_probe = f"{PROBE_PREFIX}{hard}" if hard else None
    lines = [
        "",
        f"## SAGA's MLLM terms against its pooler alone (`{BASELINE_ROW}`)",
        "",
        f"Percent, mean ± sample std over seeds. ΔR@1 and Welch's two-sided p against `{BASELINE_ROW}`. "
        + (
            f"*R@1 (X)*: R@1 over the test queries whose class has a one-attribute neighbour differing in the hard "
            f"attribute X = {hard}; *X probe − others*: X's linear-probe accuracy above what the other attributes "
            "alone give. "
            if hard
            else ""
        )
        + "*Reward*: the mean verdict reward of the training rollouts; *GRPO/DML*: the ratio of their gradient norms "
        "at the tower.",
        "",
        "| row | n | R@1 | ΔR@1 | p | R@1 (X) | R@1 (rest) | X probe − others | reward | GRPO/DML |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in sorted(saga["row"].unique(), key=_row_key):
        r = saga[saga["row"] == row]
        delta, p = welch(r["recall@1"], base) if row != BASELINE_ROW and len(base) else (np.nan, np.nan)
        above = (r[x_probe] - r[f"{OTHER_PREFIX}{hard}"]) if x_probe and x_probe in r else pd.Series(dtype=float)

        def pm(col: str, frame: pd.DataFrame = r) -> str:
            return _pm(frame[col].mean(), frame[col].std(ddof=1) if len(frame) > 1 else None)

        cells = [
            str(r["seed"].nunique()),
            pm("recall@1"),
            "—" if np.isnan(delta) else f"{100 * delta:+.1f}",
            "—" if np.isnan(p) else f"{p:.3f}",
            pm("recall@1_confusable_in_x"),
            pm("recall@1_rest"),
            _pm(above.mean(), above.std(ddof=1) if len(above) > 1 else None) if len(above) else "—",
            pm("reward_mean"),
            "—" if r["grad_ratio_grpo_dml"].isna().all() else f"{r['grad_ratio_grpo_dml'].mean():.2f}",
        ]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    rewarded = saga.dropna(subset=["reward_mean"])
    rewarded = rewarded[rewarded["use_grpo"].astype(bool)]
    if len(rewarded) > 2:
        r = float(np.corrcoef(rewarded["reward_mean"], rewarded["recall@1"])[0, 1])
        lines += [
            "",
            f"Training reward against test R@1 over the {len(rewarded)} runs with GRPO: Pearson r = {r:+.2f}.",
        ]
    return lines


def _markdown(
    summary: pd.DataFrame, runs: pd.DataFrame, attributes: list[str], skipped, runs_dir, hard_attribute: str | None
) -> str:
    first = runs.iloc[0]
    lines = [
        f"# Retrieval and attribute probes: {first['dataset']}",
        "",
        f"{len(runs)} runs under `{Path(runs_dir).as_posix()}`. Percent, mean ± sample std over seeds; n = seeds. "
        "Rows: the method; SAGA by ablation (`saga`: GRPO and KL, `saga (GRPO only)`: use_kl=false, "
        "`saga (KL only)`: use_grpo=false).",
        "",
        "## Retrieval (test split, unseen classes)",
        "",
        "| row | n | " + " | ".join(RETRIEVAL.values()) + " |",
        "|---|---:|" + "---:|" * len(RETRIEVAL),
    ]
    for row, s in summary.iterrows():
        cells = [_pm(s[f"{m}_mean"], s[f"{m}_std"]) for m in RETRIEVAL]
        lines.append(f"| {row} | {int(s['n_seeds'])} | " + " | ".join(cells) + " |")
    lines += _grpo_section(runs, hard_attribute)
    lines += [
        "",
        "## Linear probe per attribute (test embeddings, class-disjoint)",
        "",
        "Accuracy of a linear classifier per attribute (standardised embeddings, logistic regression), fitted on the "
        "images of half the test classes and scored on the other half, then swapped, so it cannot memorise classes. "
        "Chance: the training half's majority value, under the same folds. *From the other attributes*: what the "
        "same probe reaches from the exact values of every other attribute alone; the test classes' attributes are "
        "correlated, so an embedding is read as knowing an attribute up to this level through the others: only "
        "accuracy above it shows the attribute itself. n = seeds with a probe.",
        "",
    ]
    if not attributes:
        lines.append("No run record holds probe results (the dataset names no class attributes, or the probe was off).")
    else:
        lines += [
            "| row | n | " + " | ".join(attributes) + " | mean | chance (mean) |",
            "|---|---:|" + "---:|" * (len(attributes) + 2),
        ]
        for row, s in summary.iterrows():
            cells = [_pm(s[f"{PROBE_PREFIX}{a}_mean"], s[f"{PROBE_PREFIX}{a}_std"]) for a in attributes]
            cells += [_pm(s["probe_mean_mean"], s["probe_mean_std"]), _pm(s["chance_mean_mean"], None)]
            lines.append(f"| {row} | {int(s['n_probed'])} | " + " | ".join(cells) + " |")
        for prefix, name, col in ((CHANCE_PREFIX, "chance (majority value)", "chance_mean"),
                                  (OTHER_PREFIX, "from the other attributes", "other_mean")):  # fmt: skip
            levels = [_pm(runs[prefix + a].mean(), None) for a in attributes]
            lines.append(f"| *{name}* | | " + " | ".join(levels) + f" | {_pm(runs[col].mean(), None)} | |")
    missing = runs[runs["probe_note"] != ""]
    if len(missing):
        lines += ["", "Runs without probe results:", ""]
        lines += [f"- `{r.path}` ({r.row}): {r.probe_note}" for r in missing.itertuples(index=False)]
    if skipped:
        lines += ["", "## Skipped records", ""] + [f"- `{s['path']}`: {s['reason']}" for s in skipped]
    return "\n".join(lines) + "\n"


def _figure(runs: pd.DataFrame, attributes: list[str]) -> bytes:
    import seaborn as sns
    from matplotlib.figure import Figure

    order = sorted(runs["row"].unique(), key=_row_key)
    palette = dict(zip(order, sns.color_palette(n_colors=len(order)), strict=True))
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook"):
        fig = Figure(layout="constrained", figsize=(4.5 + 1.1 * (len(attributes) + 1) + 0.6 * len(order), 4.8))
        left, right = fig.subplots(1, 2, width_ratios=[max(3, len(attributes) + 1), max(1.5, 0.5 * len(order))])
        names = [*attributes, "mean"]
        cols = {PROBE_PREFIX + a: a for a in attributes} | {"probe_mean": "mean"}
        long = runs.melt(id_vars=["row", "seed"], value_vars=list(cols), var_name="attribute", value_name="accuracy")
        long = long.dropna(subset=["accuracy"]).assign(attribute=lambda d: d["attribute"].map(cols))
        if long.empty:
            left.text(0.5, 0.5, "no probe results in these records", ha="center", va="center")
        else:
            sns.barplot(data=long.assign(accuracy=long["accuracy"] * 100), x="attribute", y="accuracy", hue="row",
                        order=names, hue_order=order, palette=palette, errorbar="sd", capsize=0.1, ax=left)  # fmt: skip
            levels = (  # reference levels of each attribute, drawn across its group of bars
                (CHANCE_PREFIX, "chance_mean", "chance (majority value)", "--"),
                (OTHER_PREFIX, "other_mean", "from the other attributes", ":"),
            )
            for prefix, mean_col, label, style in levels:
                values = [runs[prefix + a].mean() for a in attributes] + [runs[mean_col].mean()]
                for i, v in enumerate(values):
                    if not np.isnan(v):
                        left.hlines(100 * v, i - 0.45, i + 0.45, colors="black", linestyles=style, linewidth=1.6,
                                    label=label if i == 0 else None)  # fmt: skip
            left.legend(title=None, loc="upper left", bbox_to_anchor=(0, -0.28), ncols=4, fontsize="small",
                        frameon=False)  # fmt: skip
            left.tick_params(axis="x", labelrotation=30)
            for label in left.get_xticklabels():
                label.set_horizontalalignment("right")
        left.set(title="Linear probe per attribute (test, class-disjoint), ± std over seeds", xlabel="",
                 ylabel="accuracy (%)", ylim=(0, 100))  # fmt: skip
        sns.barplot(data=runs.assign(r1=runs["recall@1"] * 100), x="row", y="r1", hue="row", order=order,
                    hue_order=order, palette=palette, errorbar="sd", capsize=0.15, legend=False, ax=right)  # fmt: skip
        right.set(title="Test R@1, ± std over seeds", xlabel="", ylabel="R@1 (%)")
        right.tick_params(axis="x", labelrotation=45)
        for label in right.get_xticklabels():
            label.set_horizontalalignment("right")
        buf = io.BytesIO()
        # No "Software" entry: the file only changes when the plot does (as the leaderboard's figures).
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    return buf.getvalue()


def write_world_report(
    runs_dir: str | os.PathLike, out_dir: str | os.PathLike, hard_attribute: str | None = None
) -> dict[str, Path]:
    """Read the run records under ``runs_dir`` and write ``results.csv``, ``summary.md`` and ``probe.png`` into
    ``out_dir`` (each atomically); returns ``{"csv": path, "md": path, "png": path}``.

    Raises FileNotFoundError when ``runs_dir`` does not exist, ValueError when it holds no finished run or mixes
    experiments (see :func:`load_runs`).
    """
    from benchmark.engine.checks import unwritable_reason
    from benchmark.leaderboard.spreadsheet import spreadsheet_safe

    out = Path(out_dir)
    reason = unwritable_reason(out)
    if reason:  # before reading anything (as the leaderboard's --out)
        raise ValueError(f"--out {out}: {reason}. Pass --out DIR, a directory you can write to.")
    runs, skipped, attributes = load_runs(runs_dir, hard_attribute)
    summary = summarise(runs, attributes)
    out.mkdir(parents=True, exist_ok=True)
    return {
        "csv": write_atomic(out / "results.csv", spreadsheet_safe(runs).to_csv(index=False, float_format="%.6f")),
        "md": write_atomic(out / "summary.md", _markdown(summary, runs, attributes, skipped, runs_dir, hard_attribute)),
        "png": write_atomic(out / "probe.png", _figure(runs, attributes)),
    }
