"""Prints a hardware overlay (configs/hw/*.yaml) as `key=value` overrides, one per line.

The launchers pass these after the run's CONFIG and before the user's own overrides, so the
overlay decides mesh/dtype/batch for the hardware and a command-line `key=value` still wins. The
overlay's `hw:` section only describes the hardware (chip, peak FLOP/s, HBM) and is not printed.
Values are written as YAML flow scalars, which `tinywave_jax.config.apply_overrides` reads back
exactly (a float keeps its dot: `1.0e+20`, not `1e20`, which YAML 1.1 reads as a string).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml  # noqa: E402

from tinywave_jax.config import ConfigError, read_yaml  # noqa: E402


def _scalar(value) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 30).strip()
    return text[:-4] if text.endswith("\n...") else text      # a bare scalar's end-of-document mark


def overrides(path) -> list[str]:
    data = read_yaml(path)
    data.pop("hw", None)
    out = []

    def walk(node: dict, prefix: str):
        for key, value in node.items():
            if isinstance(value, dict) and value:
                walk(value, f"{prefix}{key}.")
            else:
                out.append(f"{prefix}{key}={_scalar(value)}")
    walk(data, "")
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: hw_overrides.py configs/hw/NAME.yaml", file=sys.stderr)
        return 2
    try:
        print("\n".join(overrides(argv[0])))
    except ConfigError as e:
        print(f"hw_overrides.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
