"""The `rcsd` command: one entry point that hands each subcommand to the part that owns it.

    rcsd serve teacher|rubric ...        a service              (rcsd.services.cli)
    rcsd rubrics export|import FILE ...  move the rubric store  (rcsd.services.cli)
    rcsd train CONFIG [key=value ...]    train a student        (rcsd.trainer.cli)
    rcsd eval ...                        evaluate a checkpoint  (rcsd.recipes.evaluate)
    rcsd compare CONFIG [key=value ...]  methods on one budget  (rcsd.recipes.compare.cli)
    rcsd demo ...                        RCSD end to end        (rcsd.recipes.demo.run)
    rcsd prepare-model [--cache-dir DIR] the bundled SmolLM2    (rcsd.loading.bundled)

Each part is imported only when its command runs: a trainer-only install runs `rcsd train` without the
services' dependencies.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from rcsd.client import __version__

# command -> (module, function, help); the function takes the arguments after the command
COMMANDS: dict[str, tuple[str, str, str]] = {
    "serve": ("rcsd.services.cli", "main", "start a service (see `rcsd serve teacher --help`)"),
    "rubrics": ("rcsd.services.cli", "main", "export or import the rubric store as JSONL"),
    "train": ("rcsd.trainer.cli", "train_main", "train a student (see `rcsd train --help`)"),
    "eval": ("rcsd.recipes.evaluate", "main", "evaluate a model on question sets (`rcsd eval --help`)"),
    "compare": (
        "rcsd.recipes.compare.cli",
        "main",
        "base, RCSD, OPSD, GRPO on one budget, with a report (`rcsd compare --help`)",
    ),
    "demo": ("rcsd.recipes.demo.run", "main", "RCSD end to end on SmolLM2 (see `rcsd demo --help`)"),
    "prepare-model": (
        "rcsd.recipes.cli",
        "prepare_model",
        "convert the bundled SmolLM2 to safetensors, once",
    ),
}
KEEPS_COMMAND_NAME = {"serve", "rubrics"}  # rcsd.services.cli parses its own subcommands
# The demo's student shares a small machine with the services it starts: spinning OpenMP threads starve
# them all (greedy SmolLM2 on a busy 2-core box: 4x slower). Set before torch loads (the demo's module
# imports it; `rcsd compare`'s main sets it itself, being also run as `python -m`).
SHARES_THE_MACHINE = {"demo"}


def prepare_model(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="rcsd prepare-model", description=COMMANDS["prepare-model"][2])
    parser.add_argument("--cache-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    from rcsd.loading.bundled import prepare_default_model

    print(prepare_default_model(args.cache_dir))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in COMMANDS:
        command, rest = argv[0], argv[1:]
        if command in SHARES_THE_MACHINE:
            os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        module, function, _ = COMMANDS[command]
        run = getattr(importlib.import_module(module), function)
        return run(argv if command in KEEPS_COMMAND_NAME else rest)
    parser = argparse.ArgumentParser(prog="rcsd", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"rcsd {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, _, help_text) in COMMANDS.items():
        commands.add_parser(name, help=help_text, add_help=False)
    parser.parse_args(argv)  # prints usage or the version, and exits
    return 2


if __name__ == "__main__":
    sys.exit(main())
