"""A stock `vllm serve` as the teacher (`rcsd.client.stock_vllm`): the same scores as rcsd's own teacher
service (vllm backend) on the same contexts, every layout, and a refusal for what a stock server cannot do."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer

from rcsd.client import TeacherClient
from rcsd.client.protocol import TeacherRequest
from rcsd.client.stock_vllm import StockTeacherError, StockVLLMTeacher
from rcsd.recipes.launch import ServiceProcess, StockVLLMProcess, stop_all
from rcsd.trainer.metrics import read_metrics
from rcsd.trainer.train import main
from tests.services.teacher.conftest import _teacher
from tests.services.teacher.payloads import QUESTION, group, random_completions
from tests.trainer.configs import tiny_config
from tests.trainer.test_train import TEACHER_METRICS

pytest.importorskip("vllm")
# two vLLM engines start in the module's fixture: minutes on a busy CPU machine
pytestmark = [pytest.mark.vllm, pytest.mark.timeout(1500)]

TOP_K = 5
TOLERANCE = 1e-4  # two vLLM processes, fp32, different batch shapes (a group vs one prompt per completion)
MESSAGES = [
    {"role": "system", "content": "You are a careful physics tutor."},
    {"role": "user", "content": QUESTION},
]


@pytest.fixture(scope="module")
def teachers(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    """(rcsd's teacher service on the vllm backend, a stock `vllm serve` of the same model) as clients."""
    logs = tmp_path_factory.mktemp("stock-logs")
    flags = ["--dtype", "float32", "--max-logprobs", str(TOP_K + 1), "--enforce-eager"]
    stock = StockVLLMProcess(tiny_model_dir, flags, logs, cpu_kv_cache_gib=1)
    started: list[ServiceProcess] = []
    try:
        started.append(stock.start(timeout_s=600))
        started.append(_teacher(tiny_model_dir, "vllm", logs))
        tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
        ours = TeacherClient(started[1].url, timeout=300)
        theirs = StockVLLMTeacher(stock.url, timeout=300)
        assert theirs.check_compatible(tokenizer).model.name == str(tiny_model_dir)
        yield ours, theirs, tokenizer
    finally:
        stop_all(started)


def _cases(tokenizer) -> list[TeacherRequest]:
    completions = random_completions(len(tokenizer), [7, 12, 3], seed=3)
    analysis = tokenizer("Recall h = g t^2 / 2.", add_special_tokens=False)["input_ids"]
    bodies = [
        group("rubric+reference", completions),
        group("rubric+reference", completions, rationale_ids=analysis),
        group("reference", completions, template_version="v1", rationale="Recall h = g t^2 / 2."),
        group("none", completions, messages=MESSAGES, chat_template_kwargs={"enable_thinking": False}),
        group("rubric", completions, messages=MESSAGES),
    ]
    return [TeacherRequest.model_validate({**b, "top_k": TOP_K, "return_context_ids": True}) for b in bodies]


def test_stock_vllm_scores_equal_rcsd_teacher(teachers):
    ours, theirs, tokenizer = teachers
    for request in _cases(tokenizer):
        want, got = ours.score(request), theirs.score(request)
        assert got.context_ids == want.context_ids, request.context_mode
        for w, g in zip(want.completions, got.completions, strict=True):
            np.testing.assert_array_equal(g.token_ids, w.token_ids)
            np.testing.assert_allclose(g.logprobs, w.logprobs, atol=TOLERANCE, rtol=0)
            np.testing.assert_allclose(g.topk_logprobs, w.topk_logprobs, atol=TOLERANCE, rtol=0)
            # the same ids, except where two candidates tie within the tolerance
            same = g.topk_ids == w.topk_ids
            gaps = np.abs(np.diff(w.topk_logprobs, axis=-1))
            near_tie = np.zeros_like(same)
            near_tie[:, :-1] |= gaps < TOLERANCE
            near_tie[:, 1:] |= gaps < TOLERANCE
            assert (same | near_tie).all(), request.context_mode


def test_what_a_stock_server_cannot_do_is_refused(teachers):
    _, theirs, tokenizer = teachers
    request = _cases(tokenizer)[0]
    with pytest.raises(StockTeacherError, match="rationale"):
        theirs.score(request.model_copy(update={"rationale": "auto"}))
    with pytest.raises(StockTeacherError, match="temperature"):
        theirs.score(request.model_copy(update={"temperature": 0.7}))

    class OtherTokenizer:
        def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
            return {"input_ids": [3] * len(text)}

    with pytest.raises(StockTeacherError, match="not yours"):
        StockVLLMTeacher(theirs.replicas[0].url).check_compatible(OtherTokenizer())


def test_rcsd_trains_against_a_stock_vllm_teacher(teachers, tiny_model_dir, questions_file, tmp_path):
    """`services.teacher_server: stock_vllm`: a training step whose teacher scores come from the stock
    server (the reference mode: no rubric service needed)."""
    _, theirs, _ = teachers
    config = tiny_config(
        tiny_model_dir,
        tmp_path,
        steps=1,
        method="opsd",
        prompts_per_step=2,
        sampling={"max_new_tokens": 6},
        teacher={"context_mode": "reference", "top_k": TOP_K},
        services={"teacher_urls": [theirs.replicas[0].url], "teacher_server": "stock_vllm", "deadline_s": 60},
        data=[str(questions_file)],
    )
    [record] = read_metrics(main(config))
    assert all(key in record for key in TEACHER_METRICS) and np.isfinite(record["loss"])
