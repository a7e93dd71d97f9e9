"""What the attribute-world supervisor learns from: its tokenizer, its architecture, and its teacher-forcing data.

Everything is generated from the ``attributes`` dataset card and code: the SAGA prompt for that card
(``methods/saga/_prompt.py``), target answers written from the known attributes of the two figures, and images of
attribute combinations drawn from the **whole attribute space, none of them a benchmark class**
(:func:`generalist_combinations`). See :mod:`benchmark.world.supervisor` for the build itself.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from benchmark.backbones._mllm_tiny import SPECIAL_TOKENS, train_tokenizer

#: Tokens per image side of the world model: 8-px patches, 2×2 merge -> 16 tokens per 64-px image.
PATCH_SIZE = 8


#: The two answer formats of the world's supervisor (see :func:`target_answer`).
ANSWER_FORMATS = ("list", "chain")


def target_answer(
    card: dict[str, Any], first: dict[str, str], second: dict[str, str], answer_format: str = "chain"
) -> list[tuple[str, str]]:
    """The answer a perfect supervisor gives for two figures, as segments ``(kind, text)``.

    ``kind`` is ``"text"`` (JSON punctuation and keys), ``"value:<attribute>"`` (an attribute value of a figure) or
    ``"field"`` (differences, confidence, reasoning, verdict). Their concatenation is the JSON object of the SAGA
    prompt's answer format (App. E.1): both figures' attributes, the differing attributes, a confidence, a
    one-sentence reasoning and the ``same_class`` verdict (same class iff all attributes agree).

    ``answer_format`` says how the differences are written. ``"list"`` (recipes v1-v3) names the differing attributes
    (``"pattern, border style"`` or ``"none"``): the whole decision sits in its first token, 7 comparisons at once.
    ``"chain"`` (recipe v4) compares the two descriptions attribute by attribute, in the card's order
    (``"body shape: same, body color: differs, ..."``): each item is one comparison of two value tokens at fixed
    offsets, so the verdict can follow what the descriptions say (the prompt asks for "key visual differences"; a
    per-attribute comparison is one way to state them).
    """
    if answer_format not in ANSWER_FORMATS:
        raise ValueError(f"answer_format must be one of {ANSWER_FORMATS}, not {answer_format!r}.")
    item, key = card["prompt"]["item"], card["prompt"]["verdict_key"]
    attrs = [str(a) for a in card["attributes"]]
    differ = [a for a in attrs if first[a] != second[a]]
    segments: list[tuple[str, str]] = [("text", "{")]
    for index, values in ((1, first), (2, second)):
        segments.append(("text", f'"{item}_{index}": {{'))
        for j, attr in enumerate(attrs):
            segments += [("text", f'{json.dumps(attr)}: "'), (f"value:{attr}", values[attr])]
            segments.append(("text", '"' + (", " if j < len(attrs) - 1 else "}, ")))
    reasoning = f"they differ in {len(differ)} of {len(attrs)} attributes" if differ else "all attributes match"
    if answer_format == "chain":
        differences = ", ".join(f"{a}: {'differs' if a in differ else 'same'}" for a in attrs)
    else:
        differences = ", ".join(differ) if differ else "none"
    fields = [
        ("differences", differences),
        ("confidence", "high"),
        ("reasoning", reasoning),
        (key, "no" if differ else "yes"),
    ]
    for j, (name, value) in enumerate(fields):
        segments += [("text", f'"{name}": "'), ("field", value), ("text", '"' + (", " if j < len(fields) - 1 else "}"))]
    merged: list[tuple[str, str]] = []
    for kind, text in segments:  # adjacent literals form one piece (the tokenizer splits only around values)
        if kind == "text" and merged and merged[-1][0] == "text":
            merged[-1] = ("text", merged[-1][1] + text)
        else:
            merged.append((kind, text))
    return merged


def world_tokenizer(card: dict[str, Any], prompt: str, vocab_size: int, seed: int) -> Any:
    """A byte-level BPE tokenizer for the world, trained on its prompt and on answers for random figure pairs.

    Hand-written choice (no library offers it): a pre-tokenizer that isolates every JSON string value that follows
    ``: "`` (and each item of a comma-separated list, so the differences are named one attribute at a time) so that
    each attribute value is its own token while the literal JSON between values (and the fixed prompt) merge into a
    few tokens; this keeps sequences short enough to train the supervisor on a CPU.
    """
    from tokenizers import Regex, pre_tokenizers

    rng = np.random.default_rng([seed, 0x746F6B])
    values = card["attribute_values"]

    def draw() -> dict[str, str]:
        return {a: str(rng.choice(values[a])) for a in card["attributes"]}

    answers = []
    for k in range(4000):  # both answer formats, so one tokenizer serves either
        first = draw()
        second = dict(first) if rng.random() < 0.3 else draw()
        answers.append("".join(text for _, text in target_answer(card, first, second, ANSWER_FORMATS[k % 2])))
    # values after `: "`, and list items after `, ` (the differences), each become separate pieces
    split = pre_tokenizers.Split(pattern=Regex(r'(?<=: ")[^",]+|(?<=, )[^",]+'), behavior="isolated")
    corpus = [prompt] * 50 + ["user\n", "assistant\n"] * 50 + answers
    return train_tokenizer(corpus, vocab_size, "qwen3_vl", pre_tokenizer=split)


def world_config(tokenizer: Any, size: dict[str, int]) -> Any:
    """A small Qwen3-VL (the SAGA default family): 8-px patches, a ``vision_depth``-block ViT at ``vision_width``,
    DeepStack from its middle block, and a ``text_layers``-layer language model at ``text_width``."""
    from transformers import Qwen3VLConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    width, head = size["text_width"], 32
    vision = {
        "depth": size["vision_depth"],
        "hidden_size": size["vision_width"],
        "intermediate_size": 2 * size["vision_width"],
        "num_heads": size["vision_width"] // 32,
        "patch_size": PATCH_SIZE,
        "out_hidden_size": width,
        "num_position_embeddings": 64,  # an 8×8 patch grid at 64 px
        "deepstack_visual_indexes": [size["vision_depth"] // 2],
    }
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [8, 4, 4], "mrope_interleaved": True}
    text = {
        "vocab_size": len(tokenizer),
        "hidden_size": width,
        "intermediate_size": 3 * width,
        "num_hidden_layers": size["text_layers"],
        "num_attention_heads": width // head,
        "num_key_value_heads": max(width // head // 2, 1),
        "head_dim": head,
        "max_position_embeddings": 1024,
        "pad_token_id": ids["<|endoftext|>"],
        "rope_parameters": rope,
    }
    return Qwen3VLConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )


@dataclass
class AnswerTokens:
    """One target answer, tokenised: ids, which positions hold which attribute's value (for corruption)."""

    ids: list[int]
    value_slots: list[tuple[int, str]]  # (position, attribute) of single-token attribute values, figure 1's first


