"""Checkpoints a run can resume from exactly: weights, optimizer, scheduler, RNG states, data position.

    run_dir/checkpoints/step-000020/
        adapter/             peft `save_pretrained` (LoRA)  -- or --  model/  transformers `save_pretrained`
        trainer_state.pt     optimizer, scheduler, step, data position (torch.load(weights_only=True))
        rng-rank0.pt ...     python, numpy, torch (and CUDA) RNG states of each rank
        COMPLETE             written last: a checkpoint without it is ignored

The adapter and model folders are what peft and transformers load, so a checkpoint is also a
result (`PeftModel.from_pretrained(base, ".../adapter")`). Nothing is unpickled beyond tensors and
plain containers: every `torch.load` uses `weights_only=True`.
"""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINTS_DIR = "checkpoints"
COMPLETE_MARKER = "COMPLETE"
ADAPTER_DIR = "adapter"
MODEL_DIR = "model"
STATE_FILE = "trainer_state.pt"


@dataclass(frozen=True)
class TrainerState:
    """What the loop needs besides the weights to continue where it stopped."""

    step: int  # optimizer steps done
    data_position: int  # questions consumed from the data order (global, over all ranks)
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / CHECKPOINTS_DIR / f"step-{step:06d}"


def latest(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    found = sorted((run_dir / CHECKPOINTS_DIR).glob("step-*/" + COMPLETE_MARKER))
    return found[-1].parent if found else None


def weights_dir(checkpoint: Path) -> Path:
    """The adapter folder of a LoRA run, else the full model folder."""
    adapter = checkpoint / ADAPTER_DIR
    return adapter if adapter.is_dir() else checkpoint / MODEL_DIR


def save(
    checkpoint: Path,
    model: torch.nn.Module,
    tokenizer: Any,
    state: TrainerState,
    *,
    is_lora: bool,
    rank: int,
    barrier: Any,
    model_state: dict[str, torch.Tensor] | None = None,
) -> None:
    """Every rank writes its RNG states; rank 0 the weights and state, then the marker last.

    `barrier` (a no-op in a single process) separates the ranks' writes from the marker;
    `model_state`, when given, is the full state dict to save (an FSDP-sharded model's, gathered).
    """
    if rank == 0:
        if checkpoint.exists():  # a partial one from a killed run (no marker): replace it
            shutil.rmtree(checkpoint)
        checkpoint.mkdir(parents=True)
    barrier()
    torch.save(_rng_states(), checkpoint / f"rng-rank{rank}.pt")
    if rank == 0:
        model.save_pretrained(checkpoint / (ADAPTER_DIR if is_lora else MODEL_DIR), state_dict=model_state)
        if not is_lora:
            tokenizer.save_pretrained(checkpoint / MODEL_DIR)
        torch.save(
            {
                "step": state.step,
                "data_position": state.data_position,
                "optimizer": state.optimizer,
                "scheduler": state.scheduler,
            },
            checkpoint / STATE_FILE,
        )
    barrier()
    if rank == 0:
        (checkpoint / COMPLETE_MARKER).write_text(f"{state.step}\n")


def load_state(checkpoint: Path, rank: int) -> TrainerState:
    """Read the trainer state and restore this rank's RNG states."""
    raw = torch.load(checkpoint / STATE_FILE, weights_only=True)
    rng_file = checkpoint / f"rng-rank{rank}.pt"
    if not rng_file.is_file():
        raise FileNotFoundError(f"{rng_file} is missing: resume with the world size the run was saved with")
    _restore_rng(torch.load(rng_file, weights_only=True))
    return TrainerState(
        step=int(raw["step"]),
        data_position=int(raw["data_position"]),
        optimizer=raw["optimizer"],
        scheduler=raw["scheduler"],
    )


def _rng_states() -> dict[str, Any]:
    kind, keys, position, has_gauss, cached = np.random.get_state()
    version, python_state, gauss = random.getstate()
    states: dict[str, Any] = {
        "python": [version, list(python_state), gauss],
        "numpy": [kind, torch.from_numpy(np.asarray(keys).copy()), position, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _restore_rng(states: dict[str, Any]) -> None:
    version, python_state, gauss = states["python"]
    random.setstate((version, tuple(python_state), gauss))
    kind, keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy(), position, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
