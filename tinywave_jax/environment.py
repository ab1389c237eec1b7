"""What a result was computed with: package versions and the CPU, for a results file.

A table that repeats to the digit does so on the same CPU family with the same installed
versions (docs/reproducibility.md); recording both lets a moved number be told from a moved
environment. Versions are read from the installed distributions, without importing them.
"""

from __future__ import annotations

import platform
import sys
from importlib.metadata import PackageNotFoundError, version

PACKAGES = (
    "jax",
    "jaxlib",
    "flax",
    "optax",
    "orbax-checkpoint",
    "numpy",
    "llama_cpp_python",
    "transformers",
    "torch",
)


def _version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), else what `platform` reports."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict:
    """{"python", "platform", "cpu", "packages": {name: version or None}}."""
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "packages": {name: _version(name) for name in PACKAGES},
    }
