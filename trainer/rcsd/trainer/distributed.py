"""Data parallelism under torchrun: each rank its share of the prompts, gradients summed over ranks.

Started by `torchrun --nproc-per-node N rcsd train ...` (gloo on CPU, nccl on GPUs); a plain process
is world size 1 and every collective here is a no-op. The loop scales each rank's loss by
1 / (global valid tokens), so summing the ranks' gradients gives exactly the gradient of the
global token average, whatever the split: the same update as one process with the whole batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


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

    def sum_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """All-reduce (sum) every gradient, flattened into one buffer per call."""
        if self.world_size == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        offset = 0
        for param, grad in zip(params, grads, strict=True):
            param.grad = flat[offset : offset + grad.numel()].view_as(grad).clone()
            offset += grad.numel()

    def broadcast_parameters(self, params: list[torch.nn.Parameter]) -> None:
        """Start every rank from rank 0's weights."""
        if self.world_size == 1:
            return
        with torch.no_grad():
            for param in params:
                dist.broadcast(param.data, src=0)

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    @property
    def _comm_device(self) -> torch.device:
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")


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
