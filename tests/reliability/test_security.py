"""Security checks: the API key guards every route but /health and /ready (docs and metrics too, unless
opened by a setting); bodies are limited before they are parsed; request limits are 4xx; no run-time
path; nothing unpickled; the key never shows in logs, /v1/info or /metrics.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from starlette.routing import Route

from rcsd.client.protocol import TeacherBatchRequest, TeacherRequest
from rcsd.recipes.launch import ServiceProcess
from rcsd.services.rubric.app import create_app as rubric_app
from rcsd.services.rubric.settings import RubricSettings
from rcsd.services.teacher.app import create_app as teacher_app
from rcsd.services.teacher.settings import TeacherSettings
from tests.reliability.conftest import tiny_service

ROOT = Path(__file__).parents[2]
KEY = "k3y-Zq9-never-logged"
OPEN = {"/health", "/ready", "/version"}  # /version: as vLLM's, no key (a rollout probes it)


def apps(tmp_path: Path, **settings: object) -> list[FastAPI]:
    """Both apps as built by `rcsd serve`, their engines never loaded (nothing here needs one)."""
    store = f"sqlite:///{tmp_path / 'r.db'}"
    return [
        teacher_app(TeacherSettings(model="unused", **settings)),
        rubric_app(RubricSettings(model="unused", store_url=store, **settings)),
    ]


def every_route(app: FastAPI) -> Iterator[tuple[str, str]]:
    """(method, path) of every route the app serves, the docs and /metrics included."""
    for route in app.routes:
        if isinstance(route, APIRoute | Route):
            for method in sorted(route.methods or {"GET"}):
                if method != "HEAD":
                    yield method, route.path.replace("{rubric_id}", "rub_0")


def test_every_route_but_health_and_ready_needs_the_key(tmp_path):
    for app in apps(tmp_path, api_key=KEY):
        client = TestClient(app)
        routes = list(every_route(app))
        assert {"/docs", "/redoc", "/openapi.json", "/metrics"} <= {path for _, path in routes}
        for method, path in routes:
            if path in OPEN:
                continue
            for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": KEY}):
                r = client.request(method, path, headers=headers)
                assert r.status_code == 401, (method, path, headers, r.status_code)
                assert r.json()["error"]["field"] == "authorization"
        assert client.get("/openapi.json", headers={"authorization": f"Bearer {KEY}"}).status_code == 200


def test_docs_and_metrics_open_only_when_configured(tmp_path):
    for app in apps(tmp_path, api_key=KEY, open_docs=True, open_metrics=True):
        client = TestClient(app)
        for path in ("/docs", "/redoc", "/openapi.json", "/metrics"):
            assert client.get(path).status_code == 200, path
        assert client.get("/v1/info").status_code == 401


def test_a_body_over_the_limit_is_413_before_it_is_parsed(tmp_path):
    """Malformed JSON under the limit is a 422 (parsed); over it, a 413 (never parsed), with
    Content-Length or streamed without one."""
    for app, path in zip(apps(tmp_path, max_body_bytes=1024), ["/teacher_logprobs", "/rubrics"], strict=True):
        client = TestClient(app, headers={"content-type": "application/json"})
        assert client.post(path, content=b"{" * 1000).status_code == 422
        assert client.post(path, content=b"{" * 1025).status_code == 413
        assert client.post(path, content=iter([b"{" * 1000, b"{" * 1000])).status_code == 413


def test_no_endpoint_takes_a_path(tmp_path):
    """Model, adapter and store are settings read at start; no request field names a file or folder,
    so nothing given at run time can reach outside what the operator configured."""
    suspicious = ("path", "dir", "file", "model", "adapter", "url", "store")
    for app in apps(tmp_path):
        schemas = app.openapi()["components"]["schemas"]
        requests = [name for name in schemas if name.endswith("Request") or name == "RubricBounds"]
        assert requests
        for name in requests:
            for field in schemas[name].get("properties", {}):
                assert not any(word in field.lower() for word in suspicious), (name, field)
        for operation in (op for ops in app.openapi()["paths"].values() for op in ops.values()):
            for parameter in operation.get("parameters", []):
                assert parameter["name"] in {"rubric_id"}, parameter


def _unsafe_loads(tree: ast.AST) -> Iterator[str]:
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        owner = node.func.value.id if isinstance(node.func.value, ast.Name) else ""
        call, keywords = f"{owner}.{node.func.attr}", {k.arg: k.value for k in node.keywords}
        if owner in ("pickle", "cPickle", "dill", "joblib", "marshal", "shelve") and "load" in call.lower():
            yield call
        if owner == "pickle" and node.func.attr == "Unpickler":
            yield call
        weights_only = keywords.get("weights_only")
        if call == "torch.load" and not (
            isinstance(weights_only, ast.Constant) and weights_only.value is True
        ):
            yield "torch.load without weights_only=True"
        loader = keywords.get("Loader")
        if call == "yaml.load" and not (isinstance(loader, ast.Attribute) and "Safe" in loader.attr):
            yield "yaml.load without a SafeLoader"
        allow = keywords.get("allow_pickle")
        if call in ("np.load", "numpy.load") and isinstance(allow, ast.Constant) and allow.value is True:
            yield "np.load(allow_pickle=True)"


def test_nothing_is_unpickled():
    found = []
    for part in ("client", "models", "services", "trainer", "bench", "deploy", "tests"):
        for file in (ROOT / part).rglob("*.py"):
            found += [
                f"{file.relative_to(ROOT)}: {call}" for call in _unsafe_loads(ast.parse(file.read_text()))
            ]
    assert found == []


def test_the_checker_finds_what_it_looks_for():
    source = "torch.load(f)\ntorch.load(f, weights_only=True)\nyaml.load(s)\nyaml.load(s, Loader=yaml.SafeLoader)\n"
    source += "pickle.loads(b)\nnp.load(f, allow_pickle=True)\n"
    assert list(_unsafe_loads(ast.parse(source))) == [
        "torch.load without weights_only=True",
        "yaml.load without a SafeLoader",
        "pickle.loads",
        "np.load(allow_pickle=True)",
    ]


@pytest.fixture(scope="module")
def guarded(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    folder = tmp_path_factory.mktemp("guarded")
    extra = ["--api-key", KEY, "--max-top-k", "8", "--max-completion-tokens-per-request", "4096"]
    server = tiny_service("teacher", tiny_model_dir, folder, *extra, "--log-level", "debug").start()
    yield server
    server.stop()


def _body(completions: list[list[int]], top_k: int = 0) -> dict:
    return TeacherRequest(
        question="q", context_mode="none", completions=completions, top_k=top_k
    ).model_dump()


@pytest.mark.parametrize(
    ("path", "body", "field", "limit"),
    [
        ("/teacher_logprobs", _body([[1]], top_k=9), "top_k", "max_top_k 8"),
        ("/teacher_logprobs", _body([[1]] * 65), "completions", "max_completions_per_group 64"),
        (
            "/teacher_logprobs",
            _body([[1] * 2049] * 2),
            "completions",
            "max_completion_tokens_per_request 4096",
        ),
        (
            "/teacher_logprobs/batch",
            TeacherBatchRequest(groups=[TeacherRequest(**_body([[1] * 1025]))] * 4).model_dump(),
            "groups",
            "max_completion_tokens_per_request 4096",
        ),
        (
            "/teacher_logprobs/batch",
            TeacherBatchRequest(groups=[TeacherRequest(**_body([[1]]))] * 65).model_dump(),
            "groups",
            "max_groups_per_batch 64",
        ),
    ],
    ids=["top_k", "completions", "tokens", "tokens over a batch", "groups"],
)
def test_request_limits_are_422_naming_the_limit(guarded, path, body, field, limit):
    r = httpx.post(f"{guarded.url}{path}", json=body, headers={"authorization": f"Bearer {KEY}"}, timeout=60)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"].startswith(field) and limit in r.json()["error"]["message"], r.text


def test_the_key_never_shows(guarded):
    tries = [
        {"authorization": f"Bearer {KEY}"},
        {"authorization": f"Bearer {KEY}x"},
        {"authorization": KEY},
        {"authorization": f"Basic {KEY}"},
        {},
    ]
    for headers in tries:
        for method, path, body in [
            ("POST", "/teacher_logprobs", _body([[1, 2]])),
            ("GET", "/v1/info", None),
            ("GET", "/metrics", None),
        ]:
            httpx.request(method, f"{guarded.url}{path}", json=body, headers=headers, timeout=60)
    auth = {"authorization": f"Bearer {KEY}"}
    shown = [
        httpx.get(f"{guarded.url}/v1/info", headers=auth).text,
        httpx.get(f"{guarded.url}/metrics", headers=auth).text,
        httpx.get(f"{guarded.url}/openapi.json", headers=auth).text,
        guarded.log_path.read_text(),
    ]
    assert "/teacher_logprobs" in shown[-1]  # the requests were logged
    for text in shown:
        assert KEY not in text
