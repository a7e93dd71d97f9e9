"""One SAGA optimiser step at the paper's shape on fake tensors: peak memory by phase, and the decode-step counts.

``python -m benchmark.perf.saga --shape qwen3-vl-8b`` (or ``internvl3.5-8b``) builds the real model config
(``benchmark/perf/shapes/*.json``, see the README there) on fake tensors (no GPU, no weights) and runs the project's
own SAGA step as the engine drives it: bf16 autocast around ``training_step`` (the frozen LM in bf16, the tower's
fp32 master weights), the backward, gradient clipping and AdamW (``foreach``, CUDA's default). What is stubbed:

- the answers: every sampled answer is exactly ``L`` tokens. The rollout phase still runs the project's
  ``sample_rollouts`` (the image-and-prompt prefix, the shared KV cache, one sampling step) and then one decode step
  of the project's ``_forward`` on a KV cache grown to the full ``prefix + L`` length, the peak of a real rollout;
- the rewards (``verdict_reward``): they vary within every pair of the last micro-batch and are all 1 before it, so a
  step consumes exactly the requested number of micro-batches;
- the tokenizer: the real one is not in this environment; the chat layout and special-token ids are the
  checkpoint's, plain text counts one token per ``CHARS_PER_TOKEN`` characters (an estimate of the prompt length).

Memory is counted by :class:`benchmark.perf._fake_memory.FakeStep` (live fake storages, per phase; FlashAttention's
saved tensors). The decode-step counts (FLOPs, bytes, kernels) come from one decode step at the mean context.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn

from benchmark.perf._fake_memory import GIB, FakeStep

SHAPES_DIR = Path(__file__).parent / "shapes"
#: ``--shape`` name -> (config fixture, image side: Qwen3-VL at the paper's 224 px, InternViT at its native 448).
SHAPES = {"qwen3-vl-8b": ("qwen3-vl-8b.json", 224), "internvl3.5-8b": ("internvl3.5-8b.json", 448)}
CHARS_PER_TOKEN = 4.0  # estimate for English prompt text with Qwen's 151k-token BPE (the real tokenizer is absent)
_SPECIAL = re.compile(r"(<\|[a-z_]+\|>|<img>|</img>|<IMG_CONTEXT>)")


class ShapeTokenizer:
    """A stand-in for the checkpoint's tokenizer: its chat layout and special ids; plain text is only counted.

    Hand-written because the real tokenizer files are not available offline; token *values* do not change memory,
    only the prompt's *length* does, which is estimated at ``CHARS_PER_TOKEN`` characters per token.
    """

    def __init__(self, family: str, config: Any) -> None:
        image = int(config.image_token_id)
        self.family = family
        self.specials = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645}
        if family == "qwen3_vl":
            self.specials |= {"<|vision_start|>": 151652, "<|vision_end|>": 151653, "<|image_pad|>": image}
            self.image_item = "<|vision_start|><|image_pad|><|vision_end|>"
        else:
            self.specials |= {"<img>": image - 2, "</img>": image - 1, "<IMG_CONTEXT>": image}
            self.image_item = "<IMG_CONTEXT>\n"
        self.ids = {v: k for k, v in self.specials.items()}
        self.pad_token_id = self.specials["<|endoftext|>"]
        self.all_special_ids = list(self.ids)
        self.added_tokens_decoder: dict[int, Any] = {}

    def __len__(self) -> int:
        return 151936

    def apply_chat_template(self, messages: list[dict], tokenize: bool = False, add_generation_prompt: bool = True):
        parts = []
        for c in messages[0]["content"]:
            parts.append(self.image_item if c["type"] == "image" else c["text"])
        return f"<|im_start|>user\n{''.join(parts)}<|im_end|>\n<|im_start|>assistant\n"

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        ids: list[int] = []
        for piece in _SPECIAL.split(text):
            if piece in self.specials:
                ids.append(self.specials[piece])
            elif piece:
                ids.extend(1000 + i % 50_000 for i in range(math.ceil(len(piece) / CHARS_PER_TOKEN)))
        return ids

    def convert_ids_to_tokens(self, token_id: int) -> str:
        return self.ids[int(token_id)]

    def convert_tokens_to_ids(self, token: str) -> int | None:
        return self.specials.get(token)

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return " x" * len(ids)


class ShapeEncoder(nn.Module):
    """What SAGA reads of the engine's encoder: the backbone (an MLLM tower) and its trainable parameters."""

    def __init__(self, tower: nn.Module) -> None:
        super().__init__()
        self.backbone = tower

    def backbone_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.backbone.parameters() if p.requires_grad]


