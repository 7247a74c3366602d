"""What a rubric generator is constrained to write, and how it becomes a rubric (and back).

The wire rubric is a flat array of criteria. The generator writes an object with
`criteria` (weights 1-10) and `pitfalls` (weight -1 implied) instead, so the grammar
itself guarantees at least one pitfall, the count bounds, weights in range and
descriptions of at most 40 single-space-separated words. Repeated titles, which no
grammar expresses, are dropped; the semantic checks then run on what is left.

Given a token budget (`max_tokens`), the grammar is cut to fit it: its longest output must end
before the budget does, so a constrained rubric always parses. Words are then printable ASCII (one
byte, so at most one token each, on byte-level and byte-fallback tokenizers alike) and the item
count and words per item shrink until the longest rubric fits; a budget too small for
`min_criteria` items is refused (`RubricBudgetError`, a 422 on `max_tokens`).

The released recipe writes rubrics differently (`RELEASE_VERSION`): the model thinks first, then
writes a flat JSON array, unconstrained; `parse_release_rubric` reads it as the release does.

Pure pydantic, so that the rubric service (which constrains its decoding with the schema) and
the Stage I trainer (which scores and trains on reference rubrics written in this format with
`to_generation_text`) share one definition without importing each other.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

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


# The designer template of the released recipe: think first, then a flat JSON array, unconstrained.
RELEASE_VERSION = "release"
MAX_GRAMMAR_WORDS = MAX_TITLE_WORDS + MAX_DESCRIPTION_WORDS
# Below this many words per criterion a budget shrinks the item count first (then words, down to 2).
GOOD_WORDS = 16
_ANY_WORD_CHAR = r'[^\s"\\\x00-\x1f]'  # no whitespace, quote, backslash or control character
_ASCII_WORD_CHAR = r"[!#-\[\]-~]"  # the same, printable ASCII only: one byte, at most one token
_CRITERION_SKELETON = len(
    json.dumps({"title": "", "description": "", "weight": MAX_WEIGHT}, separators=JSON_SEPARATORS)
)
_PITFALL_SKELETON = len(json.dumps({"title": "", "description": ""}, separators=JSON_SEPARATORS))
_OUTER_SKELETON = len(json.dumps({"criteria": [], "pitfalls": []}, separators=JSON_SEPARATORS))


class RubricBudgetError(ValueError):
    """`max_tokens` cannot hold the grammar's longest rubric of `min_criteria` criteria."""

    def __init__(self, min_criteria: int, max_tokens: int, needed: int) -> None:
        super().__init__(
            f"{max_tokens} tokens cannot hold a rubric of bounds.min_criteria {min_criteria} criteria "
            f"(its longest admitted form needs max_tokens >= {needed})"
        )
        self.needed = needed


@dataclass(frozen=True)
class GrammarLimits:
    """What the grammar admits: items in all, words per title and per description, the word's characters."""

    max_items: int
    title_words: int = MAX_TITLE_WORDS
    description_words: int = MAX_DESCRIPTION_WORDS
    ascii: bool = False

    def word_chars(self, max_words: int, max_chars: int) -> int:
        """At most 20 characters a word, and never more than `max_chars` in all (the wire model's cap:
        a longer string would pass the grammar and fail the response)."""
        return min(MAX_WORD_CHARS, (max_chars - (max_words - 1)) // max_words)

    def _text_chars(self) -> int:
        title_chars = self.word_chars(self.title_words, MAX_TITLE_CHARS)
        description_chars = self.word_chars(self.description_words, MAX_DESCRIPTION_CHARS)
        return self.title_words * (title_chars + 1) - 1 + self.description_words * (description_chars + 1) - 1

    def longest_tokens(self, bounds: RubricBounds) -> int:
        """Tokens of the longest output (one per byte, ASCII words), plus the stop token."""
        pitfalls = _pitfalls_max(bounds, self.max_items)
        criteria = self.max_items - pitfalls
        text = self._text_chars()
        return (
            _OUTER_SKELETON
            + criteria * (_CRITERION_SKELETON + text)
            + pitfalls * (_PITFALL_SKELETON + text)
            + max(criteria - 1, 0)
            + (pitfalls - 1)
            + 1
        )


def _pitfalls_max(bounds: RubricBounds, max_items: int) -> int:
    return min(MAX_PITFALLS, max_items - bounds.min_criteria + 1)


def _split(words: int) -> tuple[int, int]:
    """Words of a criterion split between its title (a quarter, 1-10) and its description (1-40)."""
    title = max(1, min(MAX_TITLE_WORDS, words // 4))
    return title, min(MAX_DESCRIPTION_WORDS, words - title)


def budget_limits(bounds: RubricBounds, max_tokens: int) -> GrammarLimits:
    """The largest grammar whose longest rubric fits `max_tokens`: as many items as the bounds allow
    with at least `GOOD_WORDS` words each, else `min_criteria` items with as many words as fit.

    Raises RubricBudgetError when not even `min_criteria` items of one title word and one description
    word fit (the caller's 422 on `max_tokens`, naming the budget that would).
    """

    def fitting(items: int, min_words: int) -> GrammarLimits | None:
        for words in range(MAX_GRAMMAR_WORDS, min_words - 1, -1):
            title, description = _split(words)
            limits = GrammarLimits(items, title, description, ascii=True)
            if limits.longest_tokens(bounds) <= max_tokens:
                return limits
        return None

    for items in range(bounds.max_criteria, bounds.min_criteria - 1, -1):
        limits = fitting(items, GOOD_WORDS)
        if limits is not None:
            return limits
    limits = fitting(bounds.min_criteria, 2)
    if limits is None:
        needed = GrammarLimits(bounds.min_criteria, 1, 1, ascii=True).longest_tokens(bounds)
        raise RubricBudgetError(bounds.min_criteria, max_tokens, needed)
    return limits


def _words(max_words: int, max_chars: int, limits: GrammarLimits) -> str:
    word_chars = limits.word_chars(max_words, max_chars)
    word = rf"{_ASCII_WORD_CHAR if limits.ascii else _ANY_WORD_CHAR}{{1,{word_chars}}}"
    return f"^{word}( {word}){{0,{max_words - 1}}}$"


def _item(with_weight: bool, limits: GrammarLimits) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "title": {"type": "string", "pattern": _words(limits.title_words, MAX_TITLE_CHARS, limits)},
        "description": {
            "type": "string",
            "pattern": _words(limits.description_words, MAX_DESCRIPTION_CHARS, limits),
        },
    }
    if with_weight:
        properties["weight"] = {"type": "integer", "enum": list(range(1, MAX_WEIGHT + 1))}
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


def generation_schema(bounds: RubricBounds, max_tokens: int | None = None) -> dict[str, Any]:
    """The JSON schema for constrained decoding; any output it admits meets `bounds`, and with
    `max_tokens` ends within that many tokens (`budget_limits`; RubricBudgetError if it cannot)."""
    limits = GrammarLimits(bounds.max_criteria) if max_tokens is None else budget_limits(bounds, max_tokens)
    pitfalls_max = _pitfalls_max(bounds, limits.max_items)
    return {
        "type": "object",
        "properties": {
            "criteria": {
                "type": "array",
                "items": _item(with_weight=True, limits=limits),
                "minItems": bounds.min_criteria - 1,
                "maxItems": limits.max_items - pitfalls_max,
            },
            "pitfalls": {
                "type": "array",
                "items": _item(with_weight=False, limits=limits),
                "minItems": 1,
                "maxItems": pitfalls_max,
            },
        },
        "required": ["criteria", "pitfalls"],
        "additionalProperties": False,
    }


def parse_release_rubric(text: str) -> list[Criterion]:
    """A rubric read as the release reads its generator's output (rcsd_train_reward.py
    `_extract_json_array`): the think block removed, then the first `[` from which a JSON list
    decodes. Each item must be a criterion (title, description, weight -1..10): the release also
    keeps bare strings, which carry no weight. Raises ValueError when nothing parses."""
    cleaned = re.sub(r"<think>.*?</think>", "", text, flags=re.DOTALL)
    cleaned = cleaned.replace("<think>", "").replace("</think>", "").strip()
    decoder = json.JSONDecoder()
    start = cleaned.find("[")
    while start != -1:
        try:
            parsed, _ = decoder.raw_decode(cleaned[start:])
        except json.JSONDecodeError:
            parsed = None
        if isinstance(parsed, list):  # the first list is the rubric, as in the release
            try:
                criteria = [Criterion.model_validate(item) for item in parsed]
            except ValidationError as exc:
                raise ValueError(f"a rubric item is not a criterion ({exc.error_count()} errors)") from exc
            if not criteria:
                raise ValueError("the rubric is an empty array")
            return criteria
        start = cleaned.find("[", start + 1)
    raise ValueError("no JSON array of criteria in the output")


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
