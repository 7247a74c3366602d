"""Teacher scoring logic, free of HTTP: validate, build the context, score, answer."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import OrderedDict
from functools import partial

from rcsd.client.protocol import (
    AUTO_RATIONALE,
    RUBRIC_WRITER_MODES,
    CompletionScores,
    ItemFailed,
    ItemOk,
    ServiceInfo,
    TeacherBatchRequest,
    TeacherBatchResponse,
    TeacherRequest,
    TeacherResponse,
)
from rcsd.services.engines.base import Engine, GenerationParams, UnsupportedParameter
from rcsd.services.kit.admission import Admission
from rcsd.services.kit.batch import checked, settle
from rcsd.services.kit.errors import invalid
from rcsd.services.kit.metrics import ServiceMetrics
from rcsd.services.kit.single_flight import SingleFlight
from rcsd.services.teacher.context import TeacherContext
from rcsd.services.teacher.settings import TeacherSettings


class TeacherService:
    def __init__(
        self, engine: Engine, settings: TeacherSettings, metrics: ServiceMetrics, admission: Admission
    ) -> None:
        self.engine = engine
        self.admission = admission
        self.settings = settings
        self.metrics = metrics
        self.context = TeacherContext(
            settings.template_version, engine.tokenizer, settings.rubric_template_version
        )
        self._rationales: OrderedDict[str, str] = OrderedDict()
        self._rationale_flight: SingleFlight[str] = SingleFlight()

    def limits(self) -> dict[str, int]:
        s = self.settings
        return {
            "max_top_k": s.max_top_k,
            "max_completions_per_group": s.max_completions_per_group,
            "max_groups_per_batch": s.max_groups_per_batch,
            "max_completion_tokens_per_request": s.max_completion_tokens_per_request,
            "max_model_len": self.engine.info.max_model_len,
        }

    def info(self) -> ServiceInfo:
        return ServiceInfo(
            service="teacher",
            backend=self.engine.name,
            model=self.engine.info,
            template_version=self.context.version,
            templates=self.context.versions(),
            limits=self.limits(),
        )

    def is_alive(self) -> bool:
        return self.engine.is_alive()

    async def aclose(self) -> None:
        await self.engine.aclose()

    # ---- requests ------------------------------------------------------------------------------

    async def score(self, request: TeacherRequest) -> TeacherResponse:
        self._check_token_budget(sum(len(c) for c in request.completions), "completions")
        # rendering and tokenising are CPU work: off the event loop, like the engine's
        context = await asyncio.to_thread(self._checked_context, request, "")
        async with self.admission.slot(await asyncio.to_thread(self._tokens, request, context)):
            return await self._score_checked(request, context, "")

    async def score_batch(self, batch: TeacherBatchRequest) -> TeacherBatchResponse:
        """Limits of the whole request are a 422; each group's own checks, all done before any group
        computes, and its failures are that group's item error."""
        if len(batch.groups) > self.settings.max_groups_per_batch:
            raise invalid(
                "groups",
                f"{len(batch.groups)} groups exceed max_groups_per_batch {self.settings.max_groups_per_batch}",
            )
        self._check_token_budget(sum(len(c) for g in batch.groups for c in g.completions), "groups")
        prefixes = [f"groups.{i}." for i in range(len(batch.groups))]
        contexts = await asyncio.to_thread(
            lambda: [
                checked(partial(self._checked_context, g, p))
                for g, p in zip(batch.groups, prefixes, strict=True)
            ]
        )
        tokens = await asyncio.to_thread(
            lambda: sum(
                self._tokens(group, context)
                for group, context in zip(batch.groups, contexts, strict=True)
                if not isinstance(context, ItemFailed)
            )
        )
        async with self.admission.slot(tokens):
            works = [
                context if isinstance(context, ItemFailed) else self._score_checked(group, context, prefix)
                for group, context, prefix in zip(batch.groups, contexts, prefixes, strict=True)
            ]
            return TeacherBatchResponse(results=await settle(works, ItemOk[TeacherResponse]))

    def _tokens(self, request: TeacherRequest, context_ids: list[int] | None) -> int:
        """What a group holds while it computes, for admission: its context and completions. An
        `auto` rationale is not written yet: it counts as `rationale_max_tokens` (CPU work: call it
        off the event loop)."""
        completions = sum(len(c) for c in request.completions)
        if context_ids is None:
            around = self.context.render(request, "", rationale="")  # the context, rationale aside
            return len(around) + self.settings.rationale_max_tokens + completions
        return len(context_ids) + completions

    # ---- checks: every limit a client can break is a 422 naming the field --------------------

    def _check_group(self, request: TeacherRequest, prefix: str) -> None:
        s, vocab = self.settings, self.engine.info.vocab_size
        if request.top_k > s.max_top_k:
            raise invalid(f"{prefix}top_k", f"{request.top_k} exceeds max_top_k {s.max_top_k}")
        if len(request.completions) > s.max_completions_per_group:
            raise invalid(
                f"{prefix}completions",
                f"{len(request.completions)} completions exceed "
                f"max_completions_per_group {s.max_completions_per_group}",
            )
        given = "rationale" if request.rationale is not None else "rationale_ids"
        has_rationale = request.rationale is not None or request.rationale_ids is not None
        if has_rationale and request.context_mode == "none":
            raise invalid(f"{prefix}{given}", "a rationale needs a privileged context_mode, not 'none'")
        if has_rationale and request.context_mode in RUBRIC_WRITER_MODES:
            raise invalid(f"{prefix}{given}", "a rationale is for answer modes, not the rubric_writer ones")
        if request.rationale_ids is not None:
            low, high = min(request.rationale_ids), max(request.rationale_ids)
            if low < 0 or high >= vocab:
                bad = low if low < 0 else high
                raise invalid(f"{prefix}rationale_ids", f"token id {bad} outside the vocabulary [0, {vocab})")
        for i, completion in enumerate(request.completions):
            if not completion:
                raise invalid(f"{prefix}completions.{i}", "empty completion (need at least 1 token id)")
            low, high = min(completion), max(completion)
            if low < 0 or high >= vocab:
                bad = low if low < 0 else high
                raise invalid(
                    f"{prefix}completions.{i}", f"token id {bad} outside the vocabulary [0, {vocab})"
                )

    def _check_token_budget(self, tokens: int, field: str) -> None:
        limit = self.settings.max_completion_tokens_per_request
        if tokens > limit:
            raise invalid(
                field, f"{tokens} completion tokens exceed max_completion_tokens_per_request {limit}"
            )

    def _checked_context(self, request: TeacherRequest, prefix: str) -> list[int] | None:
        """The context's token ids, after every check a group can fail before it computes.

        None for `rationale="auto"`: the context holds a rationale not written yet, so only its
        part before the rationale is checked against max_model_len now, the whole of it later.
        """
        self._check_group(request, prefix)
        if request.rationale == AUTO_RATIONALE:
            self._check_lengths(request, len(self.context.analysis_prompt(request, prefix)), prefix)
            return None
        context_ids = self.context.render(request, prefix)
        self._check_lengths(request, len(context_ids), prefix)
        return context_ids

    def _check_lengths(self, request: TeacherRequest, context_length: int, prefix: str) -> None:
        limit = self.engine.info.max_model_len
        for i, completion in enumerate(request.completions):
            if context_length + len(completion) > limit:
                raise invalid(
                    f"{prefix}completions.{i}",
                    f"context ({context_length}) + completion "
                    f"({len(completion)}) tokens exceed max_model_len {limit}",
                )

    # ---- work ----------------------------------------------------------------------------------

    async def _score_checked(
        self, request: TeacherRequest, context_ids: list[int] | None, prefix: str
    ) -> TeacherResponse:
        """Scores a group that passed `_checked_context` (whose answer is `context_ids`)."""
        rationale = request.rationale
        if context_ids is None:
            rationale = await self._auto_rationale(request)
            context_ids = await asyncio.to_thread(self.context.render, request, prefix, rationale)
            self._check_lengths(request, len(context_ids), prefix)
        try:
            scored = await self.engine.score(
                context_ids, request.completions, request.top_k, request.temperature
            )
        except UnsupportedParameter as exc:
            raise invalid(prefix + exc.field, exc.message) from exc
        self.metrics.tokens_scored.inc(sum(len(c) for c in request.completions))
        info = self.engine.info
        return TeacherResponse(
            completions=[
                CompletionScores(
                    token_ids=completion,
                    logprobs=s.logprobs_T,
                    topk_ids=s.topk_ids_T_K,
                    topk_logprobs=s.topk_logprobs_T_K,
                )
                for completion, s in zip(request.completions, scored, strict=True)
            ],
            context_length=len(context_ids),
            context_ids=context_ids if request.return_context_ids else None,
            rationale=rationale,
            model=info.name,
            model_revision=info.revision,
            tokenizer_hash=info.tokenizer_hash,
            backend=self.engine.name,
            template_version=self.context.version_of(request.context_mode, self.context.template_of(request)),
        )

    async def _auto_rationale(self, request: TeacherRequest) -> str:
        """The teacher's own rationale, generated once per privileged context (greedy, cached)."""
        prompt_ids = await asyncio.to_thread(self.context.analysis_prompt, request, "")
        key = hashlib.sha256(json.dumps([self.context.template_of(request), prompt_ids]).encode()).hexdigest()
        if key in self._rationales:
            self._rationales.move_to_end(key)
            return self._rationales[key]
        text, _ = await self._rationale_flight.run(key, lambda: self._generate_rationale(key, prompt_ids))
        return text

    async def _generate_rationale(self, key: str, prompt_ids: list[int]) -> str:
        params = GenerationParams(max_tokens=self.settings.rationale_max_tokens, temperature=0.0, seed=0)
        [text] = await self.engine.generate([prompt_ids], params)
        if self.settings.rationale_cache_size:
            self._rationales[key] = text.strip()
            while len(self._rationales) > self.settings.rationale_cache_size:
                self._rationales.popitem(last=False)
        return text.strip()
