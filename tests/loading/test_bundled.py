"""The embedded default model: the once-only, atomic preparation, and the real conversion of the GGUF.

The real conversion runs in every `make test`, into the cache the demo uses (`$RCSD_CACHE_DIR`, else
`~/.cache/rcsd/models`): ~20 s and ~540 MB the first time, then only a check and a load of the folder
it left. `RCSD_TEST_DEFAULT_MODEL=0` skips it. The preparation logic around it is tested with a fake
conversion.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from rcsd.loading import bundled
from rcsd.loading.bundled import DEFAULT_MODEL_NAME, REQUIRED_FILES, prepare_default_model

needs_conversion = pytest.mark.skipif(
    os.environ.get("RCSD_TEST_DEFAULT_MODEL") == "0",
    reason="RCSD_TEST_DEFAULT_MODEL=0: the SmolLM2 conversion is skipped",
)


def _fake_convert(gguf_path: Path, out_dir: Path) -> None:
    for name in REQUIRED_FILES:
        (out_dir / name).write_text("{}")


def _no_convert(gguf_path: Path, out_dir: Path) -> None:
    raise AssertionError("a complete folder must not be converted again")


def test_default_cache_dir(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RCSD_CACHE_DIR", str(tmp_path))
    assert bundled.default_cache_dir() == tmp_path
    monkeypatch.delenv("RCSD_CACHE_DIR")
    assert bundled.default_cache_dir() == Path.home() / ".cache" / "rcsd" / "models"


def test_finds_the_gguf_in_the_installed_package() -> None:
    path = bundled.find_gguf()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.read_bytes()[:4] == b"GGUF"


def test_prepares_once(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(bundled, "_convert", _fake_convert)
    target = prepare_default_model(tmp_path)
    assert target == tmp_path / DEFAULT_MODEL_NAME and bundled.is_complete(target)

    monkeypatch.setattr(bundled, "_convert", _no_convert)
    assert prepare_default_model(tmp_path) == target


def test_cleans_up_after_a_killed_run(monkeypatch, tmp_path: Path) -> None:
    stale_tmp = tmp_path / f".{DEFAULT_MODEL_NAME}.tmp-killed"
    stale_tmp.mkdir()
    half = tmp_path / DEFAULT_MODEL_NAME
    half.mkdir()
    (half / "config.json").write_text("{}")  # no weights, no marker: incomplete
    monkeypatch.setattr(bundled, "_convert", _fake_convert)

    target = prepare_default_model(tmp_path)

    assert bundled.is_complete(target)
    assert not stale_tmp.exists()


def test_a_failed_conversion_leaves_nothing(monkeypatch, tmp_path: Path) -> None:
    def failing_convert(gguf_path: Path, out_dir: Path) -> None:
        (out_dir / "model.safetensors").write_text("half")
        raise KeyboardInterrupt

    monkeypatch.setattr(bundled, "_convert", failing_convert)
    with pytest.raises(KeyboardInterrupt):
        prepare_default_model(tmp_path)

    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []


@needs_conversion
def test_converts_smollm2() -> None:
    """Converted once per cache (the demo's), so a warm `make test` only checks and loads it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    model_dir = prepare_default_model()  # the default cache dir
    first_s = time.perf_counter() - started
    started = time.perf_counter()
    assert prepare_default_model() == model_dir == bundled.default_cache_dir() / DEFAULT_MODEL_NAME
    second_s = time.perf_counter() - started
    print(f"prepare: first {first_s:.1f} s (0 when cached), second {second_s:.3f} s")
    assert second_s < 1.0

    config = json.loads((model_dir / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["dtype"] == "float32" and config["tie_word_embeddings"]
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert model.dtype == torch.float32
    assert len(tokenizer) == model.config.vocab_size == 49152
    assert tokenizer.eos_token == "<|im_end|>" == tokenizer.convert_ids_to_tokens(model.config.eos_token_id)
    # SmolLM2's own pre-tokenizer: digits one by one, a whitespace run kept whole before a number.
    assert tokenizer.tokenize("x  12") == ["x", "ĠĠ", "1", "2"]

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")
    ids_B_T = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids
    with torch.no_grad():
        out_B_T = model.generate(ids_B_T, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(out_B_T[0, ids_B_T.shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer
