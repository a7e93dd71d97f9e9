"""Qwen3-VL's vision attention as one batched SDPA call for same-size images (used by ``mllm.MLLMVisionTower``)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def batched_vision_attention(attn: nn.Module, original: Any) -> Any:
    """A Qwen3-VL vision attention forward that runs equal-length images as one batched SDPA call.

    Hand-written: on non-flash backends Hugging Face's ``Qwen3VLVisionAttention`` loops over the images of a batch
    (one SDPA call per image and layer), which dominates a CPU step's backward; a batch of same-size images is a
    plain ``B×H×L×d`` attention. Anything else (flash attention, mixed sizes) takes the original path. Equality with
    the original is tested.
    """
    import torch.nn.functional as F
    from transformers.models.qwen3_vl.modeling_qwen3_vl import apply_rotary_pos_emb_vision

    def forward(
        hidden_states: torch.Tensor,
        cu_seqlens: torch.Tensor,
        position_embeddings: Any = None,
        max_seqlen: int | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        lengths = cu_seqlens[1:] - cu_seqlens[:-1]
        impl = attn.config._attn_implementation
        if (
            impl not in ("sdpa", "eager", None)
            or bool(lengths.min() != lengths.max())
            or kwargs.get("output_attentions")
        ):
            return original(hidden_states, cu_seqlens, position_embeddings, max_seqlen, **kwargs)
        n, length = hidden_states.shape[0], int(lengths[0])
        q, k, v = attn.qkv(hidden_states).reshape(n, 3, attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
        q, k = apply_rotary_pos_emb_vision(q, k, *position_embeddings)
        q, k, v = (x.reshape(n // length, length, attn.num_heads, -1).transpose(1, 2) for x in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v.to(q.dtype), scale=attn.scaling)
        return attn.proj(out.transpose(1, 2).reshape(n, -1))

    return forward
