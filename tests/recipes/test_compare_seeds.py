"""`seeds` in a comparison: each trained arm runs once per seed in its own folder, the base arm once.

- the runs are `<arm>.seed<k>`, each with its own training seed and output folder (and so its own
  resume marker), every other shared field equal; the untrained base arm runs once;
- a seed set by the shared section or an arm is refused (the comparison owns it), as are duplicates;
- a GRPO-only comparison with two seeds on the tiny model (no services) trains both, to different
  weights, and a second run resumes: it retrains nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from rcsd.recipes.compare.config import CompareConfig, arm_hash
from rcsd.recipes.compare.run import run_comparison
from rcsd.trainer import checkpoint as ckpt


def _config(**changes: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "name": "seeded",
        "rollouts_per_step": 2,
        "grpo_group_size": 2,
        "seeds": [3, 5, 7],
        "train": {"steps": 1, "data": ["learnability_train"]},
        "arms": [
            {"name": "base", "method": "base"},
            {"name": "rcsd", "method": "rcsd"},
            {"name": "grpo", "method": "grpo"},
        ],
        "eval": {"data": ["learnability_heldout"]},
    }
    config.update(changes)
    return config


def test_each_trained_arm_runs_once_per_seed_and_base_once():
    config = CompareConfig.model_validate(_config())
    runs = config.runs()
    assert [r.name for r in runs] == [  # seed by seed, so a run stopped early has every arm
        "base.seed3",
        *(f"{arm}.seed{s}" for s in (3, 5, 7) for arm in ("rcsd", "grpo")),
    ]
    trained = [(r, config.arm_config(r, Path("out"))) for r in runs if r.method != "base"]
    assert [(r.group, t.seed) for r, t in trained if t] == [
        (arm, s) for s in (3, 5, 7) for arm in ("rcsd", "grpo")
    ]
    assert len({t.output_dir for _, t in trained if t}) == 6
    assert len({arm_hash(config, r) for r in runs}) == 7  # each run resumes only from its own folder
    first = trained[0][1].model_dump(exclude={"seed", "output_dir"})  # type: ignore[union-attr]
    assert all(t.model_dump(exclude={"seed", "output_dir"}) == first for r, t in trained if r.group == "rcsd")  # type: ignore[union-attr]
    # without seeds: the arms themselves, at the shared seed
    plain = CompareConfig.model_validate(_config(seeds=[]))
    assert [r.name for r in plain.runs()] == ["base", "rcsd", "grpo"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"train": {"steps": 1, "seed": 1}}, "set by the comparison"),
        (
            {"arms": [{"name": "rcsd", "method": "rcsd", "overrides": {"seed": 1}}]},
            "set by the comparison",
        ),
        ({"seeds": [1, 1]}, "seeds must be unique"),
    ],
)
def test_a_seed_the_comparison_owns_is_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        CompareConfig.model_validate(_config(**changes))


def test_seeded_grpo_runs_train_apart_and_resume(tiny_model_dir, questions_file, tmp_path):
    out = tmp_path / "run"
    config = CompareConfig.model_validate(
        {
            "name": "tiny-seeds",
            "output_dir": str(out),
            "rollouts_per_step": 2,
            "grpo_group_size": 2,
            "seeds": [0, 1],
            "train": {
                "model": str(tiny_model_dir),
                "dtype": "float32",
                "device": "cpu",
                "lora": {"r": 4, "alpha": 8},
                "lr": 1e-2,
                "steps": 1,
                "sampling": {"max_new_tokens": 4},
                "data": [str(questions_file)],
                "progress": False,
                "plots": False,
            },
            "arms": [{"name": "grpo", "method": "grpo"}],
            "eval": {"data": [str(questions_file)], "limit": 1, "max_new_tokens": 2, "batch_size": 2},
        }
    )
    run_comparison(config)
    weights = {}
    for seed in (0, 1):
        folder = out / "arms" / f"grpo.seed{seed}"
        assert (folder / "DONE").is_file() and (folder / "eval.json").is_file()
        latest = ckpt.latest(folder)
        assert latest is not None
        weights[seed] = load_file(ckpt.weights_dir(latest) / "adapter_model.safetensors")
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0])  # seeded apart
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("adapter_model.safetensors")}
    run_comparison(config)  # resumes: both runs are finished, nothing is retrained
    assert {p: p.stat().st_mtime_ns for p in out.rglob("adapter_model.safetensors")} == stamps
    assert "grpo, seed 1" in (out / "report.md").read_text()
