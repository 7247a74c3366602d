"""Data parallelism under torchrun, from torch: DDP for LoRA and small models, FSDP2 to shard a full model.

Started by `torchrun --nproc-per-node N rcsd train ...` (gloo on CPU, nccl on GPUs); a plain process
is world size 1 and nothing is wrapped. Each rank takes its share of the prompts; the loop scales each
rank's loss by 1 / (global valid tokens), and gradients are *summed* over ranks (DDP through a sum
comm hook, FSDP with a divide factor of 1), so the update is that of one process on the whole batch.

- `ddp`: every rank holds the whole model; the loss forward goes through `DistributedDataParallel`
  around a small scoring module, and only the step's last backward all-reduces (`no_sync` before).
- `fsdp`: `fully_shard` on every decoder layer, then on the model: parameters, gradients and Adam
  states are sharded; the loss forward and `generate` are registered as FSDP forward methods so the
  root's weights are gathered for them. Full fine-tuning only (LoRA uses ddp). Checkpoints are full
  state dicts gathered on rank 0 (`full_state`, `full_optimizer_state`): the usual HF model folder.
Multi-node: every rank reads the checkpoint it resumes from (its own rng-rank<N>.pt and the trainer
state), so `output_dir` must be on a filesystem all nodes share, or copied to each before `--resume`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule, fully_shard, register_fsdp_forward_method
from torch.nn.parallel import DistributedDataParallel

from rcsd.trainer.student import CompletionScores, score_completions

Strategy = Literal["ddp", "fsdp"]
_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


@dataclass(frozen=True)
class Dist:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, count: int) -> range:
        """This rank's contiguous slice of `count` items (count must divide evenly)."""
        if count % self.world_size:
            raise ValueError(f"{count} prompts per step do not split over {self.world_size} ranks")
        per_rank = count // self.world_size
        return range(self.rank * per_rank, (self.rank + 1) * per_rank)

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over ranks (float64, so token counts stay exact)."""
        if self.world_size == 1:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self._comm_device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    @property
    def _comm_device(self) -> torch.device:
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")


class Parallel:
    """The student under a strategy: its loss forward (`score`), gradient sync, clipping and the
    full state dicts a checkpoint holds. With one process, the plain model and no communication."""

    def __init__(self, model: Any, strategy: Strategy, dist_: Dist) -> None:
        self.model = model  # sharded in place under fsdp: `generate` and `parameters()` still work
        self.strategy: Strategy | None = strategy if dist_.world_size > 1 else None
        self._score: Any = functools.partial(_score_tuple, model)
        if self.strategy == "ddp":
            ddp = DistributedDataParallel(  # broadcasts rank 0's weights now
                _Scorer(model), device_ids=[dist_.device] if dist_.device.type == "cuda" else None
            )
            # a lambda: DDP checks a hook's annotations, which postponed (string) annotations fail
            ddp.register_comm_hook(None, lambda state, bucket: _sum_hook(bucket))
            self._ddp: DistributedDataParallel | None = ddp
            self._score = ddp
        elif self.strategy == "fsdp":
            self._ddp = None
            _shard(model)
            model.rcsd_score = self._score
            register_fsdp_forward_method(model, "rcsd_score")
            register_fsdp_forward_method(model, "generate")
            self._score = model.rcsd_score
        else:
            self._ddp = None

    def score(
        self,
        prompt_ids: list[int],
        completions: list[list[int]],
        pad_id: int,
        topk_ids_B_T_K: torch.Tensor | None,
        chunk_size: int,
    ) -> CompletionScores:
        """`student.score_completions`, through the wrapper, so that backward syncs the gradients."""
        return CompletionScores(*self._score(prompt_ids, completions, pad_id, topk_ids_B_T_K, chunk_size))

    @contextmanager
    def accumulate(self, sync: bool) -> Iterator[None]:
        """Around one group's forward and backward: DDP all-reduces on the `sync` one only (the step's
        last); FSDP reduce-scatters every backward, so unsharded gradients never pile up."""
        with self._ddp.no_sync() if self._ddp is not None and not sync else nullcontext():
            yield

    def clip_grad_norm(self, max_norm: float) -> float:
        """The global gradient norm before clipping (a DTensor's full norm under fsdp)."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)

    def full_state(self) -> dict[str, torch.Tensor] | None:
        """fsdp: the whole model's state dict on rank 0 (CPU); every rank must call it. Else None:
        the model saves itself."""
        if self.strategy != "fsdp":
            return None
        return get_model_state_dict(self.model, options=_FULL)

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """What a checkpoint stores: under fsdp the full (unsharded) state, gathered on every call."""
        if self.strategy != "fsdp":
            return optimizer.state_dict()
        return get_optimizer_state_dict(self.model, optimizer, options=_FULL)

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        if self.strategy != "fsdp":
            optimizer.load_state_dict(state)
            return
        options = StateDictOptions(full_state_dict=True)
        set_optimizer_state_dict(self.model, optimizer, optim_state_dict=state, options=options)


class _Scorer(torch.nn.Module):
    """The loss forward as a module's `forward`, which DDP needs to prepare the gradient all-reduce."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: Any) -> tuple[torch.Tensor | None, ...]:
        return _score_tuple(self.model, *args)


def _score_tuple(model: Any, *args: Any) -> tuple[torch.Tensor | None, ...]:
    """Tensors in a tuple, which DDP and FSDP hooks look into (they skip dataclasses)."""
    s = score_completions(model, *args[:4], chunk_size=args[4])
    return (s.logprobs_B_T, s.topk_logits_B_T_K, s.in_vocab_B_T_K, s.token_ids_B_T, s.mask_B_T)


def _shard(model: Any) -> None:
    """FSDP2: one unit per decoder layer (the classes transformers names unsplittable), then the rest."""
    unsplit = set(getattr(model, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in unsplit]
    if not layers:
        raise ValueError(f"{type(model).__name__} names no decoder layer class (_no_split_modules)")
    for layer in layers:
        fully_shard(layer)
    fully_shard(model)
    for unit in [*layers, model]:
        assert isinstance(unit, FSDPModule)
        unit.set_gradient_divide_factor(1.0)  # a sum over ranks, as the loss scaling expects


def _sum_hook(bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP's all-reduce without its division by the world size."""
    work = dist.all_reduce(bucket.buffer(), async_op=True)
    assert work is not None
    return work.get_future().then(lambda fut: fut.value()[0])


def setup(device: str = "auto") -> Dist:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK), or run alone."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    chosen = torch.device(f"cuda:{local_rank}" if device == "cuda" else device)
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if chosen.type == "cuda" else "gloo")
    return Dist(rank=rank, world_size=world_size, device=chosen)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
