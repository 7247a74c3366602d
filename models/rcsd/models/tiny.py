"""A tiny random-weight Llama with a locally trained tokenizer: the fixture model for tests and the demo.

`build_tiny_model(out_dir)` writes, in a few seconds on CPU and without any network, a folder that both
`transformers.AutoModelForCausalLM.from_pretrained` and vLLM load: config.json, generation_config.json,
model.safetensors (fp32) and the tokenizer files (a byte-level BPE of about 1000 tokens with a ChatML chat
template). The same seed gives the same weights and the same token ids.

vLLM's attention kernels need head_dim >= 64, so the 128 hidden units are split over only 2 heads.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END]  # ids 0, 1, 2
TARGET_VOCAB_SIZE = 1000
CORPUS_RESOURCE = "tiny_corpus.txt"

# ChatML, as Qwen and SmolLM use it; no default system prompt, so renders stay short and predictable.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Llama's default init (std 0.02) gives near-uniform next-token distributions, where a test comparing
# log-probs of the wrong tokens would still pass; a wider init gives peaked, token-dependent ones.
INITIALIZER_RANGE = 0.2


def _corpus_lines() -> list[str]:
    text = resources.files(__package__).joinpath(CORPUS_RESOURCE).read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip()]


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Train the byte-level BPE on the built-in corpus; deterministic (no randomness in BPE training)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=TARGET_VOCAB_SIZE,
        min_frequency=1,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes: any text round-trips
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus_lines(), trainer=trainer)
    # No BOS is prepended (like Qwen/SmolLM): the chat template alone decides the prompt's first token.
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=ENDOFTEXT,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        additional_special_tokens=[IM_START],
        model_max_length=4096,
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )


def build_tiny_model(out_dir: Path, seed: int = 0) -> Path:
    """Write the tiny model and its tokenizer into `out_dir` (created if needed) and return it."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    tokenizer = build_tokenizer()
    bos_id, eos_id, pad_id = (
        tokenizer.convert_tokens_to_ids(t) for t in (tokenizer.bos_token, IM_END, tokenizer.pad_token)
    )
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=4096,
        rms_norm_eps=1e-6,
        initializer_range=INITIALIZER_RANGE,
        tie_word_embeddings=False,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        dtype="float32",
    )
    # Build on CPU under a private generator state, so the caller's global RNG is left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).to(torch.float32)
    model.generation_config = GenerationConfig(bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id)

    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir
