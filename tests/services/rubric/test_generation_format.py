"""The constrained generation format: what the grammar admits always meets the bounds."""

from __future__ import annotations

import json

import pytest
import xgrammar
from transformers import AutoTokenizer

from rcsd.client.protocol import Criterion, RubricBounds, rubric_problems
from rcsd.client.protocol.limits import MAX_TITLE_CHARS
from rcsd.client.protocol.rubric_format import (
    JSON_SEPARATORS,
    MAX_TITLE_WORDS,
    PITFALL_WEIGHT,
    generation_schema,
    to_criteria,
    to_generation_text,
)
from rcsd.services.engines.hf import compile_json_grammar
from rcsd.trainer.data.questions import reference_rubrics


def _item(title: str, words: int = 3, weight: int | None = 5) -> dict:
    item = {"title": title, "description": " ".join(["word"] * words)}
    return item if weight is None else {**item, "weight": weight}


@pytest.fixture(scope="module")
def compiler(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    return xgrammar.GrammarCompiler(
        xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=len(tokenizer))
    )


@pytest.mark.parametrize(
    ("value", "admitted"),
    [
        ({"criteria": [_item("a"), _item("b")], "pitfalls": [_item("c", weight=None)]}, True),
        ({"criteria": [_item("a"), _item("b")], "pitfalls": []}, False),  # a pitfall is required
        ({"criteria": [_item("a")], "pitfalls": [_item("c", weight=None)]}, False),  # under min_criteria
        ({"criteria": [_item("a", weight=0), _item("b")], "pitfalls": [_item("c", weight=None)]}, False),
        ({"criteria": [_item("a", words=41), _item("b")], "pitfalls": [_item("c", weight=None)]}, False),
        ({"criteria": [_item("a", words=40), _item("b")], "pitfalls": [_item("c", weight=None)]}, True),
        (
            {
                "criteria": [{**_item("a"), "description": "two  spaces"}, _item("b")],
                "pitfalls": [_item("c", weight=None)],
            },
            False,
        ),
    ],
)
def test_grammar_enforces_the_rubric_rules(compiler, value, admitted):
    bounds = RubricBounds(min_criteria=3, max_criteria=6)
    grammar = compile_json_grammar(compiler, generation_schema(bounds))
    matcher = xgrammar.GrammarMatcher(grammar)
    assert matcher.accept_string(json.dumps(value, separators=JSON_SEPARATORS)) == admitted
    if admitted:
        criteria = to_criteria(value)
        assert rubric_problems(criteria, bounds) == []


def test_repeated_titles_are_dropped_then_bounds_checked():
    generated = {
        "criteria": [_item("Units"), _item("units "), _item("Sign")],
        "pitfalls": [_item("Units", weight=None)],
    }
    criteria = to_criteria(generated)
    assert [c.title for c in criteria] == ["Units", "Sign"]
    assert rubric_problems(criteria, RubricBounds(min_criteria=3, max_criteria=6)) == [
        "criteria count 2 outside [3, 6]",
        "no pitfall criterion (weight -1)",
    ]


@pytest.mark.parametrize(("word_chars", "admitted"), [(19, True), (20, False)])
def test_the_longest_admitted_title_fits_the_wire_model(compiler, word_chars, admitted):
    """10 words of 20 characters (209 in all) once passed the grammar and then broke the response."""
    title = " ".join(["x" * word_chars] * MAX_TITLE_WORDS)
    value = {"criteria": [_item(title), _item("b")], "pitfalls": [_item("c", weight=None)]}
    bounds = RubricBounds(min_criteria=3, max_criteria=6)
    grammar = compile_json_grammar(compiler, generation_schema(bounds))
    assert (
        xgrammar.GrammarMatcher(grammar).accept_string(json.dumps(value, separators=JSON_SEPARATORS))
        == admitted
    )
    assert (len(title) <= MAX_TITLE_CHARS) == admitted  # so what the grammar admits, Criterion accepts


def test_reference_rubrics_in_generation_text_are_what_the_grammar_writes(compiler):
    """`to_generation_text` writes each shipped reference rubric as a string the engines' grammar admits
    to the end (compact JSON, the order the generator writes), and it reads back to the same rubric."""
    bounds = RubricBounds(min_criteria=5, max_criteria=12)
    grammar = compile_json_grammar(compiler, generation_schema(bounds))
    for item in reference_rubrics():
        text = to_generation_text(item.criteria)
        matcher = xgrammar.GrammarMatcher(grammar)
        assert matcher.accept_string(text), item.question.id
        assert matcher.is_completed(), item.question.id  # nothing may follow but the stop token
        assert to_criteria(json.loads(text)) == item.criteria


def test_generation_text_puts_pitfalls_last_without_a_weight():
    criteria = [
        Criterion(title="Pit", description="a mistake", weight=PITFALL_WEIGHT),
        Criterion(title="Law", description="uses it", weight=8),
    ]
    assert to_generation_text(criteria) == (
        '{"criteria":[{"title":"Law","description":"uses it","weight":8}],'
        '"pitfalls":[{"title":"Pit","description":"a mistake"}]}'
    )
