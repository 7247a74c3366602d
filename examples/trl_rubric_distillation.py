"""TRL's `ServerDistillationTrainer` with rcsd's rubric-conditioned teacher: TRL samples and computes its
own loss; every teacher log-prob comes from rcsd's teacher service after the privileged context (the
row's question and reference answer, and a rubric from rcsd's rubric service). `pip install 'rcsd[trl]'`.

README.md's "Use with TRL" shows the command (tests/client/test_trl.py runs it).

`--data`: JSONL rows with `prompt` (chat messages, or a string: one user turn), `reference_answer` and
optionally `question` (default: the last user message). `--teacher_model_server_url` is TRL's own flag,
pointed at rcsd's teacher. Every other flag is TRL's `ServerDistillationConfig` (`--help`), e.g.
`--use_cpu` on a machine without a GPU; `RCSD_API_KEY` is sent to both services. Without `--rubric_url`
the teacher sees the reference answer only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from datasets import Dataset
from transformers import AutoTokenizer
from trl import TrlParser
from trl.experimental.server_distillation import ServerDistillationConfig

from rcsd.client import RubricClient, TeacherClient
from rcsd.client.integrations.trl import RubricTeacher
from rcsd.recipes.trl import RubricDistillationTrainer


@dataclass
class RubricArguments:
    model_name_or_path: str = field(metadata={"help": "the student: a Hub id or a local folder"})
    data: str = field(metadata={"help": "JSONL rows: prompt, reference_answer, optionally question"})
    rubric_url: str | None = field(default=None, metadata={"help": "rcsd's rubric service"})
    rubric_max_tokens: int = field(default=1024, metadata={"help": "the rubric writer's token budget"})
    record: str | None = field(
        default=None, metadata={"help": "a JSONL file: each teacher call, the context it was shown"}
    )


def read_rows(path: Path) -> list[dict]:
    """The dataset's rows; a string prompt becomes one user turn, so that TRL renders it with the chat
    template (its conversational format) as the teacher's context does."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for row in rows:
        if isinstance(row["prompt"], str):
            row["prompt"] = [{"role": "user", "content": row["prompt"]}]
    return rows


def main(script: RubricArguments, config: ServerDistillationConfig) -> None:
    rows = read_rows(Path(script.data))
    tokenizer = AutoTokenizer.from_pretrained(script.model_name_or_path)
    assert config.teacher_model_server_url is not None  # TRL's config requires it
    teacher = RubricTeacher(
        TeacherClient(config.teacher_model_server_url),
        tokenizer,
        rows,
        rubrics=RubricClient(script.rubric_url) if script.rubric_url else None,
        context_mode="rubric+reference" if script.rubric_url else "reference",
        rubric_options={"max_tokens": script.rubric_max_tokens},
        chat_template_kwargs=config.chat_template_kwargs,
        record=Path(script.record) if script.record else None,
    )
    trainer = RubricDistillationTrainer(
        script.model_name_or_path,
        teacher=teacher,
        args=config,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
    )
    trainer.train()
    trainer.save_model(config.output_dir)
    trainer.save_state()  # trainer_state.json: the logged loss per step


if __name__ == "__main__":
    main(*TrlParser((RubricArguments, ServerDistillationConfig)).parse_args_and_config())
