"""`tinywave train` (run a config, with `key=value` overrides and --resume; `add_run_command`,
which `tinywave distill` shares) and `tinywave plan` (plan.py: a run's step compiled for a mesh)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import subprocess
import sys
from typing import Optional

from .. import tpu
from ..errors import ConfigError
from ..flags import flag_name

_CHILD_ENV = "TINYWAVE_PLAN_CHILD"  # set in the re-executed `plan` with N simulated devices

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


def add_run_command(sub, name: str, help_text: str, description: str):
    """A command that runs a run config of kind `name` (distill | train) through train/api.py."""
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
    add_run_command(subparsers, "train", "fine-tune on cross-entropy (full or LoRA)", _TRAIN_HELP)
    _register_plan(subparsers)


_ALLOW = "--allow-config-change"


def _split_flags(args) -> None:
    """Moves --resume / --quiet / --allow-config-change KEY [KEY ...] given after the overrides
    from `overrides` to their flags (the keys run to the next option or KEY=VALUE item)."""
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


_PLAN_HELP = """\
`tinywave plan`: memory and speed of a run's step on a target mesh, without weights or hardware.

The distill (or train) step of CONFIG is lowered and compiled ahead of time from ABSTRACT inputs
(ShapeDtypeStructs carrying the run's shardings: no parameter is allocated) by one of two
compilers, and the plan says which:

  * TPU topologies (the tpu-* overlays, or a slice like v5p:2x2x1) with libtpu installed
    (`pip install 'tinywave_jax[tpu]'`): the real TPU compiler, for the slice's devices from
    `jax.experimental.topologies` (tinywave_jax/tpu.py; no TPU needed, none is started);
  * otherwise (GPU overlays, explicit meshes, no libtpu, or --compiler cpu): the CPU compiler,
    for a mesh of N simulated CPU devices (`jax_num_cpu_devices`, set before the backend starts;
    the command re-runs itself in a fresh process when this one already has a backend with too
    few devices).

It reports per device:

  * parameters (student, teacher / frozen base), optimizer state and batch: exact, from each
    array's shard shape under the run's shardings;
  * the compiler's buffer assignment (`compiled.memory_analysis()`): argument, output, alias
    (donated state reused for the output) and temp (activations, gradients, collectives' buffers)
    bytes; peak ~ argument + output - alias + temp;
  * model FLOPs per step (the trainer's own `step_flops`, PaLM convention) and XLA's cost
    analysis of the per-device program (which counts a while-loop body once: with scanned layers
    or microbatches it is a lower bound, so it is only "meaningful" without them);
  * step time and tokens/s at the device's peak FLOP/s times an assumed MFU.

What the CPU compile cannot tell: the TPU/GPU compilers fuse, lay out and schedule differently,
so their temp bytes differ (docs/scaling.md, "Planning a run": ~3x an H100's, 1.2-1.5x a TPU's).
The parameter/optimizer figures do not depend on the compiler.

Topologies: a hardware overlay NAME, one of the package's `tinywave_jax/hw/NAME.yaml` (linked as
configs/hw; its keys become overrides after CONFIG and before yours, as in the launchers; its
`hw:` section gives devices, peak FLOP/s, HBM and, for TPUs, the slice's libtpu topology), a TPU
slice GENERATION:AxBxC / GENERATION:AxB (v5p:2x2x1, v6e:4x4: no overrides; peak FLOP/s and HBM
from the overlay of the same generation), or an explicit mesh shape `DATA,FSDP,TENSOR` with
--peak-tflops / --hbm-gib.
"""


def _configure_devices(n: Optional[int]) -> bool:
    """Makes this process's jax backend n simulated CPU devices (None: the CPU, as many devices
    as configured) if it has not started yet. False when a backend is already up without n CPU
    devices (the caller re-executes)."""
    import jax
    from jax._src import xla_bridge

    if not xla_bridge.backends_are_initialized():
        jax.config.update("jax_platforms", "cpu")
        if n is not None:
            jax.config.update("jax_num_cpu_devices", n)
        return True
    if n is None:
        return True
    devs = jax.devices()
    return devs[0].platform == "cpu" and len(devs) >= n


def _reexec(n: int, argv: list[str]) -> int:
    flags = re.sub(
        r"--xla_force_host_platform_device_count=\S+", "", os.environ.get("XLA_FLAGS", "")
    ).strip()
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        **{_CHILD_ENV: "1"},
        XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count={n}".strip(),
    )
    return subprocess.call([sys.executable, "-m", "tinywave_jax.cli", "plan"] + argv, env=env)


def _plan(args) -> int:
    from ..plan import choose_compiler, format_plan, load_run_config, make_plan, resolve_topology

    later = argparse.ArgumentParser(prog="tinywave plan", add_help=False)
    _add_plan_options(later)
    args.overrides = [a for a in args.overrides if a != "--"]
    _, overrides = later.parse_known_args(args.overrides, namespace=args)
    bad = [o for o in overrides if o.startswith("-") or "=" not in o]
    if bad:
        raise ConfigError(f"plan: not an option nor a key=value override: {' '.join(bad)}")
    args.overrides = overrides
    if not args.topology:
        raise ConfigError(
            "plan: --topology is required (hardware overlay name, TPU slice or DATA,FSDP,TENSOR)"
        )
    topo = resolve_topology(args.topology, args.peak_tflops, args.hbm_gib, args.devices)
    devices = None
    if choose_compiler(topo, args.compiler) == "tpu":
        if args.devices is not None:
            raise ConfigError(
                f"--devices: the TPU slice {topo.tpu} fixes the device count; name another "
                f"slice as --topology instead ({tpu.FORMS})"
            )
        _configure_devices(None)  # computes nothing: any backend, any device count will do
        devices = tpu.topology_devices(str(topo.tpu))  # a TPU compile: a TPU slice
        topo = dataclasses.replace(topo, devices=len(devices))
    else:
        if topo.tpu is not None and args.compiler == "auto" and not os.environ.get(_CHILD_ENV):
            print(
                f"tinywave plan: libtpu is not installed, so this is the CPU compiler's plan "
                f"(temporaries above a TPU's); for the TPU compiler's: {tpu.EXTRA}",
                file=sys.stderr,
            )
        if not _configure_devices(topo.devices):
            if os.environ.get(_CHILD_ENV):
                raise ConfigError(f"could not get {topo.devices} simulated CPU devices")
            return _reexec(topo.devices, _plan_argv(args))
    cfg = load_run_config(args.config, list(topo.overrides) + overrides)
    if args.estimate and devices is None:
        raise ConfigError(
            f"--estimate: needs the TPU compiler (a TPU topology, libtpu: {tpu.EXTRA})"
        )
    plan = make_plan(cfg, topo, args.mfu, devices=devices, estimate=args.estimate)
    print(json.dumps(plan, indent=2) if args.json else format_plan(plan, flag_name))
    return 0


def _add_plan_options(p) -> None:
    p.add_argument(
        "--topology",
        default=None,
        help="hardware overlay name (configs/hw: tpu-v5p-64, h100x8, cpu, ...), TPU slice "
        "(v5p:2x2x1, v6e:4x4) or DATA,FSDP,TENSOR",
    )
    p.add_argument("--mfu", type=float, default=0.4, help="assumed model-FLOPs utilisation (0.4)")
    p.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="peak TFLOP/s per device (default: the overlay's hw: section)",
    )
    p.add_argument(
        "--hbm-gib",
        type=float,
        default=None,
        help="device memory in GiB (default: the overlay's hw.hbm_gb_per_chip)",
    )
    p.add_argument(
        "--devices",
        type=int,
        default=None,
        help="device count for an overlay (default: its hw.chips / gpus_per_node, or 8)",
    )
    p.add_argument(
        "--compiler",
        choices=("auto", "tpu", "cpu"),
        default="auto",
        help="auto (default): the TPU compiler for a TPU topology when libtpu is installed "
        f"({tpu.EXTRA}), else the CPU compiler for simulated devices",
    )
    p.add_argument(
        "--estimate",
        action="store_true",
        help="TPU compiler only: also estimate the step time (a roofline of the compiler's "
        "FLOPs and HBM bytes, and libtpu's cost model), compiling 2-4 loop-free variants of "
        "the step (minutes each for a 7B teacher)",
    )
    p.add_argument("--json", action="store_true", help="print the plan as JSON")


def _register_plan(subparsers) -> None:
    p = subparsers.add_parser(
        "plan",
        help="memory/FLOPs/step-time plan of a run on a target mesh (AOT, no weights)",
        description=_PLAN_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", help="run config YAML (distill or train)")
    _add_plan_options(p)
    # REMAINDER: options may also follow the overrides (`x.yaml a=1 --topology cpu`); _run sorts them.
    p.add_argument(
        "overrides",
        nargs=argparse.REMAINDER,
        metavar="KEY=VALUE",
        help="dotted config overrides (after the overlay's), e.g. train.microbatches=8",
    )
    p.set_defaults(func=_plan)


def _plan_argv(args) -> list[str]:
    """The parsed arguments back as a command line (for the re-executed child)."""
    out = [args.config, "--topology", args.topology, "--mfu", repr(args.mfu)]
    out += ["--compiler", args.compiler]
    for flag, value in (
        ("--peak-tflops", args.peak_tflops),
        ("--hbm-gib", args.hbm_gib),
        ("--devices", args.devices),
    ):
        if value is not None:
            out += [flag, repr(value)]
    flags = [f for f, on in (("--estimate", args.estimate), ("--json", args.json)) if on]
    return out + flags + list(args.overrides)
