"""`tinywave distill` and `tinywave train`: run a config, with `key=value` overrides and --resume."""

from __future__ import annotations

import argparse
import logging

_DISTILL_HELP = """\
Distil a frozen teacher into a student (TinyWave): CE + temperature logit KL + hidden-state
alignment + attention KL at mapped layer pairs (section `distill:`; `distill.terms.NAME: W` adds
a registered term, e.g. topk_kl, the KL over the teacher's top distill.top_k ids), on a
(data, fsdp, tensor) device mesh (section `mesh:`). `teacher.cache: DIR` (from `tinywave
teacher-cache build`) stands in for the teacher: no teacher forward in the step (topk_kl only).
Results: RUN_DIR/metrics.jsonl, RUN_DIR/tb/, RUN_DIR/checkpoints/, and the student as a
tinywave model checkpoint in RUN_DIR/final/ (for `tinywave export-hf`). From Python:
`tinywave_jax.train.distill(config_or_dict, overrides)` (the same code path).

example: tinywave distill configs/distill_tiny.yaml train.steps=200 run_dir=runs/tiny
"""

_TRAIN_HELP = """\
Fine-tune a model on next-token cross-entropy: all weights, or LoRA adapters
(`lora.enabled=true lora.rank=8 lora.alpha=16 lora.targets=[q_proj,v_proj]`: only the adapters
carry optimizer state; they are merged into the weights of RUN_DIR/final/ at the end).

example: tinywave train configs/train_tiny.yaml lora.enabled=true run_dir=runs/lora
"""

_EPILOG = """\
one run per RUN_DIR: a run holds RUN_DIR/.lock; a second run (or --resume) on the same folder
stops with an error. A lock left by a killed run on this host is replaced with a warning; one
from another host must be deleted by hand once that run is known to be dead.

--resume continues from the newest checkpoint that restores whole (damaged ones are skipped with
a warning and moved to RUN_DIR/corrupt_checkpoints/). It refuses a config that differs from the
checkpoint's, except in run_dir, train.steps (also the length of the LR decay), train.log_every,
train.checkpoint_every, train.checkpoint_keep, train.async_checkpoint, train.tensorboard,
train.throttle_s, train.peak_flops_per_device, train.eval_every, train.eval_batches,
train.eval_split and mesh; --allow-config-change KEY [KEY ...] accepts other changed keys on
purpose (a key covers the keys under it, e.g. optimizer).

validation: train.eval_every=N (default 0: none) logs val_loss and val_ppl, the student's
next-token cross-entropy and perplexity on the first train.eval_batches batches of the held-out
train.eval_split (validation or test; synthetic data: walks from another random stream), every N
steps and at the last, to metrics.jsonl and TensorBoard.

exit codes: 0 finished (RUN_DIR/final/ written); 2 a config, input or run-folder error (one line
naming what to fix); 143 stopped by SIGTERM after saving a checkpoint (continue with --resume);
130 the same for Ctrl-C (SIGINT; a second Ctrl-C stops at once, without saving); a non-finite
loss or gradient stops the run with exit 2 naming the step, saving nothing of it.
In a multi-process run, SIGTERM to any one process stops all of them after the same step, which
all save; all exit 143.
"""


def _add(sub, name: str, help_text: str, description: str):
    p = sub.add_parser(
        name,
        help=help_text,
        description=description,
        epilog=_EPILOG,
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
    p.add_argument(
        "--allow-config-change",
        action="append",
        default=[],
        metavar="KEY",
        help="with --resume: accept a changed value of this dotted config key (and the keys "
        "under it); after the config, several keys may follow: --allow-config-change KEY [KEY ...]",
    )
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=lambda args: _run(name, args))


def register(subparsers) -> None:
    _add(subparsers, "distill", "distil a teacher into a student (TinyWave)", _DISTILL_HELP)
    _add(subparsers, "train", "fine-tune on cross-entropy (full or LoRA)", _TRAIN_HELP)


_ALLOW = "--allow-config-change"


def _split_flags(args) -> None:
    """Moves --resume / --quiet / --allow-config-change KEY [KEY ...] given after the overrides
    from `overrides` to their flags (the keys run to the next option or KEY=VALUE item)."""
    from ..errors import ConfigError

    rest, items, i = [], list(args.overrides), 0
    while i < len(items):
        item = items[i]
        i += 1
        if item in ("--resume", "--quiet"):
            setattr(args, item[2:], True)
        elif item == _ALLOW or item.startswith(_ALLOW + "="):
            keys = [item.split("=", 1)[1]] if "=" in item else []
            while "=" not in item and i < len(items):
                if items[i].startswith("-") or "=" in items[i]:
                    break
                keys.append(items[i])
                i += 1
            if not keys:
                raise ConfigError(f"{_ALLOW}: name at least one dotted config key")
            args.allow_config_change += keys
        elif item.startswith("-"):
            raise ConfigError(
                f"unknown option {item!r} (options: --resume, {_ALLOW} KEY [KEY ...], --quiet)"
            )
        else:
            rest.append(item)
    args.overrides = rest
    if args.allow_config_change and not args.resume:
        raise ConfigError(f"{_ALLOW}: only applies to --resume")


def _run(kind: str, args) -> int:
    from .api import load_run_config, run_config
    from .config import DistillConfig, TrainConfig

    _split_flags(args)
    from ..parallel.distributed import maybe_initialize

    maybe_initialize()  # multi-process runs: before any jax device is touched
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    cls = DistillConfig if kind == "distill" else TrainConfig
    cfg = load_run_config(cls, args.config, args.overrides)
    out = run_config(  # the same path as the Python API (train/api.py)
        cfg, resume=args.resume, echo=not args.quiet, allow_config_change=args.allow_config_change
    )
    if out["stopped"]:
        sig = out.get("signal") or "SIGTERM"
        print(f"stopped at step {out['step']} by {sig}; continue with --resume")
        # 128 + the signal's number, as a shell reports a process that signal ended
        return 130 if sig == "SIGINT" else 143
    print(f"final student: {out['final_dir']}")
    return 0
