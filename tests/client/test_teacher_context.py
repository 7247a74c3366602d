"""`render_teacher_context` without a service: the thinking flags reach the part they name, and the
released templates render the release's texts exactly (the layout against the live service, on both
backends, is tests/services/teacher/test_release_layout.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from rcsd.client.prompts import student_prompt_text
from rcsd.client.prompts.teacher_context import (
    ContextError,
    analysis_prompt_ids,
    render_teacher_context,
    rubric_json,
    teacher_templates,
)
from rcsd.client.protocol import Criterion, TeacherRequest

# ChatML with Qwen3's switch: thinking off writes an empty think block after the generation prompt.
THINKING_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}{%- endif %}"
)
EMPTY_THINK = "<think>\n\n</think>\n\n"
RUBRIC = [Criterion(title="Énergie", description="Uses E = h f.", weight=5)]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = THINKING_TEMPLATE
    return tokenizer


def _request(**extra: object) -> TeacherRequest:
    body = {
        "question": "What is the energy of a 500 nm photon?",
        "reference_answer": "E = hc/λ = 3.97e-19 J",
        "rubric": RUBRIC,
        "completions": [[5, 6]],
        **extra,
    }
    return TeacherRequest.model_validate(body)


def test_each_thinking_flag_reaches_its_own_part(tokenizer):
    def text(request: TeacherRequest) -> str:
        return tokenizer.decode(render_teacher_context(tokenizer, request, "release"))

    assert EMPTY_THINK not in text(_request(context_mode="none"))
    assert text(_request(context_mode="none", student_thinking=False)).endswith(EMPTY_THINK)
    assert EMPTY_THINK not in text(_request(context_mode="none", teacher_thinking=False))
    assert text(_request(teacher_thinking=False)).endswith(EMPTY_THINK)  # non-reason-first
    assert EMPTY_THINK not in text(_request(student_thinking=False))
    analysis = [7, 8, 9]
    reason_first = text(_request(rationale_ids=analysis, analysis_thinking=False))
    assert reason_first.count(EMPTY_THINK) == 1  # right after the reason-first prompt, before the analysis
    prompt = analysis_prompt_ids(
        tokenizer,
        question=_request().question,
        context_mode="rubric+reference",
        reference_answer=_request().reference_answer,
        rubric=RUBRIC,
        version="release",
        enable_thinking=False,
    )
    ids = render_teacher_context(
        tokenizer, _request(rationale_ids=analysis, analysis_thinking=False), "release"
    )
    assert ids[: len(prompt) + len(analysis)] == prompt + analysis
    assert EMPTY_THINK not in text(_request(rationale_ids=analysis, teacher_thinking=False))


def test_rubric_as_the_release_serialises_it():
    assert rubric_json(RUBRIC) == '[{"title": "Énergie", "description": "Uses E = h f.", "weight": 5}]'


def test_release_student_prompt_and_default():
    assert (
        student_prompt_text("Q?")
        == student_prompt_text("Q?", "release")
        == ("Question: Q?\n\nPlease reason step by step, and put your final answer within \\boxed{}.")
    )
    assert (
        teacher_templates("release").render_exact("transition", rubric_json="[]", reference_answer="r")[:4]
        == "\n\n\nT"
    )  # three newlines: the release tokenizes "\n" + "\n\n{label} ..."


def test_what_a_version_cannot_render(tokenizer):
    with pytest.raises(ContextError) as unknown:
        render_teacher_context(tokenizer, _request(), "v0")
    assert unknown.value.field == "template_version"
    for mode in ("none", "rubric_writer"):  # also where the version's own parts are not used
        with pytest.raises(ContextError, match="v0"):
            render_teacher_context(tokenizer, _request(context_mode=mode), "v0")
    with pytest.raises(ContextError) as ids_in_chat_layout:
        render_teacher_context(tokenizer, _request(rationale_ids=[5]), "v1")
    assert ids_in_chat_layout.value.field == "rationale_ids"
    with pytest.raises(ContextError):
        render_teacher_context(tokenizer, _request(rationale="auto"), "release")
    with pytest.raises(ValueError, match="not both"):
        _request(rationale="x", rationale_ids=[5])


STUDENT_MESSAGES = [
    {"role": "system", "content": "You are a careful physics tutor. Answer in SI units."},
    {"role": "user", "content": "How far does light travel in 1 ns?"},
    {"role": "assistant", "content": "About 0.3 m: d = c t = 3e8 m/s * 1e-9 s."},
    {"role": "user", "content": "What is the energy of a 500 nm photon? Show the formula first."},
]


def _chat_ids(tokenizer, messages: list[dict], **options: object) -> list[int]:
    """The independent rendering: the tokenizer's own apply_chat_template, tokenized by it."""
    rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, **options)
    return list(rendered["input_ids"])


def test_none_mode_is_the_students_messages_exactly(tokenizer):
    request = _request(
        context_mode="none", messages=STUDENT_MESSAGES, chat_template_kwargs={"enable_thinking": False}
    )
    ids = render_teacher_context(tokenizer, request, "release")
    assert ids == _chat_ids(tokenizer, STUDENT_MESSAGES, enable_thinking=False)
    assert tokenizer.decode(ids).endswith(EMPTY_THINK)
    flag_wins = _request(
        context_mode="none",
        messages=STUDENT_MESSAGES,
        chat_template_kwargs={"enable_thinking": False},
        student_thinking=True,
    )
    assert render_teacher_context(tokenizer, flag_wins, "release") == _chat_ids(
        tokenizer, STUDENT_MESSAGES, enable_thinking=True
    )


def test_earlier_turns_lead_every_answer_mode(tokenizer):
    """The student's system prompt and few-shot turns lead the teacher's context; its question turn is
    replaced by the privileged turn (release), or repeated in v1's transition."""
    earlier, question_turn = STUDENT_MESSAGES[:-1], STUDENT_MESSAGES[-1]
    for version in ("release", "v1"):
        plain = render_teacher_context(tokenizer, _request(), version)
        with_messages = render_teacher_context(tokenizer, _request(messages=STUDENT_MESSAGES), version)
        [privileged_turn] = [{"role": "user", "content": _user_text(tokenizer, plain)}]
        if version == "v1":
            privileged_turn["content"] = privileged_turn["content"].replace(
                student_prompt_text(_request().question, "v1"), question_turn["content"]
            )
        assert with_messages == _chat_ids(tokenizer, [*earlier, privileged_turn]), version
    analysis = [7, 8, 9]
    reason_first = _request(messages=STUDENT_MESSAGES, rationale_ids=analysis, analysis_thinking=False)
    prompt = analysis_prompt_ids(
        tokenizer,
        question=_request().question,
        context_mode="rubric+reference",
        reference_answer=_request().reference_answer,
        rubric=RUBRIC,
        version="release",
        enable_thinking=False,
    )
    expected_prompt = _chat_ids(
        tokenizer,
        [*earlier, {"role": "user", "content": _user_text(tokenizer, prompt)}],
        enable_thinking=False,
    )
    ids = render_teacher_context(tokenizer, reason_first, "release")
    assert ids[: len(expected_prompt) + len(analysis)] == expected_prompt + analysis


def _user_text(tokenizer, ids: list[int]) -> str:
    """The one user turn's text of a ChatML prompt rendered from [user] alone."""
    text = tokenizer.decode(ids)
    return text.split("<|im_start|>user\n", 1)[1].split("<|im_end|>", 1)[0]
