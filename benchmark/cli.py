"""``python -m benchmark <command>``: the suite's command line."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable

DESCRIPTION = """\
A deep-metric-learning benchmark: every method under one zero-shot retrieval protocol.

commands:
  run [key=value ...]        train and evaluate one run (defaults: proxy_anchor on the embedded 'attributes'
                             dataset); e.g. run method=proxy_anchor dataset=cub dataset.root=/data/CUB_200_2011 seed=1
  list                       methods (with paper and year), datasets and backbones, one line each
  score FILE.npz [--json]    the protocol's metrics for any embeddings (arrays 'embeddings' N×D, 'labels' N)
  score --neighbours FILE    the same metrics from a run's per-query neighbours (eval.save_neighbours=true)
  neighbours RUN_DIR... --out FILE.png [--queries 2,5] [--force]
                             several runs' galleries side by side on the same test queries, R@1 disagreements marked
  prepare dataset=X dataset.root=DIR
                             fetch (where a public URL exists), verify and validate a dataset copy
  sweep SPEC [--dry-run | --local [--max-parallel N]] [--sweep-dir DIR] [--allow-dirty] [--force]
                             submit a sweep (sweeps/*.yaml) to SLURM as a job array and return; --local runs it here
  status SWEEP_DIR [--json]  pending / running / done / failed per cell, with errors and log tails
  leaderboard DIRS... --out DIR [--force]
                             gather run records into Markdown/LaTeX/CSV/HTML tables and figures
  export RUN_DIR --out DIR [--onnx] [--force]
                             a finished run's encoder as model.safetensors + config.json + model card (Hugging Face
                             Hub layout); load it with run method=pretrained backbone=exported backbone.checkpoint=DIR
  world-report RUNS_DIR --out DIR [--judges]
                             attribute-world results: R@K and per-attribute linear probes per method row;
                             --judges: GRPO's effect against the supervisor's verdict accuracy, build by build
  supervisor show|check|build
                             the shipped tiny SAGA supervisor of the 'attributes' world: its card, its card
                             recomputed from its weights, or a build from its recipe (backbone.name=
                             attributes-supervisor loads the shipped build)
"""


def _cmd_run(args: argparse.Namespace) -> int:
    """Run here, or, with ``launcher=slurm`` outside an allocation, submit the run to SLURM and return."""
    from benchmark.config import check_device_available, compose_config

    cfg = compose_config(args.overrides)
    if cfg.launcher == "slurm":
        from benchmark.sweeps.cluster import in_slurm_allocation

        if not in_slurm_allocation():  # inside a job (sbatch script, srun) the run simply runs here
            from benchmark.sweeps.submit import submit_single_command

            return submit_single_command(args.overrides, cfg, as_json=args.json)
    check_device_available(cfg.device)  # here, where the run executes (a sweep may be composed on a login node)
    from benchmark.engine.run import main as run_main

    return run_main(args.overrides, as_json=args.json, cfg=cfg)


def _cmd_list(args: argparse.Namespace) -> int:
    from benchmark.engine.listing import print_listing

    print_listing()
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
    from benchmark.engine.run import format_metrics
    from benchmark.evaluation.metrics import ScoreInputError, score_file

    if (args.file is None) == (args.neighbours is None):
        raise ScoreInputError(
            "score takes one file: FILE.npz (embeddings and labels) or --neighbours FILE (a run's neighbours.npz)"
        )
    if args.neighbours is not None:
        from benchmark.evaluation.neighbours import score_neighbours

        metrics = score_neighbours(args.neighbours)
    else:
        metrics = score_file(args.file)
    if args.json:  # strict JSON: a value that is not a finite number is written as null, never as a bare NaN
        safe = {k: (v if isinstance(v, (int, float)) and math.isfinite(v) else None) for k, v in metrics.items()}
        print(json.dumps(safe, indent=2, allow_nan=False))
    else:
        print(format_metrics(metrics))
    return 0


def _cmd_prepare(args: argparse.Namespace) -> int:
    from benchmark.data.prepare import format_report, prepare_dataset

    options = dict(item.split("=", 1) for item in args.overrides if "=" in item)
    unknown = [k for k in options if k not in ("dataset", "dataset.root", "dataset.strict")] + [
        item for item in args.overrides if "=" not in item
    ]
    if unknown or "dataset" not in options or "dataset.root" not in options:
        if unknown:
            what = f"prepare takes only dataset, dataset.root and dataset.strict, not {', '.join(unknown)}"
        else:
            what = f"missing {' and '.join(k for k in ('dataset', 'dataset.root') if k not in options)}"
        raise SystemExit(
            f"error: {what}. usage: python -m benchmark prepare dataset=NAME dataset.root=DIR [dataset.strict=false] "
            f"(got: {' '.join(args.overrides) or 'nothing'})"
        )
    strict = options.get("dataset.strict", "true").lower() not in ("false", "0", "no")
    report = prepare_dataset(options["dataset"], options["dataset.root"], download=not args.no_download, strict=strict)
    print(format_report(report))
    return 0 if report.get("ok") else 1


def _cmd_sweep(args: argparse.Namespace) -> int:
    from benchmark.engine.control import StopRequested
    from benchmark.sweeps.submit import main as sweep_main

    try:
        return _sweep(sweep_main, args)
    except StopRequested as stop:  # Ctrl-C / SIGTERM on sweep --local: the cells checkpointed and stopped
        print(str(stop), file=sys.stderr)
        return stop.exit_status
    except KeyboardInterrupt:  # before any cell started (while the cells were composed)
        print("Interrupted before any cell started; nothing is running. Run the same command again.", file=sys.stderr)
        return 130


def _sweep(sweep_main: Callable[..., int], args: argparse.Namespace) -> int:
    return sweep_main(
        args.spec,
        sweep_dir=args.sweep_dir,
        dry=args.dry_run,
        local=args.local,
        max_parallel=args.max_parallel,
        allow_dirty=args.allow_dirty,
        force=args.force,
    )


def _cmd_world_report(args: argparse.Namespace) -> int:
    from benchmark.world.report import write_world_report

    try:
        if args.judges:
            from benchmark.world.curve import write_judge_curve

            paths = write_judge_curve(args.runs_dir, args.out)
        else:
            if len(args.runs_dir) > 1:
                raise ValueError("world-report takes one runs directory (several only with --judges).")
            paths = write_world_report(args.runs_dir[0], args.out, args.hard_attribute or None)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


def _cmd_neighbours(args: argparse.Namespace) -> int:
    from benchmark.evaluation.gallery import compare_runs, load_gallery

    out, differ = compare_runs(args.runs, args.out, force=args.force, queries=args.queries)
    queries = load_gallery(args.runs[0])[0]["queries"]
    print(f"wrote {out}: {len(args.runs)} run(s), {len(queries)} queries")
    if len(args.runs) > 1:
        print(f"R@1 differs on {len(differ)} of {len(queries)} queries" + (":" if differ else "."))
        for i in differ:
            print(f"  query {i + 1}: {queries[i]['class_name']} (test image {queries[i]['index']})")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    import shlex

    from benchmark.engine.export import ExportError, export_run

    argv = ["python -m benchmark export", shlex.quote(args.run_dir), "--out", shlex.quote(args.out)]
    argv += ["--onnx"] * args.onnx + ["--force"] * args.force
    try:
        written = export_run(args.run_dir, args.out, force=args.force, onnx=args.onnx, command=" ".join(argv))
    except ExportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for name, path in written.items():
        print(f"{name}: {path}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from benchmark.sweeps.status import main as status_main

    return status_main(args.sweep_dir, as_json=args.json)


COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int], str]] = {
    "run": (_cmd_run, "train and evaluate one run"),
    "list": (_cmd_list, "list methods, datasets and backbones"),
    "score": (_cmd_score, "score an .npz of embeddings and labels"),
    "prepare": (_cmd_prepare, "fetch, verify and validate a dataset"),
    "sweep": (_cmd_sweep, "submit a sweep to SLURM (or run it here with --local)"),
    "status": (_cmd_status, "show the state of every cell of a sweep"),
    "neighbours": (_cmd_neighbours, "several runs' neighbour galleries side by side on the same queries"),
    "export": (_cmd_export, "export a finished run's encoder (safetensors, config, model card; ONNX for timm)"),
    "world-report": (_cmd_world_report, "per-attribute probe and Recall@K report of an attributes-world sweep"),
}


#: Commands implemented by a module's own ``main(argv)``.
PASSTHROUGH = {"leaderboard": "benchmark.leaderboard.gather", "supervisor": "benchmark.world.supervisor"}


def _positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (argparse prints the message and the usage, no traceback)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer (runs at once, e.g. 2), got {text!r}")
    return value


def _positions(text: str) -> list[int]:
    """An argparse type: a comma-separated list of positive integers (query positions, 1-based)."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected query positions such as 2,5 (1-based), got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmark", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", metavar="command")
    p = sub.add_parser(
        "run",
        help=COMMANDS["run"][1],
        description="Train and evaluate one run. Overrides are "
        "Hydra key=value pairs: method=X dataset=Y dataset.root=DIR backbone.name=Z seed=N ...",
    )
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    sub.add_parser("list", help=COMMANDS["list"][1])
    p = sub.add_parser("score", help=COMMANDS["score"][1])
    p.add_argument("file", nargs="?", help=".npz with arrays 'embeddings' (N×D) and 'labels' (N)")
    p.add_argument("--neighbours", metavar="FILE", help="a run's neighbours.npz (eval.save_neighbours=true) instead")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON (the run record's keys)")
    p = sub.add_parser("neighbours", help=COMMANDS["neighbours"][1])
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories (each holding record.json, gallery/)")
    p.add_argument("--out", required=True, help="the PNG to write")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument(
        "--queries", type=_positions, help="draw only these queries, e.g. 2,5 (1-based; default: all of them)"
    )
    p = sub.add_parser("prepare", help=COMMANDS["prepare"][1])
    p.add_argument("overrides", nargs="*", help="dataset=NAME dataset.root=DIR")
    p.add_argument("--no-download", action="store_true", help="only validate the copy already in dataset.root")
    p = sub.add_parser("sweep", help=COMMANDS["sweep"][1])
    p.add_argument("spec", help="a sweep spec: a path or the name of one in sweeps/ (e.g. smoke, paper_table1)")
    p.add_argument("--dry-run", action="store_true", help="show the cells and the sbatch script; submit nothing")
    p.add_argument("--local", action="store_true", help="run the cells on this machine instead of SLURM")
    p.add_argument("--max-parallel", type=_positive_int, default=2, help="--local: runs at once (default 2)")
    p.add_argument("--sweep-dir", help="where the manifest, logs and runs go (default runs/sweeps/<spec name>)")
    p.add_argument("--allow-dirty", action="store_true", help="submit from a checkout with uncommitted changes")
    p.add_argument(
        "--force", action="store_true", help="also resubmit cells whose job state is unknown (sacct cannot say)"
    )
    p = sub.add_parser("status", help=COMMANDS["status"][1])
    p.add_argument("sweep_dir", help="the sweep directory printed at submission")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p = sub.add_parser("export", help=COMMANDS["export"][1])
    p.add_argument("run_dir", help="a completed run directory (<out_dir>/<dataset>/<method>/<run_name>/)")
    p.add_argument("--out", required=True, help="the directory to write (must be new or empty, unless --force)")
    p.add_argument(
        "--onnx", action="store_true", help="also write model.onnx (timm backbones; checked with onnxruntime)"
    )
    p.add_argument("--force", action="store_true", help="replace an --out directory that is not empty")
    p = sub.add_parser("world-report", help=COMMANDS["world-report"][1])
    p.add_argument(
        "runs_dir", nargs="+", help="a directory of run records (e.g. a sweep directory's runs/); --judges: one or more"
    )
    p.add_argument("--out", required=True, help="where results.csv, summary.md and probe.png go")
    p.add_argument(
        "--hard-attribute", default="appendage",
        help="the attribute X the supervisor perceives worst (its card's build.hard_attribute; '' for none)",
    )  # fmt: skip
    p.add_argument(
        "--judges", action="store_true",
        help="RUNS_DIR holds SAGA runs on several supervisor builds: write GRPO's effect against each judge's "
        "held-out verdict accuracy (judges.csv, judges.md, judges.png) instead",
    )  # fmt: skip
    for name, module in PASSTHROUGH.items():
        sub.add_parser(name, help=f"see python -m benchmark {name} --help ({module})", add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    from benchmark.config import ConfigError
    from benchmark.data.base import DatasetError
    from benchmark.registry import UnknownNameError

    os.environ.setdefault("HYDRA_FULL_ERROR", "0")
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in PASSTHROUGH:  # commands that parse their own arguments
        module = __import__(PASSTHROUGH[argv[0]], fromlist=["main"])
        return module.main(argv[1:])
    parser = build_parser()
    if not argv:
        parser.print_help()
        return 0
    args = parser.parse_args(argv)
    handler = COMMANDS[args.command][0]
    try:
        return handler(args)
    except (ConfigError, DatasetError, UnknownNameError, *_user_errors()) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors whose message is the whole story for a user (no traceback)."""
    from benchmark.data.cards import CardError
    from benchmark.engine.encoder import BackboneWeightsError
    from benchmark.engine.preflight import RunDirectoryError
    from benchmark.engine.trainer import TrainingError
    from benchmark.sweeps.cluster import ClusterError
    from benchmark.sweeps.manifest import DirtyTreeError
    from benchmark.sweeps.spec import SpecError

    errors: list[type[BaseException]] = [
        CardError,
        BackboneWeightsError,
        TrainingError,
        ClusterError,
        DirtyTreeError,
        SpecError,
        RunDirectoryError,
    ]
    try:
        from benchmark.evaluation.gallery import GalleryError
        from benchmark.evaluation.metrics import ScoreInputError

        errors += [ScoreInputError, GalleryError]
    except ImportError:
        pass
    return tuple(errors)
