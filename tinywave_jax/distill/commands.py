"""The distillation commands: `tinywave distill` (a distill run config, through train/api.py),
`tinywave init-student` (a student checkpoint cut from a teacher's layers, or random) and
`tinywave teacher-cache build` (an offline teacher's top-k, cache_build.py)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..errors import ConfigError
from ..flags import add_dtype, add_no_verify
from ..train.commands import add_run_command


def _parse_layers(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(
            f"--layers: {text!r} is not a comma-separated list of teacher layer "
            "indices (e.g. 4,7,10)"
        ) from None


def _chosen_layers(args: argparse.Namespace, teacher_layers: int) -> tuple[tuple[int, ...], dict]:
    """Teacher layers to copy and how they were chosen (for the provenance record)."""
    from .layer_map import check_layer_list, resolve_layer_map

    if args.layers is not None:
        if args.layer_map is not None:
            raise ConfigError("--layers and --layer-map are exclusive: give one")
        layers = check_layer_list(_parse_layers(args.layers), teacher_layers, None, "--layers")
        if args.num_layers is not None and args.num_layers != len(layers):
            raise ConfigError(
                f"--num-layers {args.num_layers} disagrees with --layers, which "
                f"lists {len(layers)} layers"
            )
        return layers, {"layers": list(layers)}
    if args.num_layers is None:
        raise ConfigError(
            "--num-layers: give the student depth (or list the teacher layers with --layers)"
        )
    spec = args.layer_map or "uniform"
    m = resolve_layer_map(spec, teacher_layers, args.num_layers, key="--layer-map")
    return m.init_teacher_layers, {"layer_map": spec}


def _random_config(args: argparse.Namespace):
    from ..checkpoint import load_model_config
    from .student_init import student_config_from

    if args.layers is not None or args.layer_map is not None:
        raise ConfigError(
            "--random builds an untrained student: --layers / --layer-map do not apply"
        )
    if args.config is not None:  # a teacher, if given too, only lends its tokenizer files
        config = student_config_from(args.config)
    elif args.teacher_ckpt is not None:  # the teacher's shape, at the student's depth
        config = load_model_config(args.teacher_ckpt)
        if args.num_layers is None:
            raise ConfigError("--num-layers: give the depth of the random student")
    else:
        raise ConfigError(
            "--random needs --config STUDENT.json or a TEACHER_CKPT to take the shape from"
        )
    if args.num_layers is not None:
        if args.num_layers < 1:
            raise ConfigError(f"--num-layers must be positive, got {args.num_layers}")
        config = config.replace(num_hidden_layers=args.num_layers)
    if args.dtype is not None:
        config = config.replace(param_dtype=args.dtype)
    return config


def _init_student(args: argparse.Namespace) -> int:
    import jax

    from ..checkpoint import load_model, save_model
    from ..outputs import check_output_dir
    from .student_init import init_student_from_teacher, random_student

    inputs = [args.teacher_ckpt, args.config]  # OUT_DIR must not be, hold or lie inside them
    check_output_dir(args.out_dir, args.overwrite, inputs)  # fail before loading a 7B teacher
    from .. import storage

    teacher = args.teacher_ckpt
    if teacher is not None and not storage.is_remote(teacher):
        teacher = str(Path(teacher).resolve())
    tokenizer_dir = None if teacher is None else storage.path(teacher) / "tokenizer"
    if args.random:
        config = _random_config(args)
        params, config = random_student(config, jax.random.key(args.seed))
        params = jax.device_get(params)
        provenance = {
            "kind": "random-student",
            "seed": args.seed,
            "config": None if args.config is None else str(Path(args.config).resolve()),
            "teacher": teacher,
        }
    else:
        if teacher is None:
            raise ConfigError("TEACHER_CKPT is required unless --random is given")
        from ..checkpoint import load_model_config, load_model_info

        load_model_info(teacher)  # a clear error if TEACHER_CKPT is not a tinywave checkpoint
        layers, how = _chosen_layers(args, load_model_config(teacher).num_hidden_layers)
        # Host arrays: the teacher never touches device memory, and only the student's rows are
        # copied out of it before the teacher is dropped.
        teacher_params, teacher_config, _ = load_model(
            teacher, dtype=args.dtype, as_numpy=True, verify=not args.no_verify
        )
        params, config = init_student_from_teacher(
            teacher_params, teacher_config, layers, "--layers"
        )
        del teacher_params
        provenance = {
            "kind": "student-from-teacher",
            "teacher": teacher,
            "teacher_num_layers": teacher_config.num_hidden_layers,
            "teacher_layers": list(layers),
            **how,
        }
    out = save_model(
        args.out_dir,
        params,
        config,
        provenance=provenance,
        overwrite=args.overwrite,
        tokenizer_dir=tokenizer_dir,
        sources=inputs,
    )
    what = (
        f"teacher layers {provenance['teacher_layers']}"
        if not args.random
        else f"random init (seed {args.seed})"
    )
    print(f"wrote {config.num_hidden_layers}-layer student {out} from {what}")
    return 0


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


def register(subparsers) -> None:
    add_run_command(
        subparsers, "distill", "distil a teacher into a student (TinyWave)", _DISTILL_HELP
    )
    _register_init_student(subparsers)
    _register_teacher_cache(subparsers)


def _register_init_student(subparsers) -> None:
    p = subparsers.add_parser(
        "init-student",
        help="build a student checkpoint from a teacher's layers (or random)",
        description="Copies the teacher's embeddings, final norm, LM head and the chosen decoder "
        "layers (strictly increasing, as every layer list) into a new tinywave checkpoint. Choose the "
        "layers with --layers, or --num-layers N and a --layer-map preset "
        "(uniform: evenly spaced ending at the last layer; tinywave: 3l+4). "
        "--random builds an untrained student of the shape in --config (an HF "
        "config.json), or of the teacher's shape with --num-layers layers.",
    )
    p.add_argument(
        "teacher_ckpt",
        metavar="TEACHER_CKPT",
        nargs="?",
        help="tinywave checkpoint of the teacher (optional with --random --config)",
    )
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument(
        "--layers",
        default=None,
        help="teacher layers to copy, e.g. 4,7,10,...,31: each in [0, teacher depth), "
        "strictly increasing (the one rule of every layer list, "
        "distill.layer_map and distill.init_layers too)",
    )
    p.add_argument(
        "--layer-map",
        default=None,
        help="preset giving the teacher layers for --num-layers: uniform (default) or tinywave",
    )
    p.add_argument("--num-layers", type=int, default=None, help="student depth")
    p.add_argument("--random", action="store_true", help="random init instead of teacher layers")
    p.add_argument("--config", default=None, help="with --random: the student's HF config.json")
    p.add_argument("--seed", type=int, default=0, help="with --random: the init seed (default 0)")
    add_dtype(p, "parameter dtype of the student (default: the teacher's / float32)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a non-empty OUT_DIR (only once the new checkpoint is complete; never "
        "TEACHER_CKPT or --config, nor a folder holding them or inside them)",
    )
    add_no_verify(p)
    p.set_defaults(func=_init_student)


_CACHE_HELP = """\
Run the teacher of a distill CONFIG once over its corpus split (data.source: corpus) and store
its top-k next-token ids (uint16) and log-probs (float16) per token, keyed by stream kind, record
and token position (4 k bytes per token: 256 at k = 64). Then `distill` with
`teacher.cache: DIR` and `distill.terms.topk_kl: 1` loads no teacher weights for the step and runs
no teacher forward. Resumable: run the same command again after a stop; finished shards are kept.
Rows per teacher call: data.batch_size, split over the mesh's data x fsdp devices.

