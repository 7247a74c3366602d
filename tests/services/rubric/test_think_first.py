"""Rubrics as the release writes them (think first, a free JSON array) and grammars that fit their budget."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import xgrammar
from transformers import AutoTokenizer

from rcsd.client.prompts import designer_prompt_text
from rcsd.client.protocol import ModelInfo, RubricBounds, RubricRequest
from rcsd.client.protocol.rubric_format import (
    JSON_SEPARATORS,
    RubricBudgetError,
    budget_limits,
    generation_schema,
    parse_release_rubric,
)
from rcsd.services.engines.base import Engine, GenerationParams
from rcsd.services.engines.hf import compile_json_grammar
from rcsd.services.kit.admission import Admission
from rcsd.services.kit.errors import ServiceError
from rcsd.services.kit.metrics import ServiceMetrics
from rcsd.services.rubric.service import RubricService
from rcsd.services.rubric.settings import RubricSettings
from rcsd.services.rubric.store import open_store

# rcsd_train_reward.py L38-82 (RubricPromptBuilder.build) at carriegu0818/RCSD f2035f8, with the
# question "Q?" and the reference "R." substituted; typed here from the release, not from the template.
RELEASE_DESIGNER_PROMPT = (
    "# Role You are a top-tier Rubric Designer. Your sole task is to design JSON-formatted evaluation rubrics "
    "based on both the [Question] and the [Reference Answer] provided by the user.\n# Core Task\n1. Analyze "
    "[Question]: Understand every explicit and implicit requirement in the [Question].\n2. Leverage [Reference "
    "Answer]: Use the [Reference Answer] to capture nuanced expectations, desirable reasoning patterns, and "
    "formatting details that high-quality responses should exhibit. Treat it as authoritative context, not "
    "content to be copied.\n3. Create Rubrics: Following the [Evaluation Criteria Format] and [Design Rules] "
    "below, develop 3 to 25 evaluation criteria that ensure candidate answers respond to the [Question] and "
    "match the quality demonstrated in the [Reference Answer].\n4. Output Format: Must strictly follow the "
    "[Output Requirements] with no additional text.\n# [Question]\nQ?\n# [Reference Answer]\nR.\n# [Evaluation "
    "Criteria Format]\n- Each criterion must contain the following fields:\n1. `title`: (String) A 2-5 word "
    "core summary.\n2. `description`: (String) A clear description of no more than 40 words or 5 sentences.\n"
    "3. `weight`: (Integer) A score between -1 and 10.\n\nExample output format (match this style exactly)\n[\n"
    '{"description": "Essential Criteria: The response must explicitly incorporate the 3% efficiency factor to '
    'determine the actual power output in visible photons from the 100-W bulb.", "title": "Efficiency Factor", '
    '"weight": 5},\n{"description": "Important Criteria: The response should correctly calculate the energy of '
    "a single photon using the formula E = hc/\u03bb, with \u03bb approximately equal to 5000 angstrom, ensuring "
    'proper usage of physical constants.", "title": "Photon Energy Calculation", "weight": 5}\n]\nOutput '
    "Requirements (strict)\n* Output ONLY valid JSON.\n* Output must be a JSON array of criterion objects (no "
    "wrapper keys).\n* No markdown, no commentary, no code fences, no extra text.\n* Do not include anything "
    "besides the array.\n* Do not copy sentences from the Reference Answer; write fresh evaluative criteria.\n"
    "Design Rules\n* Prefer testable, concrete criteria over vague ones.\n* Use higher weights (7\u201310) for "
    "essential requirements.\n* Use mid weights (3\u20136) for strong-but-nonessential improvements.\n* Use at "
    "least one negative criterion (weight -1) for major violations (e.g., ignoring constraints, wrong format, "
    "hallucinating, contradicting the reference).\n* Avoid redundancy: each criterion should measure a "
    "distinct aspect.\nNow generate the rubric criteria for the provided Question and Reference Answer."
)
# Qwen3's chat template in the part that matters here: enable_thinking=False writes an empty think block.
QWEN3_LIKE_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}{%- endif %}"
)
RUBRIC = [
    {"title": "Energy", "description": "Uses conservation of energy.", "weight": 8},
    {"title": "Sign error", "description": "Drops the minus sign.", "weight": -1},
    {"title": "Units", "description": "States the answer in joules.", "weight": 3},
]


def test_release_designer_prompt_is_the_released_text():
    assert designer_prompt_text("Q?", "R.", 3, 25, "release") == RELEASE_DESIGNER_PROMPT


def test_release_parse_skips_the_think_block_and_reads_the_first_array():
    text = "<think>A list like [1, 2] in the thinking is not the rubric.</think>\nHere: " + json.dumps(RUBRIC)
    assert [c.model_dump() for c in parse_release_rubric(text)] == RUBRIC


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("<think>\nThe rubric checks [the units and then the budget ran out", "no JSON array"),  # cut off
        ('["Essential Criteria: uses energy."]', "not a criterion"),  # the release keeps these; no weight
        ("[]", "empty"),
        ('[{"title": "a", "description": "b", "weight": 11}]', "not a criterion"),
    ],
)
def test_release_parse_refuses_what_is_no_rubric(text, why):
    with pytest.raises(ValueError, match=why):
        parse_release_rubric(text)


def _longest(schema: dict) -> dict:
    """The longest value the schema admits: every list full, every word at its longest ('x' * n)."""

    def text(pattern: str) -> str:
        word_chars = int(pattern.split("{1,")[1].split("}")[0])
        max_words = int(pattern.split("{0,")[1].split("}")[0]) + 1
        return " ".join(["x" * word_chars] * max_words)

    def item(spec: dict) -> dict:
        props = spec["properties"]
        value = {name: text(props[name]["pattern"]) for name in ("title", "description")}
        return {**value, "weight": 10} if "weight" in props else value

    return {
        name: [item(schema["properties"][name]["items"])] * schema["properties"][name]["maxItems"]
        for name in ("criteria", "pitfalls")
    }


@pytest.fixture(scope="module")
def compiler(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    return xgrammar.GrammarCompiler(
        xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=len(tokenizer))
    )


@pytest.mark.parametrize(
    ("bounds", "max_tokens"), [((3, 25), 1024), ((3, 6), 768), ((2, 2), 1300), ((3, 25), 4096), ((1, 2), 300)]
)
def test_the_longest_rubric_the_grammar_admits_fits_max_tokens(compiler, bounds, max_tokens):
    """One byte is at most one token: the longest admitted JSON, plus the stop token, fits the budget."""
    rubric_bounds = RubricBounds(min_criteria=bounds[0], max_criteria=bounds[1])
    schema = generation_schema(rubric_bounds, max_tokens)
    longest = json.dumps(_longest(schema), separators=JSON_SEPARATORS)
    matcher = xgrammar.GrammarMatcher(compile_json_grammar(compiler, schema))
    assert matcher.accept_string(longest) and matcher.is_completed()  # it is admitted, to the end
    assert len(longest.encode()) + 1 <= max_tokens
    limits = budget_limits(rubric_bounds, max_tokens)
    assert limits.longest_tokens(rubric_bounds) == len(longest.encode()) + 1  # the bound is exact


def test_budget_grammar_admits_no_escape_and_no_multibyte_character(compiler):
    """A JSON escape (6 bytes for one character) or a multi-byte character would break one byte a char."""
    schema = generation_schema(RubricBounds(min_criteria=2, max_criteria=2), 1300)
    grammar = compile_json_grammar(compiler, schema)
    for title in ("\\u0041b", "\u00e9t\u00e9", "ab"):
        value = {
            "criteria": [{"title": title, "description": "d", "weight": 5}],
            "pitfalls": [{"title": "p", "description": "d"}],
        }
        admitted = xgrammar.GrammarMatcher(grammar).accept_string(
            json.dumps(value, separators=JSON_SEPARATORS, ensure_ascii=False)
        )
        assert admitted == (title == "ab"), title


def test_a_budget_too_small_for_min_criteria_names_the_budget_that_fits():
    bounds = RubricBounds(min_criteria=5, max_criteria=5)
    with pytest.raises(RubricBudgetError, match="min_criteria 5") as caught:
        budget_limits(bounds, 16)
    budget_limits(bounds, caught.value.needed)  # the named budget is enough
    with pytest.raises(RubricBudgetError):
        budget_limits(bounds, caught.value.needed - 1)  # and no less is


class _CannedEngine(Engine):
    """Answers every generation with one text and records what it was asked (prompt ids, params)."""

    name = "hf"

    def __init__(self, tokenizer: object, text: str) -> None:
        self.tokenizer = tokenizer
        self.text = text
        self.calls: list[tuple[list[int], GenerationParams]] = []
        self.info = ModelInfo(
            name="canned", revision="0", tokenizer_hash="0", vocab_size=1, max_model_len=8192, dtype="float32"
        )

    async def score(self, context_ids, completions, top_k, temperature):
        raise NotImplementedError

    async def generate(self, prompts: list[list[int]], params: GenerationParams) -> list[str]:
        self.calls.extend((p, params) for p in prompts)
        return [self.text for _ in prompts]

    async def aclose(self) -> None:
        pass


async def _service(tiny_model_dir: Path, tmp_path: Path, version: str, text: str) -> RubricService:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = QWEN3_LIKE_TEMPLATE
    metrics = ServiceMetrics("rubric")
    settings = RubricSettings(template_version=version, store_url=f"sqlite:///{tmp_path / 'r.db'}", model="x")
    store = await open_store(settings.store_url)
    admission = Admission(4, 16, 10**6, 1, metrics)
    return RubricService(_CannedEngine(tokenizer, text), store, settings, metrics, admission)


async def test_release_version_thinks_first_unconstrained_and_parses_as_released(tiny_model_dir, tmp_path):
    think_then_rubric = "<think>\nThe key law is energy.\n</think>\n\n" + json.dumps(RUBRIC)
    service = await _service(tiny_model_dir, tmp_path, "release", think_then_rubric)
    response = await service.generate(
        RubricRequest(question="Q?", reference_answer="R.", top_p=0.95, top_k=20)  # the release's sampling
    )
    [(prompt_ids, params)] = service.engine.calls
    prompt = service.engine.tokenizer.decode(prompt_ids)
    assert RELEASE_DESIGNER_PROMPT in prompt and prompt.endswith("<|im_start|>assistant\n")  # room to think
    assert params.json_schema is None and params.max_tokens == 1024
    assert (params.temperature, params.top_p, params.top_k) == (0.7, 0.95, 20)
    assert [c.model_dump() for c in response.criteria] == RUBRIC
    assert response.template_version == "rubric-release"
    await service.aclose()


async def test_release_version_resamples_a_rubric_cut_off_while_thinking(tiny_model_dir, tmp_path):
    service = await _service(tiny_model_dir, tmp_path, "release", "<think>\nstill thinking when the budget")
    with pytest.raises(ServiceError, match="no JSON array") as caught:
        await service.generate(RubricRequest(question="Q?", reference_answer="R."))
    assert caught.value.status == 422 and len(service.engine.calls) == service.settings.max_attempts
    await service.aclose()


async def test_constrained_version_tells_the_template_not_to_think_and_checks_the_budget(
    tiny_model_dir, tmp_path
):
    service = await _service(tiny_model_dir, tmp_path, "v2", "{}")
    with pytest.raises(ServiceError) as caught:
        await service.generate(RubricRequest(question="Q?", max_tokens=16))
    assert caught.value.status == 422 and caught.value.field == "max_tokens"
    assert "needs max_tokens >= " in caught.value.message and not service.engine.calls
    with pytest.raises(ServiceError, match="did not parse"):  # "{}" is no rubric; the prompt is what we check
        await service.generate(RubricRequest(question="Q?"))
    prompt_ids, params = service.engine.calls[0]
    assert service.engine.tokenizer.decode(prompt_ids).endswith("<think>\n\n</think>\n\n")
    assert params.json_schema == generation_schema(RubricBounds(), 1024)
    await service.aclose()
