"""The trainer's one typed config: `TrainConfig`, loaded from YAML plus `key=value` overrides.

    config = load_config("trainer/rcsd/trainer/configs/smollm2_cpu.yaml", ["steps=5", "teacher.top_k=8"])

Overrides use dotted paths into the config and YAML values (`lora.enabled=false`,
`services.teacher_urls=[http://a:8001,http://b:8001]`). A config that was printed and saved with a run
(`config.yaml` in its output folder) loads back to the same `TrainConfig`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from rcsd.client.prompts import JUDGE_VERSION
from rcsd.client.protocol import RUBRIC_WRITER_MODES, ContextMode, RubricBounds
from rcsd.client.protocol.teacher import MODES_SHOWING_RUBRIC

SHIPPED_CONFIGS = "configs"  # folder inside rcsd.trainer: `rcsd train smollm2_cpu.yaml` finds it there
API_KEY_ENV = "RCSD_API_KEY"
RubricSource = Literal["generated", "shifted", "random", "generic", "noisy", "reduced", "ground_truth"]


class _Section(BaseModel):
    """Unknown keys are refused, so a typo in a YAML file or an override fails loudly."""

    model_config = ConfigDict(extra="forbid")


class LoraConfig(_Section):
    """peft LoRA on the student; `enabled: false` trains every weight instead."""

    enabled: bool = True
    r: int = Field(default=16, ge=1)
    alpha: int = Field(default=32, ge=1)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


class DistributedConfig(_Section):
    """Under torchrun (rcsd.trainer.distributed): `ddp` replicates the student (LoRA, small models),
    `fsdp` shards weights, gradients and Adam states with FSDP2 (full fine-tuning of an 8B student)."""

    strategy: Literal["ddp", "fsdp"] = "ddp"


class SamplingConfig(_Section):
    """How the student samples its rollouts (truncated answers are kept)."""

    max_new_tokens: int = Field(default=512, ge=1)
    temperature: float = Field(default=1.2, gt=0.0)
    top_p: float = Field(default=0.95, gt=0.0, le=1.0)
    top_k: int = Field(default=20, ge=0)
    # all of a rank's prompts for the step in one batch (the same tokens: each request keeps its seed);
    # false samples one prompt at a time, the baseline of bench/trainer_step.py
    batched: bool = True
    # the student's prompt (rcsd.client.prompts student_prompt/<version>); the teacher renders the same
    # version (sent with each request): release = the released RCSD texts, v1 = rcsd's earlier ones
    prompt_version: str = "release"
    enable_thinking: bool | None = Field(
        default=None, description="the student's chat template; None: not passed"
    )


class LossConfig(_Section):
    """The distillation loss (RCSD/OPSD) and the GRPO objective's clip."""

    name: Literal["topk_fkl", "topk_jsd", "sampled_rkl"] = "topk_fkl"
    tau: float = Field(default=1.2, gt=0.0)
    clip: float | None = Field(
        default=0.05, gt=0.0, description="topk_fkl/topk_jsd: max of each id's term; null: none"
    )
    beta: float = Field(default=0.5, ge=0.0, le=1.0, description="topk_jsd: 0 forward KL, 1 reverse KL")
    advantage_clip: float | None = Field(default=None, gt=0.0, description="sampled_rkl")
    grpo_clip_eps: float = Field(default=0.2, gt=0.0)
    # "grpo": TRL's loss_type grpo (the release's): per-completion mean, std with Bessel + 1e-4;
    # "token_mean": one mean over all tokens, population std + 1e-6 (rcsd's earlier default)
    grpo_loss_type: Literal["grpo", "token_mean"] = "grpo"
    # How a step averages its token terms, over all ranks. "completion": each completion's token mean,
    # then the mean over the step's completions (the release: a micro-batch of one completion,
    # `sum / mask.sum()`, averaged by gradient accumulation; TRL's loss_type grpo). "token": one mean
    # over the step's tokens, so a long answer weighs more (rcsd's earlier). GRPO's must agree with
    # grpo_loss_type (grpo: completion, token_mean: token).
    normalize: Literal["completion", "token"] = "completion"
    chunk_size: int = Field(
        default=256, ge=1, description="positions per output-head chunk: the loss never holds [T, V] at once"
    )
    # Truncated importance sampling (TRL / verl's TIS) against the sampler mismatch: each token's loss
    # term weighted by min(exp(trainer log-prob - sampler log-prob), cap). Null: off (the release has none).
    importance_cap: float | None = Field(
        default=None, gt=0.0, description="TIS cap; needs a vLLM rollout engine (sampler log-probs)"
    )