@dataclass
class Shape:
    """The fake models of one checkpoint: the tower (fp32), the frozen LM (bf16) as a supervisor, its config."""

    name: str
    family: str
    config: Any
    tower: nn.Module
    supervisor: Any
    image_size: int

    def counts(self) -> dict[str, int]:
        lm = self.supervisor.model
        text = sum(p.numel() for p in lm.parameters())
        embed = lm.get_input_embeddings().weight.numel() + lm.get_output_embeddings().weight.numel()
        return {"tower": sum(p.numel() for p in self.tower.parameters()), "lm": text, "lm_non_embedding": text - embed}


def load_config(shape: str) -> Any:
    """The committed config.json of ``shape`` as a transformers config."""
    from transformers import AutoConfig

    if shape not in SHAPES:
        raise SystemExit(f"--shape must be one of {sorted(SHAPES)}, not '{shape}'.")
    data = json.loads((SHAPES_DIR / SHAPES[shape][0]).read_text())
    return AutoConfig.for_model(**data)


def build_shape(shape: str, step: FakeStep) -> Shape:
    """The tower and the frozen LM of ``shape`` on fake tensors, as ``mllm.load_vision_tower`` / ``load_supervisor``
    build them (tower fp32; LM bf16, frozen, eval, its own vision part replaced by the encoder's)."""
    from benchmark.backbones.mllm import InternVLVisionTower, MLLMVisionTower, Supervisor, _freeze

    config = load_config(shape)
    config._attn_implementation = "sdpa"
    family = config.model_type
    name = f"shape:{shape}"
    with step.fake():
        if family == "qwen3_vl":
            from transformers import Qwen3VLForConditionalGeneration
            from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLVisionModel

            tower = MLLMVisionTower(Qwen3VLVisionModel._from_config(config.vision_config, dtype=torch.float32), name)
            model = Qwen3VLForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
            model.model.visual = nn.Identity()
        else:
            from transformers import InternVLForConditionalGeneration
            from transformers.models.internvl.modeling_internvl import (
                InternVLMultiModalProjector,
                InternVLVisionModel,
            )

            vision = InternVLVisionModel._from_config(config.vision_config, dtype=torch.float32)
            projector = InternVLMultiModalProjector(config)  # fp32 already (.float() cannot swap fake parameters)
            tower = InternVLVisionTower(vision, projector, config, name)
            model = InternVLForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
            model.model.vision_tower, model.model.multi_modal_projector = nn.Identity(), nn.Identity()
    _freeze(model)
    tok = ShapeTokenizer(family, config)
    eos = [tok.specials["<|im_end|>"], tok.specials["<|endoftext|>"]]
    sup = Supervisor(name, model, tok, int(config.image_token_id), eos, {}, family)
    return Shape(shape, family, config, tower, sup, SHAPES[shape][1])


# ------------------------------------------------------------------------------------------------- the step
class StepStubs:
    """Fixed-length answers and scheduled rewards, patched into ``methods.saga`` for one step (see module doc)."""

    def __init__(self, step: FakeStep, shape: Shape, length: int, micro_batches: int, pairs_per_batch: int) -> None:
        self.step, self.shape, self.length = step, shape, length
        self.micro_batches, self.pairs_per_batch = micro_batches, pairs_per_batch
        self.calls = self.rows = 0
        self.transient: int | None = None
        self.prefix_counts = (0, 0, 0)
        self.retained: dict[str, list[int]] = {}

    def _contributing(self) -> bool:
        return (self.calls - 1) // self.pairs_per_batch == self.micro_batches - 1

    def sample_rollouts(self, original: Any) -> Any:
        """The project's rollout for the first pair (prefix, shared cache, one sampling step, then one decode step at
        the full length); later pairs have the same shapes, so their transient peak is charged, not re-run."""
        from methods.saga._rollout import Rollouts

        def stub(sup: Any, prefix: Any, vision: Any, group_size: int, temperature: float, top_p: float, *args: Any,
                 **kwargs: Any) -> Any:  # fmt: skip
            self.calls += 1
            generator = args[2] if len(args) > 2 else kwargs.get("generator")
            if self.transient is None:
                before, step = self.step.current, self.step
                with step.phase("prefix"):
                    original(sup, prefix, vision, group_size, temperature, top_p, 1, None, generator)
                with step.phase("rollouts"):
                    full_length_decode(sup, prefix, group_size, self.length)
                self.transient = max(step.phase_peak["prefix"], step.phase_peak["rollouts"]) - before
                self.prefix_counts = (step.flops["prefix"], step.bytes["prefix"], step.kernels["prefix"])
            else:
                self.step.charge("rollouts", self.transient)
            g, t = group_size, self.length
            tokens = torch.full((g, t), 1000, dtype=torch.long)
            return Rollouts(tokens, torch.ones(g, t, dtype=torch.bool), torch.zeros(g, t), [False] * g, 0.0, 0.0)

        return stub

    def verdict_reward(self, text: str, key: str, same: bool, truncated: bool) -> tuple[float, None]:
        self.rows += 1
        return (float(self.rows % 2) if self._contributing() else 1.0), None

    def timed(self, name: str, fn: Any) -> Any:
        """``fn`` run inside phase ``name``; the bytes it leaves alive (its graph) are recorded per call."""

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            before = self.step.current
            with self.step.phase(name):
                out = fn(*args, **kwargs)
            self.retained.setdefault(name, []).append(self.step.current - before)
            return out

        return wrapped


