"""`rcsd train`: the trainer's own command, also what torchrun starts on every rank.

    rcsd train CONFIG.yaml [key=value ...] [--resume]
    torchrun --nproc-per-node 2 -m rcsd.trainer.cli train CONFIG.yaml ...

CONFIG is a YAML file or the name of a shipped one (`smollm2_cpu.yaml`, `qwen3_8b_gpu.yaml`);
each `key=value` overrides a field by its dotted path (`teacher.top_k=8`, `lora.enabled=false`).
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
import types
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import PydanticUndefined


def train_main(argv: list[str] | None = None) -> int:
    from rcsd.trainer.config import TrainConfig

    parser = argparse.ArgumentParser(
        prog="rcsd train",
        description=__doc__.split("\n\n")[0],
        epilog="config fields (YAML keys; key=value overrides):\n" + "\n".join(config_help(TrainConfig)),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", help="a YAML config, or the name of one in rcsd/trainer/configs/")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted-path overrides")
    parser.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    args = parser.parse_args(argv)

    from rcsd.trainer.config import load_config
    from rcsd.trainer.train import main

    main(load_config(args.config, args.overrides), resume=args.resume)
    return 0


def config_help(model: type[BaseModel], prefix: str = "") -> list[str]:
    """One line per field, nested sections as dotted keys: `key (default): description`.

    The description is the field's own, else the comment written above it (or beside it) in config.py.
    """
    comments = _field_comments(model)
    lines = []
    for name, field in model.model_fields.items():
        section = _section(field.annotation)
        if section is not None:
            lines += config_help(section, f"{prefix}{name}.")
            if field.default is None:
                lines.append(f"  {prefix}{name} (null): set any {name}.* key to turn it on")
            continue
        if field.default_factory is not None:
            default: Any = field.default_factory()  # type: ignore[call-arg]
        else:
            default = "required" if field.default is PydanticUndefined else field.default
        about = field.description or comments.get(name, "")
        lines.append(f"  {prefix}{name} ({default!r}){': ' + about if about else ''}")
    return lines


def _section(annotation: Any) -> type[BaseModel] | None:
    """The config class a field holds (`X` or `X | None`), or None for a plain value."""
    candidates = get_args(annotation) if get_origin(annotation) in (Union, types.UnionType) else (annotation,)
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _field_comments(model: type[BaseModel]) -> dict[str, str]:
    """`# comment` lines right above a field, or one beside it, in the class's source."""
    found: dict[str, str] = {}
    pending: list[str] = []
    for line in inspect.getsource(model).splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            pending.append(stripped.lstrip("# "))
            continue
        field = re.match(r"\s+(\w+)\s*:", line)
        if field:
            beside = line.split("  # ", 1)[1] if "  # " in line else ""
            text = " ".join([*pending, beside]).strip()
            if text:
                found[field.group(1)] = text
        pending = []
    return found


def main(argv: list[str] | None = None) -> int:
    """`python -m rcsd.trainer.cli train ...` (what torchrun starts on every rank)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "train":
        print("usage: python -m rcsd.trainer.cli train CONFIG.yaml [key=value ...] [--resume]")
        return 2
    return train_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
