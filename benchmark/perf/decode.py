"""Rollout decoding speed: SAGA's micro-batch decoder against the per-pair loop it replaced and Hugging Face generate.

``python -m benchmark.perf.decode [--layers 8 --width 512 --pairs 8 --group-size 8 --new-tokens 64]`` builds a
mid-size random Qwen3-VL language model (the real architecture; random weights, no download), the SAGA prompt of
the ``attributes`` card with two images' tokens per pair, and decodes the same P pairs × G answers three ways, each
forced to ``--new-tokens`` tokens (EOS forbidden before) with SAGA's sampling (T = 0.7, top-p 0.95):

- ``batched``: :func:`methods.saga._rollout.sample_rollouts` on all P pairs at once (P × G sequences, each pair's
  prefix computed once and shared, a preallocated ``StaticCache``, no host synchronisation per token);
- ``per-pair``: the same function one pair at a time with a growing ``DynamicCache`` and a finish check (a host
  synchronisation) every token: the loop SAGA ran before (P sequential decodes of G sequences);
- ``generate``: ``model.generate`` on the same inputs (pre-encoded image tokens via ``mm_encoder_outputs``,
  ``num_return_sequences=G``, top-k off).

It prints generated tokens/s of each (median of ``--repeat`` interleaved rounds, with the spread) and the ratios
batched / per-pair and batched / generate. On a CPU this measures the code path's overheads; the time on a GPU at
8B is estimated by ``python -m benchmark.perf.saga --shape ...``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

import torch


def build_supervisor(layers: int, width: int, seed: int = 0) -> Any:
    """A random Qwen3-VL language model of ``layers`` × ``width`` with the tiny models' tokenizer, as a Supervisor."""
    from transformers import Qwen3VLForConditionalGeneration

    from benchmark.backbones._mllm_tiny import TINY_QWEN, build_tiny_tokenizer, tiny_config
    from benchmark.backbones.mllm import Supervisor

    config = tiny_config(TINY_QWEN)
    heads = max(width // 64, 1)
    text = config.text_config
    text.hidden_size, text.num_hidden_layers, text.intermediate_size = width, layers, int(width * 2.75)
    text.num_attention_heads, text.num_key_value_heads, text.head_dim = heads, max(heads // 2, 1), width // heads
    config.vision_config.out_hidden_size = width
    config._attn_implementation = "sdpa"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen3VLForConditionalGeneration(config).eval().requires_grad_(False)
    tokenizer = build_tiny_tokenizer("qwen3_vl")
    eos = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
    return Supervisor("perf-qwen3-vl", model, tokenizer, int(config.image_token_id), eos)


def _inputs(sup: Any, pairs: int, seed: int = 0) -> tuple[Any, Any]:
    from benchmark.backbones.mllm import VisionTokens
    from benchmark.data.base import load_card
    from methods.saga._prompt import build_prompt
    from methods.saga._rollout import build_prefix

    g = torch.Generator().manual_seed(seed)
    width = sup.model.config.text_config.hidden_size
    n = 49  # tokens per 224² image
    tokens = torch.randn(2 * pairs, n, width, generator=g) * 0.02
    deepstack = [torch.randn(2 * pairs, n, width, generator=g) * 0.02]
    vision = VisionTokens(tokens, deepstack, torch.tensor([[1, 14, 14]] * 2 * pairs))
    prefix = build_prefix(sup, build_prompt(load_card("attributes")), n, vision.grid_thw[:2], torch.device("cpu"))
    return prefix, vision


def _batched(sup: Any, prefix: Any, vision: Any, g: int, new: int) -> int:
    from methods.saga._rollout import sample_rollouts

    gen = torch.Generator().manual_seed(0)
    ro = sample_rollouts(sup, prefix, vision, g, 0.7, 0.95, new, None, gen, min_new_tokens=new)
    return int(ro.mask.sum())


def _per_pair(sup: Any, prefix: Any, vision: Any, g: int, new: int) -> int:
    from methods.saga._rollout import sample_rollouts

    gen, total = torch.Generator().manual_seed(0), 0
    for p in range(vision.tokens.shape[0] // 2):
        pair = vision.select([2 * p, 2 * p + 1])
        ro = sample_rollouts(
            sup, prefix, pair, g, 0.7, 0.95, new, None, gen, check_every=1, static_cache=False, min_new_tokens=new
        )
        total += int(ro.mask.sum())
    return total


def _generate(sup: Any, prefix: Any, vision: Any, g: int, new: int) -> int:
    from methods.saga._rollout import _image_outputs

    pairs = vision.tokens.shape[0] // 2
    ids = prefix.ids.expand(pairs, -1)
    out = sup.model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        mm_token_type_ids=(ids == sup.image_token_id).int(),
        image_grid_thw=vision.grid_thw,
        mm_encoder_outputs=_image_outputs(sup, vision, pairs),
        do_sample=True,
        temperature=0.7,
        top_p=0.95,
        top_k=0,
        max_new_tokens=new,
        min_new_tokens=new,
        num_return_sequences=g,
        pad_token_id=sup.tokenizer.pad_token_id,
        eos_token_id=sup.eos_token_ids,
    )
    return int(out[:, ids.shape[1] :].numel())


DECODERS = {"batched": _batched, "per-pair": _per_pair, "generate": _generate}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Interleaved rounds of the three decoders; tokens/s per round, medians and ratios."""
    sup = build_supervisor(args.layers, args.width)
    prefix, vision = _inputs(sup, args.pairs)
    rates: dict[str, list[float]] = {k: [] for k in DECODERS}
    for fn in DECODERS.values():  # warm-up
        fn(sup, prefix, vision, args.group_size, min(args.new_tokens, 4))
    for _ in range(args.repeat):
        for name, fn in DECODERS.items():
            start = time.perf_counter()
            tokens = fn(sup, prefix, vision, args.group_size, args.new_tokens)
            rates[name].append(tokens / (time.perf_counter() - start))
            print(f"  ({name}: {rates[name][-1]:.0f} tokens/s)", file=sys.stderr, flush=True)
    median = {k: statistics.median(v) for k, v in rates.items()}
    return {
        "model": {"layers": args.layers, "width": args.width, "prefix_tokens": prefix.length},
        "pairs": args.pairs,
        "group_size": args.group_size,
        "new_tokens": args.new_tokens,
        "threads": torch.get_num_threads(),
        "tokens_per_s": rates,
        "median_tokens_per_s": median,
        "ratio_vs_per_pair": median["batched"] / median["per-pair"],
        "ratio_vs_generate": median["batched"] / median["generate"],
    }


def report(r: dict[str, Any]) -> str:
    m = r["model"]
    lines = [
        f"Rollout decoding on CPU ({r['threads']} thread(s)): random Qwen3-VL LM, {m['layers']} layers x width "
        f"{m['width']}, prefix {m['prefix_tokens']} tokens, {r['pairs']} pairs x G={r['group_size']}, "
        f"{r['new_tokens']} new tokens each"
    ]
    for name, values in r["tokens_per_s"].items():
        lines.append(
            f"  {name:<9} {r['median_tokens_per_s'][name]:9.0f} tokens/s  (median of {len(values)}; "
            f"{min(values):.0f}-{max(values):.0f})"
        )
    lines.append(
        f"  batched / per-pair x{r['ratio_vs_per_pair']:.2f} (target >= 4)   batched / generate "
        f"x{r['ratio_vs_generate']:.2f} (target >= 1)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--pairs", type=int, default=8, help="P: candidate pairs of a micro-batch")
    parser.add_argument("--group-size", type=int, default=8, help="G: answers per pair")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds (the median is reported)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(report(measure(args)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
