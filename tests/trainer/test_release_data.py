"""The release's data formats (RaR-Science, RubricHub) load as free-form questions; its length filter."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer

from rcsd.trainer.config import TrainConfig
from rcsd.trainer.data.questions import load_questions
from rcsd.trainer.data.release import filter_prompt_ids, within_prompt_budget
from rcsd.trainer.service_calls import ServiceCalls
from rcsd.trainer.tasks import AnsweringQuestions

# RaR-Science's columns (HF card anisha2102/RaR-Science): rubric dicts and category-prefixed strings
RAR = [
    {
        "question": "A 2 kg ball falls 5 m. Its speed at the ground?",
        "reference_answer": "v = sqrt(2gh) = 9.9 m/s",
        "question_source": "physics",
        "rubric": [
            {"description": "Essential Criteria: uses energy conservation.", "title": "Energy", "weight": 5},
            {"description": "Pitfall Criteria: forgets the square root.", "title": "Root", "weight": -1},
        ],
        "rubric_list": [
            "Essential Criteria: uses energy conservation.",
            "Pitfall Criteria: forgets the root.",
        ],
        "rubric_count": 2,
    },
    {
        "question": "No reference here",
        "reference_answer": "  ",
        "rubric": [{"title": "t", "description": "d"}],
    },
]
# RubricHub's sft_RuFT columns (TRAIN L231): source, query, answer, rubrics (criterion/points fallbacks)
RUBRICHUB = [
    {"source": "RaR_science.jsonl", "query": "Define entropy.", "answer": "S = k ln W",
     "rubrics": [{"criterion": "Gives Boltzmann's formula.", "points": 7}, {"description": "Names k."}]},
    {"source": "MathChat.jsonl", "query": "2 + 2?", "answer": "4", "rubrics": [{"criterion": "Says 4."}]},
    {"source": "MegeScience.jsonl", "query": "What is a mole?", "answer": "6.022e23 entities",
     "rubrics": json.dumps([{"title": "Avogadro", "description": "Gives N_A.", "weight": 8}])},
]  # fmt: skip


def _write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_rar_science_jsonl_loads_as_free_form_questions_dropping_empty_references(tmp_path):
    [q] = load_questions([_write_jsonl(tmp_path / "rar.jsonl", RAR)])
    assert (q.id, q.source, q.answer_type) == ("rar-0", "physics", "free_form")
    assert q.question == RAR[0]["question"] and q.reference_answer == RAR[0]["reference_answer"]
    assert [(i.title, i.description, i.weight) for i in q.rubric] == [
        ("Energy", "Essential Criteria: uses energy conservation.", 5.0),
        ("Root", "Pitfall Criteria: forgets the square root.", -1.0),
    ]


def test_rubric_list_strings_keep_their_category(tmp_path):
    records = [{k: v for k, v in RAR[0].items() if k != "rubric"}]
    [q] = load_questions([_write_jsonl(tmp_path / "gt.jsonl", records)])
    assert [(i.category, i.description) for i in q.rubric] == [
        ("Essential", "uses energy conservation."),
        ("Pitfall", "forgets the root."),
    ]


def test_rubrichub_parquet_keeps_the_science_sources_with_the_release_fallbacks(tmp_path):
    path = tmp_path / "sft_RuFT.parquet"
    pq.write_table(
        pa.Table.from_pylist(
            [
                {**r, "rubrics": r["rubrics"] if isinstance(r["rubrics"], str) else json.dumps(r["rubrics"])}
                for r in RUBRICHUB
            ]
        ),
        path,
    )
    questions = load_questions([path])
    assert [q.question for q in questions] == ["Define entropy.", "What is a mole?"]  # MathChat dropped
    assert [(i.title, i.description, i.weight) for i in questions[0].rubric] == [
        ("Criterion 1", "Gives Boltzmann's formula.", 7.0),
        ("Criterion 2", "Names k.", 1.0),
    ]
    assert questions[1].rubric[0].title == "Avogadro" and questions[1].source == "MegeScience.jsonl"


def test_save_to_disk_folder_and_json_list_load_in_order(tmp_path):
    rows = [{**RAR[0], "question": f"Q{i}?"} for i in range(5)]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "cache"), num_shards=2)
    assert [q.question for q in load_questions([tmp_path / "cache"])] == [f"Q{i}?" for i in range(5)]
    (tmp_path / "test.json").write_text(json.dumps(rows[:2]), encoding="utf-8")
    assert [q.id for q in load_questions([tmp_path / "test.json"])] == ["test-0", "test-1"]


def test_release_files_mix_with_rcsd_slices(tmp_path):
    questions = load_questions(["scibench_heldout", _write_jsonl(tmp_path / "rar.jsonl", RAR)])
    assert questions[-1].answer_type == "free_form" and len(questions) == 33


def test_length_filter_counts_the_release_filter_prompt(tmp_path, tiny_model_dir):
    """Kept iff the chat-templated filter prompt (TRAIN L421-475, typed here from the release) has at
    most the budget's tokens: at exactly its length kept, one token less dropped."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    [q] = load_questions([_write_jsonl(tmp_path / "rar.jsonl", RAR)])
    rubric = json.dumps(
        [{"title": i.title, "description": i.description, "weight": i.weight} for i in q.rubric],
        ensure_ascii=False,
    )
    text = (
        f"Question: {q.question}\n\nReference Answer:\n{q.reference_answer}\n\nRubric (JSON array):\n{rubric}\n\n\n"
        "The reference answer and rubric above are authoritative. Briefly explain the key requirements, "
        "constraints, and reasoning expectations implied by them. Do NOT solve the question yet. Do NOT use "
        "<think> tags.\n"
    )
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
    )
    length = len(tokenizer(rendered, add_special_tokens=False)["input_ids"])
    assert within_prompt_budget([q], tokenizer, max_tokens=length) == [q]
    assert within_prompt_budget([q], tokenizer, max_tokens=length - 1) == []


