"""Fuzzing both services from their own OpenAPI specs (schemathesis), as real processes on the tiny model.

Every operation gets schema-valid and schema-breaking cases. Each answer must be no 5xx, within a
timeout (no hang), with a status the spec declares, of a declared content type and matching the
declared schema (the error format included). A stored rubric is read back by id (stateful).
`make test` runs 30 cases per operation (10 on the rubric service) with a fixed seed; `make reliability` 300.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from rcsd.recipes.launch import ServiceProcess
from tests.reliability.conftest import tiny_service

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
TIMEOUT_S = 120  # a case not answered by then is a hang
LONG = pytest.param(300, id="300-cases", marks=[pytest.mark.reliability, pytest.mark.timeout(3600)])
EXPECTED_OPERATIONS = {
    "teacher": {
        "GET /health",
        "GET /ready",
        "GET /v1/info",
        "GET /version",
        "POST /v1/teacher_logprobs",
        "POST /v1/teacher_logprobs/batch",
    },
    "rubric": {
        "GET /health",
        "GET /ready",
        "GET /v1/info",
        "GET /version",
        "POST /v1/rubrics",
        "POST /v1/rubrics/batch",
        "GET /v1/rubrics/{rubric_id}",
    },
}


@pytest.fixture(scope="module")
def fuzzed_rubric_server(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    """One attempt per rubric and a shorter max_model_len: a fuzzed request that cannot give a rubric
    (cut off at a random max_tokens) fails after one generation instead of four long ones."""
    folder = tmp_path_factory.mktemp("fuzzed-rubric")
    store = f"sqlite:///{folder / 'rubrics.db'}"
    server = tiny_service("rubric", tiny_model_dir, folder, "--store-url", store, "--max-attempts", "1")
    server.args += ["--max-model-len", "2048"]
    yield server.start()
    server.stop()


def fuzz(server: ServiceProcess, cases: int) -> dict[str, Counter[str]]:
    """Run `cases` cases against every operation; the statuses seen, per operation."""
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    with requests.Session() as session:
        return {
            operation.label: fuzz_operation(schema, operation, server, session, cases)
            for operation in (result.ok() for result in schema.get_all_operations())
        }


def fuzz_operation(
    schema: schemathesis.BaseSchema,
    operation: schemathesis.APIOperation,
    server: ServiceProcess,
    session: requests.Session,
    cases: int,
) -> Counter[str]:
    """Statuses seen (and rubrics read back by id, under "read back")."""
    statuses: Counter[str] = Counter()
    positive = operation.as_strategy(GenerationMode.POSITIVE)
    modes = [positive]
    if operation.body or operation.path_parameters:
        modes.append(operation.as_strategy(GenerationMode.NEGATIVE))
    if operation.path.startswith("/v1/teacher_logprobs"):  # else nearly every valid case is a 422
        info = session.get(f"{server.url}/v1/info", timeout=TIMEOUT_S).json()
        modes.append(positive.map(lambda case: servable(case, info)))

    @hypothesis.settings(
        max_examples=cases,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @hypothesis.given(case=st.one_of(modes))
    def run(case: schemathesis.Case) -> None:
        response = case.call(base_url=server.url, session=session, timeout=TIMEOUT_S)
        case.validate_response(response, checks=CHECKS)
        statuses[str(response.status_code)] += 1
        if response.status_code == 200 and operation.label in ("POST /v1/rubrics", "POST /v1/rubrics/batch"):
            answer = response.json()
            made = [answer] if "criteria" in answer else [r["result"] for r in answer["results"] if r["ok"]]
            for rubric in made:
                read_back(schema, server, session, rubric)
                statuses["read back"] += 1

    run()
    return statuses


def servable(case: schemathesis.Case, info: dict) -> schemathesis.Case:
    """The same case past the checks the schema does not state: ids modulo the vocabulary size, no
    empty completion, top_k within max_top_k, context mode `none` (the others need a rubric or a
    reference answer)."""
    vocab, max_top_k = info["model"]["vocab_size"], info["limits"]["max_top_k"]
    groups = case.body.get("groups", [case.body]) if isinstance(case.body, dict) else []
    for group in groups:
        group["completions"] = [[token % vocab for token in ids] or [0] for ids in group["completions"]]
        group["top_k"] = group.get("top_k", 0) % (max_top_k + 1)
        group["context_mode"] = "none"
        group.pop("rationale", None)
    return case


def read_back(
    schema: schemathesis.BaseSchema, server: ServiceProcess, session: requests.Session, made: dict
) -> None:
    """The stateful step: a rubric just answered is stored, and GET /v1/rubrics/{id} returns it."""
    case = schema["/v1/rubrics/{rubric_id}"]["GET"].Case(path_parameters={"rubric_id": made["rubric_id"]})
    response = case.call(base_url=server.url, session=session, timeout=TIMEOUT_S)
    case.validate_response(response, checks=CHECKS)
    assert response.status_code == 200, response.text
    assert response.json()["criteria"] == made["criteria"]


def report(service: str, seen: dict[str, Counter[str]]) -> None:
    for label, statuses in sorted(seen.items()):
        cases = sum(n for status, n in statuses.items() if status.isdigit())
        print(f"fuzz {service} {label}: {cases} cases, {dict(sorted(statuses.items()))}")


@pytest.mark.parametrize("cases", [pytest.param(30, id="30-cases"), LONG])
def test_teacher_survives_fuzzing(teacher_server, cases):
    seen = fuzz(teacher_server, cases)
    report("teacher", seen)
    assert set(seen) == EXPECTED_OPERATIONS["teacher"]
    assert all(statuses.total() > 0 for statuses in seen.values()), seen


# A valid rubric request generates on the CPU (seconds each): the short run tries fewer.
@pytest.mark.parametrize("cases", [pytest.param(10, id="10-cases"), LONG])
def test_rubric_survives_fuzzing(fuzzed_rubric_server, cases):
    seen = fuzz(fuzzed_rubric_server, cases)
    report("rubric", seen)
    assert set(seen) == EXPECTED_OPERATIONS["rubric"]
    assert all(statuses.total() > 0 for statuses in seen.values()), seen