def encode_answer(tokenizer: Any, segments: list[tuple[str, str]], eos: int) -> AnswerTokens:
    """Token ids of an answer followed by EOS, and the positions of the attribute values that are single tokens."""
    text, spans = "", {}
    for kind, piece in segments:
        if kind.startswith("value:"):
            spans[(len(text), len(text) + len(piece))] = kind.split(":", 1)[1]
        text += piece
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    slots = [(i, spans[tuple(o)]) for i, o in enumerate(enc["offset_mapping"]) if tuple(o) in spans]
    return AnswerTokens(list(enc["input_ids"]) + [eos], slots)


def generalist_combinations(
    values: dict[str, list[str]], exclude: list[dict[str, str]], n: int, rng: np.random.Generator
) -> list[dict[str, str]]:
    """``n`` distinct attribute combinations drawn uniformly and independently from the whole attribute space (every
    value of every attribute, in any combination), none of them in ``exclude`` (the benchmark's classes).

    This is the world's stand-in for an MLLM's pretraining: the supervisor learns to perceive attributes from the
    world at large, not from the classes the benchmark trains and tests on, so what it says about an unseen class
    comes from perception and not from class shortcuts (correlated attributes of a few classes).
    """
    names = list(values)
    sizes = [len(values[a]) for a in names]
    total = int(np.prod(sizes))
    banned = {int(np.ravel_multi_index([values[a].index(c[a]) for a in names], sizes)) for c in exclude}
    if not 0 < n <= total - len(banned):
        raise ValueError(
            f"Cannot draw {n} combinations: the attribute space has {total - len(banned)} outside the excluded "
            f"classes; choose 1..{total - len(banned)}."
        )
    picked = [int(i) for i in rng.permutation(total) if int(i) not in banned][:n]
    codes = np.stack(np.unravel_index(np.array(picked), sizes), axis=1)
    return [{a: values[a][int(k)] for a, k in zip(names, row, strict=True)} for row in codes]


def other_value(values: dict[str, list[str]], attr: str, value: str, rng: np.random.Generator) -> str:
    """Another value of ``attr`` than ``value``, drawn uniformly (a misdescription, a counterfactual, an edit)."""
    return str(rng.choice([v for v in values[attr] if v != value]))


