"""A small real HTTP imitation of the teacher and rubric services, for the client's tests.

It speaks the real contract (paths, ErrorResponse bodies, X-Request-ID, msgpack by Accept,
limits enforced with 422, per-item batch errors: a completion with a token id outside the
vocabulary, a rubric request over max_model_len or whose question starts with "unsolvable")
and can be told to misbehave: answer the next requests with a
status and a Retry-After, answer slowly, refuse until ready, or be stopped and restarted on
the same port, or answer as a later server version would: with a new field in every object of
every answer (`added_fields`), or from another model revision. Scores are a pure function of (token id, position), so a split batch must
come back equal to the unsplit one.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field

import msgpack
import numpy as np
import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from rcsd.client import codec
from rcsd.client.protocol import (
    AUTO_RATIONALE,
    MSGPACK_MEDIA_TYPE,
    CompletionScores,
    Criterion,
    ErrorDetail,
    ErrorResponse,
    ItemError,
    ItemFailed,
    ItemOk,
    ModelInfo,
    RubricBatchRequest,
    RubricBatchResponse,
    RubricRequest,
    RubricResponse,
    ServiceInfo,
    TeacherBatchRequest,
    TeacherBatchResponse,
    TeacherRequest,
    TeacherResponse,
)
from rcsd.recipes.launch import free_port

VOCAB = 1000
MAX_MODEL_LEN = 4096
OPEN_PATHS = {"/health", "/ready"}
ADDED_TO_MAP: dict[str, dict[str, object]] = {
    "limits": {"max_added_later": 7},
    "templates": {"added_mode": "v9"},
}


@dataclass
class FakeState:
    """What the test controls and observes; read and written from the test's thread."""

    limits: dict[str, int] = field(default_factory=dict)
    tokenizer_hash: str = "fake-tokenizer"
    model_revision: str = "r0"
    added_fields: bool = False  # a later server version: every answer's every object has a new field
    vocab_size: int = VOCAB
    api_key: str | None = None
    ready: bool = True
    delay_s: float = 0.0
    failures: deque[tuple[int, float | None]] = field(default_factory=deque)  # (status, Retry-After)
    hits: Counter[str] = field(default_factory=Counter)  # work requests answered 2xx, by path
    seen: list[tuple[str, str]] = field(default_factory=list)  # (path, X-Request-ID) of every request
    msgpack_answers: int = 0
    in_flight: int = 0  # requests being answered (middleware counts them)
    max_in_flight: int = 0
    rubrics: dict[str, RubricResponse] = field(default_factory=dict)

    def fail_next(self, status: int, retry_after: float | None = None, times: int = 1) -> None:
        self.failures.extend([(status, retry_after)] * times)

    @property
    def work(self) -> int:
        return sum(self.hits.values())


def fake_scores(token_ids: list[int], top_k: int) -> CompletionScores:
    ids_T = np.asarray(token_ids, dtype=np.int64)
    positions_T = np.arange(len(ids_T))
    logprobs_T = -(((ids_T * 7919 + positions_T * 104729) % 1000) / 100.0).astype(np.float32)
    if not top_k:
        return CompletionScores(token_ids=ids_T, logprobs=logprobs_T)
    topk_ids_T_K = (ids_T[:, None] + np.arange(top_k)[None, :]) % VOCAB
    topk_logprobs_T_K = logprobs_T[:, None] - 0.25 * np.arange(top_k, dtype=np.float32)[None, :]
    return CompletionScores(
        token_ids=ids_T, logprobs=logprobs_T, topk_ids=topk_ids_T_K, topk_logprobs=topk_logprobs_T_K
    )


