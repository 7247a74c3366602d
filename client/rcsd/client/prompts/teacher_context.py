"""The teacher's context as token ids: one function, called by the teacher service and by anyone else.

    ids = render_teacher_context(tokenizer, request, "release")   # what the teacher scores after

`tokenizer` is any object with `apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
...)` and `__call__(text, add_special_tokens=False)["input_ids"]` (a transformers tokenizer). No torch.

Two layouts, chosen by the parts a template version holds:
- `release` (a version with a `reason_first` part; the released RCSD, carriegu0818/RCSD
  data_collator_reward.py L131-182 and rcsd_trainer_reward.py L1449-1508):
  - reason-first (a rationale is given): [chat(user: privileged context + reason-first instruction),
    generation prompt, `analysis_thinking`] + [the rationale's tokens] + [the raw-text transition,
    no chat turn] + completion (no new chat header);
  - no rationale: [chat(user: privileged context + "Use the rubric and reference answer as
    guidance. ..."), generation prompt, `teacher_thinking`] + completion;
  - `none`: the student's own prompt (`student_thinking`).
- chat (v1): [user: privileged + transition], or with a rationale [user: privileged + rationale
  request, assistant: rationale, user: transition], all in chat turns.
The rubric writer's modes (Stage I) are one user turn, [context part] + "\n\n" + [transition part]:
- `release`: the designer prompt, then "Ground Truth Rubric (JSON array):\n" + the reference rubric as
  the release dumps RaR-Science's (`ground_truth_rubric_json`) + "\n" + "Use the ground-truth rubric as
  the authoritative target and output the rubric JSON array only." (data_collator_rubric.py L150-163,
  the layout without --reason_first, which the release's Stage I runs);
- v1: the question, reference answer and reference rubric in the generation format, then the designer
  prompt.

The student's prompt is the request's `messages` when it has them (a system prompt, few-shot turns, the
question last), else the version's student prompt template. `none` renders exactly it; in the answer
modes its turns before the question lead the teacher's context unchanged, the teacher's privileged
turn takes the question's place, and v1's transition repeats the question turn's text. The request's
`chat_template_kwargs` go to every chat render; a `*_thinking` flag overrides `enable_thinking` in
its own part.

Every piece is tokenized on its own and the ids concatenated, as the release does: the rationale ids
are kept exactly as sampled, and the transition is tokenized alone (`add_special_tokens=False`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from rcsd.client.prompts import (
    DESIGNER_VERSION,
    Message,
    TemplateSet,
    chat_prompt_ids,
    designer_prompt_text,
    student_prompt_text,
    student_template,
)
from rcsd.client.protocol.common import Criterion
from rcsd.client.protocol.rubric_format import to_generation_text
from rcsd.client.protocol.teacher import (
    AUTO_RATIONALE,
    MODES_SHOWING_REFERENCE,
    MODES_SHOWING_RUBRIC,
    RUBRIC_WRITER_MODES,
    TeacherRequest,
)

RELEASE_MARKER = "reason_first"  # a version holding this part renders the released layout


class ContextError(ValueError):
    """A request this version cannot render; `field` names the request field at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field, self.message = field, message


@lru_cache(maxsize=16)
def teacher_templates(version: str) -> TemplateSet:
    """The teacher_context parts of `version` (a ContextError naming `template_version` if none)."""
    try:
        templates = TemplateSet("teacher_context", version)
        student_template(version)  # every teacher version has the student prompt its `none` mode repeats
    except ValueError as exc:
        raise ContextError("template_version", str(exc)) from exc
    return templates


def is_release_layout(version: str) -> bool:
    return teacher_templates(version).has(RELEASE_MARKER)


def rubric_json(rubric: list[Criterion]) -> str:
    """The rubric as the release puts it in the prompt: `json.dumps(list_of_dicts, ensure_ascii=False)`
    (one line, default separators, keys in title/description/weight order; rcsd_train_reward.py L283,
    data_collator_reward.py L288-295)."""
    return json.dumps([c.model_dump(mode="json") for c in rubric], ensure_ascii=False)


def ground_truth_rubric_json(rubric: list[Criterion]) -> str:
    """A reference rubric as the release's Stage I teacher is shown it: RaR-Science's `rubric` column,
    `json.dumps(rubric, ensure_ascii=False)` (opsd_train_rubric.py `_normalize_example`), each item's
    keys in the data set's order: description, title, weight."""
    items = [{"description": c.description, "title": c.title, "weight": c.weight} for c in rubric]
    return json.dumps(items, ensure_ascii=False)


