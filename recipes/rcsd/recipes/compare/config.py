"""What a comparison runs: its config (arms, shared training settings, budget, evaluation) and its folders.

See `rcsd.recipes.compare.run` for what running one does; the report reads the same folders.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from rcsd.trainer.config import JudgeConfig, TrainConfig, read_yaml_config

ARMS_DIR = "arms"
CONFIGS_DIR = "configs"
COMPARE_FILE = "compare.yaml"
EVAL_FILE = "eval.json"
ARM_FILE = "arm.json"
DONE_MARKER = "DONE"
# What the comparison itself decides for every arm; a shared section or an arm may not set them.
COMPARE_OWNED = ("method", "prompts_per_step", "output_dir")
# What every trained arm must share with the others for the comparison to be fair.
SHARED_FIELDS = ("model", "dtype", "steps", "seed", "data", "data_limit", "sampling", "lora")
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "rcsd": {},
    "opsd": {"teacher": {"context_mode": "reference"}},  # OPSD: the teacher sees the reference only
    "grpo": {},  # rollouts_per_prompt: the comparison's grpo_group_size
}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ArmConfig(_Section):
    """One row of the table: a method and what it changes from the shared `train` section."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.+-]+$", description="folder name and table row")
    method: Literal["base", "rcsd", "opsd", "grpo"]
    label: str | None = Field(default=None, description="what the report calls it (default: name)")
    overrides: dict[str, Any] = Field(default_factory=dict, description="nested TrainConfig fields")


class EvalConfig(_Section):
    """The held-out evaluation every arm gets (`rcsd eval`'s settings)."""

    data: list[str] = Field(min_length=1, description="JSONL files or shipped set names")
    limit: int | None = Field(default=None, ge=1, description="the first N questions of each set")
    temperatures: list[float] = Field(default_factory=lambda: [0.0], min_length=1)
    n: int = Field(default=4, ge=1, description="samples per question at a temperature > 0")
    max_new_tokens: int = Field(default=1024, ge=1)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0)
    batch_size: int = Field(default=16, ge=1)
    seed: int = 0
    backend: Literal["auto", "hf", "vllm"] = Field(
        default="hf", description="auto: a vLLM server per arm where vLLM is installed, else hf"
    )
    bootstrap_resamples: int = Field(default=10_000, ge=100, description="the 95 % interval's")
    judge: JudgeConfig | None = Field(default=None, description="grades free-form (rubric) sets")
    reference_arm: str | None = Field(
        default=None, description="what each row's interval is compared with (default: the base arm)"
    )


class LaunchConfig(_Section):
    """Teacher and rubric services that `rcsd compare` starts on loopback, serving the base model."""

    launch: bool = False
    backend: Literal["hf", "vllm"] = "hf"
    dtype: str = "auto"
    teacher_args: list[str] = Field(default_factory=list, description="more `rcsd serve teacher` flags")
    rubric_args: list[str] = Field(default_factory=list, description="more `rcsd serve rubric` flags")
    ready_timeout_s: float = Field(default=600.0, gt=0.0)


