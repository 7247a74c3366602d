"""A method comparison: base, RCSD, OPSD, GRPO (and ablations) from one start, on one budget, one eval.

    from rcsd.recipes.compare.config import load_compare_config
    from rcsd.recipes.compare.run import run_comparison
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
    report.md, curves.png written by `rcsd.recipes.compare.report` from the files above

`arm.json` holds the arm's config hash: a finished arm (`DONE`) is skipped, an unfinished one resumes
from its latest checkpoint, and an arm folder left by another config is refused. Services are the
caller's: `run_comparison` gets their URLs from a `services` context manager (the `rcsd compare`
command starts them on loopback) or uses the URLs of the `train.services` section.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from rcsd.recipes.compare.config import (
    ARM_FILE,
    COMPARE_FILE,
    CONFIGS_DIR,
    DONE_MARKER,
    EVAL_FILE,
    ArmConfig,
    CompareConfig,
    ServiceNeeds,
    ServiceStarter,
    ServiceUrls,
    arm_dir,
    arm_hash,
    is_done,
)
from rcsd.recipes.compare.measure import measure_run
from rcsd.recipes.compare.report import write_report
from rcsd.recipes.evaluate import free_memory
from rcsd.trainer import checkpoint as ckpt
from rcsd.trainer.config import TrainConfig


def run_comparison(
    config: CompareConfig, services: ServiceStarter | None = None, console: Any = None
) -> Path:
    """Train and evaluate every arm not finished yet, then write the report; returns the run folder."""
    from rich.console import Console

    console = console or Console()
    run_dir = Path(config.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / COMPARE_FILE).write_text(config.to_yaml())
    runs = config.runs()  # the arms, or each arm once per seed
    for arm in runs:
        _claim(run_dir, config, arm)  # refuse a folder from another config before any work starts
    pending = [arm for arm in runs if not is_done(run_dir, arm)]
    with _services_for(config, pending, run_dir, services) as urls:
        for number, arm in enumerate(runs, start=1):
            title = f"arm {number}/{len(runs)}: {arm.name} ({arm.method})"
            if arm not in pending:
                console.rule(f"{title}: finished earlier, skipped")
                continue
            console.rule(title)
            train = _with_urls(config.arm_config(arm, run_dir), urls)
            config_path = _write_arm_config(run_dir, config, arm, train)
            if train is not None:
                _train(config, train, config_path, console)
            _evaluate(config, arm, train, run_dir, console)
            if config.measure is not None:
                measure_run(config, arm, train, run_dir, urls)
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
    measured = config.measure is not None and bool(pending)  # the measures' teacher sees a rubric
    needs = ServiceNeeds(
        teacher=measured or any(c.method != "grpo" for c in trained),
        rubric=measured or any(c.needs_rubrics for c in trained),
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
    free_memory()


def _saved_step(checkpoint: Path) -> int:
    """The step a complete checkpoint holds (its marker's text)."""
    return int((checkpoint / ckpt.COMPLETE_MARKER).read_text())


def _evaluate(
    config: CompareConfig, arm: ArmConfig, train: TrainConfig | None, run_dir: Path, console: Any
) -> None:
    """`rcsd eval`'s evaluation of the arm's final weights (the base model for `base`) -> eval.json."""
    from rcsd.recipes.evaluate import EvalSettings, checkpoint_weights, evaluate_checkpoint

    shared = config.shared_config()
    model, adapter = shared.model, None
    if train is not None:
        model, adapter = checkpoint_weights(shared.model, Path(train.output_dir))
    spec = config.eval
    settings = EvalSettings(
        max_new_tokens=spec.max_new_tokens,
        n=spec.n,
        top_p=spec.top_p,
        top_k=spec.top_k,
        seed=spec.seed,
        batch_size=spec.batch_size,
        bootstrap_resamples=spec.bootstrap_resamples,
        judge=spec.judge,
        template_version=shared.sampling.prompt_version,  # the prompt the arms trained with
    )
    console.print(f"evaluating {arm.name}: {model}" + (f" + {adapter}" if adapter else ""))
    report = evaluate_checkpoint(
        model,
        adapter,
        spec.data,
        settings,
        temperatures=spec.temperatures,
        limit=spec.limit,
        dtype=shared.dtype,
        device=None if shared.device == "auto" else shared.device,
        backend=spec.backend,
        progress=shared.progress,
    )
    (arm_dir(run_dir, arm) / EVAL_FILE).write_text(report.to_json(arm=arm.name))
