"""SAGA's instruction prompt T_inst (App. E.1), the generic prompt (App. E.3), and the answer's JSON skeleton.

Both templates are transcribed from the paper (docs/saga-method.md §2.6). Printing artefacts fixed here (ours): the
example description gets its closing quote, ``{VERDICT_QUESTION?}`` becomes ``{verdict_question}?``, and the stray
``{`` characters of the generic prompt are dropped.
"""

from __future__ import annotations

import json
from typing import Any

PROMPT_FIELDS = (
    "expert_noun",
    "what_to_identify",
    "expert_prefix",
    "target_plural",
    "item",
    "ITEM",
    "item_plural",
    "example_description",
    "verdict_label",
    "verdict_question",
    "verdict_key",
)

ATTRIBUTE_TEMPLATE = """You are assisting an {expert_noun} in identifying {what_to_identify} from photographs.

{expert_prefix} specialists use the following visual attributes to distinguish between {target_plural}: {attr_list}

You are given two {item} photographs ({ITEM} 1 and {ITEM} 2).

Please do the following:

1. **Describe {ITEM} 1**: For each of the attributes listed above, describe what you observe in {ITEM} 1. \
Use natural, concise language (e.g. "{example_description}").

2. **Describe {ITEM} 2**: Do the same for {ITEM} 2.

3. **Key Differences**: Summarize the most important visual differences between the two {item_plural}. \
Focus on the attributes that would help a specialist tell them apart.

4. **{verdict_label} Prediction**: Based on your observations, are these two {item_plural} the {verdict_question}?

Respond in JSON with the following structure:
{{
    "{item}_1": {{
    "<attr_1>": "...",
    "<attr_2>": "...",
    ... (one entry per attribute)
    }},
    "{item}_2": {{ ... same attribute keys ... }},
    "differences": "key visual differences between the two {item_plural}",
    "confidence": "high", "medium", or "low",
    "reasoning": "one-sentence justification based on the attributes",
    "{verdict_key}": "yes" or "no"
}}"""

GENERIC_TEMPLATE = """You are given two {item} photographs ({ITEM} 1 and {ITEM} 2).

Describe the most important visual differences between the two {item_plural}, then decide whether they are the \
{verdict_question}.

Respond in JSON with the following structure:
{{
    "differences": "key visual differences between the two {item_plural}",
    "reasoning": "one-sentence justification",
    "{verdict_key}": "yes" or "no"
}}"""


class PromptCardError(ValueError):
    """A dataset card without the attribute vocabulary or prompt fields SAGA needs."""


def prompt_fields(card: dict[str, Any]) -> dict[str, str]:
    """The card's ``prompt`` block, checked: every placeholder of the template must be present."""
    fields = card.get("prompt") or {}
    missing = [k for k in PROMPT_FIELDS if k not in fields]
    if missing:
        raise PromptCardError(
            f"Dataset card '{card.get('name', '?')}' lacks prompt fields {missing}. SAGA needs a `prompt:` block with "
            f"{list(PROMPT_FIELDS)} (the paper's Table 6 values for CUB, Cars and Aircraft) and an `attributes:` list "
            "in datasets/<name>.yaml."
        )
    return {k: str(fields[k]) for k in PROMPT_FIELDS}


def attributes(card: dict[str, Any]) -> list[str]:
    """The card's attribute vocabulary (App. E.2)."""
    attrs = card.get("attributes") or []
    if not attrs:
        raise PromptCardError(
            f"Dataset card '{card.get('name', '?')}' has no `attributes:` list; SAGA's attribute prompt needs the "
            "dataset's attribute vocabulary (or use method.generic_prompt=true method.use_kl=false)."
        )
    return [str(a) for a in attrs]


def build_prompt(card: dict[str, Any], generic: bool = False) -> str:
    """T_inst for a dataset card: the attribute prompt (App. E.1) or, with ``generic``, the generic one (App. E.3)."""
    fields = prompt_fields(card)
    if generic:
        return GENERIC_TEMPLATE.format(**fields)
    return ATTRIBUTE_TEMPLATE.format(attr_list=", ".join(attributes(card)), **fields)


def answer_skeleton(card: dict[str, Any], generic: bool = False) -> list[tuple[str, str]]:
    """The expected answer as segments ``("text", literal)`` and holes ``("free"|"confidence"|"verdict", key)``.

    Used by the optional JSON-constrained decoding (``method.rollout_constraint=json_skeleton``, ours), which lets a
    weak supervisor such as the random tiny test model produce parseable answers; the real MLLM decodes freely.
    """
    fields = prompt_fields(card)
    parts: list[tuple[str, str]] = [("text", "{")]

    def entry(key: str, kind: str, last: bool = False) -> None:
        parts.append(("text", f'{json.dumps(key)}: "'))
        parts.append((kind, key))
        parts.append(("text", '"' + ("" if last else ", ")))

    if not generic:
        for index in (1, 2):
            parts.append(("text", f'"{fields["item"]}_{index}": {{'))
            attrs = attributes(card)
            for j, attr in enumerate(attrs):
                entry(attr, "free", last=j == len(attrs) - 1)
            parts.append(("text", "}, "))
        entry("differences", "free")
        entry("confidence", "confidence")
    else:
        entry("differences", "free")
    entry("reasoning", "free")
    entry(fields["verdict_key"], "verdict", last=True)
    parts.append(("text", "}"))
    merged: list[tuple[str, str]] = []
    for kind, value in parts:  # join adjacent literals
        if kind == "text" and merged and merged[-1][0] == "text":
            merged[-1] = ("text", merged[-1][1] + value)
        else:
            merged.append((kind, value))
    return merged