class CompareConfig(_Section):
    """The whole comparison: shared training settings, arms, budget, evaluation, services."""

    name: str
    smoke_test: bool = Field(default=False, description="the report says its numbers are a smoke test")
    output_dir: str = "runs/compare"
    rollouts_per_step: int = Field(ge=1, description="answers sampled per step, in every arm")
    grpo_group_size: int = Field(default=8, ge=2, description="GRPO's G unless an arm overrides it")
    train: dict[str, Any] = Field(default_factory=dict, description="TrainConfig fields all arms share")
    arms: list[ArmConfig] = Field(min_length=1)
    eval: EvalConfig
    services: LaunchConfig = Field(default_factory=LaunchConfig)
    launcher: Literal["inprocess", "torchrun"] = "inprocess"
    nproc_per_node: int = Field(default=1, ge=1, description="launcher torchrun: processes per arm")

    @model_validator(mode="after")
    def _fair(self) -> CompareConfig:
        names = [arm.name for arm in self.arms]
        if len(set(names)) != len(names):
            raise ValueError(f"arm names must be unique: {names}")
        if self.eval.reference_arm is not None and self.eval.reference_arm not in names:
            raise ValueError(f"eval.reference_arm {self.eval.reference_arm!r} is not an arm: {names}")
        for owner, fields in [("train", self.train), *((a.name, a.overrides) for a in self.arms)]:
            if taken := sorted(set(fields) & set(COMPARE_OWNED)):
                raise ValueError(f"{owner}: {taken} are set by the comparison (use rollouts_per_step)")
        shared = self.shared_config().model_dump()
        for arm in self.arms:
            config = self.arm_config(arm, Path("."))
            if config is None:
                continue
            if differ := [f for f in SHARED_FIELDS if config.model_dump()[f] != shared[f]]:
                raise ValueError(f"arm {arm.name} changes {differ}: every arm must share them")
        return self

    def shared_config(self) -> TrainConfig:
        """The shared section alone (what the base arm is: its model, dtype and device)."""
        return TrainConfig.model_validate({**self.train, "prompts_per_step": self.rollouts_per_step})

    def arm_config(self, arm: ArmConfig, run_dir: Path) -> TrainConfig | None:
        """The arm's exact TrainConfig (None for the base arm): shared, method defaults, overrides."""
        if arm.method == "base":
            return None
        raw = _merge(_merge(self.train, METHOD_DEFAULTS[arm.method]), arm.overrides)
        if arm.method == "grpo":
            raw.setdefault("rollouts_per_prompt", self.grpo_group_size)
        group = int(raw.get("rollouts_per_prompt", 1))
        if self.rollouts_per_step % group:
            raise ValueError(
                f"arm {arm.name}: rollouts_per_step {self.rollouts_per_step} is not a multiple of its "
                f"{group} answers per question"
            )
        raw.update(
            method=arm.method,
            prompts_per_step=self.rollouts_per_step // group,
            output_dir=str(run_dir / ARMS_DIR / arm.name),
        )
        return TrainConfig.model_validate(raw)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def load_compare_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> CompareConfig:
    """A comparison YAML (a path or a shipped config's name) with dotted `key=value` overrides."""
    return CompareConfig.model_validate(read_yaml_config(path, overrides))


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """`update` laid over a deep copy of `base`, section by section."""
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


@dataclass(frozen=True)
class ServiceNeeds:
    """What the arms still to train need started (the command layer starts only these)."""

    teacher: bool
    rubric: bool
    model: str  # the base model: the frozen teacher and the rubric writer
    log_dir: Path


@dataclass(frozen=True)
class ServiceUrls:
    teacher_urls: list[str]
    rubric_urls: list[str]


# The command layer's service starter: a context manager that yields the URLs and stops them after.
ServiceStarter = Callable[[ServiceNeeds], AbstractContextManager[ServiceUrls]]


def arm_hash(config: CompareConfig, arm: ArmConfig) -> str:
    """What makes an arm's result: its training config (not where services run) and the evaluation."""
    train = config.arm_config(arm, Path("."))
    fields = config.shared_config() if train is None else train
    identity = fields.model_dump(mode="json", exclude={"services", "output_dir", "progress", "plots"})
    if train is None:
        identity = {k: identity[k] for k in ("model", "dtype", "device")}
    evaluation = config.eval.model_dump(mode="json")
    for name in ("backend", "bootstrap_resamples", "judge", "reference_arm"):  # later fields: at their
        if evaluation[name] == EvalConfig.model_fields[name].default:  # defaults, older run folders resume
            del evaluation[name]
    blob = json.dumps({"method": arm.method, "train": identity, "eval": evaluation}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def arm_dir(run_dir: Path, arm: ArmConfig) -> Path:
    return run_dir / ARMS_DIR / arm.name


def is_done(run_dir: Path, arm: ArmConfig) -> bool:
    return (arm_dir(run_dir, arm) / DONE_MARKER).is_file()
