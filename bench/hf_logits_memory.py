"""Peak memory of the hf engine's scoring against a plain forward, at a long context and a large vocabulary.

Measures the peak resident memory added by one call, each in a fresh process, on a random
2-layer Llama with Qwen's vocabulary (151,936) and a context of 8,192 tokens:
- `plain forward`: `model(context + completion).logits` (what the context pass used to keep: one
  float32 row per position, about 5 GB);
- `hf engine`: `HfEngine.score_sync` of G completions sharing the context (logits_to_keep=1 for the
  context, then windows of at most LOGITS_BUDGET_BYTES of completion logits).
The model's own weights and KV cache are the same in both, so the difference is the logits.

    .venv/bin/python bench/hf_logits_memory.py [--context 8192] [--completions 8] [--length 256]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from types import SimpleNamespace

VOCAB = 151_936
MiB = 2**20


def _model(context: int, length: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=context + length + 8,
    )
    return LlamaForCausalLM(config).eval()


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / MiB


def measure(mode: str, context: int, completions: int, length: int) -> dict[str, float]:
    """Runs in a child process: the peak RSS above what the model alone holds."""
    import torch

    from rcsd.client.protocol import ModelInfo
    from rcsd.services.engines.base import EngineConfig
    from rcsd.services.engines.hf import LOGITS_BUDGET_BYTES, HfEngine

    model = _model(context, length)
    generator = torch.Generator().manual_seed(1)
    context_ids = torch.randint(0, VOCAB, (context,), generator=generator).tolist()
    completion_ids = [
        torch.randint(0, VOCAB, (length,), generator=generator).tolist() for _ in range(completions)
    ]
    with torch.inference_mode():
        model(torch.tensor([context_ids[:16]]))  # warm up allocator and kernels
    baseline = _rss_mib()
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with torch.inference_mode():
        if mode == "plain":
            logits = model(torch.tensor([context_ids + completion_ids[0]])).logits
            del logits
        else:
            info = ModelInfo(
                name="bench",
                revision="0",
                tokenizer_hash="-",
                vocab_size=VOCAB,
                max_model_len=context + length,
                dtype="float32",
            )
            engine = HfEngine(EngineConfig(model="bench"), model, SimpleNamespace(pad_token_id=0), info)
            engine.score_sync(context_ids, completion_ids, 20, 1.0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"added_peak_mib": max(peak, peak_before) - baseline, "budget_mib": LOGITS_BUDGET_BYTES / MiB}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--context", type=int, default=8192)
    parser.add_argument("--completions", type=int, default=8)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--child", choices=["plain", "engine"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.context, args.completions, args.length)))
        return
    rows = {}
    for mode in ("plain", "engine"):
        command = [sys.executable, __file__, "--child", mode, *sys.argv[1:]]
        rows[mode] = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
    budget = rows["engine"]["budget_mib"]
    print(
        f"context {args.context} tokens, vocab {VOCAB}, {args.completions} completions x {args.length} tokens"
    )
    print(f"{'path':<34}{'added peak MiB':>16}")
    print(f"{'plain forward (all logits rows)':<34}{rows['plain']['added_peak_mib']:>16.0f}")
    print(f"{'hf engine score_sync':<34}{rows['engine']['added_peak_mib']:>16.0f}")
    print(f"logits budget per window: {budget:.0f} MiB")
    result = {
        "context": args.context,
        "plain_mib": round(rows["plain"]["added_peak_mib"]),
        "engine_mib": round(rows["engine"]["added_peak_mib"]),
        "budget_mib": budget,
        "ratio": round(rows["plain"]["added_peak_mib"] / max(rows["engine"]["added_peak_mib"], 1), 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
