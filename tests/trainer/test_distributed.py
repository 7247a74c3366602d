"""Torch's DDP and FSDP2 under 2 gloo ranks on CPU (the tiny model, services on loopback).

- ddp (LoRA) and fsdp (full fine-tuning) each give the weights of one process on the same global
  batch, with the optimiser's default settings: ddp with the loss averaged per completion (the
  default, the release's), fsdp with one token mean (`loss.normalize: token`);
- a 2-rank fsdp run stopped after step 2 and resumed from its checkpoint (full state dicts: the HF
  model folder and the unsharded Adam state) ends with the weights of the run that never stopped.
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from rcsd.trainer import checkpoint as ckpt
from rcsd.trainer.config import TrainConfig
from rcsd.trainer.metrics import read_metrics
from rcsd.trainer.train import main
from tests.trainer.configs import answer_config

# float64: summing gradients over ranks rounds differently than in one process; Adam divides each
# gradient by its own size, so in float32 that noise moves a near-zero gradient's weight by up to lr.
BATCH = {
    "prompts_per_step": 4,
    "rollouts_per_prompt": 2,
    "sampling": {"max_new_tokens": 5},
    "dtype": "float64",
}
FULL = {"lora": {"enabled": False}, "lr": 1e-3, "distributed": {"strategy": "fsdp"}}
TOKEN_MEAN = {"loss": {"normalize": "token"}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, config_json: str, port: int, resume: bool) -> None:
    os.environ.update(
        {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
    )
    torch.set_num_threads(1)
    main(TrainConfig.model_validate_json(config_json), resume=resume)


def _two_ranks(config: TrainConfig, *, resume: bool = False) -> None:
    mp.spawn(_rank, args=(config.model_dump_json(), _free_port(), resume), nprocs=2, join=True)


def _weights(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    folder = ckpt.weights_dir(ckpt.checkpoint_dir(run_dir, step))
    name = "adapter_model.safetensors" if folder.name == ckpt.ADAPTER_DIR else "model.safetensors"
    return load_file(folder / name)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_gloo_ranks_equal_one_process(
    strategy, tiny_model_dir, trainer_services, questions_file, tmp_path
):
    fields = {**BATCH, "checkpoint_every": 1, **({**FULL, **TOKEN_MEAN} if strategy == "fsdp" else {})}
    single = answer_config(tiny_model_dir, trainer_services, questions_file, tmp_path / "one", **fields)
    main(single)
    _two_ranks(single.model_copy(update={"output_dir": str(tmp_path / "two")}))

    one, two = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "two")
    for a, b in zip(one, two, strict=True):  # the same global batch: same tokens, same loss
        assert a["rollout_tokens"] == b["rollout_tokens"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-7)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)
    start, expected = _weights(tmp_path / "one", 1), _weights(tmp_path / "one", 2)
    got = _weights(tmp_path / "two", 2)
    assert got.keys() == expected.keys()
    moved = max((expected[n] - start[n]).abs().max().item() for n in expected)
    assert moved > 1e-4  # the second step changed the weights, so the comparison means something
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, rtol=1e-4, atol=1e-6, msg=name)


def test_fsdp_resumes_exactly(tiny_model_dir, trainer_services, questions_file, tmp_path):
    run_dir = tmp_path / "run"
    config = answer_config(
        tiny_model_dir,
        trainer_services,
        questions_file,
        run_dir,
        steps=4,
        checkpoint_every=2,
        **BATCH,
        **FULL,
    )
    _two_ranks(config)
    uninterrupted = _weights(run_dir, 4)
    shutil.rmtree(ckpt.checkpoint_dir(run_dir, 4))
    _two_ranks(config, resume=True)
    resumed = _weights(run_dir, 4)
    assert resumed.keys() == uninterrupted.keys()
    for name, tensor in uninterrupted.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize(
    "fields",
    [{"lora": {"enabled": True}}, {"probe": {"data": ["x.jsonl"]}}, {"rollout_engine": "vllm"}],
    ids=["lora", "probe", "vllm"],
)
def test_fsdp_refuses_what_it_cannot_shard(fields, tmp_path):
    with pytest.raises(ValueError, match="fsdp"):
        TrainConfig.model_validate({**FULL, "output_dir": str(tmp_path), **fields})
