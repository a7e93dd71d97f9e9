"""Tiny multimodal LLMs of the real architectures (Qwen3-VL, InternVL with a Qwen3 LM), built in code for tests
and CPU runs: random weights from a fixed seed and a byte-level BPE tokenizer trained in code with the real special
tokens and chat layouts. Nothing is downloaded."""

from __future__ import annotations

from typing import Any

import torch

TINY_QWEN = "tiny-qwen3-vl"
TINY_INTERNVL = "tiny-internvl"
TINY_FAMILIES = {TINY_QWEN: "qwen3_vl", TINY_INTERNVL: "internvl"}

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<img>",
    "</img>",
    "<IMG_CONTEXT>",
]
#: How each family's chat template renders an image item of a user turn (the processor then expands it).
IMAGE_ITEM = {"qwen3_vl": "<|vision_start|><|image_pad|><|vision_end|>", "internvl": "<IMG_CONTEXT>\n"}
_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for c in message['content'] -%}"
    "{%- if c['type'] == 'image' -%}{{- 'IMAGE_ITEM' -}}"
    "{%- elif c['type'] == 'text' -%}{{- c['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- endif -%}"
)
# Training text for the tiny tokenizer: JSON answers and the words of SAGA-style prompts (any text still encodes,
# byte-level, just in more tokens).
_CORPUS = [
    '{"bird_1": {"bill shape": "short, cone-shaped, dark grey", "wing color": "blue with orange patch"},',
    '"bird_2": {"bill shape": "long", "breast pattern": "striped"}, "differences": "the bill and the wing",',
    '"confidence": "high", "medium", or "low", "reasoning": "one-sentence justification based on the attributes",',
    '"same_species": "yes" or "no", "same_model": "no", "same_variant": "yes", "same_class": "yes"}',
    "You are assisting an expert in identifying the class of an item from photographs.",
    "specialists use the following visual attributes to distinguish between classes: color, shape, size, pattern",
    "You are given two item photographs (Item 1 and Item 2). Please do the following: Describe Item 1",
    "For each of the attributes listed above, describe what you observe. Use natural, concise language (e.g.",
    "Do the same for Item 2. Key Differences: Summarize the most important visual differences between the two",
    "Focus on the attributes that would help a specialist tell them apart. Prediction: Based on your observations,",
    "are these two the same? Respond in JSON with the following structure: one entry per attribute, same keys",
    "red green blue yellow black white grey orange purple brown round square triangle striped dotted plain large small",
]
_TOKENIZERS: dict[str, Any] = {}


def train_tokenizer(corpus: list[str], vocab_size: int, family: str = "qwen3_vl", pre_tokenizer: Any = None) -> Any:
    """A byte-level BPE tokenizer trained in code on ``corpus``, with the families' special tokens and chat layout.

    ``pre_tokenizer`` (a ``tokenizers`` pre-tokenizer) replaces the usual word split; the byte-level mapping is
    always applied after it.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=pre_tokenizer is None)
    tok.pre_tokenizer = byte_level if pre_tokenizer is None else pre_tokenizers.Sequence([pre_tokenizer, byte_level])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = _CHAT_TEMPLATE.replace("IMAGE_ITEM", IMAGE_ITEM[family])
    return fast


def build_tiny_tokenizer(family: str = "qwen3_vl") -> Any:
    """The tiny models' tokenizer: trained on a small corpus of SAGA-style prompts and answers (cached)."""
    if family not in _TOKENIZERS:
        _TOKENIZERS[family] = train_tokenizer(_CORPUS * 4, 600, family)
    return _TOKENIZERS[family]


def _text_config(vocab_size: int, pad: int) -> dict[str, Any]:
    return {
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "max_position_embeddings": 4096,
        "pad_token_id": pad,
    }


def tiny_config(name: str) -> Any:
    """The config of a tiny model: 2 vision blocks at width 32, 49 tokens per 224² image, a 3-layer LM at width 64."""
    tok = build_tiny_tokenizer(TINY_FAMILIES[name])
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    text = _text_config(len(tok), ids["<|endoftext|>"])
    if name == TINY_QWEN:
        from transformers import Qwen3VLConfig

        rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 2, 2], "mrope_interleaved": True}
        vision = {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "patch_size": 16}
        vision |= {"out_hidden_size": 64, "num_position_embeddings": 256, "deepstack_visual_indexes": [0]}
        return Qwen3VLConfig(
            vision_config=vision,
            text_config={**text, "rope_parameters": rope},
            image_token_id=ids["<|image_pad|>"],
            video_token_id=ids["<|video_pad|>"],
            vision_start_token_id=ids["<|vision_start|>"],
            vision_end_token_id=ids["<|vision_end|>"],
        )
    from transformers import InternVLConfig

    vision = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
    vision |= {"image_size": [224, 224], "patch_size": [16, 16]}
    rope = {"rope_type": "default", "rope_theta": 10000.0}
    return InternVLConfig(
        vision_config=vision,
        text_config={**text, "model_type": "qwen3", "rope_parameters": rope},
        image_token_id=ids["<IMG_CONTEXT>"],
        downsample_ratio=0.5,
    )


def build_tiny_model(name: str = TINY_QWEN, seed: int = 0, attn_implementation: str = "sdpa") -> Any:
    """A tiny model (random weights, fixed seed) as ``Qwen3VLForConditionalGeneration`` or
    ``InternVLForConditionalGeneration``."""
    from transformers import InternVLForConditionalGeneration, Qwen3VLForConditionalGeneration

    if name not in TINY_FAMILIES:
        raise ValueError(f"Unknown tiny MLLM '{name}'; expected one of {sorted(TINY_FAMILIES)}.")
    config = tiny_config(name)
    config._attn_implementation = attn_implementation
    cls = Qwen3VLForConditionalGeneration if name == TINY_QWEN else InternVLForConditionalGeneration
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls(config)
