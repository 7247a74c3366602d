"""A stock vLLM server as the teacher: `POST /v1/completions` with `prompt_logprobs`, no rcsd server.

    teacher = StockVLLMTeacher("http://vllm:8000")      # an unmodified `vllm serve MODEL`
    teacher.check_compatible(tokenizer)                 # the trainer's tokenizer renders the contexts
    response = teacher.score(request)                   # the TeacherResponse rcsd's teacher answers

The context is rendered here, by the function the teacher service calls (`render_teacher_context`),
and each completion goes as one prompt of token ids, context + completion, with `max_tokens=1` and
`prompt_logprobs=top_k`: vLLM then returns, for every prompt position, the log-prob of the prompt's
own token and the top-k, which at the completion's positions are the teacher's scores.

What a stock server cannot do (refused here with StockTeacherError before anything is sent):
- `rationale="auto"`: the teacher writing its own reason-first analysis needs a generation before the
  scoring; send the rationale (text or `rationale_ids`) instead;
- `temperature` other than 1: vLLM's prompt log-probs are of the raw logits;
- share a group's context: every completion is a prompt of its own, and the context is computed
  again for each (rcsd's service computes it once per group; `bench/stock_teacher.py` measures it);
- top_k above the server's `--max-logprobs` (20 unless raised; the server answers 400);
- report its tokenizer hash or model revision: `check_compatible` compares the server's `/tokenize`
  with the trainer's tokenizer on a probe text instead, and there is no revision to pin.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx
import numpy as np

from rcsd.client._base import SyncAPIClient
from rcsd.client._call import Timeout
from rcsd.client.prompts import DESIGNER_VERSION, TEMPLATE_VERSION
from rcsd.client.prompts.teacher_context import render_teacher_context
from rcsd.client.protocol import (
    AUTO_RATIONALE,
    CompletionScores,
    ModelInfo,
    ServiceInfo,
    TeacherRequest,
    TeacherResponse,
)
from rcsd.client.protocol.common import ResponseModel, WireModel
from rcsd.client.tokenizer_identity import tokenizer_hash, tokenizer_vocab_size

COMPLETIONS_PATH = "/v1/completions"
PROBE_TEXT = "Tokenizer probe: E = h·c/λ, ∫x²dx, 東京, <|im_start|>user\n"
STOCK_REVISION = "stock-vllm"  # a stock server reports no revision


class StockTeacherError(ValueError):
    """A request a stock vLLM server cannot answer, or a server whose tokenizer is not the trainer's."""


class _CompletionRequest(WireModel):
    model: str
    prompt: list[list[int]]
    max_tokens: int = 1
    prompt_logprobs: int
    temperature: float = 0.0


class _Logprob(ResponseModel):
    logprob: float
    rank: int | None = None


class _Choice(ResponseModel):
    index: int
    prompt_logprobs: list[dict[int, _Logprob] | None]


class _Completion(ResponseModel):
    choices: list[_Choice]


class _Model(ResponseModel):
    id: str
    root: str | None = None
    max_model_len: int | None = None


class _Models(ResponseModel):
    data: list[_Model]


class _Tokens(ResponseModel):
    tokens: list[int]


class _TokenizeRequest(WireModel):
    model: str
    prompt: str
    add_special_tokens: bool = False


