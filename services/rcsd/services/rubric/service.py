"""Rubric generation logic, free of HTTP: store lookup, generation once per key, checks, retries.

Concurrent identical requests generate once: in one process they share a future, across
processes (replicas sharing a database) they wait on the store's generation lock.
"""

from __future__ import annotations

import asyncio
import json
import logging
from functools import partial

from pydantic import ValidationError

from rcsd.client.prompts import chat_prompt_ids, designer_prompt_text, designer_template
from rcsd.client.protocol import (
    Criterion,
    ItemFailed,
    ItemOk,
    RubricBatchRequest,
    RubricBatchResponse,
    RubricRequest,
    RubricResponse,
    ServiceInfo,
    rubric_problems,
)
from rcsd.client.protocol.rubric_format import (
    RELEASE_VERSION,
    RubricBudgetError,
    generation_schema,
    parse_release_rubric,
    to_criteria,
)
from rcsd.services.engines.base import Engine, GenerationParams
from rcsd.services.kit.admission import Admission
from rcsd.services.kit.batch import checked, settle
from rcsd.services.kit.errors import ServiceError, invalid
from rcsd.services.kit.metrics import ServiceMetrics
from rcsd.services.kit.single_flight import SingleFlight
from rcsd.services.rubric.settings import RubricSettings
from rcsd.services.rubric.store import GenerationLockTimeout, RubricStore, StoredRubric, request_key

log = logging.getLogger("rcsd.rubric")
RETRY_TEMPERATURE = 0.7  # retries of a greedy (temperature 0) request sample, or they would repeat
SEED_STRIDE = 1_000_003  # attempt i uses seed + i * stride


