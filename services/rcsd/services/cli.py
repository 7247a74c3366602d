"""The services' commands: serve a service, move the rubric store (`rcsd serve`, `rcsd rubrics`).

    rcsd serve teacher --backend vllm --model PATH_OR_ID [--port 8001 ...]
    rcsd serve rubric  --backend hf   --model PATH_OR_ID [--store-url sqlite:///rubrics.db ...]
    rcsd rubrics export|import FILE --store-url URL

Service flags are the fields of the service's settings class (`--help` lists them);
each can also come from an env var `RCSD_TEACHER_<FIELD>` / `RCSD_RUBRIC_<FIELD>`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported when used: `rcsd rubrics` needs no engine
    from rcsd.services.kit.settings import ServiceSettings

EXIT_LOAD_FAILED = 3  # `rcsd serve`: the engine did not load (the log says why)


def serve(settings: ServiceSettings, service: str) -> int:
    """Runs until stopped; returns the exit code (EXIT_LOAD_FAILED when the engine did not load)."""
    import uvicorn

    from rcsd.services.kit.logs import configure_logging
    from rcsd.services.kit.uvicorn_server import DrainingServer

    configure_logging(settings.log_level, settings.log_format)
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
        log_config=None,  # uvicorn's loggers reach the handler configure_logging set
        access_log=False,
        timeout_graceful_shutdown=settings.graceful_shutdown_s,
    )
    server = DrainingServer(config)
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
    """`rcsd serve SERVICE [--field value ...]` and `rcsd rubrics export|import FILE --store-url URL`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="rcsd", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    # no argparse --help here: `rcsd serve teacher --help` lists the settings class's flags instead
    serve_cmd = commands.add_parser(
        "serve", add_help=False, help="start a service (see `rcsd serve teacher --help`)"
    )
    serve_cmd.add_argument("service", choices=["teacher", "rubric"])
    move = commands.add_parser("rubrics", help="export or import the rubric store as JSONL")
    move.add_argument("direction", choices=["export", "import"])
    move.add_argument("file", type=Path)
    move.add_argument("--store-url", required=True)

    args, rest = parser.parse_known_args(argv)
    if args.command == "serve":
        from pydantic_settings import CliApp

        settings = CliApp.run(_settings_class(args.service), cli_args=rest)
        return serve(settings, args.service)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return _move_rubrics(args.direction, args.file, args.store_url)


if __name__ == "__main__":
    sys.exit(main())