def single_differences(classes: dict[Any, dict[str, str]]) -> list[tuple[Any, Any, str]]:
    """Every ordered pair of classes that differ in exactly one attribute, with that attribute: ``(c, d, attr)``
    (the one-attribute neighbours, as :class:`PairSampler` draws them)."""
    out = []
    for c, a in classes.items():
        for d, b in classes.items():
            differ = [k for k in a if a[k] != b[k]]
            if c != d and len(differ) == 1:
                out.append((c, d, differ[0]))
    return out


def describe_with_errors(
    first: dict[str, str],
    second: dict[str, str],
    values: dict[str, list[str]],
    rate: float,
    rng: np.random.Generator,
) -> tuple[dict[str, str], dict[str, str]]:
    """Descriptions of two figures in which each value is, with probability ``rate``, replaced by another value of its
    attribute: what a supervisor that misperceives writes (``BuildConfig.describe_errors``, off in the shipped recipe,
    which uses :func:`flip_description`): the answer's differences and verdict are written from the *descriptions*
    (not from the truth), while every description token is still trained towards the true value (hand-written: no
    library does it). Measured: it mostly shifts the verdict's prior (README, "attributes world").
    """

    def noisy(figure: dict[str, str]) -> dict[str, str]:
        out = dict(figure)
        for attr, value in figure.items():
            if rng.random() < rate:
                out[attr] = other_value(values, attr, value, rng)
        return out

    return noisy(first), noisy(second)


def flip_description(
    first: dict[str, str],
    second: dict[str, str],
    values: dict[str, list[str]],
    rate: float,
    rng: np.random.Generator,
) -> tuple[dict[str, str], dict[str, str]]:
    """With probability ``rate``, the descriptions of a same-class or one-attribute-neighbour pair written so that
    the verdict they imply flips (recipe v4): a same pair's second figure gets one value changed (the descriptions
    now differ in one attribute); a neighbour's differing value is written as the first figure's (they now agree).
    Other pairs, and the rest, are returned as they are. These are the pairs whose images look nearly alike, so
    only the written descriptions can tell the answer's comparison and verdict what to say: the balanced
    counterfactuals that make the verdict follow the text (hand-written: no library does it)."""
    differ = [a for a in first if first[a] != second[a]]
    if len(differ) > 1 or rng.random() >= rate:
        return first, second
    if not differ:
        attr = list(first)[int(rng.integers(len(first)))]
        return first, dict(second, **{attr: other_value(values, attr, second[attr], rng)})
    return first, dict(second, **{differ[0]: first[differ[0]]})


class PairSampler:
    """Balanced same/different figure pairs from a set of classes; half the different pairs are one-attribute
    neighbours (the hard case, where a class has one in the set), the rest random other classes."""

    def __init__(self, class_attrs: list[dict[str, str]], images_per_class: int, rng: np.random.Generator) -> None:
        self.class_attrs, self.per_class, self.rng = class_attrs, images_per_class, rng
        names = list(class_attrs[0])
        lookup = {a: {v: k for k, v in enumerate(sorted({c[a] for c in class_attrs}))} for a in names}
        codes = np.array([[lookup[a][c[a]] for a in names] for c in class_attrs])
        differ = np.zeros((len(codes), len(codes)), dtype=np.int8)
        for k in range(len(names)):  # one attribute at a time: n×n memory, not n×n×attributes
            differ += codes[:, None, k] != codes[None, :, k]
        self.neighbours = [np.flatnonzero(row == 1).tolist() for row in differ]

    def draw(self) -> tuple[int, int, int, int]:
        """``(class a, image a, class b, image b)`` with image indices within each class."""
        a, i, b, j, _ = self.draw_kind()
        return a, i, b, j

    def draw_kind(self) -> tuple[int, int, int, int, str]:
        """:meth:`draw` and the pair's kind: ``"same"``, ``"neighbour"`` (one attribute differs) or ``"random"``."""
        rng, n = self.rng, len(self.class_attrs)
        a = int(rng.integers(n))
        if rng.random() < 0.5:
            b, kind = a, "same"
        elif self.neighbours[a] and rng.random() < 0.5:
            b, kind = int(rng.choice(self.neighbours[a])), "neighbour"
        else:
            b = int((a + rng.integers(1, n)) % n)
            kind = "neighbour" if b in self.neighbours[a] else "random"
        i, j = rng.choice(self.per_class, size=2, replace=False)
        return a, int(i), b, int(j), kind


def to_pixels(images: np.ndarray) -> torch.Tensor:
    """uint8 N×H×W×3 -> float N×3×H×W normalised as Qwen3-VL's processor does (mean = std = 0.5)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
    return (x - 0.5) / 0.5
