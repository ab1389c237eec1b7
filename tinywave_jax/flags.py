"""Flags that several `tinywave` commands share, defined once (argparse only; no heavy imports)."""

from __future__ import annotations

DTYPES = ("float32", "bfloat16")


def flag_name(param: str) -> str:
    """The flag of a parameter whose flag is spelt like it (hbm_gib -> --hbm-gib), for text a
    library function words with a caller-given `name` (plan.format_plan)."""
    return "--" + param.replace("_", "-")


def add_dtype(parser, help: str = "compute/parameter dtype (default: as stored)", default=None):
    """--dtype: the dtype a model is loaded (or written) at."""
    parser.add_argument("--dtype", choices=DTYPES, default=default, help=help)


def add_no_verify(parser) -> None:
    """The --no-verify flag of every command that loads a tinywave model checkpoint."""
    parser.add_argument(
        "--no-verify",
        action="store_true",
        help="skip checking the checkpoint's params/ files against the sha256 recorded in its "
        "tinywave.json (saves reading the files twice; damage then shows as a read error or "
        "not at all)",
    )


def add_mesh_flags(p) -> None:
    """--batch-size and --fsdp of `score` and `eval` (how sequences are split over devices)."""
    p.add_argument(
        "--batch-size",
        type=int,
        default=8,
        help="sequences per step over ALL devices (global, not per device), rounded up to a "
        "multiple of the device count; each device scores its share of every step's rows "
        "(default 8)",
    )
    p.add_argument(
        "--fsdp",
        type=int,
        default=1,
        metavar="N",
        help="shard the parameters over groups of N devices (as training's mesh.fsdp), for a "
        "model too large to hold on each device; default 1: every device holds the whole "
        "model. Runs on every device of every process either way (TINYWAVE_COORDINATOR etc. "
        "or a TPU pod start several processes, as for distill)",
    )
