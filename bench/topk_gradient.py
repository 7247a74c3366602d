"""How much of the full-vocabulary forward-KL gradient the teacher's top-K carries (issue 17, item 4).

The release's Stage I trains on the forward KL over the whole vocabulary (no `--top_k_loss`); rcsd's
teacher service returns the teacher's top-K only, and `topk_fkl` renormalises both distributions over
those K ids. This measures, on real weights, how close the top-K gradient comes to the full one.

For each question of a data set: the student (the bundled SmolLM2-135M-Instruct, or the tiny test
model) samples an answer to the release's student prompt; the teacher (the same frozen weights, as
the release's fixed teacher) sees the question with its reference answer (the release's
non-reason-first wording, no rubric). On the answer's tokens, `rcsd.trainer.losses.topk_fkl` at
tau 1.2 gives the loss over the teacher's top-K ids (K = 20, 64) and over all V ids (the full
vocabulary, the baseline, computed in the same process). Compared with the full gradient:

- `cos_params`, `norm_ratio_params`: over the weights of the 7 projections of every layer (q, k, v,
  o, gate, up, down: what Stage I's LoRA trains; embeddings and norms frozen, as memory is tight);
- `cos_logits`: over the student's logits at the answer positions.

Both unclipped and with the release's per-id clip 0.05 (each against the full vocabulary at the
same clip). Prints a table of the mean (min) over questions, then one line of JSON.

    .venv/bin/python bench/topk_gradient.py [--model default|tiny] [--questions 8] [--max-new-tokens 64]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rcsd.client.prompts import chat_prompt_ids, student_prompt_text
from rcsd.trainer.data.questions import load_questions
from rcsd.trainer.losses import topk_fkl

TAU = 1.2
KS = (20, 64)
CLIPS = (None, 0.05)
# data_collator_reward.py L154-172 @ 521b538 (non-reason-first, no rubric), the teacher's user turn
TEACHER_TEXT = (
    "Question: {question}\n\nReference Answer:\n{reference}\n\n"
    "Use the reference material above as guidance.\n"
    "Please reason step by step, and put your final answer within \\boxed{{}}."
)


def _model_dir(which: str) -> str:
    if which == "tiny":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ holds the tiny model
        from tests.fixtures.tiny_model import build_tiny_model

        return str(build_tiny_model(Path(tempfile.mkdtemp(prefix="rcsd-tiny-"))))
    from rcsd.loading.bundled import prepare_default_model

    return str(prepare_default_model())


def _answer_logits(model: torch.nn.Module, prompt: list[int], answer: list[int]) -> torch.Tensor:
    """Logits [T, V] predicting each answer token after `prompt`."""
    ids = torch.tensor([prompt + answer])
    return model(ids).logits[0, len(prompt) - 1 : -1]


def _grads(
    model: torch.nn.Module,
    prompt: list[int],
    answer: list[int],
    teacher_logp_T_V: torch.Tensor,
    k: int,
    clip: float | None,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """(parameter gradients, logit gradient) of topk_fkl over the teacher's top-k ids (k = V: all).
    The parameter gradients are the model's own `.grad` tensors (no copy: memory is tight on CPU)."""
    model.zero_grad(set_to_none=True)
    logits_T_V = _answer_logits(model, prompt, answer)
    logits_T_V.retain_grad()
    topk_logp_T_K, ids_T_K = teacher_logp_T_V.topk(k, dim=-1)
    student_T_K = logits_T_V.gather(-1, ids_T_K)
    loss, _ = topk_fkl(
        student_T_K[None],
        torch.ones_like(ids_T_K, dtype=torch.bool)[None],
        topk_logp_T_K[None],
        torch.ones(1, ids_T_K.shape[0], dtype=torch.bool),
        tau=TAU,
        clip=clip,
    )
    loss.backward()
    return [p.grad for p in model.parameters() if p.grad is not None], logits_T_V.grad.flatten().clone()


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=0))


def _compare(grads: list[torch.Tensor], full: list[torch.Tensor]) -> tuple[float, float]:
    """(cosine, norm ratio) of two gradients held as per-parameter tensors, summed in float64."""
    dot = sum(float((g.double() * f.double()).sum()) for g, f in zip(grads, full, strict=True))
    norm = sum(float(g.double().square().sum()) for g in grads) ** 0.5
    full_norm = sum(float(f.double().square().sum()) for f in full) ** 0.5
    return dot / (norm * full_norm), norm / full_norm


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=["default", "tiny"], default="default")
    parser.add_argument("--data", default="scibench_train")
    parser.add_argument("--questions", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()
    torch.manual_seed(0)
    model_dir = _model_dir(args.model)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()  # no dropout: the gradients differ only by the loss
    for name, param in model.named_parameters():
        param.requires_grad_(name.endswith("proj.weight"))
    rows: dict[str, list[float]] = {}
    for question in load_questions([args.data])[: args.questions]:
        student_text = student_prompt_text(question.prompt_text)
        prompt = chat_prompt_ids(tokenizer, [{"role": "user", "content": student_text}])
        with torch.no_grad():
            out = model.generate(
                torch.tensor([prompt]), max_new_tokens=args.max_new_tokens, do_sample=True,
                temperature=TAU, top_p=0.95, top_k=20,
            )  # fmt: skip
        answer = out[0, len(prompt) :].tolist()
        teacher_text = TEACHER_TEXT.format(question=question.prompt_text, reference=question.reference_answer)
        teacher_prompt = chat_prompt_ids(tokenizer, [{"role": "user", "content": teacher_text}])
        with torch.no_grad():
            teacher_logp_T_V = _answer_logits(model, teacher_prompt, answer).log_softmax(-1)
        vocab = teacher_logp_T_V.shape[-1]
        for clip in CLIPS:
            full_grads, full_logits = _grads(model, prompt, answer, teacher_logp_T_V, vocab, clip)
            full_params = [g.to(torch.bfloat16) for g in full_grads]  # a half-size copy: cos to ~1e-3
            for k in KS:
                params, logits = _grads(model, prompt, answer, teacher_logp_T_V, k, clip)
                cos, ratio = _compare(params, full_params)
                key = f"K={k} clip={clip}"
                rows.setdefault(f"{key} cos_params", []).append(cos)
                rows.setdefault(f"{key} norm_ratio_params", []).append(ratio)
                rows.setdefault(f"{key} cos_logits", []).append(_cos(logits, full_logits))
            del full_params, full_logits
    print(f"{'measure':<40} {'mean':>8} {'min':>8}   ({len(next(iter(rows.values())))} questions, V={vocab})")
    summary = {}
    for name, values in rows.items():
        summary[name] = {"mean": statistics.fmean(values), "min": min(values), "max": max(values)}
        print(f"{name:<40} {summary[name]['mean']:>8.4f} {min(values):>8.4f}")
    machine = f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    print(json.dumps({"bench": "topk_gradient", "model": args.model, "tau": TAU, "vocab": vocab,
                      "questions": args.questions, "max_new_tokens": args.max_new_tokens,
                      "machine": machine, "results": summary}))  # fmt: skip


if __name__ == "__main__":
    main()
