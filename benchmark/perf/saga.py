"""Cost of one SAGA optimiser step against one Potential Field step on the same micro-batch and the same tower.

``python -m benchmark.perf.saga [--group-size 8 --num-pairs 8 ...]`` runs the tiny Qwen3-VL (``tiny-qwen3-vl``,
random weights; ``--mllm`` takes a hub id or local directory on a GPU machine) and prints:

- the time of one SAGA step (forward + backward + AdamW) over one baseline step (Potential Field on the mean-pooled
  tower; Proxy Anchor when Potential Field is not installed), split into the metric phase (Phase A, with its DML
  backward), the rollouts (Phase B), the replay (Phase C, each pair's backward and the tower's) and the optimiser
  step (SAGA back-propagates in parts as it goes; the baseline's one backward is in its step);
- the speed-up of computing the image-and-prompt prefix once per pair and sharing its KV cache with the G samples,
  over computing it G times (prefix alone, and a whole rollout).

The tiny model answers with JSON-constrained decoding (``rollout_constraint=json_skeleton``) so rewards vary and
pairs contribute; timings on CPU describe the code path, not the cost on an 8B model.

``python -m benchmark.perf.saga --shape qwen3-vl-8b`` (or ``internvl3.5-8b``) instead measures one step at the
paper's shape on fake tensors: peak memory by phase and the decode-step counts (``benchmark/perf/saga_shape.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf


def _encoder(name: str, device: torch.device) -> Any:
    from benchmark.engine.encoder import Encoder

    cfg = {"kind": "mllm_vision", "name": name, "pooling": "mean", "embedding_dim": None, "freeze_bn": False}
    return Encoder(OmegaConf.create({**cfg, "pretrained": True, "checkpoint": None})).to(device)


def _optimizer(encoder: Any, method: Any, lr: float) -> torch.optim.Optimizer:
    groups = [{"params": encoder.backbone_parameters()}]
    groups += [{"params": g.params, "lr": lr * g.lr_mult} for g in method.param_groups() if g.params]
    return torch.optim.AdamW(groups, lr=lr)


def _step(method: Any, encoder: Any, opt: Any, images: Any, labels: Any, autocast: bool) -> dict[str, float]:
    """One optimiser step as the engine takes it; the returned dict adds the backward + step time."""
    opt.zero_grad(set_to_none=True)
    start = time.perf_counter()
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=autocast):
        out = method.training_step(images, labels, encoder)
    forward = time.perf_counter() - start
    tb = time.perf_counter()
    if out["loss"].requires_grad:  # else the step back-propagated its parts itself (SAGA: in its phases' times)
        out["loss"].backward()
    torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 1.0)
    opt.step()
    if images.device.type == "cuda":
        torch.cuda.synchronize()
    scalars = {k: float(v) for k, v in out.items() if k != "loss"}
    return {**scalars, "forward_s": forward, "backward_step_s": time.perf_counter() - tb,
            "total_s": time.perf_counter() - start}  # fmt: skip


def _baseline(task: Any, metric: str) -> Any:
    from benchmark.registry import get_method

    cls = get_method(metric)
    return cls(OmegaConf.structured(cls.config_class()), task)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Run the comparison; returns every number that is printed."""
    from benchmark.backbones.mllm import load_supervisor
    from benchmark.data.base import load_card
    from benchmark.method import TaskInfo
    from benchmark.registry import get_method, list_methods
    from methods.saga._prompt import build_prompt
    from methods.saga._rollout import build_prefix, sample_rollouts

    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    autocast = device.type == "cuda"
    torch.manual_seed(0)
    card = load_card(args.dataset)
    classes = args.batch_size // args.m_per_class
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    labels = torch.arange(classes, device=device).repeat_interleave(args.m_per_class)
    metric = "potential_field" if "potential_field" in list_methods() else "proxy_anchor"

    base_enc = _encoder(args.mllm, device)
    task = TaskInfo(num_classes=classes, embedding_dim=base_enc.embedding_dim, dataset=args.dataset, card=card)
    base = _baseline(task, metric).to(device)
    base_opt = _optimizer(base_enc, base, 2e-5)
    base_times = [_step(base, base_enc, base_opt, images, labels, autocast)["total_s"] for _ in range(args.repeat + 1)]

    enc = _encoder(args.mllm, device)
    cls = get_method("saga")
    cfg = cls.config_class(
        metric_loss=metric, group_size=args.group_size, num_pairs=args.num_pairs, max_new_tokens=args.max_new_tokens,
        rollout_constraint="json_skeleton" if args.constrained else "none", embedding_dim=args.embedding_dim,
        teacher_layer=args.teacher_layer,
    )  # fmt: skip
    saga = cls(OmegaConf.structured(cfg), task).to(device)
    saga.next_batch = lambda: (torch.randn_like(images), labels)  # refills: fresh images, same class layout
    saga_opt = _optimizer(enc, saga, 2e-5)
    steps = [_step(saga, enc, saga_opt, images, labels, autocast) for _ in range(args.repeat + 1)][1:]

    def mean(key: str) -> float:
        return statistics.fmean(s[key] for s in steps)

    baseline_s = statistics.fmean(base_times[1:])
    saga_s = mean("total_s")
    phases = {
        "metric_s": mean("time_metric_s"),
        "rollout_s": mean("time_rollout_s"),
        "replay_s": mean("time_replay_s"),
        "step_s": mean("backward_step_s"),
    }

    sup = load_supervisor(args.mllm)
    feats = enc.backbone.encode(images[:2]).detach()
    prefix = build_prefix(sup, build_prompt(card), feats.tokens.shape[1], feats.grid_thw, device)

    def rollout_time(share: bool, new_tokens: int) -> tuple[float, float]:
        runs = []
        for _ in range(args.prefix_repeat):
            gen = torch.Generator(device=device).manual_seed(0)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                r = sample_rollouts(sup, prefix, feats, args.group_size, 0.7, 0.95, new_tokens, None, gen, share)
            runs.append((r.prefix_seconds, r.seconds))
        return min(p for p, _ in runs), min(s for _, s in runs)

    shared_prefix, shared_total = rollout_time(True, args.prefix_new_tokens)
    repeated_prefix, repeated_total = rollout_time(False, args.prefix_new_tokens)
    return {
        "device": str(device),
        "mllm": args.mllm,
        "metric_loss": metric,
        "batch": {"size": args.batch_size, "classes": classes, "image_size": args.image_size},
        "saga": {"group_size": args.group_size, "num_pairs": args.num_pairs, "max_new_tokens": args.max_new_tokens},
        "baseline_step_s": baseline_s,
        "saga_step_s": saga_s,
        "ratio": saga_s / baseline_s,
        "phases_s": phases,
        "phase_ratios": {k: v / baseline_s for k, v in phases.items()},
        "saga_step_stats": {k: mean(k) for k in ("pairs_offered", "micro_batches", "gen_tokens_per_s", "reward_mean")},
        "prefix": {
            "prefix_tokens": prefix.length,
            "shared_prefix_s": shared_prefix,
            "repeated_prefix_s": repeated_prefix,
            "prefix_speedup": repeated_prefix / shared_prefix,
            "new_tokens": args.prefix_new_tokens,
            "shared_rollout_s": shared_total,
            "repeated_rollout_s": repeated_total,
            "rollout_speedup": repeated_total / shared_total,
        },
    }


