"""The `rcsd` command: serve a service, prepare the default model, move the rubric store.

    rcsd serve teacher --backend vllm --model PATH_OR_ID [--port 8001 ...]
    rcsd serve rubric  --backend hf   --model PATH_OR_ID [--store-url sqlite:///rubrics.db ...]
    rcsd prepare-model [--cache-dir DIR]
    rcsd rubrics export|import FILE --store-url URL
    rcsd demo [--backend hf|vllm ...] [key=value ...]  (RCSD end to end; `rcsd demo --help`)

Service flags are the fields of the service's settings class (`--help` lists them);
each can also come from an env var `RCSD_TEACHER_<FIELD>` / `RCSD_RUBRIC_<FIELD>`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported when used: `rcsd train` / `rcsd eval` run without the services' deps
    from rcsd.services.kit.settings import ServiceSettings

TRAINER_COMMANDS = {"train": "train_main", "eval": "eval_main", "compare": "compare_main"}  # rcsd.trainer.cli

EXIT_LOAD_FAILED = 3  # `rcsd serve`: the engine did not load (the log says why)


def serve(settings: ServiceSettings, service: str) -> int:
    """Runs until stopped; returns the exit code (EXIT_LOAD_FAILED when the engine did not load)."""
    import uvicorn

    from rcsd.services.kit.logs import configure_logging

    configure_logging(settings.log_level)
    if service == "teacher":
        from rcsd.services.teacher.app import create_app
    else:
        from rcsd.services.rubric.app import create_app  # type: ignore[assignment]
    app = create_app(settings)  # type: ignore[arg-type]
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,
        timeout_graceful_shutdown=10,
    )
    server = uvicorn.Server(config)
    state = app.state.rcsd
    state.stop_serving = lambda: setattr(server, "should_exit", True)
    server.run()
    return EXIT_LOAD_FAILED if state.load_error is not None else 0


def _settings_class(service: str) -> type[ServiceSettings]:
    if service == "teacher":
        from rcsd.services.teacher.settings import TeacherSettings

        return TeacherSettings
    from rcsd.services.rubric.settings import RubricSettings

    return RubricSettings


def _move_rubrics(direction: str, file: Path, store_url: str) -> int:
    from rcsd.services.rubric.store import open_store

    async def run() -> int:
        store = await open_store(store_url)
        try:
            if direction == "export":
                return await store.export_jsonl(file)
            return await store.import_jsonl(file)
        finally:
            await store.aclose()

    count = asyncio.run(run())
    print(f"{direction}ed {count} rubrics {'to' if direction == 'export' else 'from'} {file}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in TRAINER_COMMANDS:
        import rcsd.trainer.cli

        return getattr(rcsd.trainer.cli, TRAINER_COMMANDS[argv[0]])(argv[1:])
    parser = argparse.ArgumentParser(prog="rcsd", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    # no argparse --help here: `rcsd serve teacher --help` lists the settings class's flags instead
    serve_cmd = commands.add_parser(
        "serve", add_help=False, help="start a service (see `rcsd serve teacher --help`)"
    )
    serve_cmd.add_argument("service", choices=["teacher", "rubric"])
    prepare = commands.add_parser("prepare-model", help="convert the bundled SmolLM2 to safetensors, once")
    prepare.add_argument("--cache-dir", type=Path, default=None)
    move = commands.add_parser("rubrics", help="export or import the rubric store as JSONL")
    move.add_argument("direction", choices=["export", "import"])
    move.add_argument("file", type=Path)
    move.add_argument("--store-url", required=True)
    commands.add_parser("train", help="train a student (see `rcsd train --help`)", add_help=False)
    commands.add_parser(
        "eval", help="evaluate a model on question sets (see `rcsd eval --help`)", add_help=False
    )
    commands.add_parser(
        "compare",
        help="base, RCSD, OPSD, GRPO on one budget, with a report (`rcsd compare --help`)",
        add_help=False,
    )
    commands.add_parser("demo", help="RCSD end to end on SmolLM2 (see `rcsd demo --help`)", add_help=False)

    args, rest = parser.parse_known_args(argv)
    if args.command == "serve":
        from pydantic_settings import CliApp

        settings_class = _settings_class(args.service)
        settings = CliApp.run(settings_class, cli_args=rest)
        return serve(settings, args.service)
    if args.command == "demo":
        # Set before torch loads: the demo's student shares a small machine with two services, and
        # spinning OpenMP threads starve them all (greedy SmolLM2 on a busy 2-core box: 4x slower).
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        from rcsd.services.demo.run import main as demo_main

        return demo_main(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "prepare-model":
        from rcsd.models.default import prepare_default_model

        print(prepare_default_model(args.cache_dir))
        return 0
    return _move_rubrics(args.direction, args.file, args.store_url)


if __name__ == "__main__":
    sys.exit(main())