def kv_shape(text: Any) -> tuple[int, int]:
    """KV heads and head width of a text config."""
    return int(text.num_key_value_heads), int(
        getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    )


def full_length_decode(sup: Any, prefix: Any, rows: int, length: int) -> None:
    """One decode step of the project's ``_forward`` on a DynamicCache already ``prefix + length - 1`` long."""
    cache = grown_cache(sup, rows, prefix.length + length - 1)
    decode_hidden(sup, cache, rows, prefix.position_ids.shape[0], prefix.next_position + length - 1)


def grown_cache(sup: Any, rows: int, context: int) -> Any:
    """A DynamicCache holding ``context`` tokens of ``rows`` sequences (fake: FakeStep makes large factories fake)."""
    from transformers import DynamicCache

    text = sup.model.config.text_config
    heads, dim = kv_shape(text)
    cache = DynamicCache(config=text)
    for layer in range(text.num_hidden_layers):
        k = torch.empty(rows, heads, context, dim, dtype=torch.bfloat16)
        cache.update(k, torch.empty_like(k), layer)
    return cache


def decode_hidden(sup: Any, cache: Any, rows: int, rope_rows: int, position: int) -> torch.Tensor:
    """The LM's last hidden state for one new token per row on ``cache`` (the rollout loop's ``_forward`` call)."""
    from methods.saga._rollout import _forward

    tok = torch.full((rows, 1), 1000, dtype=torch.long)
    pos = torch.full((rope_rows, rows, 1), position)
    return _forward(sup, tok, pos, cache=cache).last_hidden_state


