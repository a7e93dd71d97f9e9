"""One SAGA optimiser step at the paper's shape on fake tensors: peak memory by phase, and the decode-step counts.

``python -m benchmark.perf.saga --shape qwen3-vl-8b`` (or ``internvl3.5-8b``) builds the real model config
(``benchmark/perf/shapes/*.json``, see the README there) on fake tensors (no GPU, no weights) and runs the project's
own SAGA step as the engine drives it: bf16 autocast around ``training_step`` (the frozen LM in bf16, the tower's
fp32 master weights), the backward, gradient clipping and AdamW (``foreach``, CUDA's default). What is stubbed:

- the answers: every sampled answer is exactly ``L`` tokens. The rollout phase still runs the project's
  ``sample_rollouts`` on the call's pairs (their prefixes, the ``StaticCache`` of ``prefix + L`` positions, one
  decode step: the loop's peak, the same at every position), then returns answers of ``L`` tokens;
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
    """What SAGA reads of the engine's encoder: the backbone (an MLLM tower) and its trainable parameters; its blocks
    activation-checkpointed as the engine's ``Encoder`` does for ``backbone.activation_checkpointing=true``."""

    def __init__(self, tower: nn.Module, checkpointing: bool = True) -> None:
        from benchmark.engine.encoder import enable_activation_checkpointing

        super().__init__()
        self.backbone = tower
        if checkpointing:
            enable_activation_checkpointing(tower, getattr(tower, "mllm_name", "tower"))
        else:
            for sub in tower.modules():
                if getattr(sub, "supports_gradient_checkpointing", False) and sub.is_activation_checkpointing:
                    sub.activation_checkpointing_disable()

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
        self.group_size = 8
        self.last = "tower_forward"
        self.transient: int | None = None
        self.prefix_counts = (0, 0, 0)
        self.retained: dict[str, list[int]] = {}

    def _contributing(self) -> bool:
        pair = (self.rows - 1) // self.group_size  # rewards come row by row, pair after pair, micro-batch after another
        return pair // self.pairs_per_batch == self.micro_batches - 1

    def sample_rollouts(self, original: Any) -> Any:
        """The project's sampler on the call's pairs (prefix, the preallocated cache of ``prefix + L`` positions, one
        decode step: the loop's peak), answers then fixed at ``L`` tokens. Later calls have the same shapes: their
        transient peak is charged, not re-run (a decode step costs the same at every position of a static cache)."""
        from methods.saga._rollout import Rollouts

        def stub(sup: Any, prefix: Any, vision: Any, group_size: int, temperature: float, top_p: float, *args: Any,
                 **kwargs: Any) -> Any:  # fmt: skip
            self.calls += 1
            rows = group_size * max(int(vision.tokens.shape[0]) // 2, 1)
            if self.transient is None:
                before, step = self.step.current, self.step
                generator = args[2] if len(args) > 2 else kwargs.get("generator")
                with step.phase("rollouts"):  # check_every=1: FakeStep's placeholder for done.all() ends it at once
                    original(sup, prefix, vision, group_size, temperature, top_p, self.length, None, generator,
                             check_every=1)  # fmt: skip
                self.transient = step.phase_peak["rollouts"] - before
                self.prefix_counts = (step.flops["rollouts"], step.bytes["rollouts"], step.kernels["rollouts"])
            else:
                self.step.charge("rollouts", self.transient)
            t = self.length
            tokens = torch.full((rows, t), 1000, dtype=torch.long)
            return Rollouts(tokens, torch.ones(rows, t, dtype=torch.bool), torch.zeros(rows, t), [False] * rows, 0, 0)

        return stub

    def verdict_reward(self, text: str, key: str, same: bool, truncated: bool) -> tuple[float, None]:
        self.rows += 1
        return (float(self.rows % 2) if self._contributing() else 1.0), None

    def backward(self, fn: Any) -> Any:
        """``fn`` (the engine's Backprop call) inside phase ``backward (<the forward phase it follows>)``."""

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            with self.step.phase(f"backward ({self.last})"):
                return fn(*args, **kwargs)

        return wrapped

    def timed(self, name: str, fn: Any) -> Any:
        """``fn`` run inside phase ``name``; the bytes it leaves alive (its graph) are recorded per call."""

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            before, self.last = self.step.current, name
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


def run_step(
    shape: Shape, length: int, micro_batches: int, grad_norm_step: bool, card: str = "aircraft", **method: Any
) -> dict:
    """One optimiser step of SAGA (paper settings; ``method`` overrides config fields) with ``micro_batches``
    consumed, driven as the engine drives it; the memory report. The tower is activation-checkpointed as in the
    ``saga`` protocol unless ``tower_checkpointing=False`` is given."""
    import methods.saga as saga_module
    from benchmark.backbones import mllm
    from benchmark.data.base import load_card
    from benchmark.engine.backprop import Backprop
    from benchmark.method import TaskInfo
    from benchmark.registry import get_method

    step = FakeStep()
    mllm._SUPERVISORS[shape.supervisor.name] = shape.supervisor
    cls = get_method("saga")
    checkpointing = bool(method.pop("tower_checkpointing", True))
    cfg = OmegaConf.structured(cls.config_class(**{"max_new_tokens": length, "seed": 0, **method}))
    width = shape.tower.out_dim
    task = TaskInfo(num_classes=50, embedding_dim=width, dataset=card, card=load_card(card), feature_dim=width)
    encoder = ShapeEncoder(shape.tower, checkpointing).train()  # the engine trains in train mode
    classes, m, side = 16, 4, shape.image_size  # train.batch_size 64 = 16 classes x m_per_class 4 (saga protocol)
    with step.fake():
        saga = cls(cfg, task)
        images = torch.randn(classes * m, 3, side, side)
    labels = torch.arange(classes).repeat_interleave(m)
    saga.next_batch = lambda: (torch.randn_like(images), labels)
    saga._totals.t["steps"] = 0 if grad_norm_step else 1  # grad_norm_every divides step 0 only
    groups = [{"params": encoder.backbone_parameters()}]
    groups += [{"params": g.params, "lr": 2e-5 * g.lr_mult} for g in saga.param_groups() if g.params]
    params = [p for g in groups for p in g["params"]]
    opt = torch.optim.AdamW(groups, lr=2e-5, weight_decay=1e-4, foreach=True)  # foreach: CUDA's default
    step.track([*shape.supervisor.model.parameters(), *shape.tower.parameters(), *saga.parameters()])
    with step:  # the optimiser's states exist from the first step on: create them
        for p in params:
            p.grad = torch.zeros_like(p)
        opt.step()
        opt.zero_grad(set_to_none=True)
    step.reset_peaks()
    static = step.current
    stubs = StepStubs(step, shape, length, micro_batches, cfg.pairs_per_batch)
    stubs.group_size = int(cfg.group_size)
    saga.backprop = PhasedBackprop(stubs)
    patches = {
        "sample_rollouts": stubs.sample_rollouts(saga_module.sample_rollouts),
        "verdict_reward": stubs.verdict_reward,
        "replay": stubs.timed("replay_forward", saga_module.replay),
    }
    saved = {k: getattr(saga_module, k) for k in patches}
    saga._features = stubs.timed("tower_forward", saga._features)
    try:
        for k, v in patches.items():
            setattr(saga_module, k, v)
        with step:
            with step.phase("step"), torch.autocast("cpu", dtype=torch.bfloat16):
                out = saga.training_step(images, labels, encoder)
            if out["loss"].requires_grad:  # a method that returns its loss whole: the engine's one backward
                with step.phase("backward"):
                    Backprop.__call__(saga.backprop, out["loss"])
            consumed, contributing = int(out["micro_batches"]), int(out.get("pairs_contributing", 0))
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
        table["prefix"] = value * stubs.calls  # every call computes its pairs' prefixes
        table.pop("rollouts", None)  # the decode is estimated from decode_counts, per token step
    tower = stubs.retained.get("tower_forward", [0])
    replay = stubs.retained.get("replay_forward", [0])
    return {
        "shape": shape.name,
        "length": length,
        "micro_batches": micro_batches,
        "consumed": consumed,
        "pairs_contributing": contributing,
        "pairs_replayed": len(replay),
        "rollout_calls": stubs.calls,
        "prefix_tokens": max((p.length for p in saga._prefixes.values()), default=0),
        "grad_norm_step": grad_norm_step,
        "tower_checkpointing": checkpointing,
        "settings": {k: v for k, v in method.items()},
        "static_gib": static / GIB,
        "peak_gib": step.peak / GIB,
        "phase_peak_gib": {k: v / GIB for k, v in step.phase_peak.items()},
        "tower_graph_gib": max(tower[:consumed]) / GIB,
        "tower_recompute_gib": max(tower[consumed:], default=0) / GIB,
        "replay_graph_gib": (min(replay) / GIB, max(replay) / GIB),
        "flops": dict(step.flops),
        "bytes": dict(step.bytes),
        "kernels": dict(step.kernels),
    }


class PhasedBackprop:
    """The engine's :class:`~benchmark.engine.backprop.Backprop` (grad_accum 1, one process), each part inside a
    ``backward (<forward phase>)`` phase."""

    def __new__(cls, stubs: StepStubs) -> Any:
        from benchmark.engine.backprop import Backprop

        class _Phased(Backprop):
            def __call__(self, loss: torch.Tensor, retain_graph: bool = False) -> None:
                with stubs.step.phase(f"backward ({stubs.last})"):
                    super().__call__(loss, retain_graph)

            def through(self, outputs: list, grads: list) -> None:
                with stubs.step.phase("backward (tower_recompute)"):
                    super().through(outputs, grads)

        return _Phased(1, _nonfinite)


def _nonfinite(value: float) -> None:
    raise RuntimeError(f"a loss part is {value} on fake tensors (placeholder values should be finite)")


def decode_counts(shape: Shape, rows: int, context: int, static_len: int = 0) -> dict[str, float]:
    """FLOPs, bytes and kernels of one decode step of ``rows`` sequences at ``context`` tokens, as the rollout loop
    takes it: the LM on the KV cache, ``lm_head``, log-softmax, temperature, top-p and the draw. The cache is the
    sampler's ``StaticCache`` of ``static_len`` positions (attention reads all of them, masked) or, with
    ``static_len=0``, a DynamicCache grown by ``torch.cat`` (the per-pair loop SAGA had before). ``bytes_unfused``:
    every kernel's inputs and outputs; ``bytes_floor``: the weights (less the embedding table) and the KV cache read
    once, the new token's K, V written (what no loop over this cache can avoid)."""
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

    from methods.saga._rollout import _static_cache

    step = FakeStep()
    step.track(shape.supervisor.model.parameters())
    model, sup = shape.supervisor.model, shape.supervisor
    rope_rows = 3 if shape.family == "qwen3_vl" else 1
    with step, torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        cache = grown_cache(sup, rows, context)
        if static_len:
            cache = _static_cache(sup, cache, 1, static_len)
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
        "bytes_floor": float(weights + rows * (max(static_len, context) + 1) * kv_token),
        "kernels": float(step.kernels["decode"]),
        "kv_cache_gib": rows * max(static_len, context) * kv_token / GIB,
        "cache": "static" if static_len else "dynamic",
    }
