"""Token-exactness of POST /teacher_logprobs against a plain forward pass, on every backend."""

from __future__ import annotations

import httpx
import msgpack
import numpy as np
import pytest

from rcsd.client import codec
from rcsd.client.protocol import MSGPACK_MEDIA_TYPE, TeacherResponse
from tests.services.teacher.payloads import (
    QUESTION,
    REFERENCE,
    RUBRIC,
    TOLERANCE,
    assert_matches_reference,
    group,
    plain_logprobs,
    random_completions,
)

MODES = ["rubric", "rubric+reference", "reference", "none"]


def _backend(teacher) -> str:
    return httpx.get(f"{teacher.url}/v1/info").json()["backend"]


@pytest.mark.parametrize("top_k", [0, 7])
@pytest.mark.parametrize("mode", MODES)
def test_group_matches_plain_forward(teacher, reference_model, mode, top_k):
    model, tokenizer = reference_model
    completions = random_completions(len(tokenizer), [1, 9, 40], seed=MODES.index(mode))
    r = httpx.post(
        f"{teacher.url}/teacher_logprobs",
        json=group(mode, completions, top_k=top_k, return_context_ids=True),
        timeout=120,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    context_ids = body["context_ids"]
    assert body["context_length"] == len(context_ids)
    assert len(body["completions"]) == len(completions)
    for scores, completion in zip(body["completions"], completions, strict=True):
        rows = plain_logprobs(model, context_ids, completion)
        assert_matches_reference(scores, rows, completion, top_k, TOLERANCE[body["backend"]])


@pytest.mark.parametrize("version", ["release", "v1"])
@pytest.mark.parametrize("mode", MODES)
def test_context_holds_what_the_mode_shows(teacher, reference_model, mode, version):
    _, tokenizer = reference_model
    body = group(mode, [[5, 6]], return_context_ids=True, reference_answer=REFERENCE, rubric=RUBRIC)
    r = httpx.post(f"{teacher.url}/teacher_logprobs", json={**body, "template_version": version}, timeout=60)
    assert r.status_code == 200, r.text
    text = tokenizer.decode(r.json()["context_ids"])
    assert QUESTION in text
    assert (REFERENCE in text) == ("reference" in mode)
    assert (RUBRIC[0]["title"] in text) == ("rubric" in mode)
    assert text.endswith("<|im_start|>assistant\n")  # the completion follows the generation prompt
    assert r.json()["template_version"] == f"teacher-{version}"


def test_grouped_equals_single(teacher, reference_model):
    _, tokenizer = reference_model
    completions = random_completions(len(tokenizer), [3, 25, 12], seed=7)
    grouped = httpx.post(
        f"{teacher.url}/teacher_logprobs", json=group("rubric", completions, top_k=4), timeout=60
    ).json()
    tol = TOLERANCE[grouped["backend"]]
    for i, completion in enumerate(completions):
        single = httpx.post(
            f"{teacher.url}/teacher_logprobs", json=group("rubric", [completion], top_k=4), timeout=60
        ).json()
        assert single["context_length"] == grouped["context_length"]
        np.testing.assert_allclose(
            single["completions"][0]["logprobs"], grouped["completions"][i]["logprobs"], atol=tol, rtol=0
        )


def test_binary_answer_decodes_to_its_json_twin(teacher, reference_model):
    """The msgpack encoding carries the same numbers as JSON, compared on ONE answer.

    Two separate requests are not compared bit for bit: on vLLM the second is a prefix-cache hit
    that computes differently (see test_repeated_requests_agree_within_tolerance).
    """
    model, tokenizer = reference_model
    completions = random_completions(len(tokenizer), [30, 5], seed=3)
    body = group("rubric+reference", completions, top_k=20, return_context_ids=True)
    r = httpx.post(
        f"{teacher.url}/teacher_logprobs", json=body, headers={"accept": MSGPACK_MEDIA_TYPE}, timeout=60
    )
    assert r.status_code == 200 and r.headers["content-type"] == MSGPACK_MEDIA_TYPE
    as_binary = codec.decode(r.content, TeacherResponse)
    as_json = TeacherResponse.model_validate_json(as_binary.model_dump_json())  # the service's JSON path
    raw = msgpack.unpackb(r.content, raw=False)  # an independent decode of the same bytes

    def by_hand(array: dict) -> np.ndarray:
        return np.frombuffer(array["data"], dtype=np.dtype(array["dtype"])).reshape(array["shape"])

    for a, b, c in zip(as_json.completions, as_binary.completions, raw["completions"], strict=True):
        for field in ("token_ids", "logprobs", "topk_ids", "topk_logprobs"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
            np.testing.assert_array_equal(by_hand(c[field]), getattr(b, field))
        assert b.topk_ids.shape == (len(a.token_ids), 20)
    for completion, scores in zip(completions, as_binary.completions, strict=True):
        rows = plain_logprobs(model, as_binary.context_ids, completion)
        assert_matches_reference(
            scores.model_dump(), rows, completion, top_k=20, tolerance=TOLERANCE[as_binary.backend]
        )


def test_repeated_requests_agree_within_tolerance(teacher, reference_model):
    """What holds for repeats of one request: agreement within TOLERANCE, not bit identity.

    vLLM on CPU computes a repeat from its prefix cache, in other kernels than the first time
    (max abs diff 5.2e-6 measured on the tiny fp32 model, AVX2); the hf engine's GEMMs may also
    round differently between calls. Both stay within the exactness bound of the plain forward.
    """
    _, tokenizer = reference_model
    body = group("rubric", random_completions(len(tokenizer), [25, 8], seed=11), top_k=5)
    first, second = (
        TeacherResponse.model_validate_json(
            httpx.post(f"{teacher.url}/teacher_logprobs", json=body, timeout=60).content
        )
        for _ in range(2)
    )
    tolerance = TOLERANCE[first.backend]
    for a, b in zip(first.completions, second.completions, strict=True):
        np.testing.assert_array_equal(a.token_ids, b.token_ids)
        np.testing.assert_allclose(a.logprobs, b.logprobs, atol=tolerance, rtol=0)
        np.testing.assert_allclose(a.topk_logprobs, b.topk_logprobs, atol=tolerance, rtol=0)


def test_batch_keeps_order_and_matches_single(teacher, reference_model):
    _, tokenizer = reference_model
    groups = [
        group(mode, random_completions(len(tokenizer), [4, 11], seed=i), top_k=3)
        for i, mode in enumerate(MODES)
    ]
    batch = httpx.post(f"{teacher.url}/teacher_logprobs/batch", json={"groups": groups}, timeout=120)
    assert batch.status_code == 200, batch.text
    results = [item["result"] for item in batch.json()["results"]]
    assert len(results) == len(groups)
    for g, result in zip(groups, results, strict=True):
        single = httpx.post(f"{teacher.url}/teacher_logprobs", json=g, timeout=60).json()
        assert single["context_length"] == result["context_length"]
        for a, b in zip(single["completions"], result["completions"], strict=True):
            np.testing.assert_allclose(
                a["logprobs"], b["logprobs"], atol=TOLERANCE[result["backend"]], rtol=0
            )


@pytest.mark.parametrize(
    ("version", "transition"),
    [("v1", "Solve the problem independently"), ("release", "provided only as private guidance")],
)
def test_given_rationale_sits_between_context_and_completion(teacher, reference_model, version, transition):
    model, tokenizer = reference_model
    rationale = "Key idea: use h = g t^2 / 2."
    r = httpx.post(
        f"{teacher.url}/teacher_logprobs",
        json=group(
            "rubric", [[9, 10, 11]], rationale=rationale, return_context_ids=True, template_version=version
        ),
        timeout=60,
    )
    body = r.json()
    text = tokenizer.decode(body["context_ids"])
    assert text.index(RUBRIC[0]["title"]) < text.index(rationale) < text.index(transition)
    rows = plain_logprobs(model, body["context_ids"], [9, 10, 11])
    assert_matches_reference(body["completions"][0], rows, [9, 10, 11], 0, TOLERANCE[body["backend"]])


def test_auto_rationale_is_generated_once_and_used(teacher, reference_model):
    model, _ = reference_model
    body = group("rubric+reference", [[20, 21, 22, 23]], rationale="auto", return_context_ids=True)
    first = httpx.post(f"{teacher.url}/teacher_logprobs", json=body, timeout=120).json()
    second = httpx.post(f"{teacher.url}/teacher_logprobs", json=body, timeout=120).json()
    assert first["rationale"] and first["rationale"] == second["rationale"]
    assert first["context_ids"] == second["context_ids"]
    rows = plain_logprobs(model, first["context_ids"], [20, 21, 22, 23])
    assert_matches_reference(first["completions"][0], rows, [20, 21, 22, 23], 0, TOLERANCE[first["backend"]])


def test_temperature_divides_logits(teacher_servers, reference_model):
    """hf applies log_softmax(logits / T); see the README for the vLLM backend."""
    model, tokenizer = reference_model
    teacher = teacher_servers["hf"]
    completion = random_completions(len(tokenizer), [15], seed=11)[0]
    r = httpx.post(
        f"{teacher.url}/teacher_logprobs",
        json=group("reference", [completion], temperature=2.0, top_k=5, return_context_ids=True),
        timeout=60,
    ).json()
    rows = plain_logprobs(model, r["context_ids"], completion, temperature=2.0)
    assert_matches_reference(r["completions"][0], rows, completion, 5, TOLERANCE["hf"])


@pytest.mark.vllm
def test_vllm_refuses_other_temperatures_with_422(teacher_servers):
    """vLLM's prompt log-probs are the raw model's; it cannot apply a temperature to them."""
    r = httpx.post(
        f"{teacher_servers['vllm'].url}/teacher_logprobs/batch",
        json={"groups": [group("none", [[1, 2]]), group("none", [[3]], temperature=0.5)]},
        timeout=60,
    )
    assert r.status_code == 200, r.text  # the group fails alone; the other keeps its scores
    first, second = r.json()["results"]
    assert first["ok"] and not second["ok"]
    assert second["error"]["status"] == 422 and second["error"]["field"] == "groups.1.temperature"
