"""Training-step throughput: the engine's Proxy Anchor step against a minimal hand-written loop on the same batch.

    python -m benchmark.perf.train [--backbone resnet18] [--batch 64] [--size 112] [--steps 20]

Both sides run the same timm backbone, linear head, L2 normalisation, pytorch-metric-learning ProxyAnchorLoss
and AdamW (proxies at 100x); the engine side goes through ``Trainer.train_step`` (method plugin, parameter groups,
schedule, NaN check). Prints images/s for each and the ratio engine / minimal (target >= 0.95).
"""

from __future__ import annotations

import argparse
import copy
import os
import time

import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses


def _minimal_loop(encoder, num_classes: int, embedding_dim: int, lr: float):
    """The reference: what a researcher would write by hand."""
    criterion = losses.ProxyAnchorLoss(num_classes=num_classes, embedding_size=embedding_dim, margin=0.1, alpha=32)
    params = [p for p in encoder.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(
        [{"params": params, "lr": lr}, {"params": criterion.parameters(), "lr": lr * 100}], lr=lr, weight_decay=1e-4
    )

    def step(images, labels):
        z = F.normalize(encoder.head(encoder.pool(encoder.backbone(images))), dim=-1)
        loss = criterion(z, labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step


def _time(step, images, labels, steps: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        step(images, labels)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step(images, labels)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return steps * len(labels) / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3, help="alternate the two sides this many times")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from benchmark.config import compose_config
    from benchmark.engine.trainer import Trainer

    cfg = compose_config(
        [
            "method=proxy_anchor",
            "dataset=attributes",
            f"backbone.name={args.backbone}",
            "backbone.pretrained=false",
            f"train.batch_size={args.batch}",
            "train.progress=false",
            "data.num_workers=0",
            "eval.selection=last",
            f"data.image_size={args.size}",
            "out_dir=/tmp/perf_train_unused",
        ]
    )
    trainer = Trainer(cfg)
    trainer.steps_per_epoch = 10**9  # never hit the epoch-end flush inside the timing loop
    trainer.encoder.train()
    torch.manual_seed(0)
    n_classes = args.batch // cfg.train.m_per_class
    images = torch.randn(args.batch, 3, args.size, args.size, device=trainer.device)
    labels = torch.arange(n_classes, device=trainer.device).repeat_interleave(cfg.train.m_per_class)
    reference_encoder = copy.deepcopy(trainer.encoder)
    minimal = _minimal_loop(
        reference_encoder, trainer.method.task.num_classes, trainer.encoder.embedding_dim, cfg.train.lr
    )
    engine_rates, minimal_rates = [], []
    for _ in range(args.rounds):  # alternate to spread machine noise over both sides
        engine_rates.append(_time(trainer.train_step, images, labels, args.steps))
        minimal_rates.append(_time(minimal, images, labels, args.steps))
    engine, ref = max(engine_rates), max(minimal_rates)
    result = {"engine_images_per_s": engine, "minimal_images_per_s": ref, "ratio": engine / ref}
    print(
        f"backbone {args.backbone}, batch {args.batch}, {args.size}px, {trainer.device}, "
        f"{torch.get_num_threads()} threads"
    )
    print(f"engine Proxy Anchor step : {engine:8.1f} images/s")
    print(f"minimal hand-written loop: {ref:8.1f} images/s")
    print(f"ratio engine/minimal     : {engine / ref:.3f}  (target >= 0.95)")
    return result


if __name__ == "__main__":
    main()
