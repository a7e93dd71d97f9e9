"""``python -m benchmark.perf.saga --shape NAME``: SAGA's step at the paper's shape, swept and estimated.

Runs :func:`benchmark.perf.saga_shape.run_step` for 1 to ``max_refill_batches + 1`` micro-batches and answer lengths
800 and 1024 (plus the ``grad_norm_every`` step at the cap), counts one decode step at the mean context, and prints the
peak memory by phase (measured on fake tensors), the decode-step counts (measured) and the time per step and per
dataset (estimated: floors from the cards' published bandwidth and bf16 peak).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmark.perf._fake_memory import GIB, FakeStep
from benchmark.perf.saga_shape import SHAPES, build_shape, decode_counts, run_step

# ------------------------------------------------------------------------------------------------- estimates
#: Published specifications (SXM/PCIe data sheets): memory bandwidth (bytes/s) and dense bf16 tensor peak (FLOP/s).
CARDS = {
    "H100 SXM 80GB": (3.35e12, 989e12),
    "H200 141GB": (4.8e12, 989e12),
    "A100 80GB": (2.039e12, 312e12),
    "L40S 48GB": (0.864e12, 362e12),
    "RTX A6000 48GB": (0.768e12, 155e12),
}
#: Training images per dataset (docs/protocol.md §1: the train halves) and the saga protocol's 3 epochs of 64.
DATASETS = {"aircraft": 5000, "cub": 5864, "cars": 8054, "inat_aves": 37150}
EPOCHS, BATCH = 3, 64
LAUNCH_S = 5e-6  # assumed per-kernel launch cost of an eager PyTorch loop on a GPU (an estimate, not a measurement)


def step_seconds(run: dict, per_pair: dict, batched: dict, length: int, card: str, pairs: int = 8) -> dict:
    """Estimated seconds of one step on ``card`` (floors: every phase at the card's bandwidth or bf16 peak).

    t_token_step = max(bytes / bandwidth, flops / peak) for one decode step; a micro-batch decodes ``length`` steps
    per pair today (``per_pair``: G sequences a step, pairs one after another) or ``length`` steps in all when the
    P pairs decode together (``batched``: P x G sequences a step). The other phases (tower, prefix, replay, backward,
    optimiser) are at max(their bytes / bandwidth, their FLOPs / peak), from the fake-tensor counts of ``run``.
    """
    bandwidth, peak = CARDS[card]

    def t(flops: float, nbytes: float) -> float:
        return max(nbytes / bandwidth, flops / peak)

    micro = run["consumed"]
    today = micro * pairs * length * t(per_pair["flops"], per_pair["bytes_floor"])
    calls = pairs * 8 / batched["rows"]  # decodes per micro-batch: P x G sequences, batched["rows"] at a time
    together = micro * calls * length * t(batched["flops"], batched["bytes_floor"])
    rest = sum(t(run["flops"].get(k, 0), run["bytes"].get(k, 0)) for k in set(run["flops"]) | set(run["bytes"]))
    launch_today = (
        micro * pairs * length * max(t(per_pair["flops"], per_pair["bytes_floor"]), per_pair["kernels"] * LAUNCH_S)
    )
    launch_together = (
        micro * calls * length * max(t(batched["flops"], batched["bytes_floor"]), batched["kernels"] * LAUNCH_S)
    )
    return {
        "decode_per_pair_s": today,
        "decode_batched_s": together,
        "decode_per_pair_launch_s": launch_today,
        "decode_batched_launch_s": launch_together,
        "other_phases_s": rest,
    }


def dataset_hours(seconds_per_step: float) -> dict[str, float]:
    return {name: n // BATCH * EPOCHS * seconds_per_step / 3600 for name, n in DATASETS.items()}


# ------------------------------------------------------------------------------------------------- the command


def measure(
    shape_name: str, lengths: list[int], micro_batches: list[int], card: str = "aircraft", **method: Any
) -> dict[str, Any]:
    """Every number the command prints: parameters, one step per (length, micro-batches) plus the gradient-norm
    step at the cap, and the decode-step counts at the mean context of each length."""
    shape = build_shape(shape_name, FakeStep())
    plan = [(length, m, False) for length in lengths for m in micro_batches]
    plan += [(length, max(micro_batches), True) for length in lengths]
    runs = []
    for length, m, diagnostic in plan:
        runs.append(run_step(shape, length, m, diagnostic, card, **method))
        print(_row(runs[-1]), flush=True)  # progress: a step takes a minute or two on a CPU
    prefix = runs[0]["prefix_tokens"]
    decode = {}
    at_once = int(method.get("rollout_pairs_at_once") or 8) * 8  # P x G sequences decoded together
    for length in lengths:
        mean = prefix + length // 2  # the per-pair loop's mean context; the static cache is prefix + L long
        decode[length] = {
            "per_pair": decode_counts(shape, 8, mean),
            "batched": decode_counts(shape, at_once, mean, static_len=prefix + length),
        }
    return {"shape": shape_name, "params": shape.counts(), "runs": runs, "decode": decode, "prefix_tokens": prefix}


def report(r: dict[str, Any]) -> str:
    p = r["params"]
    lines = [
        f"SAGA step at the {r['shape']} shape, fake tensors (measured; live-tensor bytes, 512-B blocks)",
        f"  params: tower {p['tower'] / 1e6:.1f} M (fp32 {p['tower'] * 4 / GIB:.2f} GiB, AdamW states "
        f"{p['tower'] * 8 / GIB:.2f} GiB), frozen LM {p['lm'] / 1e9:.3f} B (bf16 {p['lm'] * 2 / GIB:.2f} GiB); "
        f"prefix {r['prefix_tokens']} tokens (estimated prompt length)",
        "  L     mb  gn  static  tower/mb  replay/pair  tower_fwd  rollouts  replay_fwd  backward  optim   PEAK GiB",
    ]
    lines += [_row(x) for x in r["runs"]]
    lines.append(
        "  decode step (measured counts, mean context): t_token_step = max(bytes / bandwidth, FLOPs / bf16 peak)"
    )
    for length, d in r["decode"].items():
        for kind, c in d.items():
            lines.append(
                f"    L={length} {kind:<8} {c['rows']:>2} seqs, context {c['context']}: {c['flops'] / 1e9:8.1f} GFLOP, "
                f"{c['bytes_floor'] / 1e9:6.1f} GB floor ({c['bytes_unfused'] / 1e9:6.1f} GB unfused), "
                f"{c['kernels']:.0f} kernels, KV {c['kv_cache_gib']:.2f} GiB"
            )
    lines.append(
        "  estimated s/step (floors; launch-bound: also >= kernels x 5 us per token step) and hours per dataset "
        "(3 epochs of 64), by micro-batches consumed:"
    )
    for length, d in r["decode"].items():
        for x in (x for x in r["runs"] if x["length"] == length and not x["grad_norm_step"]):
            for card in ("H100 SXM 80GB", "H200 141GB"):
                est = step_seconds(x, d["per_pair"], d["batched"], length, card)
                rest = est["other_phases_s"]
                today, batched = est["decode_per_pair_s"] + rest, est["decode_batched_s"] + rest
                launched = est["decode_batched_launch_s"] + rest
                lines.append(
                    f"    L={length} mb={x['consumed']} {card:<14} per-pair loop {today:6.1f} s "
                    f"({est['decode_per_pair_launch_s'] + rest:6.1f} launch-bound), batched {batched:6.1f} s "
                    f"({launched:6.1f} launch-bound) -> h batched (launch-bound): "
                    + ", ".join(
                        f"{k} {v:.2f} ({w:.2f})"
                        for (k, v), w in zip(
                            dataset_hours(batched).items(), dataset_hours(launched).values(), strict=True
                        )
                    )  # fmt: skip
                )
    return "\n".join(lines)


def _row(x: dict[str, Any]) -> str:
    ph = x["phase_peak_gib"]
    return (
        f"  {x['length']:<5} {x['consumed']:<3} {'y' if x['grad_norm_step'] else 'n':<3} {x['static_gib']:6.1f}  "
        f"{x['tower_graph_gib']:8.2f}  {x['replay_graph_gib'][1]:11.2f}  {ph.get('tower_forward', 0):9.1f}  "
        f"{max(ph.get('rollouts', 0), ph.get('prefix', 0)):8.1f}  {ph.get('replay_forward', 0):10.1f}  "
        f"{_backward_peak(ph):8.1f}  {ph.get('optimizer', 0):5.1f}   {x['peak_gib']:6.1f}"
    )


def _backward_peak(phases: dict[str, float]) -> float:
    return max((v for k, v in phases.items() if k.startswith("backward")), default=0.0)


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmark.perf.saga --shape NAME [--lengths 800,1024] [--micro-batches 1,2,3,4,5] [--out F]``."""
    import argparse
    import os
    import tempfile

    parser = argparse.ArgumentParser(description="SAGA's step at the paper's shape on fake tensors")
    parser.add_argument("--shape", required=True, choices=sorted(SHAPES))
    parser.add_argument("--lengths", default="800,1024", help="answer lengths L, comma-separated")
    parser.add_argument("--micro-batches", default="", help="micro-batches consumed (default 1..max_refill_batches+1)")
    parser.add_argument("--dataset", default="aircraft", help="dataset card that supplies the prompt")
    parser.add_argument("--pairs-at-once", type=int, default=0, help="method.rollout_pairs_at_once (0: all P)")
    parser.add_argument("--no-tower-checkpointing", action="store_true", help="backbone.activation_checkpointing=false")
    parser.add_argument("--out", type=Path, default=None, help="also write the numbers as JSON here")
    args = parser.parse_args(argv)
    from methods.saga import SAGAConfig

    lengths = [int(v) for v in args.lengths.split(",") if v]
    micro = [int(v) for v in args.micro_batches.split(",") if v] or list(range(1, SAGAConfig.max_refill_batches + 2))
    options = {"rollout_pairs_at_once": args.pairs_at_once, "tower_checkpointing": not args.no_tower_checkpointing}
    result = measure(args.shape, lengths, micro, args.dataset, **options)
    print(report(result))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=args.out.parent, delete=False, suffix=".tmp") as handle:
            json.dump(result, handle, indent=2, default=str)
        os.replace(handle.name, args.out)
    return 0
