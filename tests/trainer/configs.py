"""Training configs and checkpoint reads the trainer tests share (the tiny model, services on loopback)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from rcsd.recipes.launch import ServiceProcess
from rcsd.trainer import checkpoint as ckpt
from rcsd.trainer.config import TrainConfig


def tiny_config(model: Path, out: Path, **fields: object) -> TrainConfig:
    """Two LoRA steps on CPU in float32, quiet; `fields` replace whole top-level keys."""
    base: dict[str, object] = {
        "model": str(model),
        "dtype": "float32",
        "device": "cpu",
        "lora": {"r": 4, "alpha": 8},
        "lr": 1e-2,  # large, so that two steps move the tiny model's weights visibly
        "steps": 2,
        "output_dir": str(out),
        "progress": False,
        "plots": False,
    }
    return TrainConfig.model_validate({**base, **fields})


def answer_config(
    model: Path, services: dict[str, ServiceProcess], data: Path, out: Path, **fields: object
) -> TrainConfig:
    """Stage II (answers) against both services, on the questions in `data`."""
    stage2: dict[str, object] = {
        "prompts_per_step": 2,
        "sampling": {"max_new_tokens": 6},
        "teacher": {"top_k": 8},
        "rubric": {"min_criteria": 1, "max_criteria": 2, "max_tokens": 300, "on_failure": "reference"},
        "services": {
            "teacher_urls": [services["teacher"].url],
            "rubric_urls": [services["rubric"].url],
            "deadline_s": 60,
        },
        "data": [str(data)],
    }
    return tiny_config(model, out, **{**stage2, **fields})


def adapter_weights(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    """The LoRA weights a run checkpointed at `step`."""
    return load_file(ckpt.checkpoint_dir(run_dir, step) / "adapter" / "adapter_model.safetensors")
