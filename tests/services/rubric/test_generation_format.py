"""The constrained generation format: what the grammar admits always meets the bounds."""

from __future__ import annotations

import json

import pytest
import xgrammar
from transformers import AutoTokenizer

from rcsd.client.protocol import RubricBounds, rubric_problems
from rcsd.client.protocol.limits import MAX_TITLE_CHARS
from rcsd.services.rubric.generation_format import MAX_TITLE_WORDS, generation_schema, to_criteria


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
    grammar = compiler.compile_json_schema(json.dumps(generation_schema(bounds)), any_whitespace=False)
    matcher = xgrammar.GrammarMatcher(grammar)
    assert matcher.accept_string(json.dumps(value, separators=(", ", ": "))) == admitted
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
    grammar = compiler.compile_json_schema(json.dumps(generation_schema(bounds)), any_whitespace=False)
    assert (
        xgrammar.GrammarMatcher(grammar).accept_string(json.dumps(value, separators=(", ", ": "))) == admitted
    )
    assert (len(title) <= MAX_TITLE_CHARS) == admitted  # so what the grammar admits, Criterion accepts