class TeacherConfig(_Section):
    """What the teacher sees; the teacher itself is whatever model the teacher service serves."""

    context_mode: ContextMode = "rubric+reference"
    top_k: int = Field(default=20, ge=0)
    rationale: str | None = Field(default=None, description='text, or "auto": the teacher writes one first')
    # The release's --reason_first: every step the rollout engine (the student's current weights) samples
    # an analysis of each question's privileged context with the rollouts' sampling settings, and the
    # teacher scores after [analysis prompt + analysis + transition] (rcsd.client.prompts.teacher_context).
    reason_first: bool = False
    analysis_max_tokens: int = Field(default=4096, ge=1, description="reason_first: the analysis budget")
    thinking: bool | None = Field(default=None, description="enable_thinking of the teacher's context")
    analysis_thinking: bool | None = Field(default=None, description="enable_thinking of the analysis prompt")
    # Which rubric the teacher is shown, the rest of the context unchanged (rcsd.trainer.ablations):
    # "generated", the rubric service's for the question; the learnability control "shifted", the next
    # training question's (a cyclic shift: a real rubric, never its own); the release's ablations
    # "random" (another question's), "generic" (one rubric for all), "noisy" (half its criteria another
    # question's), "reduced" (half its criteria) and "ground_truth" (the data set's rubric).
    rubric_source: RubricSource = "generated"

    @model_validator(mode="before")
    @classmethod
    def _rubric_of(cls, data: Any) -> Any:
        """`rubric_of: own | shifted`, the field's name before the ablations, still loads."""
        if isinstance(data, dict) and "rubric_of" in data:
            data = dict(data)
            legacy = data.pop("rubric_of")
            source = "generated" if legacy == "own" else legacy
            if data.setdefault("rubric_source", source) != source:
                raise ValueError("teacher.rubric_of is the old name of teacher.rubric_source: set one")
        return data


class RubricConfig(_Section):
    """Rubric requests; the service stores each rubric, so a question's rubric is generated once."""

    min_criteria: int = Field(default=3, ge=1)
    max_criteria: int = Field(default=25, ge=1)
    temperature: float = Field(default=0.7, ge=0.0)
    # 1.0 and 0 switch these off; the Qwen3 recipes sample as the release does: top_p 0.95, top_k 20
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0)
    seed: int = Field(default=0, ge=0)
    max_tokens: int = Field(default=1024, ge=16)
    # A rubric the service cannot produce (422 after its attempts): stop the run, or score that
    # question with context_mode=reference (counted in every step's `rubric_fallbacks`).
    on_failure: Literal["fail", "reference"] = "fail"
    # Stage I: the rubric writer's prompt the student writes after (rubric_designer/<version>.j2) and the
    # teacher's texts around it: "v2", rcsd's (teacher_context v1); "release", the release's Stage I
    # (teacher_context release: "Ground Truth Rubric (JSON array)"). The teacher service repeats the
    # prompt of its --rubric-template-version: start it with the same name.
    writer_version: Literal["v2", "release"] = "v2"

    @property
    def bounds(self) -> RubricBounds:
        """The criteria-count bounds on the wire (rubric requests, and Stage I's prompts and teacher)."""
        return RubricBounds(min_criteria=self.min_criteria, max_criteria=self.max_criteria)


