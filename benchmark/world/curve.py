"""GRPO's effect against the judge's quality: for each supervisor build a sweep ran on, SAGA's pooler with GRPO
against the same pooler without it (same budget, same seeds), beside the build's held-out verdict accuracy.

``write_judge_curve(runs_dirs, out_dir)`` reads the SAGA runs without KL under ``runs_dirs`` (through the
leaderboard's gathering), tells the builds apart by the digest in each record's backbone source, reads each build's
card (from its directory, or ``out_dir/cards/<digest>.json`` where an earlier report copied it), and writes
``judges.csv`` (one line per build and λ_grpo), ``judges.md`` and ``judges.png`` (ΔR@1 ± spread against verdict
accuracy), each atomically; the cards it read are copied into ``out_dir/cards`` so the report can be rebuilt
from the committed records alone.
"""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmark.engine.records import write_atomic
from benchmark.leaderboard.gather import gather
from benchmark.world.report import welch


def _card(source: str, cards: Path) -> dict[str, Any] | None:
    """The supervisor card of a record's backbone source ``hf:NAME (DIR)``: DIR's own, else the copy in ``cards``."""
    from benchmark.world.supervisor import CARD_FILE

    match = re.search(r"\(([^()]*)\)\s*$", source or "")
    if match and (Path(match.group(1)) / CARD_FILE).exists():
        return json.loads((Path(match.group(1)) / CARD_FILE).read_text())
    digest = re.search(r"-([0-9a-f]{12})\)?\s*$", source or "")
    copy = cards / f"{digest.group(1)}.json" if digest else None
    return json.loads(copy.read_text()) if copy is not None and copy.exists() else None


def load_judge_runs(runs_dirs: list[str | os.PathLike], cards: Path) -> tuple[pd.DataFrame, dict[str, dict[str, Any]]]:
    """One line per SAGA run without KL: judge digest, λ_grpo, use_grpo, seed, R@1, reward, gradient ratio; and the
    cards by digest. Raises ValueError when there is no such run or a run's build has no card to be found."""
    # one directory at a time: runs on different builds share a config hash (it names `attributes-supervisor`, not
    # the build), so gathering the directories together would drop one build's runs as the other's duplicates
    gathered = [gather([d])[0] for d in runs_dirs]
    lines, found = [], {}
    for run in [r for runs in gathered if not runs.empty for r in runs.to_dict("records")]:
        if run["method"] != "saga":
            continue
        record = json.loads(Path(run["path"]).read_text(encoding="utf-8"))
        method = (record.get("config") or {}).get("method") or {}
        if method.get("use_kl", True) or method.get("advantages", "group") != "group":
            continue
        if method.get("reward", "verdict") != "verdict":
            continue
        source = (record.get("backbone") or {}).get("source", "")
        card = _card(source, cards)
        if card is None:
            raise ValueError(
                f"{run['path']}: no supervisor card for its backbone {source!r}: build it (python -m benchmark "
                f"supervisor build) or keep the report's cards/ directory beside it."
            )
        found[card["digest"]] = card
        diagnostics = record.get("diagnostics") or {}
        g, d = diagnostics.get("grad_norm_grpo_tower"), diagnostics.get("grad_norm_dml_tower")
        lines.append(
            {
                "digest": card["digest"],
                "backbone": (record.get("backbone") or {}).get("name"),
                "use_grpo": bool(method.get("use_grpo", True)),
                "lambda_grpo": float(method.get("lambda_grpo", 1.0)),
                "seed": run["seed"],
                "recall@1": run["recall@1"],
                "reward_mean": diagnostics.get("reward_mean", np.nan),
                "grad_ratio_grpo_dml": g / d
                if isinstance(g, (int, float)) and isinstance(d, (int, float)) and d
                else np.nan,
            }
        )
    if not lines:
        raise ValueError(f"No SAGA run without KL under {runs_dirs}: run sweeps/saga_world_judges.yaml first.")
    return pd.DataFrame(lines), found


