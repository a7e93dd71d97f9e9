"""Qwen3-VL vision tower: our batched attention for same-size images vs Hugging Face's per-image loop.

``python -m benchmark.perf.vision [--images 64] [--image-size 224] [--repeats 5]`` times a forward and backward of the
tiny Qwen3-VL tower (random weights) on one batch, both ways in the same process, and prints the ratio. On GPUs
with flash attention Hugging Face takes its varlen kernel and this path is not used.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch


def measure(images: int, image_size: int, repeats: int) -> dict[str, float]:
    from benchmark.backbones._mllm_tiny import build_tiny_model
    from benchmark.backbones.mllm import TINY_NAME, MLLMVisionTower

    visual = build_tiny_model(TINY_NAME).model.visual
    reference = copy.deepcopy(visual)  # the library's own forward (per-image loop)
    ours = MLLMVisionTower(visual, TINY_NAME)
    pixels, grid = ours.patchify(torch.randn(images, 3, image_size, image_size))

    def timed(module: torch.nn.Module) -> float:
        best = float("inf")
        for _ in range(repeats + 1):  # the first call warms up
            start = time.perf_counter()
            module(pixels, grid_thw=grid).pooler_output.square().sum().backward()
            best = min(best, time.perf_counter() - start)
        return best

    batched, loop = timed(ours.visual), timed(reference)
    return {"images": images, "image_size": image_size, "batched_s": batched, "hf_loop_s": loop}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    r = measure(args.images, args.image_size, args.repeats)
    print(
        f"vision tower fwd+bwd, {r['images']} images at {r['image_size']} px, {torch.get_num_threads()} threads: "
        f"batched {r['batched_s'] * 1e3:.1f} ms, HF per-image loop {r['hf_loop_s'] * 1e3:.1f} ms, "
        f"batched / loop = {r['batched_s'] / r['hf_loop_s']:.2f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