def text_ids(tokenizer: Any, text: str) -> list[int]:
    """Raw text to ids, no special tokens added (no chat turn)."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _shown(context_mode: str, reference_answer: str | None, rubric: list[Criterion] | None) -> dict[str, Any]:
    return {
        "reference_answer": reference_answer if context_mode in MODES_SHOWING_REFERENCE else None,
        "rubric": rubric if context_mode in MODES_SHOWING_RUBRIC else None,
    }


def _release_values(
    question: str, context_mode: str, reference_answer: str | None, rubric: list[Criterion] | None
) -> dict[str, Any]:
    shown = _shown(context_mode, reference_answer, rubric)
    return {
        "question": question,
        "reference_answer": shown["reference_answer"],
        "rubric_json": rubric_json(shown["rubric"]) if shown["rubric"] else None,
    }


def student_messages(request: TeacherRequest, version: str) -> list[Message]:
    """The student's prompt as it saw it: the request's `messages`, else `version`'s student prompt."""
    if request.messages is not None:
        return [{"role": m.role, "content": m.content} for m in request.messages]
    return [{"role": "user", "content": student_prompt_text(request.question, version)}]


def analysis_prompt_ids(
    tokenizer: Any,
    *,
    question: str,
    context_mode: str,
    reference_answer: str | None = None,
    rubric: list[Criterion] | None = None,
    version: str,
    enable_thinking: bool | None = None,
    earlier_turns: list[Message] | None = None,
    template_kwargs: Mapping[str, object] | None = None,
) -> list[int]:
    """The prompt a rationale (the release's "analysis") is sampled after, ending in the generation
    prompt; in the release layout the teacher's reason-first context starts with exactly these ids.
    `earlier_turns`: the student's messages before its question (system prompt, few-shot turns), which
    lead it; `template_kwargs`: the chat template's options (`enable_thinking` overrides theirs).

    The trainer samples its analysis after them with the student's weights, as the release does.
    Deliberately not mirrored: the release decodes this prompt with `skip_special_tokens=True` before
    its vLLM sees it (rcsd_trainer_reward.py L1156-1159), so it samples after raw text without chat
    markers; here the analysis is sampled after the same ids the teacher then scores it after.
    """
    if context_mode == "none" or context_mode in RUBRIC_WRITER_MODES:
        raise ContextError(
            "context_mode", f"a rationale needs a privileged answer mode, not {context_mode!r}"
        )
    templates = teacher_templates(version)
    earlier = list(earlier_turns or [])
    if templates.has(RELEASE_MARKER):
        values = _release_values(question, context_mode, reference_answer, rubric)
        text = templates.render_exact("privileged_context", **values) + templates.render_exact(
            "reason_first", **values
        )
        turns = [*earlier, {"role": "user", "content": text}]
        return chat_prompt_ids(tokenizer, turns, enable_thinking, template_kwargs)
    return chat_prompt_ids(
        tokenizer,
        [*earlier, *_chat_analysis_messages(templates, question, context_mode, reference_answer, rubric)],
        enable_thinking,
        template_kwargs,
    )


def request_analysis_prompt_ids(tokenizer: Any, request: TeacherRequest, version: str) -> list[int]:
    """`analysis_prompt_ids` of a request's context: what its rationale is (or is to be) written after."""
    return analysis_prompt_ids(
        tokenizer,
        question=request.question,
        context_mode=request.context_mode,
        reference_answer=request.reference_answer,
        rubric=request.rubric,
        version=version,
        enable_thinking=request.analysis_thinking,
        earlier_turns=student_messages(request, version)[:-1],
        template_kwargs=request.chat_template_kwargs,
    )