def _report(r: dict[str, Any]) -> str:
    lines = [
        f"SAGA step vs {r['metric_loss']} step on {r['device']} ({r['mllm']}, batch {r['batch']['size']} at "
        f"{r['batch']['image_size']}², G={r['saga']['group_size']}, K={r['saga']['num_pairs']})",
        f"  baseline step {r['baseline_step_s']:.3f} s   SAGA step {r['saga_step_s']:.3f} s   ratio ×{r['ratio']:.1f}",
    ]
    for key, value in r["phases_s"].items():
        lines.append(f"    {key:<18} {value:8.3f} s   ×{r['phase_ratios'][key]:.1f} of a baseline step")
    p = r["prefix"]
    lines.append(
        f"  prefix ({p['prefix_tokens']} tokens) once per pair: {p['shared_prefix_s']:.3f} s vs G times "
        f"{p['repeated_prefix_s']:.3f} s -> ×{p['prefix_speedup']:.2f}; whole rollout of {p['new_tokens']} tokens "
        f"×{p['rollout_speedup']:.2f}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a == "--shape" or a.startswith("--shape=") for a in argv):  # the paper's shape on fake tensors
        from benchmark.perf.saga_shape_report import main as shape_main

        return shape_main(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mllm", default="tiny-qwen3-vl")
    parser.add_argument("--dataset", default="attributes", help="dataset card that supplies the prompt")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--m-per-class", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--num-pairs", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=400)
    parser.add_argument("--embedding-dim", type=int, default=512)
    parser.add_argument("--teacher-layer", type=int, default=26)
    parser.add_argument("--constrained", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--repeat", type=int, default=1, help="timed steps after one warm-up step")
    parser.add_argument("--prefix-new-tokens", type=int, default=32)
    parser.add_argument("--prefix-repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    parser.add_argument("--out", type=Path, default=None, help="also write the numbers as JSON here")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    result = measure(args)
    print(_report(result))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=args.out.parent, delete=False, suffix=".tmp") as handle:
            json.dump(result, handle, indent=2)
        os.replace(handle.name, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