class _Refusal(Exception):
    def __init__(self, status: int, message: str, field: str | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.status, self.message, self.field, self.retry_after = status, message, field, retry_after


def build_app(state: FakeState) -> FastAPI:
    app = FastAPI()
    rationale_counter = itertools.count()

    def error(status: int, type_: str, message: str, field: str | None, request: Request) -> JSONResponse:
        body = ErrorResponse(
            error=ErrorDetail(
                type=type_,
                message=message,
                field=field,
                request_id=request.headers.get("x-request-id"),
                param=field,
                code=type_,
            )
        )
        return JSONResponse(with_added(body.model_dump(mode="json")), status_code=status)

    def with_added(value: object) -> object:
        """`value` with a field no client knows added to every object in it, when told to (maps get
        a new entry of their value type: a new limit, a new mode's template version)."""
        if not state.added_fields:
            return value
        if isinstance(value, dict):
            fields = {
                k: ({**v, **ADDED_TO_MAP[k]} if k in ADDED_TO_MAP else with_added(v))
                for k, v in value.items()
            }
            return {**fields, "added_later": {"x": [1, "y"]}}
        if isinstance(value, list):
            return [with_added(v) for v in value]
        return value

    @app.exception_handler(_Refusal)
    async def _refused(request: Request, exc: _Refusal) -> JSONResponse:
        response = error(exc.status, "fake_refusal", exc.message, exc.field, request)
        if exc.retry_after is not None:
            response.headers["Retry-After"] = f"{exc.retry_after:g}"
        return response

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"] if p != "body")
        return error(422, "invalid_request", f"{where}: {first['msg']}", where, request)

    @app.middleware("http")
    async def observe(request: Request, call_next):
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        state.seen.append((request.url.path, request_id))
        if state.api_key and request.url.path not in OPEN_PATHS:
            if request.headers.get("authorization") != f"Bearer {state.api_key}":
                return error(401, "unauthorized", "missing or wrong bearer API key", "authorization", request)
        state.in_flight += 1
        state.max_in_flight = max(state.max_in_flight, state.in_flight)
        try:
            response = await call_next(request)
        finally:
            state.in_flight -= 1
        response.headers["X-Request-ID"] = request_id
        return response

    async def admit(request: Request) -> None:
        """Scripted failures, readiness and slowness, before any real work."""
        if not state.ready:
            raise _Refusal(503, "engine is loading", retry_after=1)
        if state.failures:
            status, retry_after = state.failures.popleft()
            raise _Refusal(status, f"scripted {status} for this test", "completions", retry_after)
        if state.delay_s:
            await asyncio.sleep(state.delay_s)

    def answer(request: Request, model: BaseModel) -> Response:
        state.hits[request.url.path] += 1
        if MSGPACK_MEDIA_TYPE in request.headers.get("accept", ""):
            state.msgpack_answers += 1
            if state.added_fields:
                packed = msgpack.packb(
                    with_added(model.model_dump(mode="python")),
                    default=codec._pack_default,
                    use_bin_type=True,
                )
                return Response(packed, media_type=MSGPACK_MEDIA_TYPE)
            return Response(codec.encode(model), media_type=MSGPACK_MEDIA_TYPE)
        return JSONResponse(with_added(model.model_dump(mode="json")))

    def limit(key: str) -> int:
        return state.limits.get(key, 2**31)

    def check_group(group: TeacherRequest, where: str) -> None:
        if group.top_k > limit("max_top_k"):
            raise _Refusal(422, f"top_k {group.top_k} exceeds max_top_k", f"{where}top_k")
        if len(group.completions) > limit("max_completions_per_group"):
            raise _Refusal(
                422, f"{len(group.completions)} completions exceed the limit", f"{where}completions"
            )

    def check_tokens(groups: list[TeacherRequest]) -> None:
        tokens = sum(len(c) for g in groups for c in g.completions)
        if tokens > limit("max_completion_tokens_per_request"):
            raise _Refusal(422, f"{tokens} completion tokens exceed the limit", "completions")

    def failed(type_: str, message: str, field: str | None) -> ItemFailed:
        text = f"{field}: {message}" if field else message
        return ItemFailed(error=ItemError(type=type_, message=text, status=422, field=field))

    def group_item(group: TeacherRequest, where: str) -> ItemOk[TeacherResponse] | ItemFailed:
        for k, completion in enumerate(group.completions):
            if completion and max(completion) >= state.vocab_size:
                return failed("invalid_request", "token id outside the vocabulary", f"{where}completions.{k}")
        return ItemOk[TeacherResponse](result=score(group))

    def rubric_item(body: RubricRequest, where: str) -> ItemOk[RubricResponse] | ItemFailed:
        if body.max_tokens > MAX_MODEL_LEN:
            return failed("invalid_request", "max_tokens exceed max_model_len", f"{where}max_tokens")
        if body.question.startswith("unsolvable"):
            return failed("rubric_generation_failed", "no valid rubric after 4 attempts", None)
        return ItemOk[RubricResponse](result=rubric(body))

    def score(group: TeacherRequest) -> TeacherResponse:
        rationale = group.rationale
        if rationale == AUTO_RATIONALE:  # a different rationale every time: splitting must not ask twice
            rationale = "because " * (1 + next(rationale_counter) % 5)
        return TeacherResponse(
            completions=[fake_scores(c, group.top_k) for c in group.completions],
            context_length=len(group.question) + len(rationale or ""),
            rationale=rationale,
            model="fake-teacher",
            model_revision=state.model_revision,
            tokenizer_hash=state.tokenizer_hash,
            backend="hf",
            template_version="v1",
        )

    @app.post("/teacher_logprobs")  # the pre-/v1 path, an alias as on the real services
    @app.post("/v1/teacher_logprobs")
    async def teacher_logprobs(body: TeacherRequest, request: Request) -> Response:
        await admit(request)
        check_group(body, "")
        check_tokens([body])
        return answer(request, score(body))

    @app.post("/teacher_logprobs/batch")
    @app.post("/v1/teacher_logprobs/batch")
    async def teacher_logprobs_batch(body: TeacherBatchRequest, request: Request) -> Response:
        await admit(request)
        if len(body.groups) > limit("max_groups_per_batch"):
            raise _Refusal(422, f"{len(body.groups)} groups exceed max_groups_per_batch", "groups")
        for i, group in enumerate(body.groups):
            check_group(group, f"groups.{i}.")
        check_tokens(body.groups)
        items = [group_item(g, f"groups.{i}.") for i, g in enumerate(body.groups)]
        return answer(request, TeacherBatchResponse(results=items))

    def rubric(body: RubricRequest) -> RubricResponse:
        rubric_id = f"r-{abs(hash(body.question)) % 10**8}"
        result = RubricResponse(
            rubric_id=rubric_id,
            criteria=[Criterion(title=f"About {body.question[:40]}", description="Says it.", weight=5)],
            model="fake-rubric",
            model_revision="r0",
            template_version="v1",
            cached=False,
            attempts=1,
        )
        state.rubrics[rubric_id] = result
        return result

    @app.post("/rubrics")
    @app.post("/v1/rubrics")
    async def rubrics(body: RubricRequest, request: Request) -> Response:
        await admit(request)
        return answer(request, rubric(body))

    @app.post("/rubrics/batch")
    @app.post("/v1/rubrics/batch")
    async def rubrics_batch(body: RubricBatchRequest, request: Request) -> Response:
        await admit(request)
        if len(body.requests) > limit("max_batch"):
            raise _Refusal(422, f"{len(body.requests)} requests exceed max_batch", "requests")
        items = [rubric_item(r, f"requests.{i}.") for i, r in enumerate(body.requests)]
        return answer(request, RubricBatchResponse(results=items))

    @app.get("/rubrics/{rubric_id}")
    @app.get("/v1/rubrics/{rubric_id}")
    async def rubric_by_id(rubric_id: str, request: Request) -> Response:
        if rubric_id not in state.rubrics:
            raise _Refusal(404, f"no rubric {rubric_id!r}", "rubric_id")
        return answer(request, state.rubrics[rubric_id])

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        return JSONResponse(
            {"status": "ok" if state.ready else "loading"}, status_code=200 if state.ready else 503
        )

    @app.get("/v1/info")
    async def info(request: Request) -> Response:
        if not state.ready:
            raise _Refusal(503, "engine is loading", retry_after=1)
        model = ModelInfo(
            name="fake-teacher",
            revision=state.model_revision,
            tokenizer_hash=state.tokenizer_hash,
            vocab_size=state.vocab_size,
            max_model_len=MAX_MODEL_LEN,
            dtype="float32",
        )
        body = ServiceInfo(
            service="teacher", backend="hf", model=model, template_version="v1", limits=state.limits
        )
        return JSONResponse(with_added(body.model_dump(mode="json")))

    return app


class FakeReplica:
    """One fake service on a loopback port, in a background thread; stop() and start() again."""

    def __init__(self, state: FakeState | None = None) -> None:
        self.state = state or FakeState()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> FakeReplica:
        config = uvicorn.Config(
            build_app(self.state),
            host="127.0.0.1",
            port=self.port,
            log_level="error",
            lifespan="off",
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"fake service on port {self.port} did not start")
            threading.Event().wait(0.01)
        return self

    def stop(self) -> None:
        """Close the port (connections are refused afterwards), as a killed replica would."""
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
            self._server = self._thread = None