def run_step(shape: Shape, length: int, micro_batches: int, grad_norm_step: bool, card: str = "aircraft") -> dict:
    """One optimiser step of SAGA (paper settings) with ``micro_batches`` consumed; the memory report."""
    import methods.saga as saga_module
    from benchmark.backbones import mllm
    from benchmark.data.base import load_card
    from benchmark.method import TaskInfo
    from benchmark.registry import get_method

    step = FakeStep()
    mllm._SUPERVISORS[shape.supervisor.name] = shape.supervisor
    cls = get_method("saga")
    cfg = OmegaConf.structured(cls.config_class(max_new_tokens=length, seed=0))
    card_data = load_card(card)
    classes, m = 16, 4  # train.batch_size 64 = 16 classes x m_per_class 4 (the saga protocol)
    width = shape.tower.out_dim
    task = TaskInfo(num_classes=50, embedding_dim=width, dataset=card, card=card_data, feature_dim=width)
    encoder = ShapeEncoder(shape.tower)
    side = shape.image_size
    with step.fake():
        method = cls(cfg, task)
        images = torch.randn(classes * m, 3, side, side)
    labels = torch.arange(classes).repeat_interleave(m)
    method.next_batch = lambda: (torch.randn_like(images), labels)
    method._totals.t["steps"] = 0 if grad_norm_step else 1  # grad_norm_every divides step 0 only
    groups = [{"params": encoder.backbone_parameters()}]
    groups += [{"params": g.params, "lr": 2e-5 * g.lr_mult} for g in method.param_groups() if g.params]
    params = [p for g in groups for p in g["params"]]
    opt = torch.optim.AdamW(groups, lr=2e-5, weight_decay=1e-4, foreach=True)  # foreach: CUDA's default
    frozen = list(shape.supervisor.model.parameters())
    step.track(frozen + list(shape.tower.parameters()) + list(method.parameters()))
    with step:  # the optimiser's states exist from the first step on: create them
        for p in params:
            p.grad = torch.zeros_like(p)
        opt.step()
        opt.zero_grad(set_to_none=True)
    step.reset_peaks()
    static = step.current
    stubs = StepStubs(step, shape, length, micro_batches, cfg.pairs_per_batch)
    patches = {
        "sample_rollouts": stubs.sample_rollouts(saga_module.sample_rollouts),
        "verdict_reward": stubs.verdict_reward,
        "replay": stubs.timed("replay_forward", saga_module.replay),
        "term_grad_norms": stubs.timed("grad_norm_diagnostic", saga_module.term_grad_norms),
    }
    saved = {k: getattr(saga_module, k) for k in patches}
    method._features = stubs.timed("tower_forward", method._features)
    try:
        for k, v in patches.items():
            setattr(saga_module, k, v)
        with step:
            with step.phase("step"), torch.autocast("cpu", dtype=torch.bfloat16):
                out = method.training_step(images, labels, encoder)
            if out["loss"].requires_grad:
                with step.phase("backward"):
                    out["loss"].backward()
            del out
            with step.phase("optimizer"):
                torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
                opt.step()
                opt.zero_grad(set_to_none=True)
    finally:
        for k, v in saved.items():
            setattr(saga_module, k, v)
        mllm._SUPERVISORS.pop(shape.supervisor.name, None)
    for table, value in zip((step.flops, step.bytes, step.kernels), stubs.prefix_counts, strict=True):
        table["prefix"] = value * stubs.calls  # every pair computes its own prefix
        table.pop("rollouts", None)  # the decode is estimated from decode_counts, per token step
    tower = stubs.retained.get("tower_forward", [0])
    replay = stubs.retained.get("replay_forward", [0])
    return {
        "shape": shape.name,
        "length": length,
        "micro_batches": micro_batches,
        "consumed": len(tower),
        "pairs_replayed": len(replay),
        "pairs_offered": stubs.calls,
        "prefix_tokens": max((p.length for p in method._prefixes.values()), default=0),
        "grad_norm_step": grad_norm_step,
        "static_gib": static / GIB,
        "peak_gib": step.peak / GIB,
        "phase_peak_gib": {k: v / GIB for k, v in step.phase_peak.items()},
        "tower_graph_gib": max(tower) / GIB,
        "replay_graph_gib": (min(replay) / GIB, max(replay) / GIB),
        "flops": dict(step.flops),
        "bytes": dict(step.bytes),
        "kernels": dict(step.kernels),
    }


def decode_counts(shape: Shape, rows: int, context: int) -> dict[str, float]:
    """FLOPs, bytes and kernels of one decode step of ``rows`` sequences at ``context`` tokens, as the rollout loop
    takes it: the LM on the KV cache (a DynamicCache grown by ``torch.cat``), ``lm_head``, log-softmax, temperature,
    top-p and the draw. ``bytes_unfused``: every kernel's inputs and outputs; ``bytes_floor``: the weights read once,
    the KV cache read once and the new token's K, V written (what a fused, preallocated-cache loop cannot avoid)."""
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

    step = FakeStep()
    step.track(shape.supervisor.model.parameters())
    model, sup = shape.supervisor.model, shape.supervisor
    rope_rows = 3 if shape.family == "qwen3_vl" else 1
    with step, torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        cache = grown_cache(sup, rows, context)
        with step.phase("decode"):
            hidden = decode_hidden(sup, cache, rows, rope_rows, context)
            scores = model.lm_head(hidden[:, -1]).float()
            scores.log_softmax(-1)
            for warp in (TemperatureLogitsWarper(0.7), TopPLogitsWarper(0.95)):
                scores = warp(None, scores)
            torch.multinomial(scores.softmax(-1), 1)
    text = model.config.text_config
    heads, dim = kv_shape(text)
    kv_token = 2 * text.num_hidden_layers * heads * dim * 2  # K and V, bf16, every layer
    embed = model.get_input_embeddings().weight
    weights = sum(p.numel() * p.element_size() for p in model.parameters()) - embed.numel() * embed.element_size()
    return {
        "rows": rows,
        "context": context,
        "flops": float(step.flops["decode"]),
        "bytes_unfused": float(step.bytes["decode"]),
        "bytes_floor": float(weights + rows * (context + 1) * kv_token),
        "kernels": float(step.kernels["decode"]),
        "kv_cache_gib": rows * context * kv_token / GIB,
    }
