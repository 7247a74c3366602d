"""The released RCSD teacher context, token for token, through the teacher service on both backends.

The expected ids are written here from the release's own texts (carriegu0818/RCSD @ 521b538
`data_collator_reward.py`: student prompt L116-119, reason-first user turn L131-148, reason-first
instruction L37-42, transition L50-66 tokenized as "\\n" + text at L234-240, non-reason-first turn
L154-182; the teacher sequence `cat([reasoning prompt, analysis, transition]) + completion`,
`rcsd_trainer_reward.py` L1449-1456 and L1507-1508) by string concatenation and the tokenizer, without
rcsd's templates. Then: `rcsd.client.prompts.render_teacher_context` (the library) equals the service
in every mode, version and rationale form. Stage I likewise: the release's rubric writer (student) prompt
and its teacher's turn (`data_collator_rubric.py` @ 521b538: designer prompt L22-56 and `_build_rubric_prompt`,
student prompt L122-130, teacher turn L150-163, the layout without --reason_first that its Stage I runs)
against a teacher started with `--rubric-template-version release`.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from transformers import AutoTokenizer

from rcsd.client.prompts.teacher_context import render_teacher_context
from rcsd.client.protocol import RubricBounds, TeacherRequest
from rcsd.trainer.prompts import rubric_prompt_ids
from tests.client.test_teacher_context import EMPTY_THINK, THINKING_TEMPLATE
from tests.services.teacher.conftest import BACKENDS, _teacher
from tests.services.teacher.payloads import (
    QUESTION,
    REFERENCE,
    RUBRIC,
    TOLERANCE,
    assert_matches_reference,
    plain_logprobs,
)

STUDENT = "Question: {q}\n\nPlease reason step by step, and put your final answer within \\boxed{{}}."
REASON_FIRST = (
    "\n\nThe reference answer and rubric above are guidelines for the questions but may not be perfect. "
    "Briefly explain the key requirements, constraints, and reasoning expectations implied by them. "
    "Do NOT solve the question yet. Do NOT use <think> tags.\n"
)
REASON_FIRST_NO_RUBRIC = (
    "\n\nThe reference material above is a guideline for the question but may not be perfect. "
    "Briefly explain the key requirements, constraints, and reasoning expectations implied by it. "
    "Do NOT solve the question yet. Do NOT use <think> tags.\n"
)
TRANSITION_BODY = (
    " provided only as private guidance to help you understand "
    "the correct reasoning path. Do NOT mention, cite, or refer to the reference solution, rubric, "
    "answer key, ground truth, or any external guidance in your response. Do NOT write phrases such as "
    "'given the solution', 'from the reference', 'according to the rubric', 'we know the answer is', "
    "or anything implying that you have seen the answer in advance. "
    "Instead, produce a natural, self-contained solution as if you are solving the problem independently "
    "from the original problem statement. Use your own reasoning process, derive the result step by step, "
    "and only present the final answer after the reasoning supports it. "
    "Think step by step, explore different approaches if useful, and don't be afraid to backtrack "
    "or reconsider if something doesn't work out. Put the final answer within \\boxed{}.\n"
)
TRANSITION = "\n\nThe reference and rubric above is" + TRANSITION_BODY
TRANSITION_NO_RUBRIC = "\n\nThe reference above is" + TRANSITION_BODY
ANALYSIS = "The answer needs h = g t^2 / 2 solved for t; watch the sign of g and give units."
COMPLETION = [40, 41, 42, 43, 44]


def _chat(tokenizer, text: str) -> list[int]:
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
    )
    return tokenizer(rendered, add_special_tokens=False)["input_ids"]


def _raw(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _expected(tokenizer, analysis_ids: list[int]) -> dict[str, list[int]]:
    rubric = json.dumps(RUBRIC, ensure_ascii=False)
    head = f"Question: {QUESTION}\n\nReference Answer:\n{REFERENCE}\n\n"
    with_rubric = head + f"Rubric (JSON array):\n{rubric}\n"
    return {
        "reason_first": _chat(tokenizer, with_rubric + REASON_FIRST)
        + analysis_ids
        + _raw(tokenizer, "\n" + TRANSITION),
        "reason_first_reference": _chat(tokenizer, head + REASON_FIRST_NO_RUBRIC)
        + analysis_ids
        + _raw(tokenizer, "\n" + TRANSITION_NO_RUBRIC),
        "non_reason_first": _chat(
            tokenizer,
            f"{head}Rubric (JSON array):\n{rubric}\n\nUse the rubric and reference answer as guidance.\n"
            "Please reason step by step, and put your final answer within \\boxed{}.",
        ),
        "non_reason_first_reference": _chat(
            tokenizer,
            head + "Use the reference material above as guidance.\n"
            "Please reason step by step, and put your final answer within \\boxed{}.",
        ),
        "student": _chat(tokenizer, STUDENT.format(q=QUESTION)),
    }


def _body(mode: str, **extra: object) -> dict:
    body: dict = {"question": QUESTION, "context_mode": mode, "completions": [COMPLETION]}
    if "reference" in mode:
        body["reference_answer"] = REFERENCE
    if "rubric" in mode:
        body["rubric"] = RUBRIC
    return {**body, "return_context_ids": True, **extra}


def _contexts(teacher, bodies: list[dict]) -> list[dict]:
    r = httpx.post(f"{teacher.url}/teacher_logprobs/batch", json={"groups": bodies}, timeout=180)
    assert r.status_code == 200, r.text
    items = r.json()["results"]
    assert all(item["ok"] for item in items), items
    return [item["result"] for item in items]


def test_release_layout_token_for_token(teacher, reference_model):
    model, tokenizer = reference_model
    analysis_ids = _raw(tokenizer, ANALYSIS)
    expected = _expected(tokenizer, analysis_ids)
    cases = {  # the service's default templates are the release's: no template_version sent
        "reason_first": _body("rubric+reference", rationale=ANALYSIS),
        "reason_first_ids": _body("rubric+reference", rationale_ids=analysis_ids),
        "reason_first_reference": _body("reference", rationale_ids=analysis_ids),
        "non_reason_first": _body("rubric+reference"),
        "non_reason_first_reference": _body("reference"),
        "student": _body("none"),
    }
    results = dict(zip(cases, _contexts(teacher, list(cases.values())), strict=True))
    for name, result in results.items():
        want = expected["reason_first" if name == "reason_first_ids" else name]
        assert result["context_ids"] == want, name
        assert result["template_version"] == "teacher-release"
    # the student's tokens follow the transition directly (no chat header): the scores say so
    result = results["reason_first_ids"]
    rows = plain_logprobs(model, expected["reason_first"], COMPLETION)
    assert_matches_reference(result["completions"][0], rows, COMPLETION, 0, TOLERANCE[result["backend"]])


def _every_case(analysis_ids: list[int]) -> list[dict]:
    writer = {"reference_answer": REFERENCE, "reference_rubric": RUBRIC}
    bodies = []
    for version in ("release", "v1"):
        for mode in ("rubric", "rubric+reference", "reference"):
            bodies += [
                _body(mode, template_version=version),
                _body(mode, template_version=version, rationale=ANALYSIS),
            ]
            if version == "release":
                bodies.append(_body(mode, template_version=version, rationale_ids=analysis_ids))
        bodies.append(_body("none", template_version=version))
        bodies.append({**_body("rubric_writer", template_version=version), **writer})
        bodies.append({**_body("rubric_writer+reference_rubric", template_version=version), **writer})
    return bodies


def test_library_renders_what_the_service_renders(teacher, reference_model):
    """Every mode, both template versions, rationale as text and as ids: the same ids."""
    _, tokenizer = reference_model
    bodies = _every_case(_raw(tokenizer, ANALYSIS))
    for body, result in zip(bodies, _contexts(teacher, bodies), strict=True):
        request = TeacherRequest.model_validate(body)
        library = render_teacher_context(tokenizer, request, body["template_version"])
        assert library == result["context_ids"], (body["template_version"], body["context_mode"])


def test_unrenderable_requests_are_422s_naming_the_field(teacher_servers):
    url = f"{teacher_servers['hf'].url}/teacher_logprobs"
    unknown = httpx.post(url, json=_body("rubric", template_version="v0"), timeout=60)
    assert unknown.status_code == 422 and "template_version" in unknown.text
    escaping = httpx.post(url, json=_body("rubric", template_version="../rubric_designer"), timeout=60)
    assert escaping.status_code == 422 and "template_version" in escaping.text  # no path out of templates/
    ids_in_v1 = httpx.post(url, json=_body("rubric", template_version="v1", rationale_ids=[5, 6]), timeout=60)
    assert ids_in_v1.status_code == 422 and "rationale_ids" in ids_in_v1.text
    outside = httpx.post(url, json=_body("rubric", rationale_ids=[5, 10**7]), timeout=60)
    assert outside.status_code == 422 and "rationale_ids" in outside.text


@pytest.mark.parametrize("field", ["rationale", "rationale_ids"])
def test_no_rationale_in_the_none_mode(teacher_servers, field):
    value = ANALYSIS if field == "rationale" else [5, 6]
    r = httpx.post(
        f"{teacher_servers['hf'].url}/teacher_logprobs", json=_body("none", **{field: value}), timeout=60
    )
    assert r.status_code == 422 and field in r.text


@pytest.fixture(scope="module", params=BACKENDS)
def thinking_teacher(
    request: pytest.FixtureRequest, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[object, object]]:
    """The tiny model with a chat template that reads `enable_thinking` (as Qwen3's does), served."""
    model_dir = tmp_path_factory.mktemp("thinking-model")
    shutil.copytree(tiny_model_dir, model_dir, dirs_exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = THINKING_TEMPLATE
    tokenizer.save_pretrained(model_dir)
    server = _teacher(model_dir, request.param, tmp_path_factory.mktemp("thinking-logs"))
    try:
        yield server, AutoTokenizer.from_pretrained(model_dir)
    finally:
        server.stop()


def test_thinking_flags_render_alike_in_library_and_service(thinking_teacher):
    """Each flag reaches the chat template of its own part, on the service as in the library."""
    teacher, tokenizer = thinking_teacher
    analysis_ids = _raw(tokenizer, ANALYSIS)
    bodies = [
        _body("none", student_thinking=False),
        _body("none", student_thinking=True, teacher_thinking=False),
        _body("rubric+reference", teacher_thinking=False),
        _body("rubric+reference", rationale_ids=analysis_ids, analysis_thinking=False, teacher_thinking=True),
        _body("reference", rationale=ANALYSIS, analysis_thinking=True),
        _body("rubric", template_version="v1", teacher_thinking=False),
        _body("rubric", template_version="v1", rationale=ANALYSIS, teacher_thinking=False),
    ]
    thinks_off = [True, False, True, True, False, True, True]
    for body, off, result in zip(bodies, thinks_off, _contexts(teacher, bodies), strict=True):
        request = TeacherRequest.model_validate(body)
        library = render_teacher_context(tokenizer, request, body.get("template_version", "release"))
        assert library == result["context_ids"], body
        assert (EMPTY_THINK in tokenizer.decode(library)) == off, body


def test_student_messages_render_as_the_student_saw_them(thinking_teacher, reference_model):
    """A student prompt sent as chat messages with `chat_template_kwargs`: the `none` context is the
    tokenizer's own `apply_chat_template` of them, its scores a plain forward after exactly those ids,
    and every answer mode renders on the service as in the library."""
    teacher, tokenizer = thinking_teacher
    model, _ = reference_model  # the same weights; only the chat template differs
    messages = [
        {"role": "system", "content": "You are a careful physics tutor. Answer in SI units."},
        {"role": "user", "content": "How far does light travel in 1 ns?"},
        {"role": "assistant", "content": "About 0.3 m."},
        {"role": "user", "content": QUESTION},
    ]
    student = {"messages": messages, "chat_template_kwargs": {"enable_thinking": False}}
    bodies = [
        _body("none", **student),
        _body("rubric+reference", **student),
        _body("rubric+reference", rationale_ids=_raw(tokenizer, ANALYSIS), teacher_thinking=True, **student),
        _body("rubric", template_version="v1", rationale=ANALYSIS, **student),
    ]
    results = _contexts(teacher, bodies)
    for body, result in zip(bodies, results, strict=True):
        request = TeacherRequest.model_validate(body)
        library = render_teacher_context(tokenizer, request, body.get("template_version", "release"))
        assert library == result["context_ids"], body
        assert tokenizer.decode(library).startswith("<|im_start|>system\nYou are a careful physics tutor.")
    seen = tokenizer.apply_chat_template(messages, add_generation_prompt=True, enable_thinking=False)
    assert results[0]["context_ids"] == list(seen["input_ids"]) and EMPTY_THINK in tokenizer.decode(
        seen["input_ids"]
    )
    rows = plain_logprobs(model, list(seen["input_ids"]), COMPLETION)
    assert_matches_reference(
        results[0]["completions"][0], rows, COMPLETION, 0, TOLERANCE[results[0]["backend"]]
    )


# data_collator_rubric.py L22-56: the rubric designer's prompt, around the question and reference as its
# `_build_rubric_prompt` puts them
DESIGNER_ROLE = (
    "# Role You are a top-tier Rubric Designer. Your sole task is to design JSON-formatted evaluation rubrics "
    "based on both the [Question] and the [Reference Answer] provided by the user.\n"
    "# Core Task\n"
    "1. Analyze [Question]: Understand every explicit and implicit requirement in the [Question].\n"
    "2. Leverage [Reference Answer]: Use the [Reference Answer] to capture nuanced expectations, desirable "
    "reasoning patterns, and formatting details that high-quality responses should exhibit. Treat it as "
    "authoritative context, not content to be copied.\n"
    "3. Create Rubrics: Following the [Evaluation Criteria Format] and [Design Rules] below, develop 3 to 25 "
    "evaluation criteria that ensure candidate answers respond to the [Question] and match the quality "
    "demonstrated in the [Reference Answer].\n"
    "4. Output Format: Must strictly follow the [Output Requirements] with no additional text.\n"
)
DESIGNER_FORMAT = (
    "# [Evaluation Criteria Format]\n"
    "- Each criterion must contain the following fields:\n"
    "1. `title`: (String) A 2-5 word core summary.\n"
    "2. `description`: (String) A clear description of no more than 40 words or 5 sentences.\n"
    "3. `weight`: (Integer) A score between -1 and 10.\n\n"
    "Example output format (match this style exactly)\n"
    "[\n"
    '{"description": "Essential Criteria: The response must explicitly incorporate the 3% efficiency factor to '
    'determine the actual power output in visible photons from the 100-W bulb.", "title": "Efficiency Factor", '
    '"weight": 5},\n'
    '{"description": "Important Criteria: The response should correctly calculate the energy of a single photon '
    "using the formula E = hc/λ, with λ approximately equal to 5000 Å, ensuring proper usage of "
    'physical constants.", "title": "Photon Energy Calculation", "weight": 5}\n'
    "]\n"
    "Output Requirements (strict)\n"
    "* Output ONLY valid JSON.\n"
    "* Output must be a JSON array of criterion objects (no wrapper keys).\n"
    "* No markdown, no commentary, no code fences, no extra text.\n"
    "* Do not include anything besides the array.\n"
    "* Do not copy sentences from the Reference Answer; write fresh evaluative criteria.\n"
    "Design Rules\n"
    "* Prefer testable, concrete criteria over vague ones.\n"
    "* Use higher weights (7\u201310) for essential requirements.\n"
    "* Use mid weights (3\u20136) for strong-but-nonessential improvements.\n"
    "* Use at least one negative criterion (weight -1) for major violations (e.g., ignoring constraints, wrong "
    "format, hallucinating, contradicting the reference).\n"
    "* Avoid redundancy: each criterion should measure a distinct aspect.\n"
    "Now generate the rubric criteria for the provided Question and Reference Answer."
)
# Deliberately not mirrored: the release's Stage I example says "5000 Å", the prompt its Stage II
# generator is then served with (rcsd_train_reward.py RubricPromptBuilder) "5000 angstrom"; rcsd trains
# Stage I on the prompt the generator is served with (one rubric_designer/release.j2).


def _stage1_designer(question: str, reference: str) -> str:
    body = f"{DESIGNER_ROLE}# [Question]\n{question}\n# [Reference Answer]\n{reference}\n{DESIGNER_FORMAT}"
    return body.replace("5000 Å", "5000 angstrom")


WRITER_BOUNDS = {"min_criteria": 3, "max_criteria": 25}  # the release's "3 to 25"


@pytest.fixture(scope="module", params=BACKENDS)
def release_writer_teacher(
    request: pytest.FixtureRequest, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[object]:
    """A teacher whose rubric_writer modes repeat the release's designer prompt."""
    log_dir = tmp_path_factory.mktemp("release-writer-logs")
    server = _teacher(tiny_model_dir, request.param, log_dir, "--rubric-template-version", "release")
    try:
        yield server
    finally:
        server.stop()


def test_release_stage1_layout_token_for_token(release_writer_teacher, reference_model):
    model, tokenizer = reference_model
    designer = _stage1_designer(QUESTION, REFERENCE)
    # RaR-Science's `rubric` column (items keyed description, title, weight), json.dumps'd by
    # opsd_train_rubric.py `_normalize_example`
    rubric = json.dumps(
        [{"description": c["description"], "title": c["title"], "weight": c["weight"]} for c in RUBRIC],
        ensure_ascii=False,
    )
    expected = {
        "rubric_writer": _chat(tokenizer, designer),  # the student's prompt, L122-130
        "rubric_writer+reference_rubric": _chat(
            tokenizer,
            f"{designer}\n\nGround Truth Rubric (JSON array):\n{rubric}\n"
            "Use the ground-truth rubric as the authoritative target and output the rubric JSON array only.",
        ),
    }
    writer = {"reference_answer": REFERENCE, "reference_rubric": RUBRIC, "rubric_bounds": WRITER_BOUNDS}
    bodies = [{**_body(mode), **writer} for mode in expected]  # the default template version: release
    for body, result in zip(bodies, _contexts(release_writer_teacher, bodies), strict=True):
        mode = body["context_mode"]
        assert result["context_ids"] == expected[mode], mode
        assert result["template_version"] == "teacher-release+rubric-release"
        request = TeacherRequest.model_validate(body)
        assert (
            render_teacher_context(tokenizer, request, "release", rubric_version="release") == expected[mode]
        )
        rows = plain_logprobs(model, expected[mode], COMPLETION)
        assert_matches_reference(result["completions"][0], rows, COMPLETION, 0, TOLERANCE[result["backend"]])
    # what the Stage I trainer samples after with rubric.writer_version release
    bounds = RubricBounds(**WRITER_BOUNDS)
    assert rubric_prompt_ids(tokenizer, QUESTION, REFERENCE, bounds, "release") == expected["rubric_writer"]
