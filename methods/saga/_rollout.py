"""Rollouts from the frozen MLLM and their differentiable replay (SAGA Algorithm 1, Phases B and C).

The policy is the frozen language model conditioned on the trainable vision tower's tokens (Eqs. 1–2). Rollouts run
without a graph; the image-and-prompt prefix is computed once per pair and its KV cache shared by the G samples.
The replay recomputes the sampled tokens' log-probabilities with gradients through the frozen language model into
the vision tokens, and reads the layer-ℓ attention the KL term distils. Hand-written sampling loop (not ``generate``):
it needs explicit multimodal (M-RoPE) positions with a shared cache, per-step timing and optional constrained decoding.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

from ._prompt import answer_skeleton


@dataclass
class Prefix:
    """The tokenised chat prefix ``[image a, image b, T_inst]`` with its multimodal positions."""

    ids: torch.Tensor  # 1×L
    position_ids: torch.Tensor  # 3×1×L (M-RoPE: temporal, height, width)
    image_positions: torch.Tensor  # 2×N: the sequence positions of image a's and image b's tokens
    next_position: int  # the M-RoPE position of the first generated token

    @property
    def length(self) -> int:
        return int(self.ids.shape[1])


@dataclass
class Rollouts:
    """G sampled completions of one pair."""

    tokens: torch.Tensor  # G×T generated ids (padded after EOS)
    mask: torch.Tensor  # G×T, 1 on generated tokens (EOS included)
    logprobs: torch.Tensor  # G×T log π of each sampled token at decoding time (temperature 1): the replay's ρ = 1
    truncated: list[bool]  # hit the token limit without EOS
    seconds: float
    prefix_seconds: float
    policy_mask: torch.Tensor | None = None  # G×T, the tokens GRPO sums over when not all of them (the rule judge)

    def split(self, group_size: int) -> list[Rollouts]:
        """One ``Rollouts`` per pair (rows are pair-major), each cut to its own longest answer."""
        parts = []
        for start in range(0, len(self.tokens), group_size):
            rows = slice(start, start + group_size)
            used = max(int(self.mask[rows].sum(1).max()), 1)
            parts.append(
                Rollouts(
                    self.tokens[rows, :used],
                    self.mask[rows, :used],
                    self.logprobs[rows, :used],
                    self.truncated[rows],
                    self.seconds,
                    self.prefix_seconds,
                )  # fmt: skip
            )
        return parts


def _cache_kwarg(model: Any) -> str:
    params = inspect.signature(type(model.model).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def build_prefix(
    sup: Any, prompt: str, tokens_per_image: int, grid_thw: torch.Tensor | None, device: torch.device
) -> Prefix:
    """Chat-format ``[image, image, prompt]`` (one user turn, generation prompt; §7 item 7) and expand each image
    placeholder to its ``tokens_per_image`` positions, as the family's processor does. Qwen3-VL positions are its
    M-RoPE (temporal, height, width) ids; InternVL's are 1-D."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": prompt}]}]
    text = sup.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    pad = sup.tokenizer.convert_ids_to_tokens(sup.image_token_id)
    if text.count(pad) != 2:
        raise ValueError(f"The chat template produced {text.count(pad)} image placeholders for two images.")
    start, end = sup.image_wrap
    text = text.replace(pad, start + pad * tokens_per_image + end)
    ids = torch.tensor([sup.tokenizer.encode(text, add_special_tokens=False)], device=device)
    image_mask = ids[0] == sup.image_token_id
    positions = image_mask.nonzero().flatten().reshape(2, tokens_per_image)
    if sup.family == "qwen3_vl":
        rope, _ = sup.model.model.get_rope_index(
            ids, mm_token_type_ids=image_mask[None].int(), image_grid_thw=grid_thw.to(device)
        )
    else:
        rope = torch.arange(ids.shape[1], device=device).view(1, 1, -1)
    return Prefix(ids, rope, positions, int(rope.max()) + 1)


