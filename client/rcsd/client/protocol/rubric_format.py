"""What a rubric generator is constrained to write, and how it becomes a rubric (and back).

The wire rubric is a flat array of criteria. The generator writes an object with
`criteria` (weights 1-10) and `pitfalls` (weight -1 implied) instead, so the grammar
itself guarantees at least one pitfall, the count bounds, weights in range and
descriptions of at most 40 single-space-separated words. Repeated titles, which no
grammar expresses, are dropped; the semantic checks then run on what is left.

Pure pydantic, so that the rubric service (which constrains its decoding with the schema) and
the Stage I trainer (which scores and trains on reference rubrics written in this format with
`to_generation_text`) share one definition without importing each other.
"""

from __future__ import annotations

import json
from typing import Any

from rcsd.client.protocol.common import MAX_DESCRIPTION_WORDS, MAX_WEIGHT, Criterion
from rcsd.client.protocol.limits import MAX_DESCRIPTION_CHARS, MAX_TITLE_CHARS
from rcsd.client.protocol.rubric import RubricBounds

PITFALL_WEIGHT = -1
# What the constrained decoder writes between tokens: nothing (vLLM's disable_any_whitespace, and the
# hf engine's grammar compiled with these separators).
JSON_SEPARATORS = (",", ":")
MAX_PITFALLS = 5
MAX_TITLE_WORDS = 10
MAX_WORD_CHARS = 20


def _words(max_words: int, max_chars: int) -> str:
    """At most `max_words` single-spaced words, and never more than `max_chars` characters in all
    (the wire model's cap: a longer string would pass the grammar and fail the response)."""
    word_chars = min(MAX_WORD_CHARS, (max_chars - (max_words - 1)) // max_words)
    # A word: no whitespace, quote, backslash or control character.
    word = rf'[^\s"\\\x00-\x1f]{{1,{word_chars}}}'
    return f"^{word}( {word}){{0,{max_words - 1}}}$"


def _item(with_weight: bool) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "title": {"type": "string", "pattern": _words(MAX_TITLE_WORDS, MAX_TITLE_CHARS)},
        "description": {"type": "string", "pattern": _words(MAX_DESCRIPTION_WORDS, MAX_DESCRIPTION_CHARS)},
    }
    if with_weight:
        properties["weight"] = {"type": "integer", "enum": list(range(1, MAX_WEIGHT + 1))}
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


def generation_schema(bounds: RubricBounds) -> dict[str, Any]:
    """The JSON schema for constrained decoding; any output it admits meets `bounds`."""
    pitfalls_max = min(MAX_PITFALLS, bounds.max_criteria - bounds.min_criteria + 1)
    return {
        "type": "object",
        "properties": {
            "criteria": {
                "type": "array",
                "items": _item(with_weight=True),
                "minItems": bounds.min_criteria - 1,
                "maxItems": bounds.max_criteria - pitfalls_max,
            },
            "pitfalls": {
                "type": "array",
                "items": _item(with_weight=False),
                "minItems": 1,
                "maxItems": pitfalls_max,
            },
        },
        "required": ["criteria", "pitfalls"],
        "additionalProperties": False,
    }


def to_criteria(generated: dict[str, Any]) -> list[Criterion]:
    """The flat wire rubric: weighted criteria first, then the pitfalls at weight -1.

    A criterion whose title repeats an earlier one (ignoring case) is dropped: small models
    often repeat themselves, and the copy adds nothing. The count bounds are checked after.
    """
    criteria = [Criterion(**item) for item in generated["criteria"]] + [
        Criterion(**item, weight=PITFALL_WEIGHT) for item in generated["pitfalls"]
    ]
    seen: set[str] = set()
    unique = []
    for criterion in criteria:
        title = criterion.title.strip().lower()
        if title not in seen:
            seen.add(title)
            unique.append(criterion)
    return unique


def to_generation_text(criteria: list[Criterion]) -> str:
    """A wire rubric written exactly as the constrained generator writes it: compact JSON, weighted
    criteria under `criteria` in their order, pitfalls (weight -1) under `pitfalls` without a weight.

    `to_criteria(json.loads(to_generation_text(c)))` is `c` when the pitfalls come last, as they do in
    any rubric the generator wrote; the text is what a Stage I teacher sees and the student is scored on.
    """
    generated = {
        "criteria": [c.model_dump() for c in criteria if c.weight != PITFALL_WEIGHT],
        "pitfalls": [
            {"title": c.title, "description": c.description} for c in criteria if c.weight == PITFALL_WEIGHT
        ],
    }
    return json.dumps(generated, separators=JSON_SEPARATORS, ensure_ascii=False)
