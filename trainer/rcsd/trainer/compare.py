"""A method comparison: base, RCSD, OPSD, GRPO (and ablations) from one start, on one budget, one eval.

    from rcsd.trainer.compare import load_compare_config, run_comparison
    run_comparison(load_compare_config("compare_smollm2_cpu.yaml"))   # or: rcsd compare compare_smollm2_cpu.yaml

Every arm is a `TrainConfig` built from the same shared `train` section, so all arms start from the
same base model (and the same seeded LoRA init), read the same data order (`DataOrder(seed)`) and run
the same number of steps. The rollout budget is equalised in answers per step: each arm samples
`rollouts_per_step` answers of at most `sampling.max_new_tokens` tokens every step, so an arm with G
answers per question (GRPO) trains on `rollouts_per_step / G` questions per step; it reads the same
data order, just fewer questions of it. Each step's logged answer count is checked against that budget.
The `base` arm is not trained: it is the untrained model, evaluated like the others.

Run folder (`output_dir`), built so an interrupted comparison resumes where it stopped:

    compare.yaml          the comparison as run (overrides applied)
    arms/<arm>/           the arm's training run (checkpoints/, metrics.jsonl), eval.json, arm.json, DONE
    configs/<arm>.yaml    each arm's exact TrainConfig
    report.md, curves.png written by `rcsd.trainer.compare_report` from the files above

`arm.json` holds the arm's config hash: a finished arm (`DONE`) is skipped, an unfinished one resumes
from its latest checkpoint, and an arm folder left by another config is refused. Services are the
caller's: `run_comparison` gets their URLs from a `services` context manager (the `rcsd compare`
command starts them on loopback) or uses the URLs of the `train.services` section.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import hashlib
import json
import subprocess
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from rcsd.trainer import checkpoint as ckpt
from rcsd.trainer.config import TrainConfig, read_yaml_config

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
    blob = json.dumps(
        {"method": arm.method, "train": identity, "eval": config.eval.model_dump()}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def arm_dir(run_dir: Path, arm: ArmConfig) -> Path:
    return run_dir / ARMS_DIR / arm.name


def is_done(run_dir: Path, arm: ArmConfig) -> bool:
    return (arm_dir(run_dir, arm) / DONE_MARKER).is_file()


def run_comparison(
    config: CompareConfig, services: ServiceStarter | None = None, console: Any = None
) -> Path:
    """Train and evaluate every arm not finished yet, then write the report; returns the run folder."""
    from rich.console import Console

    from rcsd.trainer.compare_report import write_report

    console = console or Console()
    run_dir = Path(config.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / COMPARE_FILE).write_text(config.to_yaml())
    for arm in config.arms:
        _claim(run_dir, config, arm)  # refuse a folder from another config before any work starts
    pending = [arm for arm in config.arms if not is_done(run_dir, arm)]
    with _services_for(config, pending, run_dir, services) as urls:
        for number, arm in enumerate(config.arms, start=1):
            title = f"arm {number}/{len(config.arms)}: {arm.name} ({arm.method})"
            if arm not in pending:
                console.rule(f"{title}: finished earlier, skipped")
                continue
            console.rule(title)
            train = _with_urls(config.arm_config(arm, run_dir), urls)
            config_path = _write_arm_config(run_dir, config, arm, train)
            if train is not None:
                _train(config, train, config_path, console)
            _evaluate(config, arm, train, run_dir, console)
            (arm_dir(run_dir, arm) / DONE_MARKER).write_text(arm_hash(config, arm) + "\n")
    report = write_report(config, run_dir)
    console.print(f"report: {report}")
    return run_dir


def _claim(run_dir: Path, config: CompareConfig, arm: ArmConfig) -> None:
    folder = arm_dir(run_dir, arm)
    marker = folder / ARM_FILE
    digest = arm_hash(config, arm)
    if marker.is_file():
        found = json.loads(marker.read_text())["hash"]
        if found != digest:
            raise FileExistsError(
                f"{folder} holds arm {arm.name} of another config (hash {found}, now {digest}): "
                "use another output_dir, or delete that arm's folder to rerun it"
            )
        return
    folder.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"arm": arm.name, "method": arm.method, "hash": digest}) + "\n")


@contextlib.contextmanager
def _services_for(
    config: CompareConfig, pending: list[ArmConfig], run_dir: Path, services: ServiceStarter | None
) -> Iterator[ServiceUrls | None]:
    """The launched services' URLs while pending arms need them; None: the configs' own URLs."""
    trained = [c for a in pending if (c := config.arm_config(a, run_dir)) is not None]
    needs = ServiceNeeds(
        teacher=any(c.method != "grpo" for c in trained),
        rubric=any(c.needs_rubrics for c in trained),
        model=config.shared_config().model,
        log_dir=run_dir / "services",
    )
    if not config.services.launch or not (needs.teacher or needs.rubric):
        yield None
        return
    if services is None:
        raise ValueError("services.launch is set but no service starter was given (use `rcsd compare`)")
    needs.log_dir.mkdir(parents=True, exist_ok=True)
    with services(needs) as urls:
        yield urls


def _with_urls(train: TrainConfig | None, urls: ServiceUrls | None) -> TrainConfig | None:
    if train is None or urls is None:
        return train
    update = {"teacher_urls": urls.teacher_urls or train.services.teacher_urls}
    update["rubric_urls"] = urls.rubric_urls or train.services.rubric_urls
    return train.model_copy(update={"services": train.services.model_copy(update=update)})


def _write_arm_config(
    run_dir: Path, config: CompareConfig, arm: ArmConfig, train: TrainConfig | None
) -> Path:
    path = run_dir / CONFIGS_DIR / f"{arm.name}.yaml"
    path.parent.mkdir(exist_ok=True)
    if train is not None:
        path.write_text(train.to_yaml())
    else:
        shared = config.shared_config()
        path.write_text(
            "# base: the untrained model, evaluated only\n"
            + yaml.safe_dump(
                {"method": "base", "model": shared.model, "dtype": shared.dtype}, sort_keys=False
            )
        )
    return path


def _train(config: CompareConfig, train: TrainConfig, config_path: Path, console: Any) -> None:
    """Train the arm, or continue it from its latest checkpoint; nothing when its last step is saved."""
    latest = ckpt.latest(Path(train.output_dir))
    if latest is not None and _saved_step(latest) >= train.steps:
        console.print(f"{train.output_dir}: all {train.steps} steps saved, not retrained")
        return
    if latest is not None:
        console.print(f"resuming {train.output_dir} from {latest.name}")
    if config.launcher == "torchrun":  # one process per device; the arm's config file is what they read
        command = ["torchrun", f"--nproc-per-node={config.nproc_per_node}", "-m", "rcsd.trainer.cli"]
        subprocess.run([*command, "train", str(config_path), *(["--resume"] if latest else [])], check=True)
        return
    from rcsd.trainer.train import main

    main(train, resume=latest is not None)
    _free_memory()


def _saved_step(checkpoint: Path) -> int:
    """The step a complete checkpoint holds (its marker's text)."""
    return int((checkpoint / ckpt.COMPLETE_MARKER).read_text())


def _evaluate(
    config: CompareConfig, arm: ArmConfig, train: TrainConfig | None, run_dir: Path, console: Any
) -> None:
    """`rcsd eval`'s evaluation of the arm's final weights (the base model for `base`) -> eval.json."""
    import torch

    from rcsd.trainer.data import load_questions, resolve_data_path
    from rcsd.trainer.eval import EvalSettings, evaluate_set, load_model
    from rcsd.trainer.rollout.hf import HfRollout

    shared = config.shared_config()
    device = shared.device if shared.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    model, adapter = shared.model, None
    if train is not None:
        latest = ckpt.latest(Path(train.output_dir))
        assert latest is not None, f"{train.output_dir}: training left no checkpoint"
        weights = ckpt.weights_dir(latest)
        model, adapter = (model, str(weights)) if train.lora.enabled else (str(weights), None)
    spec = config.eval
    settings = EvalSettings(
        max_new_tokens=spec.max_new_tokens,
        n=spec.n,
        top_p=spec.top_p,
        top_k=spec.top_k,
        seed=spec.seed,
        batch_size=spec.batch_size,
    )
    console.print(f"evaluating {arm.name}: {model}" + (f" + {adapter}" if adapter else ""))
    loaded, tokenizer, dtype_reason = load_model(model, adapter, shared.dtype, device)
    engine = HfRollout(loaded, tokenizer, max_batch_size=spec.batch_size)
    results = []
    for data in spec.data:
        questions = load_questions([data])[: spec.limit]
        for temperature in spec.temperatures:
            results.append(
                evaluate_set(
                    engine, tokenizer, Path(data).stem, questions, temperature, settings, shared.progress
                )
            )
    report = {
        "arm": arm.name,
        "model": model,
        "adapter": adapter,
        "device": device,
        "dtype": dtype_reason,
        "settings": asdict(settings),
        "data": {Path(d).stem: str(resolve_data_path(d)) for d in spec.data},
        "results": [asdict(r) for r in results],
    }
    (arm_dir(run_dir, arm) / EVAL_FILE).write_text(json.dumps(report, indent=1) + "\n")
    del loaded, engine
    _free_memory()


def _free_memory() -> None:
    """One arm's model goes before the next loads (matters on a GPU holding an 8B model)."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
