"""Checkpoint pieces that need no model: RNG states round-trip, only complete checkpoints count."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from rcsd.trainer import checkpoint as ckpt


def test_rng_states_round_trip_through_weights_only_files(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    torch.save(ckpt._rng_states(), tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    ckpt._restore_rng(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_latest_is_the_newest_complete_checkpoint(tmp_path: Path) -> None:
    assert ckpt.latest(tmp_path) is None
    for step, complete in [(2, True), (4, True), (6, False)]:
        path = ckpt.checkpoint_dir(tmp_path, step)
        path.mkdir(parents=True)
        if complete:
            (path / ckpt.COMPLETE_MARKER).write_text(f"{step}\n")
    assert ckpt.latest(tmp_path) == ckpt.checkpoint_dir(tmp_path, 4)