def _image_outputs(sup: Any, vision: Any, rows: int) -> dict[str, Any]:
    """``mm_encoder_outputs`` for ``rows`` sequences of two images each, replacing the tower's run: ``vision`` holds
    one pair (image a, image b), repeated for every row, or ``2 * rows`` images (a pair per row, in row order)."""
    reps = rows if vision.tokens.shape[0] == 2 else 1
    if sup.family != "qwen3_vl":
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        return {"image": BaseModelOutputWithPooling(pooler_output=vision.tokens.repeat(reps, 1, 1))}
    from transformers.models.qwen3_vl.modeling_qwen3_vl import BaseModelOutputWithDeepstackFeatures

    tokens = tuple(vision.tokens.unbind(0)) * reps
    deepstack = [tuple(d.unbind(0)) * reps for d in vision.deepstack]
    return {"image": BaseModelOutputWithDeepstackFeatures(pooler_output=tokens, deepstack_features=deepstack)}


def _forward(sup: Any, ids: torch.Tensor, positions: torch.Tensor, vision: Any = None, cache: Any = None) -> Any:
    """The frozen LM (through the MLLM's own forward: placeholder scatter, DeepStack) on ids and vision tokens."""
    kwargs: dict[str, Any] = {"input_ids": ids, "use_cache": cache is not None}
    kwargs["position_ids"] = positions if sup.family == "qwen3_vl" else positions[0]
    if cache is not None:
        kwargs[_cache_kwarg(sup.model)] = cache
    if vision is not None:
        kwargs["mm_encoder_outputs"] = _image_outputs(sup, vision, ids.shape[0])
    return sup.model.model(**kwargs)


class SkeletonConstraint:
    """JSON-skeleton decoding (ours, optional): literal parts of the expected answer are forced, values sampled.

    Free values take printable tokens without quotes, backslashes or braces, 1..``max_value_tokens`` of them; the
    confidence and the verdict are sampled among their allowed words. Meant for weak supervisors (the random tiny
    test model); the paper's MLLM decodes freely.
    """

    def __init__(self, tokenizer: Any, card: dict[str, Any], generic: bool, eos: int, max_value_tokens: int = 6):
        def enc(text: str) -> list[int]:
            return tokenizer.encode(text, add_special_tokens=False)

        self.segments: list[tuple[str, Any]] = []
        for kind, value in answer_skeleton(card, generic):
            if kind == "text":
                self.segments.append(("text", enc(value)))
            elif kind == "free":
                self.segments.append(("free", None))
            else:
                words = ["yes", "no"] if kind == "verdict" else ["high", "medium", "low"]
                self.segments.append(("choice", [enc(w) for w in words]))
        special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}))
        self.value_ids = [
            i
            for i in range(len(tokenizer))
            if i not in special
            and (p := tokenizer.decode([i])).isprintable()
            and p
            and not any(c in p for c in '"\\{}')
        ]
        self.eos, self.max_value_tokens = eos, max_value_tokens

    def new_state(self) -> dict[str, Any]:
        return {"seg": 0, "queue": [], "len": 0, "cands": None}

    def action(self, st: dict[str, Any]) -> tuple[int | None, list[int] | None]:
        """``(forced token, None)`` or ``(None, allowed tokens)`` for a row in state ``st``."""
        while not st["queue"] and st["seg"] < len(self.segments) and self.segments[st["seg"]][0] == "text":
            st["queue"] = list(self.segments[st["seg"]][1])
            st["seg"] += 1
        if st["queue"]:
            return st["queue"][0], None
        if st["seg"] >= len(self.segments):
            return self.eos, None
        kind, data = self.segments[st["seg"]]
        if kind == "choice":  # a token trie over the options: shared tokens are forced
            cands, pos = st.get("cands") or data, st["len"]
            allowed = sorted({opt[pos] for opt in cands})
            return (allowed[0], None) if len(allowed) == 1 else (None, allowed)
        term = self.segments[st["seg"] + 1][1][0]
        if st["len"] >= self.max_value_tokens:
            return term, None
        return None, self.value_ids + ([term] if st["len"] else [])

    def advance(self, st: dict[str, Any], token: int) -> None:
        if st["queue"]:
            st["queue"].pop(0)
            return
        if st["seg"] >= len(self.segments):
            return
        kind, data = self.segments[st["seg"]]
        if kind == "choice":
            pos = st["len"]
            st["cands"] = [opt for opt in (st.get("cands") or data) if opt[pos] == token]
            st["len"] += 1
            if any(len(opt) == pos + 1 for opt in st["cands"]):
                st.update(seg=st["seg"] + 1, len=0, cands=None)
        elif token == self.segments[st["seg"] + 1][1][0]:  # the value's closing quote: on to the next literal
            st["queue"] = list(self.segments[st["seg"] + 1][1][1:])
            st["seg"] += 2
            st["len"] = 0
        else:
            st["len"] += 1