def judge_table(runs: pd.DataFrame, cards: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """Per build and λ_grpo: the build's held-out verdict accuracy (and same / neighbour), ΔR@1 of GRPO over the
    pooler alone (mean, each side's seed spread), Welch's p, seeds, the reward and the gradient ratio."""
    rows = []
    for digest, r in runs.groupby("digest", sort=False):
        held = cards[digest]["metrics"]["held_out"]
        base = r.loc[~r["use_grpo"], "recall@1"]
        for lam, g in r[r["use_grpo"]].groupby("lambda_grpo"):
            delta, p = welch(g["recall@1"], base)
            by_kind = held.get("by_kind") or {}
            rows.append(
                {
                    "digest": digest,
                    "backbone": r["backbone"].iloc[0],
                    "verdict_accuracy": held["verdict_accuracy"],
                    "verdict_same": (by_kind.get("same") or {}).get("verdict_accuracy", held["verdict_accuracy_same"]),
                    "verdict_neighbour": (by_kind.get("neighbour") or {}).get("verdict_accuracy", np.nan),
                    "lambda_grpo": lam,
                    "n_grpo": int(g["seed"].nunique()),
                    "n_pooler": int(r.loc[~r["use_grpo"], "seed"].nunique()),
                    "recall@1_pooler": float(base.mean()) if len(base) else np.nan,
                    "recall@1_grpo": float(g["recall@1"].mean()),
                    "delta_recall@1": delta,
                    "std_grpo": float(g["recall@1"].std(ddof=1)) if len(g) > 1 else np.nan,
                    "std_pooler": float(base.std(ddof=1)) if len(base) > 1 else np.nan,
                    "welch_p": p,
                    "reward_mean": float(g["reward_mean"].mean()),
                    "grad_ratio_grpo_dml": float(g["grad_ratio_grpo_dml"].mean()),
                }
            )
    return pd.DataFrame(rows).sort_values(["verdict_accuracy", "lambda_grpo"]).reset_index(drop=True)


def _markdown(table: pd.DataFrame, runs_dirs: list[str | os.PathLike]) -> str:
    where = ", ".join(f"`{Path(d).as_posix()}`" for d in runs_dirs)
    lines = [
        "# GRPO's effect against the judge's quality (attributes world)",
        "",
        f"SAGA's pooler trained by Potential Field with GRPO against the same without it (KL off in both; same "
        f"budget and seeds), on each supervisor build. Runs under {where}. Verdict accuracy: "
        "the build card's held-out pairs of the 48 test classes (SAGA's sampling). ΔR@1 in points, ± each side's "
        "sample std over seeds; p: Welch's two-sided t-test; GRPO/DML: gradient-norm ratio at the tower.",
        "",
        "| build | verdict acc. | same | neighbour | λ_grpo | n | R@1 pooler | R@1 GRPO | ΔR@1 | p | reward | GRPO/DML |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for t in table.itertuples(index=False):
        lines.append(
            f"| {t.backbone} ({t.digest}) | {t.verdict_accuracy:.3f} | {t.verdict_same:.2f} | "
            f"{t.verdict_neighbour:.2f} | {t.lambda_grpo:g} | {t.n_grpo}/{t.n_pooler} | "
            f"{100 * t.recall_at_1_pooler:.1f} ± {100 * t.std_pooler:.1f} | {100 * t.recall_at_1_grpo:.1f} ± "
            f"{100 * t.std_grpo:.1f} | {100 * t.delta_recall_at_1:+.1f} | {t.welch_p:.3f} | {t.reward_mean:.3f} | "
            f"{t.grad_ratio_grpo_dml:.2f} |"
        )
    return "\n".join(lines) + "\n"


def _figure(table: pd.DataFrame) -> bytes:
    import seaborn as sns
    from matplotlib.figure import Figure

    with sns.axes_style("whitegrid"), sns.plotting_context("notebook"):
        fig = Figure(layout="constrained", figsize=(6.4, 4.6))
        ax = fig.subplots()
        for lam, g in table.groupby("lambda_grpo"):
            spread = 100 * np.sqrt(g["std_grpo"].fillna(0) ** 2 + g["std_pooler"].fillna(0) ** 2)
            ax.errorbar(g["verdict_accuracy"], 100 * g["delta_recall_at_1"], yerr=spread, marker="o", capsize=4,
                        linestyle="-" if lam == 1.0 else ":", label=f"λ_grpo = {lam:g}")  # fmt: skip
        ax.axhline(0, color="black", linewidth=1)
        ax.set(xlabel="held-out verdict accuracy of the supervisor", ylabel="ΔR@1 of GRPO (points)",
               title="GRPO's effect against the judge's quality")  # fmt: skip
        ax.legend(frameon=False)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    return buf.getvalue()


def write_judge_curve(
    runs_dirs: str | os.PathLike | list[str | os.PathLike], out_dir: str | os.PathLike
) -> dict[str, Path]:
    """Write ``judges.csv``, ``judges.md`` and ``judges.png`` into ``out_dir`` (and the builds' cards into
    ``out_dir/cards``); returns their paths."""
    from benchmark.engine.checks import unwritable_reason

    out = Path(out_dir)
    reason = unwritable_reason(out)
    if reason:
        raise ValueError(f"--out {out}: {reason}. Pass --out DIR, a directory you can write to.")
    runs_dirs = [runs_dirs] if isinstance(runs_dirs, (str, os.PathLike)) else list(runs_dirs)
    for d in runs_dirs:
        if not Path(d).exists():
            raise FileNotFoundError(f"{d} does not exist: pass the directories that hold the sweeps' runs.")
    runs, cards = load_judge_runs(runs_dirs, out / "cards")
    table = judge_table(runs, cards).rename(columns=lambda c: c.replace("@", "_at_"))
    (out / "cards").mkdir(parents=True, exist_ok=True)
    for digest, card in cards.items():
        target = out / "cards" / f"{digest}.json"
        if not target.exists():
            write_atomic(target, json.dumps(card, indent=2) + "\n")
    return {
        "csv": write_atomic(out / "judges.csv", table.to_csv(index=False, float_format="%.6f")),
        "md": write_atomic(out / "judges.md", _markdown(table, runs_dirs)),
        "png": write_atomic(out / "judges.png", _figure(table)),
    }
