"""`tinywave` command line: one sub-command per job; each area registers its own sub-commands.

A module in COMMAND_MODULES defines `register(subparsers)`, which adds parsers whose
`func(args) -> int | None` does the work. Heavy imports (jax, torch) happen inside `func`, so
`tinywave --help` stays fast.

A `TinywaveError` (errors.py: a bad config, input or output folder) is printed as one line naming
what to fix, exit code 2; anything else is a bug and keeps its traceback (exit 1).
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = [
    "tinywave_jax.convert.commands",  # import-hf, export-hf, export-gguf
    "tinywave_jax.scoring",  # score
    "tinywave_jax.audio.commands",  # units fit / hubert-spec / extract
    "tinywave_jax.distill.commands",  # init-student
    "tinywave_jax.train.commands",  # distill, train
    "tinywave_jax.data.commands",  # corpus build / info / show
    "tinywave_jax.eval.commands",  # eval
    "tinywave_jax.generation",  # generate
    "tinywave_jax.demo.commands",  # demo
    "tinywave_jax.plan",  # plan
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tinywave",
        description="Layer-aligned distillation of speech language models in JAX (TinyWave).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .errors import TinywaveError
    from .tpu import keep_jax_off_absent_tpu

    args = build_parser().parse_args(argv)
    keep_jax_off_absent_tpu()  # libtpu on a machine without TPUs: stay on the CPU quietly
    try:
        return int(args.func(args) or 0)
    except TinywaveError as e:
        print(f"tinywave {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
