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

from rcsd.client.protocol import ContextMode
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
    # rollouts_per_prompt: the comparison's grpo_group_size; no teacher, so no reason-first analysis
    "grpo": {"teacher": {"reason_first": False}},
}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ArmConfig(_Section):
    """One row of the table: a method and what it changes from the shared `train` section."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.+-]+$", description="folder name and table row")
    method: Literal["base", "rcsd", "opsd", "grpo"]
    label: str | None = Field(default=None, description="what the report calls it (default: name)")
    overrides: dict[str, Any] = Field(default_factory=dict, description="nested TrainConfig fields")
    # set by the comparison's `seeds` on each run it expands an arm into, not in a config file
    group: str | None = Field(default=None, description="the arm this run is one seed of")
    seed: int | None = Field(default=None, description="this run's training seed")


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


class MeasureConfig(_Section):
    """What each run's final weights are measured with besides accuracy (the learnability experiment):
    on each set, the student's log-prob of the reference answers (its own prompt, no privileged context)
    and the teacher-student top-K KL (`rcsd.trainer.probe`). The KL is taken on fixed answers, the base
    model's greedy ones (the first run measured makes them: list the base arm first), against one fixed
    teacher context for every arm: question, reference and the question's own rubric, no analysis."""

    data: list[str] = Field(min_length=1, description="JSONL files or shipped set names")
    limit: int | None = Field(default=None, ge=1, description="the first N questions of each set")
    max_new_tokens: int = Field(default=64, ge=1, description="the fixed answers' length")
    context_mode: ContextMode = "rubric+reference"


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
    seeds: list[int] = Field(
        default_factory=list,
        description="each trained arm runs once per seed (folder <arm>.seed<k>); base, untrained, once",
    )
    measure: MeasureConfig | None = None
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
        owned = set(COMPARE_OWNED) | ({"seed"} if self.seeds else set())
        for owner, fields in [("train", self.train), *((a.name, a.overrides) for a in self.arms)]:
            if taken := sorted(set(fields) & owned):
                raise ValueError(f"{owner}: {taken} are set by the comparison (rollouts_per_step, seeds)")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be unique: {self.seeds}")
        runs = self.runs()
        if len({run.name for run in runs}) != len(runs):
            raise ValueError(f"arm names collide with their seeds' folders: {[r.name for r in runs]}")
        shared = self.shared_config().model_dump()
        for run in runs:
            config = self.arm_config(run, Path("."))
            if config is None:
                continue
            expected = {**shared, "seed": shared["seed"] if run.seed is None else run.seed}
            if differ := [f for f in SHARED_FIELDS if config.model_dump()[f] != expected[f]]:
                raise ValueError(f"arm {run.name} changes {differ}: every arm must share them")
        return self

    def runs(self) -> list[ArmConfig]:
        """What is trained and evaluated: every arm, or with `seeds` every trained arm once per seed
        (`<arm>.seed<k>`, its `group` the arm) and the base arm once (untrained, evaluated greedily)."""
        if not self.seeds:
            return list(self.arms)
        return [  # seed by seed: a comparison stopped part-way has every arm at its first seeds
            arm.model_copy(update={"name": f"{arm.name}.seed{seed}", "group": arm.name, "seed": seed})
            for seed in self.seeds
            for arm in self.arms
            if arm.method != "base" or seed == self.seeds[0]
        ]

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
        if arm.seed is not None:
            raw["seed"] = arm.seed
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
    record = {"method": arm.method, "train": identity, "eval": evaluation}
    if config.measure is not None:  # absent: folders from before measures resume
        record["measure"] = config.measure.model_dump(mode="json")
    blob = json.dumps(record, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_label(arm: ArmConfig) -> str:
    """What the report calls a run: the arm's label, and its seed when the comparison has seeds."""
    label = arm.label or arm.group or arm.name
    return label if arm.seed is None else f"{label}, seed {arm.seed}"


def arm_dir(run_dir: Path, arm: ArmConfig) -> Path:
    return run_dir / ARMS_DIR / arm.name


def is_done(run_dir: Path, arm: ArmConfig) -> bool:
    return (arm_dir(run_dir, arm) / DONE_MARKER).is_file()