def render_teacher_context(
    tokenizer: Any,
    request: TeacherRequest,
    version: str,
    *,
    rubric_version: str = DESIGNER_VERSION,
    rationale: str | None = None,
) -> list[int]:
    """The teacher's context for `request` as token ids; the completions follow them directly.

    `rationale` replaces the request's (the teacher passes the text it wrote for `rationale="auto"`).
    Raises ContextError for a request `version` cannot render.
    """
    mode = request.context_mode
    templates = teacher_templates(version)  # an unknown version is a ContextError in every mode
    text = rationale if rationale is not None else request.rationale
    if text == AUTO_RATIONALE:
        raise ContextError("rationale", "an auto rationale is written by the teacher before rendering")
    if mode in RUBRIC_WRITER_MODES:
        return chat_prompt_ids(
            tokenizer, _rubric_writer_messages(request, version, rubric_version), request.teacher_thinking
        )
    options = request.chat_template_kwargs
    if mode == "none":
        return chat_prompt_ids(
            tokenizer, student_messages(request, version), request.student_thinking, options
        )
    if templates.has(RELEASE_MARKER):
        return _release_context(tokenizer, templates, request, text)
    if request.rationale_ids is not None:
        raise ContextError(
            "rationale_ids", f"template version {version!r} (chat layout) takes a rationale as text"
        )
    messages = _chat_messages(templates, request, text)
    return chat_prompt_ids(tokenizer, messages, request.teacher_thinking, options)


def _release_context(
    tokenizer: Any, templates: TemplateSet, request: TeacherRequest, rationale: str | None
) -> list[int]:
    values = _release_values(request.question, request.context_mode, request.reference_answer, request.rubric)
    privileged = templates.render_exact("privileged_context", **values)
    if rationale is None and request.rationale_ids is None:  # the release without --reason_first
        guidance = templates.render_exact("guidance", **values)
        turns = [
            *student_messages(request, templates.version)[:-1],
            {"role": "user", "content": privileged + guidance},
        ]
        return chat_prompt_ids(tokenizer, turns, request.teacher_thinking, request.chat_template_kwargs)
    prompt_ids = request_analysis_prompt_ids(tokenizer, request, templates.version)
    # Deliberately not mirrored: the release slices the first few analysis tokens off (its prompt
    # length counts the special tokens its decode dropped, rcsd_trainer_reward.py L1426-1427); here
    # the analysis is kept whole.
    analysis_ids = (
        list(request.rationale_ids)
        if request.rationale_ids is not None
        else text_ids(tokenizer, rationale or "")
    )
    return prompt_ids + analysis_ids + text_ids(tokenizer, templates.render_exact("transition", **values))


def _chat_privileged(
    templates: TemplateSet,
    question: str,
    context_mode: str,
    reference_answer: str | None,
    rubric: list[Criterion] | None,
) -> str:
    return templates.render(
        "privileged_context", question=question, **_shown(context_mode, reference_answer, rubric)
    )


def _chat_analysis_messages(
    templates: TemplateSet,
    question: str,
    context_mode: str,
    reference_answer: str | None,
    rubric: list[Criterion] | None,
) -> list[Message]:
    privileged = _chat_privileged(templates, question, context_mode, reference_answer, rubric)
    return [{"role": "user", "content": privileged + "\n\n" + templates.render("rationale_request")}]


def _chat_messages(templates: TemplateSet, request: TeacherRequest, rationale: str | None) -> list[Message]:
    *earlier, question_turn = student_messages(request, templates.version)
    transition = templates.render("transition", student_prompt=question_turn["content"])
    args = (request.question, request.context_mode, request.reference_answer, request.rubric)
    if rationale is None:
        privileged = _chat_privileged(templates, *args)
        return [*earlier, {"role": "user", "content": privileged + "\n\n" + transition}]
    return [
        *earlier,
        *_chat_analysis_messages(templates, *args),
        {"role": "assistant", "content": rationale},
        {"role": "user", "content": transition},
    ]


def _rubric_writer_messages(request: TeacherRequest, version: str, rubric_version: str) -> list[Message]:
    bounds = request.rubric_bounds
    designer_prompt = designer_prompt_text(
        request.question, request.reference_answer, bounds.min_criteria, bounds.max_criteria, rubric_version
    )
    if request.context_mode == "rubric_writer":
        return [{"role": "user", "content": designer_prompt}]
    assert request.reference_rubric  # the wire schema requires it in this mode
    templates = teacher_templates(version)
    values = {  # each version's parts take what they show
        "question": request.question,
        "reference_answer": request.reference_answer,
        "reference_rubric": to_generation_text(request.reference_rubric),
        "reference_rubric_json": ground_truth_rubric_json(request.reference_rubric),
        "designer_prompt": designer_prompt,
    }
    context = templates.render("rubric_writer_context", **values)
    transition = templates.render("rubric_writer_transition", **values)
    return [{"role": "user", "content": context + "\n\n" + transition}]