class StockVLLMTeacher(SyncAPIClient):
    """The trainer's teacher client for an unmodified vLLM OpenAI server (`TeacherClient`'s calls)."""

    def __init__(
        self,
        base_url: str | Sequence[str],
        *,
        model: str | None = None,
        template_version: str = TEMPLATE_VERSION,
        rubric_version: str = DESIGNER_VERSION,
        **kwargs: Any,
    ) -> None:
        """As `SyncAPIClient` (JSON only: vLLM speaks no msgpack); `model`: the served name (default:
        the server's first); the template versions render contexts as the teacher service's defaults."""
        super().__init__(base_url, binary=False, **kwargs)
        self.model, self.template_version, self.rubric_version = model, template_version, rubric_version
        self.tokenizer: Any = None
        self._info: ServiceInfo | None = None

    def _default_http(self) -> httpx.Client:
        return httpx.Client()

    def _probe_request(self, http: httpx.Client | httpx.AsyncClient, replica: Any) -> httpx.Request:
        return http.build_request("GET", replica.url + "/health", timeout=5.0)

    def check_compatible(self, tokenizer: Any, *, vocab_size: int | None = None) -> ServiceInfo:
        """Keep `tokenizer` (it renders every context) after checking the server tokenizes a probe
        text to the same ids; the info's model name is the served model's."""
        options = self._options()
        [served, *_] = self._request("GET", "/v1/models", _Models, options=options).data
        self.model = self.model or served.id
        probe = _TokenizeRequest(model=self.model, prompt=PROBE_TEXT)
        theirs = self._request("POST", "/tokenize", _Tokens, options=options.part("tokenize"), body=probe)
        ours = list(tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"])
        if theirs.tokens != ours:
            raise StockTeacherError(
                f"the vLLM server's tokenizer ({self.model}) is not yours: {PROBE_TEXT!r} gives "
                f"{theirs.tokens[:12]}... there, {ours[:12]}... here"
            )
        self.tokenizer = tokenizer
        self._info = ServiceInfo(
            service="teacher",
            backend="vllm",
            model=ModelInfo(
                name=self.model,
                revision=STOCK_REVISION,
                tokenizer_hash=tokenizer_hash(tokenizer),
                vocab_size=vocab_size or tokenizer_vocab_size(tokenizer),
                max_model_len=served.max_model_len or 0,
                dtype="unknown",
            ),
            template_version=f"teacher-{self.template_version}",
            limits={},
        )
        return self._info

    def score(
        self, request: TeacherRequest, *, timeout: Timeout | None = None, request_id: str | None = None
    ) -> TeacherResponse:
        """One group's scores, computed by the stock server after the context rendered here."""
        if self._info is None or self.tokenizer is None:
            raise StockTeacherError("call check_compatible(tokenizer) first: contexts are rendered here")
        if request.rationale == AUTO_RATIONALE:
            raise StockTeacherError(
                "a stock vLLM server cannot write the teacher's own rationale (rationale='auto'): "
                "send the rationale as text or rationale_ids"
            )
        if request.temperature != 1.0:
            raise StockTeacherError("a stock vLLM server's prompt log-probs are at temperature 1 only")
        version = request.template_version or self.template_version
        context_ids = render_teacher_context(
            self.tokenizer, request, version, rubric_version=self.rubric_version
        )
        body = _CompletionRequest(
            model=self._info.model.name,
            prompt=[context_ids + completion for completion in request.completions],
            prompt_logprobs=request.top_k,
        )
        options = self._options(timeout=timeout, request_id=request_id)
        answer = self._request("POST", COMPLETIONS_PATH, _Completion, options=options, body=body)
        choices = sorted(answer.choices, key=lambda c: c.index)
        return TeacherResponse(
            completions=[
                _scores(choice, len(context_ids), completion, request.top_k)
                for choice, completion in zip(choices, request.completions, strict=True)
            ],
            context_length=len(context_ids),
            context_ids=context_ids if request.return_context_ids else None,
            rationale=request.rationale,
            model=self._info.model.name,
            model_revision=STOCK_REVISION,
            tokenizer_hash=self._info.model.tokenizer_hash,
            backend="vllm",
            template_version=f"teacher-{version}",
        )


def _scores(choice: _Choice, context_length: int, completion: list[int], top_k: int) -> CompletionScores:
    """A completion's rows of vLLM's `prompt_logprobs` (position i: the prompt's token i given the ones
    before it, plus the top-k by rank) as the teacher service's CompletionScores."""
    rows = choice.prompt_logprobs[context_length:]
    if len(rows) != len(completion) or any(row is None for row in rows):
        raise StockTeacherError(
            f"vLLM answered {len(rows)} prompt log-prob rows for {len(completion)} tokens"
        )
    logprobs_T = np.array([row[token].logprob for row, token in zip(rows, completion, strict=True)])  # type: ignore[index]
    if top_k == 0:
        return CompletionScores(token_ids=np.array(completion), logprobs=logprobs_T)
    ranked = [sorted(row.items(), key=lambda kv: kv[1].rank or 0)[:top_k] for row in rows]  # type: ignore[union-attr]
    return CompletionScores(
        token_ids=np.array(completion),
        logprobs=logprobs_T,
        topk_ids=np.array([[token for token, _ in top] for top in ranked]),
        topk_logprobs=np.array([[lp.logprob for _, lp in top] for top in ranked]),
    )