def _static_cache(sup: Any, prefill: Any, repeats: int, max_len: int) -> Any:
    """A preallocated KV cache (transformers' ``StaticCache``, ``max_len`` positions) holding the prefill cache's
    rows each repeated ``repeats`` times: a pair's prefix, computed once, shared by its G answers."""
    from transformers import StaticCache

    cache = StaticCache(config=sup.model.config.text_config, max_cache_len=max_len)
    for index, layer in enumerate(prefill.layers):
        keys, values = layer.keys, layer.values
        if repeats > 1:
            keys, values = keys.repeat_interleave(repeats, 0), values.repeat_interleave(repeats, 0)
        cache.update(keys, values, index)
    return cache


@torch.no_grad()
def sample_rollouts(
    sup: Any,
    prefix: Prefix,
    vision: Any,
    group_size: int,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    constraint: SkeletonConstraint | None = None,
    generator: torch.Generator | None = None,
    share_prefix: bool = True,
    check_every: int = 32,
    static_cache: bool = True,
    min_new_tokens: int = 0,
) -> Rollouts:
    """G completions for each pair in ``vision`` (2P images, a pair after another: Eq. 2), without a graph, all
    P × G sequences decoded together; rows are pair-major (``Rollouts.split(G)`` gives one pair's G).

    With ``share_prefix`` each pair's image-and-prompt prefix runs once and its KV cache is repeated G times (else it
    runs on every row: the baseline the perf script times). The cache is preallocated (``StaticCache``); the loop
    makes no host synchronisation per token (finished rows are checked every ``check_every`` tokens, forbidden
    tokens are masked by addition) except under ``constraint``, whose per-row state machine is meant for tiny test
    models. ``temperature=0`` decodes greedily; ``min_new_tokens`` forbids EOS before that many tokens (fixed-length
    answers for benchmarks); ``static_cache=False`` grows a ``DynamicCache`` instead (the per-pair baseline of
    ``benchmark.perf.decode``, with ``check_every=1``).
    """
    from transformers import DynamicCache
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

    model, g = sup.model, group_size
    device = prefix.ids.device
    start = time.perf_counter()
    pairs = max(int(vision.tokens.shape[0]) // 2, 1)
    rows = pairs * g
    fill = pairs if share_prefix else rows
    if not share_prefix and vision.tokens.shape[0] != 2:  # every row gets its own copy of its pair's two images
        vision = vision.select(torch.arange(2 * pairs).view(pairs, 2).repeat_interleave(g, 0).flatten())
    prefill = DynamicCache(config=model.config.text_config)
    out = _forward(sup, prefix.ids.expand(fill, -1), prefix.position_ids.expand(-1, fill, -1), vision, prefill)
    if static_cache:
        cache = _static_cache(sup, prefill, g if share_prefix else 1, prefix.length + max_new_tokens)
    else:
        cache = prefill
        if share_prefix and g > 1:
            cache.batch_repeat_interleave(g)
    del prefill
    hidden = out.last_hidden_state[:, -1:]
    hidden = hidden.repeat_interleave(g, 0) if share_prefix else hidden
    prefix_seconds = time.perf_counter() - start
    warpers = [TopPLogitsWarper(top_p)] if temperature > 0 else []
    warpers = [TemperatureLogitsWarper(temperature), *warpers] if temperature > 0 else warpers
    states = [constraint.new_state() for _ in range(rows)] if constraint else None
    eos = torch.tensor(sup.eos_token_ids, device=device)
    pad = int(sup.tokenizer.pad_token_id if sup.tokenizer.pad_token_id is not None else sup.eos_token_ids[0])
    tokens = torch.full((rows, max_new_tokens), pad, dtype=torch.long, device=device)
    logprobs = torch.zeros(rows, max_new_tokens, device=device)
    done = torch.zeros(rows, dtype=torch.bool, device=device)
    lengths = torch.full((rows,), max_new_tokens, dtype=torch.long, device=device)
    # Placeholder tokens must never be sampled (the replay would read them as image positions): an additive mask.
    blocked = torch.zeros(model.lm_head.out_features, device=device)
    for t in (model.config.image_token_id, getattr(model.config, "video_token_id", None)):
        if t is not None:
            blocked[t] = float("-inf")
    no_eos = blocked.clone()
    no_eos[eos] = float("-inf")
    pos = torch.empty((prefix.position_ids.shape[0], rows, 1), dtype=torch.long, device=device)
    for step in range(max_new_tokens):
        scores = model.lm_head(hidden[:, -1]).float()
        policy = scores.log_softmax(-1)
        scores = scores + (no_eos if step < min_new_tokens else blocked)
        forced: dict[int, int] = {}
        if states is not None:
            for row, st in enumerate(states):
                tok, allowed = constraint.action(st)
                if tok is not None:
                    forced[row] = tok
                else:
                    keep = torch.full_like(scores[row], float("-inf"))
                    keep[allowed] = 0.0
                    scores[row] = scores[row] + keep
        for warp in warpers:
            scores = warp(tokens[:, :step], scores)
        if temperature > 0:
            nxt = torch.multinomial(scores.softmax(-1), 1, generator=generator).squeeze(1)
        else:
            nxt = scores.argmax(-1)
        for row, tok in forced.items():
            nxt[row] = tok
        nxt = torch.where(done, pad, nxt)
        if states is not None:
            for row, st in enumerate(states):
                if not done[row]:
                    constraint.advance(st, int(nxt[row]))
        tokens[:, step] = nxt
        logprobs[:, step] = policy.gather(1, nxt[:, None]).squeeze(1)
        finished = ~done & torch.isin(nxt, eos)
        lengths = torch.where(finished, step + 1, lengths)
        done = done | finished
        if ((step + 1) % check_every == 0 or states is not None) and bool(done.all()):
            break
        pos.fill_(prefix.next_position + step)
        hidden = _forward(sup, nxt[:, None], pos, cache=cache).last_hidden_state
    used = int(lengths.max())  # one synchronisation at the end: drop the columns past every row's end
    tokens, logprobs = tokens[:, :used], logprobs[:, :used]
    mask = torch.arange(used, device=device)[None] < lengths[:, None]
    return Rollouts(tokens, mask, logprobs, (~done).tolist(), time.perf_counter() - start, prefix_seconds)


def teacher_layer_index(sup: Any, layer: int, tiny: bool) -> int:
    """Layer ℓ (0-based: HF ``outputs.attentions[ℓ]``, §7 item 10); a small test model uses its second-to-last."""
    n = sup.num_layers
    if 0 <= layer < n:
        return layer
    if tiny:
        return max(n - 2, 0)
    raise ValueError(
        f"method.teacher_layer={layer} is out of range for '{sup.name}', whose language model has {n} layers "
        f"(0..{n - 1}); the paper uses layer 26 of Qwen3-VL-8B's 36."
    )


def _teacher_maps(attn: Any, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rows: list[int], image_pos):
    """Head-averaged attention of query ``rows`` over all causal keys, restricted to ``image_pos`` and renormalised,
    then averaged over the rows (Eq. 6). Hand-written from the layer's own projections (flash/SDPA kernels return no
    weights); checked against eager ``output_attentions`` in the tests."""
    from transformers.models.qwen3_vl.modeling_qwen3_vl import apply_rotary_pos_emb, repeat_kv  # standard forms

    hd = attn.head_dim
    last = max(rows) + 1
    h = hidden[None, :last]
    q_norm, k_norm = getattr(attn, "q_norm", torch.nn.Identity()), getattr(attn, "k_norm", torch.nn.Identity())
    q = q_norm(attn.q_proj(h[:, rows]).view(1, len(rows), -1, hd)).transpose(1, 2)
    k = k_norm(attn.k_proj(h).view(1, last, -1, hd)).transpose(1, 2)
    q, _ = apply_rotary_pos_emb(q, q, cos[None, rows], sin[None, rows])
    k, _ = apply_rotary_pos_emb(k, k, cos[None, :last], sin[None, :last])
    k = repeat_kv(k, attn.num_key_value_groups)
    scores = (q.float() @ k.float().transpose(-1, -2)) * attn.scaling  # 1×H×R×last
    causal = torch.arange(last, device=h.device)[None] > torch.tensor(rows, device=h.device)[:, None]
    probs = scores.masked_fill(causal, float("-inf")).softmax(-1).mean(1)[0]  # R×last, head-averaged
    maps = []
    for pos in image_pos:
        part = probs[:, pos]
        maps.append((part / part.sum(-1, keepdim=True).clamp_min(1e-12)).mean(0))
    return maps


def replay(
    sup: Any,
    prefix: Prefix,
    vision: Any,
    rollouts: Rollouts,
    teacher_layer: int | None = None,
    teacher_rows: dict[int, tuple[list[int], list[int]]] | None = None,
    chunk: int = 256,
) -> tuple[torch.Tensor, dict[int, list[torch.Tensor | None]]]:
    """Log-probs G×T of the sampled tokens with gradients into ``vision`` (Phase C), and the detached teacher maps
    ``{row: [alpha_a, alpha_b]}`` for ``teacher_rows`` (completion token indices of A_a and A_b per correct row)."""
    g, t = rollouts.tokens.shape
    lp = prefix.length
    ids = torch.cat([prefix.ids.expand(g, -1), rollouts.tokens], dim=1)
    rope_rows = prefix.position_ids.shape[0]
    steps = torch.arange(t, device=ids.device).view(1, 1, t).expand(rope_rows, g, t) + prefix.next_position
    positions = torch.cat([prefix.position_ids.expand(-1, g, -1), steps], dim=2)
    captured: dict[str, Any] = {}
    handle = None
    if teacher_layer is not None and teacher_rows:
        attn = sup.model.model.language_model.layers[teacher_layer].self_attn

        def hook(module: Any, args: Any, kwargs: Any) -> None:
            captured.setdefault("hidden", kwargs["hidden_states"].detach())
            captured.setdefault("rope", tuple(x.detach() for x in kwargs["position_embeddings"]))

        handle = attn.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        hidden = _forward(sup, ids, positions, vision).last_hidden_state
    finally:
        if handle is not None:
            handle.remove()
    targets = rollouts.tokens

    def chunk_logprobs(h: torch.Tensor, tok: torch.Tensor) -> torch.Tensor:
        logits = sup.model.lm_head(h).float()
        return logits.gather(-1, tok[..., None]).squeeze(-1) - logits.logsumexp(-1)

    pieces = []
    for s in range(0, t, chunk):  # logits are recomputed in backward rather than stored (G×T×vocab is large)
        h = hidden[:, lp - 1 + s : lp - 1 + min(s + chunk, t)]
        pieces.append(checkpoint(chunk_logprobs, h, targets[:, s : s + chunk], use_reentrant=False))
    logprobs = torch.cat(pieces, dim=1)
    maps: dict[int, list[torch.Tensor | None]] = {}
    if captured and teacher_rows:
        with torch.no_grad():
            cos, sin = captured["rope"]
            for row, spans in teacher_rows.items():
                maps[row] = [
                    _teacher_maps(
                        attn, captured["hidden"][row], cos[row], sin[row], [lp + i for i in span], [image_pos]
                    )[0]
                    if span
                    else None
                    for span, image_pos in zip(spans, prefix.image_positions, strict=True)
                ]
    return logprobs, maps
