"""`tinywave distill` and `tinywave train`: run a config, with `key=value` overrides and --resume."""

from __future__ import annotations

import argparse
import logging

_DISTILL_HELP = """\
Distil a frozen teacher into a student (TinyWave): CE + temperature logit KL + hidden-state
alignment + attention KL at mapped layer pairs (section `distill:`), on a (data, fsdp, tensor)
device mesh (section `mesh:`). Results: RUN_DIR/metrics.jsonl, RUN_DIR/tb/, RUN_DIR/checkpoints/,
and the student as a tinywave model checkpoint in RUN_DIR/final/ (for `tinywave export-hf`).

example: tinywave distill configs/distill_tiny.yaml train.steps=200 run_dir=runs/tiny
"""

_TRAIN_HELP = """\
Fine-tune a model on next-token cross-entropy: all weights, or LoRA adapters
(`lora.enabled=true lora.rank=8 lora.alpha=16 lora.targets=[q_proj,v_proj]`: only the adapters
carry optimizer state; they are merged into the weights of RUN_DIR/final/ at the end).

example: tinywave train configs/train_tiny.yaml lora.enabled=true run_dir=runs/lora
"""


def _add(sub, name: str, help_text: str, description: str):
    p = sub.add_parser(
        name,
        help=help_text,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", help="run config YAML (see configs/; may name a `base:` YAML)")
    # REMAINDER so that options may also follow the overrides (`x.yaml a=1 --resume`).
    p.add_argument(
        "overrides",
        nargs=argparse.REMAINDER,
        metavar="KEY=VALUE",
        help="dotted config overrides, values parsed as YAML (train.steps=100, "
        "mesh.fsdp=4, distill.weights.hidden=0, data.batch_size=16)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from the latest checkpoint in run_dir (exactly: params, "
        "optimizer, step, RNG and data position)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=lambda args: _run(name, args))


def register(subparsers) -> None:
    _add(subparsers, "distill", "distil a teacher into a student (TinyWave)", _DISTILL_HELP)
    _add(subparsers, "train", "fine-tune on cross-entropy (full or LoRA)", _TRAIN_HELP)


def _split_flags(args) -> None:
    """Moves --resume / --quiet given after the overrides from `overrides` to their flags."""
    rest = []
    for item in args.overrides:
        if item in ("--resume", "--quiet"):
            setattr(args, item[2:], True)
        elif item.startswith("-"):
            from ..config import ConfigError

            raise ConfigError(f"unknown option {item!r} (options: --resume, --quiet)")
        else:
            rest.append(item)
    args.overrides = rest


def _run(kind: str, args) -> int:
    from ..config import load_config
    from .config import DistillConfig, TrainConfig
    from .loop import run
    from .recipes import prepare

    _split_flags(args)
    from ..parallel.distributed import maybe_initialize

    maybe_initialize()  # multi-process runs: before any jax device is touched
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    cls = DistillConfig if kind == "distill" else TrainConfig
    cfg = load_config(cls, args.config, args.overrides)
    prepare(cfg)  # all model-dependent checks before any jax device work
    out = run(cfg, resume=args.resume, echo=not args.quiet)
    if out["final_dir"] is not None:
        print(f"final student: {out['final_dir']}")
    else:
        print(f"stopped at step {out['step']}; continue with --resume")
    return 0
