"""The trainer's student prompt is, token for token, the teacher service's `none` context."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from rcsd.client import TeacherClient
from rcsd.client.prompts import student_prompt_text
from rcsd.client.protocol import TeacherRequest
from rcsd.recipes.launch import ServiceProcess
from rcsd.trainer.prompts import student_prompt_ids

QUESTIONS = [
    "What is the de Broglie wavelength of an electron moving at 1.0e6 m/s?",
    "Which gas is produced at the cathode?\n(A) oxygen\n(B) hydrogen\n(C) chlorine\n(D) nitrogen",
]


def test_equals_the_teachers_none_context(tiny_model_dir: Path, tmp_path: Path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    args = ["--backend", "hf", "--model", str(tiny_model_dir), "--dtype", "float32"]
    teacher = ServiceProcess("teacher", args, tmp_path).start()
    try:
        with TeacherClient(teacher.url) as client:
            client.check_compatible(tokenizer)
            for question in QUESTIONS:
                request = TeacherRequest(
                    question=question, context_mode="none", completions=[[5, 6]], return_context_ids=True
                )
                response = client.score(request)
                assert response.context_ids == student_prompt_ids(tokenizer, question)
    finally:
        teacher.stop()


def test_template_text_and_versions():
    text = student_prompt_text("What is 2 + 2?", "v1")
    assert text.startswith("What is 2 + 2?\n\n") and not text.endswith("\n")
    assert student_prompt_text("What is 2 + 2?") == (  # the default: the released student prompt
        "Question: What is 2 + 2?\n\nPlease reason step by step, and put your final answer within \\boxed{}."
    )
    with pytest.raises(ValueError, match="template version .v0."):
        student_prompt_text("q", "v0")