class ProbeConfig(_Section):
    """A fixed held-out probe measured before the first step and after the last (off without data)."""

    data: list[str] = Field(default_factory=list, description="JSONL question files, not trained on")
    questions: int = Field(default=8, ge=1)
    max_new_tokens: int = Field(default=128, ge=1, description="the probe's fixed student answers")


class ServicesConfig(_Section):
    """Service replicas (one URL each) and how long a call may keep retrying before the run fails."""

    teacher_urls: list[str] = Field(default_factory=lambda: ["http://127.0.0.1:8001"])
    rubric_urls: list[str] = Field(default_factory=lambda: ["http://127.0.0.1:8002"])
    rollout_urls: list[str] = Field(
        default_factory=list, description="rollout_engine=vllm: one vLLM server per rank (LoRA adapters)"
    )
    api_key_env: str = Field(default=API_KEY_ENV, description="the env var that holds the API key")
    # Training outlives a service restart: a call retries (429/503/5xx/connection) for up to this long.
    deadline_s: float = Field(default=1800.0, gt=0.0)
    timeout_s: float = Field(default=600.0, gt=0.0, description="one attempt")
    max_retries: int = Field(default=1000, ge=0)
    # rcsd: rcsd's teacher service; stock_vllm: an unmodified `vllm serve` at teacher_urls, scored with
    # prompt_logprobs (rcsd.client.stock_vllm: no teacher.rationale auto, top_k <= its --max-logprobs)
    teacher_server: Literal["rcsd", "stock_vllm"] = "rcsd"
    pin_teacher: bool = Field(
        default=True, description="fail the run if the teacher's model revision changes; false: allow it"
    )

    @property
    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env)


class ColocateConfig(_Section):
    """rollout_engine=vllm_colocate: vLLM inside each trainer process, on its device
    (rcsd.trainer.rollout.colocate), following the student's weights in memory every step."""

    gpu_memory_utilization: float = Field(
        default=0.3, gt=0.0, lt=1.0, description="CUDA: the share of the GPU vLLM takes (weights + KV cache)"
    )
    cpu_kv_cache_gb: float = Field(default=1.0, gt=0.0, description="CPU: vLLM-CPU's KV cache, in GiB")
    max_model_len: int | None = Field(default=None, ge=1, description="prompt + answer; None: the model's")
    sleep: bool | None = Field(
        default=None,
        description="free vLLM's memory between sampling and the next update; None: where vLLM can (not CPU)",
    )


class JudgeConfig(_Section):
    """A rubric judge (`rcsd.trainer.judge`): any OpenAI-compatible chat endpoint; GRPO's reward on
    free-form questions, and `rcsd eval`'s grader of free-form sets."""

    url: str = Field(description="the server root (http://host:8000) or its /v1")
    model: str = Field(description="the model name the endpoint serves")
    api_key_env: str | None = Field(default=None, description="the env var holding the API key, if any")
    prompt_version: str = JUDGE_VERSION
    cache_dir: str = "runs/judge-cache"
    max_tokens: int = Field(default=128, ge=1)
    temperature: float = Field(default=0.0, ge=0.0)
    timeout_s: float = Field(default=120.0, gt=0.0)
    concurrency: int = Field(default=16, ge=1)


