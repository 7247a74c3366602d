"""The rubric-writer modes (Stage I): a rubric completion scored after the designer prompt, exactly.

The completion follows the prompt the rubric service (and the Stage I student) writes rubrics after;
in template v1 `rubric_writer+reference_rubric` puts the question, reference answer and a reference
rubric in the generation format before it (the release's layout, the default version's, is pinned
token for token in test_release_layout.py). Same exactness bound as the answer modes, on both backends.
"""

from __future__ import annotations

import httpx
import pytest

from rcsd.client.prompts import designer_prompt_text
from rcsd.client.protocol import Criterion, RubricBounds, ServiceInfo
from rcsd.client.protocol.rubric_format import to_generation_text
from tests.services.teacher.payloads import (
    QUESTION,
    REFERENCE,
    RUBRIC,
    TOLERANCE,
    assert_matches_reference,
    plain_logprobs,
    random_completions,
)

MODES = ["rubric_writer", "rubric_writer+reference_rubric"]
BOUNDS = {"min_criteria": 2, "max_criteria": 4}
VERSION = "teacher-release+rubric-v2"  # the service's default teacher templates


def writer_group(mode: str, completions: list[list[int]], **extra: object) -> dict:
    body = {
        "question": QUESTION,
        "reference_answer": REFERENCE,
        "reference_rubric": RUBRIC,
        "rubric_bounds": BOUNDS,
        "context_mode": mode,
        "completions": completions,
    }
    return {**body, **extra}


@pytest.mark.parametrize("top_k", [0, 7])
@pytest.mark.parametrize("mode", MODES)
def test_rubric_completion_matches_plain_forward(teacher, reference_model, mode, top_k):
    model, tokenizer = reference_model
    completions = random_completions(len(tokenizer), [1, 30], seed=MODES.index(mode) + 20)
    r = httpx.post(
        f"{teacher.url}/teacher_logprobs",
        json=writer_group(mode, completions, top_k=top_k, return_context_ids=True),
        timeout=120,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    for scores, completion in zip(body["completions"], completions, strict=True):
        rows = plain_logprobs(model, body["context_ids"], completion)
        assert_matches_reference(scores, rows, completion, top_k, TOLERANCE[body["backend"]])


@pytest.mark.parametrize("mode", MODES)
def test_v1_context_holds_the_designer_prompt_last_and_what_the_mode_shows(teacher, reference_model, mode):
    _, tokenizer = reference_model
    r = httpx.post(
        f"{teacher.url}/teacher_logprobs",
        json=writer_group(mode, [[5, 6]], return_context_ids=True, rubric=RUBRIC, template_version="v1"),
        timeout=60,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    text = tokenizer.decode(body["context_ids"])
    designer = designer_prompt_text(QUESTION, REFERENCE, **BOUNDS)
    assert text.endswith(designer + "<|im_end|>\n<|im_start|>assistant\n")  # the student's prompt, last
    reference_rubric = to_generation_text([Criterion(**c) for c in RUBRIC])
    assert (reference_rubric in text) == (mode == "rubric_writer+reference_rubric")
    assert "Grading rubric" not in text  # the answer modes' rubric section never shows
    assert body["template_version"] == "teacher-v1+rubric-v2"


def test_info_names_every_modes_template_version(teacher_servers):
    info = ServiceInfo.model_validate(httpx.get(f"{teacher_servers['hf'].url}/v1/info").json())
    assert info.templates["rubric_writer"] == info.templates["rubric_writer+reference_rubric"] == VERSION
    assert info.templates["rubric+reference"] == info.template_version == "teacher-release"


def test_the_designer_prompt_follows_the_bounds(teacher_servers):
    """Another `rubric_bounds` is another prompt: the teacher repeats what the student was asked."""
    url = f"{teacher_servers['hf'].url}/teacher_logprobs"
    contexts = [
        httpx.post(
            url,
            json=writer_group("rubric_writer", [[5]], rubric_bounds=bounds, return_context_ids=True),
            timeout=60,
        ).json()["context_ids"]
        for bounds in (BOUNDS, RubricBounds(min_criteria=5, max_criteria=12).model_dump())
    ]
    assert contexts[0] != contexts[1]


@pytest.mark.parametrize(
    ("body", "field", "text"),
    [
        (
            writer_group("rubric_writer+reference_rubric", [[1]], reference_rubric=None),
            "reference_rubric",
            "needs a non-empty reference_rubric",
        ),
        (writer_group("rubric_writer+reference_rubric", [[1]], reference_rubric=[]), "reference_rubric", ""),
        (writer_group("rubric_writer", [[1]], rationale="hint"), "rationale", "answer modes"),
        (
            writer_group("rubric_writer", [[1]], rubric_bounds={"min_criteria": 5, "max_criteria": 2}),
            "rubric_bounds",
            "",
        ),
    ],
    ids=["no reference rubric", "empty reference rubric", "rationale", "bounds out of order"],
)
def test_bad_rubric_writer_group_is_422_naming_the_field(teacher_servers, body, field, text):
    r = httpx.post(f"{teacher_servers['hf'].url}/teacher_logprobs", json=body, timeout=60)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["field"] == field, error
    assert text in error["message"], error
