"""`rcsd compare`: the method comparison in one command (the library is `rcsd.recipes.compare.run`).

    rcsd compare compare_smollm2_cpu.yaml [key=value ...]
    rcsd compare my_compare.yaml output_dir=runs/compare-2 eval.limit=16

CONFIG is a YAML file or the name of a shipped one (`compare_smollm2_cpu.yaml`, `compare_qwen3_8b_gpu.yaml`);
`key=value` overrides a field by its dotted path. Run it again with the same config to resume: finished
arms are skipped, an unfinished one continues from its latest checkpoint. With `services.launch: true`
this command starts the teacher and rubric services on loopback (serving the base model, logs and the
rubric store in the run folder's services/) and stops them at the end; otherwise the arms use the URLs
of `train.services`. This is the only place of the trainer that starts services.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # rcsd.recipes.compare.run loads torch: main() sets the OpenMP wait policy first
    from rcsd.recipes.compare.config import LaunchConfig, ServiceNeeds, ServiceUrls


@contextlib.contextmanager
def launch_services(launch: LaunchConfig, needs: ServiceNeeds) -> Iterator[ServiceUrls]:
    """The services `needs` asks for, as `rcsd serve` child processes on loopback, stopped on exit."""
    from rcsd.recipes.compare.config import ServiceUrls
    from rcsd.recipes.launch import ServiceProcess, stop_all  # the services' extra: only when launching
    from rcsd.trainer.student import resolve_model

    common = ["--backend", launch.backend, "--model", resolve_model(needs.model), "--dtype", launch.dtype]
    store = ["--store-url", f"sqlite:///{needs.log_dir.resolve() / 'rubrics.db'}"]  # kept for a resume
    wanted = {
        "teacher": (needs.teacher, [*common, *launch.teacher_args]),
        "rubric": (
            needs.rubric,
            [*common, *([] if "--store-url" in launch.rubric_args else store), *launch.rubric_args],
        ),
    }
    processes = {name: ServiceProcess(name, args, needs.log_dir) for name, (on, args) in wanted.items() if on}
    try:
        with ThreadPoolExecutor(len(processes)) as pool:  # both load at once
            list(pool.map(lambda p: p.start(launch.ready_timeout_s), processes.values()))
        for name, process in processes.items():
            print(f"{name} service: {process.url} (log {process.log_path})")
        yield ServiceUrls(
            teacher_urls=[processes["teacher"].url] if "teacher" in processes else [],
            rubric_urls=[processes["rubric"].url] if "rubric" in processes else [],
        )
    finally:
        stop_all(processes.values())  # at once: a Ctrl-C waits for the slower one, not for the sum


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rcsd compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="a comparison YAML, or the name of one in rcsd/trainer/configs/")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted-path overrides")
    args = parser.parse_args(argv)
    # Before torch loads: the student shares the machine with the services it started, and spinning
    # OpenMP threads starve them all on a small CPU box.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # A SIGTERM unwinds like Ctrl-C, so the services started here are stopped (they run in their own
    # session and would outlive the command otherwise).
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        from rcsd.recipes.compare.config import load_compare_config
        from rcsd.recipes.compare.run import run_comparison

        config = load_compare_config(args.config, args.overrides)
        run_comparison(config, lambda needs: launch_services(config.services, needs))
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":  # `python -m rcsd.recipes.compare.cli CONFIG ...`, the same as `rcsd compare`
    sys.exit(main())
