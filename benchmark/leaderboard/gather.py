"""The leaderboard: run records -> comparison tables (Markdown, LaTeX, CSV, HTML) and figures.

``python -m benchmark leaderboard RUNS_OR_SWEEP_DIRS... --out leaderboard/`` gathers every ``record.json`` (schema in
``RECORD_SCHEMA.md``) under the given directories, aggregates the seeds of each configuration (mean ± sample std),
and writes one table per (protocol hash, selection rule): tables never mix protocols or selection rules. The numbers
published in papers (``leaderboard/reported/*.yaml``) are shown in their own tables, never ranked with our runs.
Records that are not finished results (corrupted, partial, running, failed, another schema version, a duplicate of a
run already gathered) are listed in a "skipped" section with the reason; they never stop the command.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from benchmark.engine.records import SCHEMA_VERSION
from benchmark.leaderboard.cost import COST_COLUMNS, aggregate_cost, cost_fields
from benchmark.leaderboard.keys import COMPARE_KEYS, GROUP_KEYS, METRICS, TABLE_KEYS
from benchmark.leaderboard.significance import COLUMNS as SIGNIFICANCE_COLUMNS
from benchmark.leaderboard.significance import add_significance

COMMAND = "python -m benchmark leaderboard"
SELECTION_RULES = ("val", "last", "test")
FORMATS = ("md", "csv", "tex", "html", "png")
DEFAULT_REPORTED_DIR = Path(__file__).resolve().parents[2] / "leaderboard" / "reported"
_REQUIRED = ("run_id", "method", "dataset", "seed", "backbone", "selection", "metrics", "protocol", "config_hash")

RUN_COLUMNS = [
    "path", "run_id", "dataset", "method", "backbone", "backbone_source", "embedding_dim", "pooling", "image_size",
    "train_transform", "test_transform", "selection_rule", "selection_metric", "selection_epoch", "protocol_hash",
    "protocol_version", "config_hash", "seed", *METRICS, "git_sha", "git_dirty", "finished",
    *COST_COLUMNS,
]  # fmt: skip
_DESCRIPTIVE = ["backbone_source", "pooling", "image_size", "train_transform", "test_transform", "protocol_version"]


# The engine moves a finished run aside as <run dir>.old-<timestamp> when the same config is re-run (force=true).
ARCHIVED = re.compile(r"\.old-[0-9-]+$")
# Text columns of the CSV files: read back as text even when a hash or a seed list looks like a number.
TEXT_COLUMNS = {
    "path", "run_id", "dataset", "method", "backbone", "backbone_source", "pooling", "train_transform",
    "test_transform", "selection_rule", "selection_metric", "protocol_hash", "config_hash", "git_sha", "finished",
    "seeds", "git_shas", "entry", "reason", "source", "title", "citation", "notes", "file", "metric", "unit",
    "device", "cost_unit", "sig_metric", "sig_test",
}  # fmt: skip


def read_csv(path: str | os.PathLike) -> pd.DataFrame:
    """Read back a CSV file the leaderboard wrote (text columns stay text: a hash like ``0123`` is not a number)."""
    header = pd.read_csv(path, nrows=0).columns
    return pd.read_csv(path, dtype={c: str for c in header if c in TEXT_COLUMNS})


def _display_path(path: Path) -> str:
    """A path relative to the working directory when it lies below it (stable output across machines)."""
    resolved, cwd = Path(path).resolve(), Path.cwd().resolve()
    return resolved.relative_to(cwd).as_posix() if resolved.is_relative_to(cwd) else Path(path).as_posix()


def _find_records(paths: Iterable[str | os.PathLike]) -> tuple[list[Path], list[dict[str, str]]]:
    """Every record.json under ``paths`` (sorted, without repeats), and run directories that never wrote one."""
    found: dict[Path, Path] = {}
    unfinished: list[dict[str, str]] = []
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            raise FileNotFoundError(
                f"{p} does not exist: pass run directories, sweep directories or record.json files "
                "(a run directory is <out>/<dataset>/<method>/<run_id>/ and holds record.json)."
            )
        if p.is_file():
            found.setdefault(p.resolve(), p)
            continue
        for dirpath, dirnames, filenames in os.walk(p):
            dirnames.sort()
            d = Path(dirpath)
            if ARCHIVED.search(d.name) and ("record.json" in filenames or "metrics.jsonl" in filenames):
                reason = "archived run (moved aside when the configuration was re-run with force=true)"
                unfinished.append({"path": _display_path(d), "reason": reason})
            elif "record.json" in filenames:
                found.setdefault((d / "record.json").resolve(), d / "record.json")
            elif "metrics.jsonl" in filenames or "checkpoints" in dirnames:
                reason = "unfinished: the run directory has no record.json (still running, or killed before the end)"
                unfinished.append({"path": _display_path(d), "reason": reason})
    return [found[k] for k in sorted(found)], unfinished


def _number(value: Any) -> float | None:
    """``value`` as a finite float, or None (bools are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def read_record(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """Parse one record.json into a leaderboard row; returns ``(row, None)`` or ``(None, reason it is skipped)``."""
    try:
        rec = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        return None, f"unreadable: {e}"
    except json.JSONDecodeError as e:
        return None, f"corrupted or truncated JSON: {e.msg} (line {e.lineno}, column {e.colno})"
    if not isinstance(rec, dict):
        return None, "corrupted: the top level is not a JSON object"
    version = rec.get("schema_version")
    if version != SCHEMA_VERSION:
        if version is None or (isinstance(version, int) and version < SCHEMA_VERSION):
            return None, (
                f"older record schema (schema_version {version}; this leaderboard reads version {SCHEMA_VERSION}): "
                "re-run the configuration or convert the record"
            )
        return (
            None,
            f"unknown schema_version {version!r} (this leaderboard reads {SCHEMA_VERSION}): update the benchmark",
        )
    status = rec.get("status")
    if status != "completed":
        if status == "failed":
            return None, f"failed run: {rec.get('error') or 'no error message recorded'}"
        return None, f"unfinished: status {status!r} (only 'completed' records are results)"
    missing = [k for k in _REQUIRED if rec.get(k) is None]
    if missing:
        return None, f"partial record: missing {', '.join(missing)}"
    backbone, selection, protocol = rec["backbone"], rec["selection"], rec["protocol"]
    test = rec["metrics"].get("test") if isinstance(rec["metrics"], dict) else None
    if not all(isinstance(x, dict) for x in (backbone, selection, protocol, test)):
        return None, "partial record: backbone, selection, protocol and metrics.test must be JSON objects"
    missing = [f"backbone.{k}" for k in ("name", "embedding_dim") if backbone.get(k) is None]
    missing += ["selection.rule"] if selection.get("rule") is None else []
    missing += ["protocol.hash"] if protocol.get("hash") is None else []
    missing += [f"metrics.test.{m}" for m in METRICS if m not in test]
    if missing:
        return None, f"partial record: missing {', '.join(missing)}"
    if selection["rule"] not in SELECTION_RULES:
        return None, f"corrupted: selection.rule {selection['rule']!r} is not one of {', '.join(SELECTION_RULES)}"
    for key, value in (("seed", rec["seed"]), ("backbone.embedding_dim", backbone["embedding_dim"])):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
            low = 0 if key == "seed" else 1
            shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
            return None, f"corrupted: {key} {shown} is not an integer in [{low}, 2**63)"
    if backbone["embedding_dim"] < 1:
        return None, f"corrupted: backbone.embedding_dim {backbone['embedding_dim']!r} is not a positive integer"
    row: dict[str, Any] = {}
    for m in METRICS:
        v = _number(test[m])
        if v is None or not 0.0 <= v <= 1.0:
            return None, f"corrupted: metrics.test.{m} = {test[m]!r} is not a number in [0, 1]"
        row[m] = v
    try:
        return _row(path, rec, row, backbone, selection, protocol), None
    except (TypeError, ValueError, OverflowError) as err:  # a field of an unexpected type: skipped, never fatal
        return None, f"corrupted: {type(err).__name__}: {err}"


def _scalar(value: Any) -> Any:
    """A descriptive field as a table cell: a string, a finite number that fits a 64-bit column, a bool, or None."""
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**63 else str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return json.dumps(value, default=str)[:200]  # a list or object where a scalar belongs: shown as text


def _row(path: Path, rec: dict, row: dict, backbone: dict, selection: dict, protocol: dict) -> dict[str, Any]:
    """The leaderboard row of a checked record."""
    data = rec.get("data") if isinstance(rec.get("data"), dict) else {}
    git = rec.get("git") if isinstance(rec.get("git"), dict) else {}
    timings = rec.get("timings") if isinstance(rec.get("timings"), dict) else {}
    row.update(
        path=_display_path(Path(path)),
        run_id=str(rec["run_id"]),
        dataset=str(rec["dataset"]),
        method=str(rec["method"]),
        backbone=str(backbone["name"]),
        backbone_source=_scalar(backbone.get("source")),
        embedding_dim=int(backbone["embedding_dim"]),
        pooling=_scalar(backbone.get("pooling")),
        image_size=_scalar(data.get("image_size")),
        train_transform=_scalar(data.get("train_transform")),
        test_transform=_scalar(data.get("test_transform")),
        selection_rule=selection["rule"],
        selection_metric=_scalar(selection.get("metric")),
        selection_epoch=_scalar(selection.get("epoch")),
        protocol_hash=str(protocol["hash"]),
        protocol_version=_scalar(protocol.get("version")),
        config_hash=str(rec["config_hash"]),
        seed=rec["seed"],
        git_sha=_scalar(git.get("sha")),
        git_dirty=_scalar(git.get("dirty")),
        finished=_scalar(timings.get("finished") or timings.get("updated")),
        **cost_fields(rec.get("compute")),
    )
    return row


#: How a duplicate whose metrics differ from the kept run's begins its reason (``main`` warns about each one).
DISAGREES = "duplicate that DISAGREES with"
#: Metric differences up to this are float noise between machines (the same run on another GPU), not disagreement.
AGREE_TOLERANCE = 1e-3


def _disagreement(kept: dict[str, Any], other: dict[str, Any]) -> str | None:
    """The metrics on which two runs of one config and seed differ by more than :data:`AGREE_TOLERANCE`."""
    differ = [m for m in METRICS if abs(kept[m] - other[m]) > AGREE_TOLERANCE]
    if not differ:
        return None
    return ", ".join(f"{m} {kept[m]:.4f} vs {other[m]:.4f}" for m in differ[:3])


def gather(paths: Iterable[str | os.PathLike]) -> tuple[pd.DataFrame, list[dict[str, str]]]:
    """Read every run record under ``paths`` into one DataFrame (one row per run, columns :data:`RUN_COLUMNS`).

    Returns ``(runs, skipped)``; ``skipped`` lists ``{"path", "reason"}`` for each record that is not a finished
    result, and for each duplicate (same protocol, config hash and seed as a run already kept: the first one to
    finish, then the first path, is kept). Raises FileNotFoundError for a path that does not exist.
    """
    files, skipped = _find_records(paths)
    rows = []
    for f in files:
        row, reason = read_record(f)
        if row is None:
            skipped.append({"path": _display_path(f), "reason": reason})
        else:
            rows.append(row)
    rows.sort(key=lambda r: (r["finished"] is None, str(r["finished"] or ""), r["path"]))
    kept: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        key = (r["protocol_hash"], r["dataset"], r["method"], r["config_hash"], r["seed"])
        if key in kept:
            reason = (
                f"duplicate of {kept[key]['path']} (same config {r['config_hash']} and seed {r['seed']}); "
                "the first run to finish is kept"
            )
            disagree = _disagreement(kept[key], r)
            if disagree:
                reason = f"{DISAGREES} {kept[key]['path']} (same config {r['config_hash']} and seed {r['seed']}): "
                reason += f"{disagree}; one of them ran other code or data (git {kept[key]['git_sha']} vs "
                reason += f"{r['git_sha']}): find out which before trusting either; the first run to finish is kept"
            skipped.append({"path": r["path"], "reason": reason})
        else:
            kept[key] = r
    runs = pd.DataFrame(list(kept.values()), columns=RUN_COLUMNS)
    runs = runs.sort_values([*GROUP_KEYS, "seed", "path"], kind="stable").reset_index(drop=True)
    return runs, sorted(skipped, key=lambda s: (s["path"], s["reason"]))


def aggregate(runs: pd.DataFrame, reference: str | None = None, metric: str = "recall@1") -> pd.DataFrame:
    """Mean and sample std (ddof=1) over seeds per configuration, with seed counts, flags and deltas.

    One row per (protocol, selection rule, dataset, backbone, embedding size, method, config hash), sorted in that
    order. Columns: the keys, ``n_seeds``, ``seeds``, ``<metric>_mean`` / ``<metric>_std`` for each of
    :data:`METRICS` (fractions), ``fewer_seeds`` (fewer seeds than the most in the same table), ``entry`` (a label
    unique within its comparison group) and, with ``reference``, ``delta_<metric>`` = mean − the reference
    method's mean in the same (dataset, protocol, selection rule, backbone, embedding size) group (NaN where that
    group has no reference row, or several configurations of it), and the significance of each row's ``metric``
    difference (:mod:`benchmark.leaderboard.significance`: Welch's t and Holm's p, or a bootstrap interval).
    Cost columns: :mod:`benchmark.leaderboard.cost`.
    """
    means = [f"{m}_mean" for m in METRICS]
    cols = [*GROUP_KEYS, *_DESCRIPTIVE, "n_seeds", "seeds", *(c for m in METRICS for c in (f"{m}_mean", f"{m}_std"))]
    cols += ["git_shas", "fewer_seeds", "entry"] + ([f"delta_{m}" for m in METRICS] if reference else [])
    cols += ["cost_hours_mean", "cost_unit", "peak_memory_gb_mean", "train_images_per_s_mean", "device"]
    cols += SIGNIFICANCE_COLUMNS if reference else []
    if runs.empty:
        return pd.DataFrame(columns=cols)
    if reference is not None and reference not in set(runs["method"]):
        raise ValueError(
            f"Reference method '{reference}' has no runs here; methods with runs: {', '.join(sorted(set(runs['method'])))}."
        )
    g = runs.groupby(GROUP_KEYS, sort=True, dropna=False)
    out = g[_DESCRIPTIVE].first()
    out["n_seeds"] = g["seed"].nunique()
    out["seeds"] = g["seed"].agg(lambda s: ",".join(str(x) for x in sorted(s)))
    for m in METRICS:
        out[f"{m}_mean"] = g[m].mean()
        out[f"{m}_std"] = g[m].std(ddof=1)
    out["git_shas"] = g["git_sha"].agg(lambda s: ",".join(sorted({str(x)[:10] for x in s if x})))
    out = aggregate_cost(out, g).reset_index()
    out["fewer_seeds"] = out["n_seeds"] < out.groupby(TABLE_KEYS)["n_seeds"].transform("max")
    # A method shown twice in one comparison group (two configurations) is told apart by its config hash.
    repeats = out.groupby([*COMPARE_KEYS, "method"])["config_hash"].transform("nunique") > 1
    out["entry"] = out["method"].where(~repeats, out["method"] + " [" + out["config_hash"].str[:8] + "]")
    if reference is not None:
        ref = out[out["method"] == reference]
        ref = ref[~ref.duplicated(COMPARE_KEYS, keep=False)]  # several reference configs: no delta, never a guess
        merged = out[COMPARE_KEYS].merge(ref[[*COMPARE_KEYS, *means]], on=COMPARE_KEYS, how="left")
        for m in METRICS:
            out[f"delta_{m}"] = out[f"{m}_mean"].to_numpy() - merged[f"{m}_mean"].to_numpy()
        out = add_significance(out, runs, reference, metric)
    return out[cols].reset_index(drop=True)


def build_leaderboard(
    paths: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    reference: str | None = None,
    formats: Iterable[str] = FORMATS,
    metric: str = "recall@1",
    reported_dir: str | os.PathLike | None = DEFAULT_REPORTED_DIR,
    command: str | None = None,
    force: bool = False,
) -> dict[str, Path]:
    """Gather, aggregate and write the leaderboard into ``out_dir``; returns ``{name: written path}``.

    ``formats`` is any of :data:`FORMATS`; ``metric`` is the one the figures and the gain plot show;
    ``reported_dir`` holds the published numbers (None: leave them out); ``command`` is the regeneration command
    printed in the README (default: rebuilt from the arguments). Files in ``out_dir`` that an earlier build did not
    write (or that changed since) are never replaced or deleted unless ``force`` (:mod:`benchmark.leaderboard.outdir`).
    """
    from benchmark.leaderboard import figures, render
    from benchmark.leaderboard.html import to_html
    from benchmark.leaderboard.outdir import check_out_dir, record_written
    from benchmark.leaderboard.reported import load_reported

    formats = set(formats)
    unknown = formats - set(FORMATS)
    if unknown:
        raise ValueError(f"Unknown output format(s) {sorted(unknown)}; choose from {', '.join(FORMATS)}.")
    if metric not in METRICS:
        raise ValueError(f"Unknown metric '{metric}'; choose from {', '.join(METRICS)}.")
    out = Path(out_dir)
    from benchmark.engine.checks import unwritable_reason

    reason = unwritable_reason(out)
    if reason:  # before reading anything, so a long gather does not end in a failed write
        raise ValueError(f"--out {out}: {reason}. Pass --out DIR, a directory you can write to.")
    check_out_dir(out, formats, force)  # nothing a user already has is replaced without --force
    runs, skipped = gather(paths)
    warn_skipped(skipped)
    agg = aggregate(runs, reference, metric)
    reported = load_reported(reported_dir) if reported_dir is not None else None
    out.mkdir(parents=True, exist_ok=True)  # only once the input is known to be usable
    if command is None:
        ref_arg = f" --reference {reference}" if reference else ""
        metric_arg = f" --metric {metric}" if metric != "recall@1" else ""
        shown = " ".join(Path(p).as_posix() for p in paths)
        command = f"{COMMAND} {shown} --out {out.as_posix()}{ref_arg}{metric_arg}".replace("  ", " ")
    written: dict[str, Path] = {}
    if "csv" in formats:
        written.update(render.write_csvs(out, runs, agg, skipped, reported))
    figs: dict[str, Path] = {}
    if "png" in formats:
        figs = figures.write_figures(out / "figures", runs, agg, reported, reference, metric)
        written.update({f"figure:{k}": v for k, v in figs.items()})
    ctx = render.Context(runs, agg, skipped, reported, reference, metric, command, figs, out)
    if "tex" in formats:
        written["tex"] = render.write_atomic(out / "leaderboard.tex", render.to_latex(ctx))
    if "html" in formats:
        written["html"] = render.write_atomic(out / "leaderboard.html", to_html(ctx))
    if "md" in formats:
        written["md"] = render.write_atomic(out / "README.md", render.to_markdown(ctx))
    record_written(out, written.values())
    return written


def make_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m benchmark leaderboard`` (also used to re-run the README's command)."""
    parser = argparse.ArgumentParser(
        prog=COMMAND,
        description="Gather run records into comparison tables (Markdown, LaTeX, CSV, HTML) and figures.",
    )
    parser.add_argument("paths", nargs="*", help="run or sweep directories, or record.json files (none: reported only)")
    parser.add_argument(
        "--out", required=True, help="output directory (required: a build never lands in a directory by default)"
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace files in --out that an earlier build did not write (or that changed)",
    )
    parser.add_argument("--reference", default=None, help="method the deltas and the gain figure compare against")
    parser.add_argument("--metric", default="recall@1", choices=METRICS, help="metric of the figures (default R@1)")
    parser.add_argument("--formats", default=",".join(FORMATS), help=f"comma-separated subset of {','.join(FORMATS)}")
    parser.add_argument("--reported", default=str(DEFAULT_REPORTED_DIR), help="directory of published numbers (YAML)")
    parser.add_argument("--no-reported", action="store_true", help="leave the published numbers out")
    return parser


def main(argv: list[str] | None = None) -> int:
    """CLI: ``python -m benchmark leaderboard PATHS... [--out DIR] [--reference METHOD] [--metric M]``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = make_parser().parse_args(argv)
    command = " ".join([COMMAND, *(shlex.quote(a) for a in argv)])
    try:
        written = build_leaderboard(
            args.paths,
            args.out,
            reference=args.reference,
            formats=[f.strip() for f in args.formats.split(",") if f.strip()],
            metric=args.metric,
            reported_dir=None if args.no_reported else args.reported,
            command=command,
            force=args.force,
        )
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # writing the outputs failed (disk full, permissions changed): say which file and why
        print(f"error: could not write the leaderboard into {args.out}: {e}", file=sys.stderr)
        return 2
    for name, path in written.items():
        print(f"{name}: {path}")
    return 0


def warn_skipped(skipped: list[dict[str, str]]) -> None:
    """One stderr line per record skipped as corrupted or as a disagreeing duplicate (the tables list every skip)."""
    for item in skipped:
        if item["reason"].startswith(("corrupted", DISAGREES)):
            print(f"warning: skipped {item['path']}: {item['reason']}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
