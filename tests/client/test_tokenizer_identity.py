"""The canonical tokenizer hash: stable, sensitive to vocab, merges and special tokens."""

from __future__ import annotations

import json

import pytest

from rcsd.client import tokenizer_hash, tokenizer_vocab_size

tokenizers = pytest.importorskip("tokenizers")
transformers = pytest.importorskip("transformers")

VOCAB = {"<s>": 0, "</s>": 1, "a": 2, "b": 3, "c": 4, "ab": 5, "abc": 6}
MERGES = [("a", "b"), ("ab", "c")]


def make(vocab: dict[str, int] = VOCAB, merges: list[tuple[str, str]] = MERGES, eos: str = "</s>"):
    model = tokenizers.models.BPE(vocab=dict(vocab), merges=list(merges))
    backend = tokenizers.Tokenizer(model)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token=eos)


class DuckTokenizer:
    """Only what the hash reads, with merges serialised the old way ("a b" strings)."""

    all_special_tokens = ["<s>", "</s>"]

    def __init__(self, merges: list[str]) -> None:
        self._merges = merges

    def get_vocab(self) -> dict[str, int]:
        return dict(reversed(list(VOCAB.items())))  # order must not matter

    @property
    def backend_tokenizer(self) -> DuckTokenizer:
        return self

    def to_str(self) -> str:
        return json.dumps({"model": {"type": "BPE", "merges": self._merges}})


def test_hash_is_stable_and_hex():
    value = tokenizer_hash(make())
    assert value == tokenizer_hash(make()) and len(value) == 64 and int(value, 16) >= 0
    assert tokenizer_vocab_size(make()) == len(VOCAB)


def test_hash_changes_with_vocab_merges_or_special_tokens():
    base = tokenizer_hash(make())
    assert tokenizer_hash(make(vocab={**VOCAB, "bc": 7})) != base
    assert tokenizer_hash(make(merges=MERGES[:1])) != base
    assert tokenizer_hash(make(merges=MERGES[::-1])) != base  # merge order is rank
    assert tokenizer_hash(make(eos="c")) != base


def test_both_merge_serialisations_and_a_duck_type_agree():
    assert tokenizer_hash(DuckTokenizer(["a b", "ab c"])) == tokenizer_hash(make())
    assert tokenizer_hash(DuckTokenizer([["a", "b"], ["ab", "c"]])) == tokenizer_hash(make())


def test_a_tokenizer_without_merges():
    class WordLevel:
        def get_vocab(self) -> dict[str, int]:
            return {"x": 0, "y": 1}

    assert len(tokenizer_hash(WordLevel())) == 64
    assert tokenizer_vocab_size(WordLevel()) == 2


def test_chat_template_is_part_of_the_identity():
    plain = make()
    templated = make()
    templated.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    changed = make()
    changed.chat_template = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"
    assert tokenizer_hash(templated) != tokenizer_hash(plain)
    assert tokenizer_hash(changed) != tokenizer_hash(templated)
    again = make()
    again.chat_template = templated.chat_template
    assert tokenizer_hash(again) == tokenizer_hash(templated)
    named = make()
    named.chat_template = {"default": templated.chat_template, "tool_use": "{{ messages }}"}
    assert tokenizer_hash(named) not in {tokenizer_hash(templated), tokenizer_hash(plain)}
