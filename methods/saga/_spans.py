"""Where the attribute descriptions of each image sit in a generated answer (SAGA Sec. 3.4, Eq. 6; §7 item 9).

A_a / A_b are the tokens of the *values* (optionally also the keys) inside the ``"{item}_1"`` and ``"{item}_2"`` JSON
objects of the answer; "differences" and "reasoning" are excluded. Hand-written: a tolerant scanner (answers may be
truncated or slightly malformed, where ``json`` gives no character positions at all).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any


def token_offsets(tokenizer: Any, token_ids: Sequence[int]) -> tuple[str, list[tuple[int, int]]]:
    """Decode token by token: the concatenated text and each token's ``(start, end)`` character span in it."""
    text, offsets = "", []
    for tid in token_ids:
        piece = tokenizer.decode([int(tid)], skip_special_tokens=False)
        offsets.append((len(text), len(text) + len(piece)))
        text += piece
    return text, offsets


def _object_string_spans(text: str, start: int, include_keys: bool) -> list[tuple[int, int]]:
    """Spans (inside the quotes) of the string values of the object whose ``{`` is at ``start``; nested objects
    and arrays are scanned too; stops at the matching ``}`` or the end of the text (truncation)."""
    spans: list[tuple[int, int]] = []
    depth, i, expecting_value = 0, start, False
    while i < len(text):
        ch = text[i]
        if ch == '"':
            j = i + 1
            while j < len(text) and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            is_key = not expecting_value and depth >= 1 and text[j + 1 : j + 20].lstrip().startswith(":")
            if not is_key or include_keys:
                spans.append((i + 1, min(j, len(text))))
            expecting_value = False
            i = j + 1
            continue
        if ch == ":":
            expecting_value = True
        elif ch == ",":
            expecting_value = False
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth == 0:
                break
        i += 1
    return [s for s in spans if s[1] > s[0]]


def attribute_char_spans(text: str, item: str, include_keys: bool = False) -> tuple[list, list]:
    """Character spans of the attribute descriptions of image 1 and image 2 (``"{item}_1": {...}`` and ``_2``)."""
    result = []
    for index in (1, 2):
        match = re.search(rf'"{re.escape(item)}_{index}"\s*:\s*\{{', text)
        result.append(_object_string_spans(text, match.end() - 1, include_keys) if match else [])
    return result[0], result[1]


def attribute_token_spans(
    text: str, offsets: Sequence[tuple[int, int]], item: str, include_keys: bool = False
) -> tuple[list[int], list[int]]:
    """Indices of the tokens (by their ``offsets`` in ``text``) that overlap image 1's and image 2's descriptions."""
    out = []
    for spans in attribute_char_spans(text, item, include_keys):
        out.append([t for t, (s, e) in enumerate(offsets) if e > s and any(s < b and e > a for a, b in spans)])
    return out[0], out[1]
