"""A stock `vllm serve` as the teacher (`rcsd.client.stock_vllm`): the same scores as rcsd's own teacher
service (vllm backend) on the same contexts, every layout, and a refusal for what a stock server cannot do.

The README's "Use a stock vLLM server as the teacher" commands are what runs here: the stock server is
started with the flags of its `vllm serve` line (the tiny model in place of the README's, a free port,
and CPU-only flags added), and its `rcsd train` line trains against it (the tiny config as `my.yaml`).
"""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from transformers import AutoTokenizer

from rcsd.client import TeacherClient
from rcsd.client.protocol import TeacherRequest
from rcsd.client.stock_vllm import StockTeacherError, StockVLLMTeacher
from rcsd.recipes.launch import ServiceProcess, StockVLLMProcess, stop_all
from rcsd.trainer.metrics import read_metrics
from tests.docs import readme
from tests.services.teacher.conftest import _teacher
from tests.services.teacher.payloads import QUESTION, group, random_completions
from tests.trainer.configs import tiny_config
from tests.trainer.test_train import TEACHER_METRICS

pytest.importorskip("vllm")
# two vLLM engines start in the module's fixture: minutes on a busy CPU machine
pytestmark = [pytest.mark.vllm, pytest.mark.timeout(1500)]

TOP_K = 5  # within the README's --max-logprobs
TOLERANCE = 1e-4  # two vLLM processes, fp32, different batch shapes (a group vs one prompt per completion)
MESSAGES = [
    {"role": "system", "content": "You are a careful physics tutor."},
    {"role": "user", "content": QUESTION},
]


SERVE, TRAIN = readme.bash_block("Use a stock vLLM server as the teacher").splitlines()


def _serve_flags() -> tuple[list[str], str]:
    """The README's `vllm serve MODEL --port P ...` line: its flags but the port, and the port."""
    program, command, _model, *flags = shlex.split(SERVE, comments=True)
    assert (program, command) == ("vllm", "serve"), SERVE
    at = flags.index("--port")
    port = flags[at + 1]
    del flags[at : at + 2]
    return flags, port


@pytest.fixture(scope="module")
def teachers(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    """(rcsd's teacher service on the vllm backend, a stock `vllm serve` of the same model) as clients."""
    logs = tmp_path_factory.mktemp("stock-logs")
    flags = [*_serve_flags()[0], "--dtype", "float32", "--enforce-eager"]  # exact and CPU-only
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


def _prompt_tokens(url: str) -> float:
    """The prompt tokens a vLLM server has scored, from its Prometheus metrics."""
    lines = httpx.get(f"{url}/metrics", timeout=10).text.splitlines()
    return sum(float(line.split()[-1]) for line in lines if line.startswith("vllm:prompt_tokens_total"))


def test_readme_rcsd_train_line_trains_against_the_stock_teacher(
    teachers, tiny_model_dir, questions_file, tmp_path
):
    """`services.teacher_server: stock_vllm`: a training step whose teacher scores come from the stock
    server (the reference mode: no rubric service needed)."""
    _, theirs, _ = teachers
    stock_url, run_dir = theirs.replicas[0].url, tmp_path / "run"
    config = tiny_config(
        tiny_model_dir,
        run_dir,
        steps=1,
        method="opsd",
        prompts_per_step=2,
        sampling={"max_new_tokens": 6},
        teacher={"context_mode": "reference", "top_k": TOP_K},
        services={"deadline_s": 60},
        data=[str(questions_file)],
    )
    my_yaml = tmp_path / "my.yaml"
    my_yaml.write_text(yaml.safe_dump(config.model_dump(mode="json", exclude_unset=True)))
    command = readme.substitute(
        TRAIN, {"my.yaml": str(my_yaml), f"http://127.0.0.1:{_serve_flags()[1]}": stock_url}
    )
    scored_before = _prompt_tokens(stock_url)
    done = readme.run_bash(command, timeout_s=600)
    assert done.returncode == 0, f"{command}\nexit {done.returncode}: {done.stderr[-4000:]}"
    [record] = read_metrics(run_dir)
    assert all(key in record for key in TEACHER_METRICS) and np.isfinite(record["loss"])
    assert _prompt_tokens(stock_url) > scored_before  # the teacher scores came from the stock server
