"""Peak memory of the trainer's loss path for one long answer: chunked output head vs full logits.

For one completion of `--tokens` tokens (SmolLM2's 49k vocabulary by default), each variant runs in a
fresh process: load the model, take the baseline RSS, then forward, the top-K forward KL on K random
teacher ids, and backward. It reports the peak RSS above the baseline:
- `full`: the model's [T, V] logits, gathered at the teacher's ids (the trainer before chunking);
- `chunked`: `rcsd.trainer.student.score_completions` (decoder once, the head `--chunk` positions at a time
  under activation checkpointing).
Both also compute the sampled tokens' log-probs. Prints a table, then one JSON line.

    .venv/bin/python bench/loss_memory.py [--model default] [--tokens 4096] [--chunk 256] [--dtype float32]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys


def _peak_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def run_variant(args: argparse.Namespace) -> dict[str, float]:
    import time

    import torch
    from transformers import AutoModelForCausalLM

    from rcsd.trainer import losses
    from rcsd.trainer.student import resolve_model, score_completions

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(resolve_model(args.model), dtype=getattr(torch, args.dtype))
    vocab = model.get_output_embeddings().weight.shape[0]
    prompt = torch.randint(0, vocab, (32,)).tolist()
    completion = torch.randint(0, vocab, (args.tokens,)).tolist()
    topk_ids = torch.randint(0, vocab, (1, args.tokens, 20))
    teacher_lp = torch.randn(1, args.tokens, 20).log_softmax(-1)
    baseline = _peak_kib()
    started = time.perf_counter()
    if args.variant == "chunked":
        scores = score_completions(model, prompt, [completion], 0, topk_ids, chunk_size=args.chunk)
        gathered, in_vocab, logprobs = scores.topk_logits_B_T_K, scores.in_vocab_B_T_K, scores.logprobs_B_T
    else:
        inputs = torch.tensor([prompt + completion])
        logits = model(input_ids=inputs[:, :-1]).logits[:, len(prompt) - 1 :]
        logprobs = logits.float().log_softmax(-1).gather(-1, inputs[:, len(prompt) :, None]).squeeze(-1)
        gathered, in_vocab = losses.gather_topk(logits, topk_ids)
    mask = torch.ones(1, args.tokens, dtype=torch.bool)
    loss, _ = losses.topk_fkl(gathered, in_vocab, teacher_lp, mask)
    (loss + logprobs.mean()).backward()
    return {
        "peak_above_model_mib": (_peak_kib() - baseline) / 1024,
        "seconds": time.perf_counter() - started,
        "vocab": vocab,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--chunk", type=int, default=256)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--variant", choices=["full", "chunked"], default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args)))
        return
    import torch

    results = {}
    for variant in ("full", "chunked"):
        command = [sys.executable, __file__, *sys.argv[1:], "--variant", variant]
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        results[variant] = json.loads(out.strip().splitlines()[-1])
    machine = f"{platform.machine()} CPU {torch.backends.cpu.get_cpu_capability()}, torch {torch.__version__}"
    print(
        f"loss path, one {args.tokens}-token answer, vocab {results['full']['vocab']}, {args.dtype}; {machine}"
    )
    print(f"{'variant':<10}{'peak above model (MiB)':>24}{'seconds':>10}")
    for variant, r in results.items():
        print(f"{variant:<10}{r['peak_above_model_mib']:>24.0f}{r['seconds']:>10.1f}")
    ratio = results["chunked"]["peak_above_model_mib"] / results["full"]["peak_above_model_mib"]
    print(f"chunked / full peak: {ratio:.2f}")
    print(json.dumps({"tokens": args.tokens, "chunk": args.chunk, "dtype": args.dtype, "machine": machine,
                      "results": results, "chunked_over_full": ratio}))  # fmt: skip


if __name__ == "__main__":
    main()
