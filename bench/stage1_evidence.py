"""Stage I evidence: does a short Stage I run make SmolLM2 a better rubric writer?

Runs `stage1_smollm2_cpu.yaml` (or CONFIG) with a teacher service on the same base model, then measures
before and after:
1. the generator's mean per-token log-prob of the held-out reference rubrics in the generation format,
   given their questions' rubric prompts (teacher-forced, by the student itself: the run's rubric probe);
2. the share of rubrics passing the checks on the first attempt: the rubric service (`--max-attempts 1`,
   a fresh store) on the base model and on the run's adapter (`--adapter`), the same held-out questions,
   seeds and bounds. The base model's does not depend on the run: it is measured while the run trains.
Both go into the run's report.md; a table is printed, then one line of JSON.

    .venv/bin/python bench/stage1_evidence.py [--config stage1_smollm2_cpu.yaml] [--seeds 1] [key=value ...]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rcsd.client import BadRequestError, RubricClient
from rcsd.loading.dtype import machine_summary
from rcsd.recipes.launch import ServiceProcess
from rcsd.trainer import checkpoint as ckpt
from rcsd.trainer.config import TrainConfig, load_config
from rcsd.trainer.data.questions import reference_rubrics
from rcsd.trainer.probe import REPORT_FILE
from rcsd.trainer.service_calls import rubric_request
from rcsd.trainer.student import resolve_model
from rcsd.trainer.train import main as train


def first_attempt_passes(
    model: str, adapter: Path | None, config: TrainConfig, seeds: int, log_dir: Path
) -> int:
    """Rubrics (held-out questions x seeds) the rubric service writes valid on its first attempt."""
    args = ["--backend", "hf", "--model", model, "--dtype", config.dtype, "--max-attempts", "1"]
    args += ["--store-url", f"sqlite:///{log_dir / f'rubrics-{adapter is not None}.db'}"]
    if adapter is not None:
        args += ["--adapter", str(adapter)]
    server = ServiceProcess("rubric", args, log_dir).start(timeout_s=600)
    passed = 0
    try:
        with RubricClient(server.url, timeout=1800) as client:
            for item in reference_rubrics("heldout", config.probe.data)[: config.probe.questions]:
                for seed in range(seeds):
                    request = rubric_request(config.rubric, item.question).model_copy(update={"seed": seed})
                    try:
                        client.generate(request)
                        passed, outcome = passed + 1, "passed"
                    except BadRequestError as exc:  # 422: the one attempt failed a check
                        outcome = f"failed ({exc})"[:200]
                    print(f"rubric, {'adapter' if adapter else 'base'}, {item.id} seed {seed}: {outcome}")
    finally:
        server.stop()
    return passed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="stage1_smollm2_cpu.yaml")
    parser.add_argument("--seeds", type=int, default=1, help="rubrics per held-out question")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args()
    config = load_config(args.config, args.overrides)
    model = resolve_model(config.model)
    log_dir = Path(tempfile.mkdtemp(prefix="stage1-evidence-"))
    teacher = ServiceProcess(
        "teacher", ["--backend", "hf", "--model", model, "--dtype", config.dtype], log_dir
    ).start(timeout_s=600)
    try:
        config = config.model_copy(
            update={"services": config.services.model_copy(update={"teacher_urls": [teacher.url]})}
        )
        with ThreadPoolExecutor(1) as pool:
            base = pool.submit(first_attempt_passes, model, None, config, args.seeds, log_dir)
            run_dir = train(config)
            before = base.result()
    finally:
        teacher.stop()
    adapter = ckpt.weights_dir(ckpt.latest(run_dir))
    probe = json.loads((run_dir / "rubric_probe.json").read_text())
    total = config.probe.questions * args.seeds
    print(f"first attempt passes, base model: {before}/{total}")
    after = first_attempt_passes(model, adapter, config, args.seeds, log_dir)
    lp_before = probe["before"]["reference_rubric_logprob"]
    lp_after = probe["after"]["reference_rubric_logprob"]
    table = "\n".join(
        [
            "",
            f"Rubric service (hf, `--max-attempts 1`) on the base model and on `{adapter}`: "
            f"{config.probe.questions} held-out questions x {args.seeds} seeds, bounds "
            f"{config.rubric.min_criteria}..{config.rubric.max_criteria}, temperature {config.rubric.temperature}, "
            f"max_tokens {config.rubric.max_tokens}. Machine: {machine_summary()}.",
            "",
            "| measure | base | Stage I | change |",
            "| --- | ---: | ---: | ---: |",
            f"| mean log-prob per token of the held-out reference rubrics | {lp_before:.4f} | {lp_after:.4f} "
            f"| {lp_after - lp_before:+.4f} |",
            f"| rubrics passing the checks on the first attempt | {before}/{total} | {after}/{total} "
            f"| {after - before:+d} |",
            "",
        ]
    )
    with open(run_dir / REPORT_FILE, "a") as report:
        report.write(table)
    print(table)
    print(
        json.dumps(
            {
                "run_dir": str(run_dir),
                "logprob_before": lp_before,
                "logprob_after": lp_after,
                "first_attempt_pass_before": before / total,
                "first_attempt_pass_after": after / total,
            }
        )
    )


if __name__ == "__main__":
    main()