class TrainConfig(_Section):
    """One run: method, student, optimisation, sampling, loss, teacher, services, data, logging."""

    method: Literal["rcsd", "opsd", "grpo"] = "rcsd"
    # reasoner: Stage II, answers to `data` questions; rubric_generator: Stage I, rubrics for the reference
    # rubrics' questions (`data`: reference-rubric files, or none for the shipped ones; rcsd.trainer.rubric_writing)
    stage: Literal["reasoner", "rubric_generator"] = "reasoner"
    model: str = Field(default="default", description='a folder, a HF id, or "default" (bundled SmolLM2)')
    dtype: Literal["auto", "float32", "bfloat16", "float16", "float64"] = "auto"  # float64: exactness tests
    device: str = Field(default="auto", description="cpu, cuda, or auto")
    lora: LoraConfig = Field(default_factory=LoraConfig)
    gradient_checkpointing: bool = False
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    # optimisation
    lr: float = Field(default=5e-6, gt=0.0)
    weight_decay: float = Field(default=0.0, ge=0.0)
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = Field(default=1e-8, gt=0.0)
    warmup_steps: int = Field(default=0, ge=0)
    # "linear" decays to 0 at the last step, as the release (HF TrainingArguments' default)
    lr_schedule: Literal["constant", "cosine", "linear"] = "constant"
    grad_clip: float | None = Field(default=1.0, gt=0.0)
    steps: int = Field(default=100, ge=1)
    epochs: int | None = Field(
        default=None,
        ge=1,
        description="passes over the training questions; set, it replaces `steps` with "
        "ceil(epochs x questions / prompts_per_step), counted after data_limit and the length filter",
    )
    seed: int = 0
    # batch (global, over all ranks)
    prompts_per_step: int = Field(default=32, ge=1)
    rollouts_per_prompt: int = Field(default=1, ge=1, description="GRPO: the group size G")
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    rubric: RubricConfig = Field(default_factory=RubricConfig)
    services: ServicesConfig = Field(default_factory=ServicesConfig)
    data: list[str] = Field(default_factory=list, description="JSONL files or shipped set names")
    data_limit: int | None = Field(default=None, ge=1, description="train on the first N questions only")
    # The release drops a question whose privileged prompt (its length filter's own prompt, with the
    # question's rubric; rcsd.trainer.data.release) exceeds 2,048 tokens. Null: no filter. Stage II only.
    data_max_privileged_prompt_tokens: int | None = Field(default=None, ge=1)
    # hf: transformers in process; vllm: a vLLM server per rank (services.rollout_urls);
    # vllm_colocate: vLLM in process on the trainer's device (`colocate`)
    rollout_engine: Literal["hf", "vllm", "vllm_colocate"] = "hf"
    colocate: ColocateConfig = Field(default_factory=ColocateConfig)
    probe: ProbeConfig = Field(default_factory=ProbeConfig)
    judge: JudgeConfig | None = None  # grades free-form (rubric) questions for GRPO's reward
    # Rubric prefetch and per-group teacher scoring run beside the rollouts; false = one after the other.
    overlap: bool = True
    # output
    output_dir: str = "runs/train"
    checkpoint_every: int = Field(default=50, ge=1)
    report_to: list[Literal["jsonl", "tensorboard", "wandb"]] = Field(
        default_factory=lambda: ["jsonl"],
        description="where each step's metrics go, all the same numbers: metrics.jsonl (always written), "
        "TensorBoard (`rcsd[tensorboard]`), Weights & Biases (`rcsd[wandb]`; WANDB_MODE=offline needs no network)",
    )
    wandb_project: str = Field(default="rcsd", description="report_to wandb: the W&B project")
    plots: bool = True
    progress: bool = Field(
        default=True, description="a progress bar on a terminal; one line per step otherwise"
    )

    @model_validator(mode="before")
    @classmethod
    def _tensorboard_flag(cls, data: Any) -> Any:
        """Configs from before `report_to` said `tensorboard: true`; they load as report_to [jsonl, tensorboard]."""
        if isinstance(data, dict) and "tensorboard" in data:
            data = dict(data)
            if data.pop("tensorboard") and "tensorboard" not in data.get("report_to", ["jsonl"]):
                data["report_to"] = [*data.get("report_to", ["jsonl"]), "tensorboard"]
        return data

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.method == "opsd" and self.teacher.context_mode != "reference":
            raise ValueError("method opsd is RCSD with teacher.context_mode=reference; set it explicitly")
        if self.method == "grpo" and self.rollouts_per_prompt < 2:
            raise ValueError("grpo needs rollouts_per_prompt >= 2 (group-normalised advantages)")
        if self.method != "grpo" and self.loss.name != "sampled_rkl" and self.teacher.top_k < 1:
            raise ValueError(f"loss {self.loss.name} needs the teacher's top-k: set teacher.top_k >= 1")
        if self.rubric.min_criteria > self.rubric.max_criteria:
            raise ValueError("rubric.min_criteria must not exceed rubric.max_criteria")
        if self.distributed.strategy == "fsdp" and self.lora.enabled:
            raise ValueError("distributed.strategy fsdp is for full fine-tuning: set lora.enabled false")
        if self.distributed.strategy == "fsdp" and self.probe.data:
            raise ValueError("the probe runs on rank 0 alone, which a sharded (fsdp) student cannot")
        if self.distributed.strategy == "fsdp" and self.rollout_engine != "hf":
            raise ValueError("fsdp rollouts are hf only: no vLLM engine takes weights from FSDP shards yet")
        writer_mode = self.teacher.context_mode in RUBRIC_WRITER_MODES
        if self.stage == "rubric_generator" and (self.method != "rcsd" or not writer_mode):
            raise ValueError(
                "stage rubric_generator is method rcsd with teacher.context_mode=rubric_writer+reference_rubric"
                " (or rubric_writer, the teacher without the reference rubric)"
            )
        if self.stage == "rubric_generator" and self.teacher.rationale is not None:
            raise ValueError("stage rubric_generator takes no teacher.rationale")
        if self.teacher.reason_first and (
            self.teacher.rationale is not None
            or self.method == "grpo"
            or self.stage != "reasoner"
            or self.teacher.context_mode == "none"
        ):
            raise ValueError(
                "teacher.reason_first samples the teacher's analysis itself: it needs stage reasoner, a "
                "teacher (not grpo), a privileged teacher.context_mode and no teacher.rationale"
            )
        if self.loss.importance_cap is not None and self.rollout_engine == "hf":
            raise ValueError(
                "loss.importance_cap needs sampler log-probs: rollout_engine vllm or vllm_colocate"
            )
        if self.method == "grpo" and (self.loss.grpo_loss_type == "grpo") != (
            self.loss.normalize == "completion"
        ):
            raise ValueError(
                "loss.grpo_loss_type grpo averages per completion, token_mean per token: set loss.normalize "
                "to match (completion or token)"
            )
        if self.data_max_privileged_prompt_tokens is not None and self.stage != "reasoner":
            raise ValueError("data_max_privileged_prompt_tokens filters Stage II questions: stage reasoner")
        source = self.teacher.rubric_source
        if source != "generated" and (not self.needs_rubrics or self.stage != "reasoner"):
            raise ValueError(
                f"teacher.rubric_source {source} needs stage reasoner and a teacher context that shows a rubric"
            )
        if self.stage == "reasoner" and writer_mode:
            raise ValueError(
                f"teacher.context_mode {self.teacher.context_mode} is for stage rubric_generator"
            )
        return self

    @property
    def needs_rubrics(self) -> bool:
        return self.method != "grpo" and self.teacher.context_mode in MODES_SHOWING_RUBRIC

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def shipped_config(name: str) -> Path:
    """A config shipped in rcsd/trainer/configs/ (e.g. "smollm2_cpu.yaml")."""
    return Path(str(resources.files("rcsd.trainer").joinpath(SHIPPED_CONFIGS, name)))


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a YAML config (a path, or the name of a shipped one) and apply `key=value` overrides."""
    return TrainConfig.model_validate(read_yaml_config(path, overrides))


def read_yaml_config(path: str | Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """A YAML mapping (a path, or the name of a shipped config) with dotted `key=value` overrides applied."""
    path = Path(path)
    if not path.is_file() and shipped_config(path.name).is_file():
        path = shipped_config(path.name)
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a config is a mapping, not {type(raw).__name__}")
    for override in overrides:
        _apply_override(raw, override)
    return raw


def _apply_override(raw: dict[str, Any], override: str) -> None:
    key, sep, value = override.partition("=")
    if not sep or not key:
        raise ValueError(f"an override is key=value, not {override!r}")
    *parents, leaf = key.strip().split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"{key}: {part} is not a section")
    node[leaf] = yaml.safe_load(value) if value.strip() else None