class RubricService:
    def __init__(
        self,
        engine: Engine,
        store: RubricStore,
        settings: RubricSettings,
        metrics: ServiceMetrics,
        admission: Admission,
    ) -> None:
        self.engine = engine
        self.admission = admission
        self.store = store
        self.settings = settings
        self.metrics = metrics
        designer_template(settings.template_version)  # a version without a designer prompt fails at start
        self.template_version = f"rubric-{settings.template_version}"
        # The released recipe's generator thinks first and writes a free JSON array; rcsd's own
        # versions are constrained by a grammar from the first token, which leaves no room to think.
        self.think_first = settings.template_version == RELEASE_VERSION
        self._generating: SingleFlight[tuple[StoredRubric, bool]] = SingleFlight()

    def info(self) -> ServiceInfo:
        return ServiceInfo(
            service="rubric",
            backend=self.engine.name,
            model=self.engine.info,
            template_version=self.template_version,
            limits={"max_batch": self.settings.max_batch, "max_model_len": self.engine.info.max_model_len},
        )

    def is_alive(self) -> bool:
        return self.engine.is_alive()

    async def aclose(self) -> None:
        await self.engine.aclose()
        await self.store.aclose()

    async def get(self, rubric_id: str) -> RubricResponse:
        record = await self.store.get_by_id(rubric_id)
        if record is None:
            raise ServiceError(404, f"no rubric with id {rubric_id!r}", type="not_found", field="rubric_id")
        return record.response(cached=True)

    async def generate_batch(self, batch: RubricBatchRequest) -> RubricBatchResponse:
        """Too many requests is a 422; each request is checked before any generates, and one that
        fails (e.g. no valid rubric within max_attempts) is that item's error, not the batch's."""
        if len(batch.requests) > self.settings.max_batch:
            raise invalid(
                "requests", f"{len(batch.requests)} requests exceed max_batch {self.settings.max_batch}"
            )
        # rendering and tokenising are CPU work: off the event loop, like the engine's
        prompts = await asyncio.to_thread(
            lambda: [
                checked(partial(self._prompt_ids, r, f"requests.{i}.")) for i, r in enumerate(batch.requests)
            ]
        )
        tokens = sum(
            len(prompt) + request.max_tokens
            for request, prompt in zip(batch.requests, prompts, strict=True)
            if not isinstance(prompt, ItemFailed)
        )
        async with self.admission.slot(tokens):
            works = [
                prompt if isinstance(prompt, ItemFailed) else self._generate_checked(request, prompt)
                for request, prompt in zip(batch.requests, prompts, strict=True)
            ]
            return RubricBatchResponse(results=await settle(works, ItemOk[RubricResponse]))

    async def generate(self, request: RubricRequest) -> RubricResponse:
        prompt_ids = await asyncio.to_thread(self._prompt_ids, request, "")
        async with self.admission.slot(len(prompt_ids) + request.max_tokens):
            return await self._generate_checked(request, prompt_ids)

    async def _generate_checked(self, request: RubricRequest, prompt_ids: list[int]) -> RubricResponse:
        info = self.engine.info
        key = request_key(
            request, model=info.name, model_revision=info.revision, template_version=self.template_version
        )
        record = await self.store.get(key)
        if record is not None:
            self.metrics.rubrics(source="store").inc()
            return record.response(cached=True)
        (record, generated), did_work = await self._generating.run(
            key, lambda: self._generate_once(key, request, prompt_ids)
        )
        if not did_work:  # an identical request in this process generated it
            self.metrics.rubrics(source="shared").inc()
            return record.response(cached=True)
        self.metrics.rubrics(source="generated" if generated else "store").inc()
        return record.response(cached=not generated)

    async def _generate_once(
        self, key: str, request: RubricRequest, prompt_ids: list[int]
    ) -> tuple[StoredRubric, bool]:
        try:
            async with self.store.generation_lock(key, timeout=self.settings.lock_timeout_s):
                return await self._generate_locked(key, request, prompt_ids)
        except GenerationLockTimeout as exc:  # another replica is still at it: not our bug, retry later
            raise ServiceError(
                503,
                f"another process has been generating this rubric for over {self.settings.lock_timeout_s} s",
                type="unavailable",
                retry_after_s=self.settings.retry_after_s,
            ) from exc

    async def _generate_locked(
        self, key: str, request: RubricRequest, prompt_ids: list[int]
    ) -> tuple[StoredRubric, bool]:
        record = await self.store.get(key)  # another replica may have made it while we waited
        if record is not None:
            return record, False
        criteria, attempts = await self._sample_valid(request, prompt_ids)
        info = self.engine.info
        record = StoredRubric(
            key=key,
            criteria=criteria,
            model=info.name,
            model_revision=info.revision,
            template_version=self.template_version,
            question=request.question,
            reference_answer=request.reference_answer,
            attempts=attempts,
        )
        return await self.store.put(record), True

    async def _sample_valid(
        self, request: RubricRequest, prompt_ids: list[int]
    ) -> tuple[list[Criterion], int]:
        """Constrained decoding guarantees the JSON shape; semantic checks may still fail: resample.
        Think-first output may not parse at all (cut off while thinking): resample too."""
        schema = None if self.think_first else generation_schema(request.bounds, request.max_tokens)
        failures: list[str] = []
        for attempt in range(self.settings.max_attempts):
            temperature = request.temperature if attempt == 0 else max(request.temperature, RETRY_TEMPERATURE)
            params = GenerationParams(
                max_tokens=request.max_tokens,
                temperature=temperature,
                top_p=request.top_p,
                top_k=request.top_k,
                seed=request.seed + attempt * SEED_STRIDE,
                json_schema=schema,
            )
            [text] = await self.engine.generate([prompt_ids], params)
            criteria, problem = _released(text, request) if self.think_first else _checked(text, request)
            if criteria is not None:
                return criteria, attempt + 1
            failures.append(f"attempt {attempt + 1}: {problem}")
        log.warning("rubric generation failed", extra={"fields": {"failures": failures}})
        raise ServiceError(
            422,
            f"no valid rubric after {self.settings.max_attempts} attempts: " + " | ".join(failures),
            type="rubric_generation_failed",
        )

    def _prompt_ids(self, request: RubricRequest, prefix: str) -> list[int]:
        """The generation prompt, checked to leave room for `max_tokens` within max_model_len."""
        text = designer_prompt_text(
            request.question,
            request.reference_answer,
            request.bounds.min_criteria,
            request.bounds.max_criteria,
            self.settings.template_version,
        )
        # Think-first: the chat template's default, as the release renders it (Qwen3: thinking on).
        # Constrained: the template told not to think (Qwen3 writes an empty think block), as the
        # grammar forbids it from the first token anyway.
        thinking = None if self.think_first else False
        prompt_ids = chat_prompt_ids(
            self.engine.tokenizer, [{"role": "user", "content": text}], enable_thinking=thinking
        )
        if not self.think_first:
            try:
                generation_schema(request.bounds, request.max_tokens)
            except RubricBudgetError as exc:
                raise invalid(f"{prefix}max_tokens", str(exc)) from exc
        limit = self.engine.info.max_model_len
        if len(prompt_ids) + request.max_tokens > limit:
            raise invalid(
                f"{prefix}max_tokens",
                f"prompt ({len(prompt_ids)} tokens) + max_tokens ({request.max_tokens}) "
                f"exceed max_model_len {limit}",
            )
        return prompt_ids


def _checked(text: str, request: RubricRequest) -> tuple[list[Criterion] | None, str]:
    """The rubric if it parses and passes the semantic checks, else why not (e.g. cut off)."""
    try:
        criteria = to_criteria(json.loads(text))
    except (json.JSONDecodeError, ValidationError, KeyError, TypeError) as exc:
        return (
            None,
            f"output did not parse ({type(exc).__name__}; max_tokens {request.max_tokens} too small?)",
        )
    problems = rubric_problems(criteria, request.bounds)
    return (None, "; ".join(problems)) if problems else (criteria, "")


def _released(text: str, request: RubricRequest) -> tuple[list[Criterion] | None, str]:
    """The rubric if the release's parse finds one with a count within the bounds, else why not.

    Only what the release checks (a non-empty array of criteria) and the count: rcsd's further
    semantic checks (a pitfall, no weight 0, distinct titles, 40 words) are rcsd's, not the release's.
    """
    try:
        criteria = parse_release_rubric(text)
    except ValueError as exc:
        return None, f"output did not parse ({exc}; cut off while thinking? max_tokens {request.max_tokens})"
    count = len(criteria)
    if not request.bounds.min_criteria <= count <= request.bounds.max_criteria:
        return (
            None,
            f"criteria count {count} outside [{request.bounds.min_criteria}, {request.bounds.max_criteria}]",
        )
    return criteria, ""
