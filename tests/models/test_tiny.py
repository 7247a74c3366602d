"""The tiny fixture model: loads with transformers, has the shape vLLM needs, and is reproducible."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from rcsd.models.tiny import IM_END, IM_START, build_tiny_model

SCIENCE = (
    "Photosynthesis turns sunlight, water and 6 CO2 into sugar; the Sun is 150 million km away (ß-decay!)."
)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_loads_with_transformers(tiny_model_dir: Path, tokenizer) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    config = model.config

    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.dtype == torch.float32
    assert config.hidden_size // config.num_attention_heads == 64 == config.head_dim
    assert config.num_key_value_heads == 2 and config.num_hidden_layers == 2
    assert not config.tie_word_embeddings
    assert config.vocab_size == len(tokenizer) == model.get_output_embeddings().weight.shape[0]
    assert 900 <= len(tokenizer) <= 1000
    assert tokenizer.eos_token == IM_END
    assert config.eos_token_id == tokenizer.eos_token_id == model.generation_config.eos_token_id
    assert tokenizer.pad_token_id is not None

    ids_B_T = torch.tensor([tokenizer.encode(SCIENCE)])
    with torch.no_grad():
        logits_B_T_V = model(ids_B_T).logits
    assert logits_B_T_V.shape == (1, ids_B_T.shape[1], config.vocab_size)
    assert torch.isfinite(logits_B_T_V).all()


def test_files_on_disk(tiny_model_dir: Path) -> None:
    names = {p.name for p in tiny_model_dir.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"} <= names
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["max_position_embeddings"] == 4096


def test_chat_template(tokenizer) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Why is the sky blue?"},
    ]

    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    without = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)

    assert text == (
        f"{IM_START}system\nBe brief.{IM_END}\n{IM_START}user\nWhy is the sky blue?{IM_END}\n{IM_START}assistant\n"
    )
    assert text == without + f"{IM_START}assistant\n"
    ids = tokenizer.encode(text, add_special_tokens=False)
    im_start_id, im_end_id = tokenizer.convert_tokens_to_ids([IM_START, IM_END])
    assert ids.count(im_start_id) == 3 and ids.count(im_end_id) == 2  # special tokens stay single ids
    assert tokenizer.decode(ids) == text
    assert IM_START not in tokenizer.decode(ids, skip_special_tokens=True)


def test_round_trip(tokenizer) -> None:
    ids = tokenizer.encode(SCIENCE, add_special_tokens=False)

    assert tokenizer.decode(ids) == SCIENCE
    assert len(ids) < len(SCIENCE.encode()) // 2  # the merges learned English, not only bytes


def test_deterministic(tmp_path: Path, tiny_model_dir: Path, tokenizer) -> None:
    again = build_tiny_model(tmp_path / "again", seed=0)
    other = build_tiny_model(tmp_path / "other", seed=1)

    weights = load_file(tiny_model_dir / "model.safetensors")
    weights_again = load_file(again / "model.safetensors")
    assert weights.keys() == weights_again.keys()
    assert all(torch.equal(weights[name], weights_again[name]) for name in weights)
    assert not torch.equal(
        weights["lm_head.weight"], load_file(other / "model.safetensors")["lm_head.weight"]
    )

    tokenizer_again = AutoTokenizer.from_pretrained(again)
    assert tokenizer_again.get_vocab() == tokenizer.get_vocab()
    assert tokenizer_again.encode(SCIENCE) == tokenizer.encode(SCIENCE)
    assert (again / "tokenizer.json").read_bytes() == (tiny_model_dir / "tokenizer.json").read_bytes()
