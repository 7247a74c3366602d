"""A fixed held-out probe, measured before the first step and after the last: did distillation help?

Two numbers on questions the run never trains on:
- `topk_kl`: forward KL(teacher || student) on the teacher's top-K ids (renormalised, temperature 1,
  unclipped), per token, on fixed answers: the student's greedy answers before training, kept in
  `probe_answers.json`, so "before" and "after" score the same token ids under the same teacher context;
  `sampled_kl` is log q - log p on those tokens.
- `reference_logprob`: the student's mean log-prob per token of each question's reference answer,
  after its own prompt.
Both also per question (`<measure>_per_question`, each question's own per-token mean, in order), so a
change can be given with its uncertainty over questions. Results go to `probe.json` in the run folder;
rank 0 measures, the others wait.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from rcsd.client import to_padded_tensors
from rcsd.trainer import losses
from rcsd.trainer.config import TrainConfig
from rcsd.trainer.data.questions import load_questions
from rcsd.trainer.distributed import Dist
from rcsd.trainer.prompts import student_prompt_ids
from rcsd.trainer.service_calls import ServiceCalls
from rcsd.trainer.student import Student, score_completions

ANSWERS_FILE = "probe_answers.json"
RESULTS_FILE = "probe.json"
REPORT_FILE = "report.md"
LABELS = {
    "topk_kl": "teacher-student KL on the teacher's top-K (lower is closer)",
    "sampled_kl": "log q - log p on the fixed answers' tokens",
    "reference_logprob": "student's mean log-prob per token of the reference answers (higher is better)",
}


class RecordedProbe:
    """What every held-out probe shares: measured on rank 0 (the other ranks wait), recorded under its
    label ("before", "after") in a JSON file of the run folder, and put side by side in report.md.
    A probe says what it measures (`_measure`), what its report is about (`_heading`) and its `labels`."""

    name = "probe"
    labels: dict[str, str] = LABELS

    def __init__(self, config: TrainConfig, student: Student, results_path: Path) -> None:
        self.config, self.student, self.results_path = config, student, results_path

    def _measure(self) -> dict[str, Any]:
        raise NotImplementedError

    def _heading(self) -> list[str]:
        raise NotImplementedError

    def measure(self, label: str, dist: Dist) -> dict[str, Any] | None:
        """Measure on rank 0, record under `label`, print; other ranks just wait."""
        results = None
        if dist.is_main:
            self.student.model.eval()
            with torch.no_grad():
                results = self._measure()
            self.student.model.train()
            recorded = json.loads(self.results_path.read_text()) if self.results_path.is_file() else {}
            recorded[label] = results
            self.results_path.write_text(json.dumps(recorded, indent=2) + "\n")
            means = {k: v for k, v in results.items() if isinstance(v, float)}
            print(f"{self.name} {label}: " + ", ".join(f"{k} {v:.4f}" for k, v in means.items()))
        dist.barrier()
        return results

    def write_report(self) -> str:
        """report.md: the probe before and after training, side by side; returns its text."""
        recorded = json.loads(self.results_path.read_text())
        before, after = recorded.get("before", {}), recorded.get("after", {})
        lines = [*self._heading(), "| measure | before | after | change |", "| --- | ---: | ---: | ---: |"]
        for key, label in self.labels.items():
            if key in before and key in after:
                change = after[key] - before[key]
                lines.append(f"| {label} | {before[key]:.4f} | {after[key]:.4f} | {change:+.4f} |")
        text = "\n".join(lines) + "\n"
        (self.results_path.parent / REPORT_FILE).write_text(text)
        return text


class Probe(RecordedProbe):
    """Stage II's probe: teacher-student divergence on fixed answers, and the references' log-prob."""

    def __init__(self, config: TrainConfig, student: Student, calls: ServiceCalls, run_dir: Path) -> None:
        super().__init__(config, student, run_dir / RESULTS_FILE)
        self.calls = calls
        self.questions = load_questions(config.probe.data)[: config.probe.questions]
        self.answers_path = run_dir / ANSWERS_FILE

    def _heading(self) -> list[str]:
        return [
            f"# Run report: {self.config.method}, {self.config.steps} steps, model {self.config.model}",
            "",
            f"Held-out probe: {len(self.questions)} questions from {', '.join(self.config.probe.data)}, "
            f"teacher context {self.config.teacher.context_mode}.",
            "",
        ]

    def _measure(self) -> dict[str, Any]:
        tokenizer, model = self.student.tokenizer, self.student.model
        sampling = self.config.sampling
        prompts = [
            student_prompt_ids(tokenizer, q.prompt_text, sampling.prompt_version, sampling.enable_thinking)
            for q in self.questions
        ]
        answers = self._fixed_answers(prompts)
        rubrics = [f.result() for f in self.calls.fetch_rubrics(self.questions)] or [None] * len(prompts)
        sums = {"topk_kl": 0.0, "sampled_kl": 0.0, "tokens": 0.0, "reference_logprob": 0.0, "ref_tokens": 0.0}
        pad_id = tokenizer.pad_token_id or 0
        per_question: dict[str, list[float]] = {"topk_kl": [], "reference_logprob": []}
        for question, prompt, answer, rubric in zip(self.questions, prompts, answers, rubrics, strict=True):
            if self.calls.teacher is not None:
                scored = self.calls.score(question, rubric, [answer]).result()
                teacher = to_padded_tensors([scored.response])
                scores = score_completions(model, prompt, [answer], pad_id, teacher["topk_ids_B_T_K"])
                assert scores.topk_logits_B_T_K is not None and scores.in_vocab_B_T_K is not None
                _, metrics = losses.topk_fkl(
                    scores.topk_logits_B_T_K.float().cpu(),
                    scores.in_vocab_B_T_K.cpu(),
                    teacher["topk_logprobs_B_T_K"],
                    scores.mask_B_T.cpu(),
                    tau=1.0,
                    clip=None,
                )
                student_lp = scores.logprobs_B_T.cpu()
                sums["topk_kl"] += metrics["loss"] * len(answer)
                per_question["topk_kl"].append(float(metrics["loss"]))
                sums["sampled_kl"] += float((student_lp - teacher["teacher_logprobs_B_T"]).sum())
                sums["tokens"] += len(answer)
            reference = tokenizer(question.reference_answer, add_special_tokens=False)["input_ids"]
            reference_logprob = float(
                score_completions(model, prompt, [reference], pad_id).logprobs_B_T.sum()
            )
            sums["reference_logprob"] += reference_logprob
            sums["ref_tokens"] += len(reference)
            per_question["reference_logprob"].append(reference_logprob / max(len(reference), 1))
        results: dict[str, Any] = {
            "reference_logprob": sums["reference_logprob"] / max(sums["ref_tokens"], 1.0),
            **{f"{k}_per_question": v for k, v in per_question.items() if v},
        }
        if sums["tokens"]:
            results["topk_kl"] = sums["topk_kl"] / sums["tokens"]
            results["sampled_kl"] = sums["sampled_kl"] / sums["tokens"]
        return results

    def _fixed_answers(self, prompts: list[list[int]]) -> list[list[int]]:
        """The student's greedy answers, made once (before training) and reused afterwards."""
        if self.answers_path.is_file():
            return json.loads(self.answers_path.read_text())
        model, tokenizer = self.student.model, self.student.tokenizer
        device = next(model.parameters()).device
        answers = []
        for prompt in prompts:
            out = model.generate(
                torch.tensor([prompt], device=device),
                attention_mask=torch.ones(1, len(prompt), dtype=torch.long, device=device),
                do_sample=False,
                max_new_tokens=self.config.probe.max_new_tokens,
                pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
            )
            answers.append(out[0, len(prompt) :].tolist())
        self.answers_path.write_text(json.dumps(answers) + "\n")
        return answers