@pytest.mark.parametrize(
    "bad",
    [
        {"question": "q", "reference_answer": "r"},  # no rubric
        {"reference_answer": "r", "rubric": [{"title": "t", "description": "d"}]},  # no question
        {"question": "q", "reference_answer": "r", "rubric": [{"title": "t"}]},  # no criterion to check
    ],
)
def test_records_missing_a_part_are_dropped(tmp_path, bad):
    path = _write_jsonl(tmp_path / "rar.jsonl", [RAR[0], bad])  # the first record tells the format
    assert [q.question for q in load_questions([path])] == [RAR[0]["question"]]
    with pytest.raises(ValueError, match="no record with a question"):
        (tmp_path / "only_bad.json").write_text(json.dumps([bad]), encoding="utf-8")
        load_questions([tmp_path / "only_bad.json"])


def test_the_task_drops_questions_over_the_privileged_prompt_budget(tmp_path, tiny_model_dir):
    """`data_max_privileged_prompt_tokens`: the training task keeps the questions whose filter prompt fits,
    in order, and counts the rest; without the setting nothing is measured or dropped."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    long = {**RAR[0], "question": RAR[0]["question"] + " Explain every step in words." * 40}
    path = _write_jsonl(
        tmp_path / "rar.jsonl", [RAR[0], long, {**RAR[0], "question": "Why is the sky blue?"}]
    )
    questions = load_questions([path])
    lengths = [len(filter_prompt_ids(tokenizer, q)) for q in questions]
    assert lengths[1] > max(lengths[0], lengths[2])

    def task(**fields: object) -> AnsweringQuestions:
        config = TrainConfig(data=[str(path)], **fields)
        calls = ServiceCalls(config)
        calls.close()  # no call is made: the task only loads its questions here
        return AnsweringQuestions(config, calls, tokenizer)

    kept = task(data_max_privileged_prompt_tokens=max(lengths[0], lengths[2]))
    assert [q.id for q in kept.questions] == ["rar-0", "rar-2"] and kept.dropped_long == 1
    everything = task()
    assert len(everything.questions) == 3 and everything.dropped_long == 0
    with pytest.raises(ValueError, match="stage reasoner"):
        TrainConfig(stage="rubric_generator", teacher={"context_mode": "rubric_writer+reference_rubric"},
                    data_max_privileged_prompt_tokens=2048)  # fmt: skip
