"""Hardware overlays: the `NAME.yaml` files beside this module (configs/hw is a link here).

They live inside the package so that an installed `tinywave plan --topology NAME` finds them;
the launchers read the same files (`--hw configs/hw/NAME.yaml`) through `python -m
tinywave_jax.hw FILE`, which prints the overlay as `key=value` overrides, one per line.

The launchers and `plan` pass these after the run's CONFIG and before the user's own overrides,
so the overlay decides mesh/dtype/batch for the hardware and a command-line `key=value` still
wins. The overlay's `hw:` section only describes the hardware (chip, peak FLOP/s, HBM; for a TPU,
`topology`: the slice's libtpu name that `tinywave plan` compiles for) and is not an
override. Values are written as YAML flow scalars, which `tinywave_jax.config.apply_overrides`
reads back exactly (a float keeps its dot: `1.0e+20`, not `1e20`, which YAML 1.1 reads as a
string).
"""

from __future__ import annotations

import sys
from importlib import resources

import yaml

from ..config import read_yaml
from ..errors import ConfigError


def names() -> list[str]:
    """The packaged overlays' names (tpu-v5p-64, h100x8, cpu, ...)."""
    return sorted(
        f.name[: -len(".yaml")]
        for f in resources.files(__name__).iterdir()
        if f.name.endswith(".yaml")
    )


def load(name: str) -> dict:
    """The packaged overlay `name`, read through importlib.resources (not a checkout path)."""
    f = resources.files(__name__) / f"{name}.yaml"
    if not f.is_file():
        raise ConfigError(f"no hardware overlay {name!r} (overlays: {', '.join(names())})")
    with resources.as_file(f) as path:
        return read_yaml(path)


def _scalar(value) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 30).strip()
    return text[:-4] if text.endswith("\n...") else text  # a bare scalar's end-of-document mark


def to_overrides(data: dict) -> list[str]:
    """An overlay's keys, except `hw:`, as `key=value` overrides."""
    out = []

    def walk(node: dict, prefix: str):
        for key, value in node.items():
            if isinstance(value, dict) and value:
                walk(value, f"{prefix}{key}.")
            else:
                out.append(f"{prefix}{key}={_scalar(value)}")

    walk({k: v for k, v in data.items() if k != "hw"}, "")
    return out


def overrides(path) -> list[str]:
    """The overlay file `path` (any overlay, packaged or not) as `key=value` overrides."""
    return to_overrides(read_yaml(path))


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m tinywave_jax.hw configs/hw/NAME.yaml", file=sys.stderr)
        return 2
    try:
        print("\n".join(overrides(argv[0])))
    except ConfigError as e:
        print(f"tinywave_jax.hw: error: {e}", file=sys.stderr)
        return 2
    return 0
