"""`rcsd train`: the trainer's own command, also what torchrun starts on every rank.

    rcsd train CONFIG.yaml [key=value ...] [--resume]
    torchrun --nproc-per-node 2 -m rcsd.trainer.cli train CONFIG.yaml ...

CONFIG is a YAML file or the name of a shipped one (`smollm2_cpu.yaml`, `qwen3_8b_gpu.yaml`);
each `key=value` overrides a field by its dotted path (`teacher.top_k=8`, `lora.enabled=false`).
"""

from __future__ import annotations

import argparse
import sys


def train_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rcsd train", description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="a YAML config, or the name of one in rcsd/trainer/configs/")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted-path overrides")
    parser.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    args = parser.parse_args(argv)

    from rcsd.trainer.config import load_config
    from rcsd.trainer.train import main

    main(load_config(args.config, args.overrides), resume=args.resume)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m rcsd.trainer.cli train ...` (what torchrun starts on every rank)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "train":
        print("usage: python -m rcsd.trainer.cli train CONFIG.yaml [key=value ...] [--resume]")
        return 2
    return train_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