example: tinywave teacher-cache build configs/distill.yaml --out caches/t7b --top-k 64
"""


def _register_teacher_cache(subparsers) -> None:
    p = subparsers.add_parser(
        "teacher-cache",
        help="an offline teacher: build its top-k cache over a corpus",
        description="An offline teacher's top-k log-probs (teacher_cache.py).",
    )
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    b = sub.add_parser(
        "build",
        help="run the teacher once over the corpus and store its top-k",
        description=_CACHE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    b.add_argument("config", help="distill config YAML (teacher:, data:, mesh:)")
    b.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides (after CONFIG)"
    )
    b.add_argument("--out", required=True, help="cache folder (local or gs://); resumed if there")
    b.add_argument("--top-k", type=int, default=64, help="teacher ids kept per token (64)")
    b.add_argument(
        "--records-per-shard", type=int, default=256, help="records per cache shard (256)"
    )
    b.set_defaults(func=_build_cache)


def _build_cache(args) -> int:
    from ..config import load_config
    from ..parallel.distributed import maybe_initialize
    from ..train.config import DistillConfig
    from .cache_build import build_teacher_cache

    maybe_initialize()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    cfg = load_config(DistillConfig, args.config, args.overrides)
    if args.top_k < 1:
        raise ConfigError(f"--top-k: must be >= 1, got {args.top_k}")
    s = build_teacher_cache(cfg, args.out, args.top_k, args.records_per_shard)
    print(
        f"teacher cache {args.out}: {s['built']} shards built, {s['skipped']} kept, "
        f"{s['tokens']} tokens at {s['tokens_per_s']:.0f} tok/s"
    )
    return 0
