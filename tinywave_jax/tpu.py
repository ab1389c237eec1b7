"""The TPU compiler without a TPU: devices of a TPU slice to compile for, from libtpu.

With libtpu importable (`pip install 'tinywave_jax[tpu]'`: jax's own `tpu` extra pins it),
`jax.experimental.topologies.get_topology_desc(topology_name="v5p:4x4x2", platform="tpu")` loads
libtpu as a PJRT plugin and returns the slice's devices; a `jit(...).lower(...).compile()` on a
mesh of them is the real TPU compiler's program (fusion, layout, buffer assignment, cost model).
No TPU backend is started: the process keeps computing on its own backend (CPU here), so the
compile can run inside any process, the test suite's included.

On a machine without TPU chips libtpu's host discovery needs three variables, set here (only
there, and only where unset) before the plugin loads: TPU_SKIP_MDS_QUERY=1 (no metadata server),
TPU_ACCELERATOR_TYPE (the slice's name) and TPU_WORKER_HOSTNAMES=localhost. Without them the
compile still works but libtpu prints a screen of warnings. A fourth, ALLOW_MULTIPLE_LIBTPU_LOAD=1,
lifts libtpu's one-process-per-machine lock (/tmp/libtpu_lockfile), meant for a real TPU's
owner: without it a second process compiling at the same time fails with "Internal error when
accessing libtpu multi-process lockfile".

libtpu installed on a machine without TPUs has one cost for ordinary runs: jax (0.10) tries to
start a TPU backend at its first use unless JAX_PLATFORMS is set, and libtpu prints warnings
before jax falls back to the CPU. `keep_jax_off_absent_tpu` (called by the CLI before any command)
pins jax to the CPU there; machines with TPU chips or NVIDIA GPUs, and an explicit JAX_PLATFORMS,
are left alone.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import re
import sys
from importlib.metadata import PackageNotFoundError, version

from .errors import ConfigError

EXTRA = "pip install 'tinywave_jax[tpu]'"
# libtpu's own name grammar: GENERATION:AxBxC (3-D tori: v4, v5p) or GENERATION:AxB (v5e, v6e)
_NAME = re.compile(r"(v[0-9][a-z]*):([0-9]+(?:x[0-9]+){1,2})")
FORMS = (
    "a TPU topology GENERATION:AxBxC for v4/v5p (v5p:2x2x1, v5p:4x4x2 = v5p-64) or "
    "GENERATION:AxB for v5e/v6e (v5e:8x8 = v5litepod-64, v6e:8x8 = v6e-64), each side a valid "
    "slice dimension"
)
# TPU_ACCELERATOR_TYPE names: v5e is sold as v5litepod; v4 and v5p count TensorCores (2 per chip)
_ACCELERATOR = {"v5e": ("v5litepod", 1), "v4": ("v4", 2), "v5p": ("v5p", 2)}


def is_topology_name(name: str) -> bool:
    """`name` has the form of a TPU topology (v5p:2x2x1, v6e:8x8)."""
    return _NAME.fullmatch(name) is not None


def generation(name: str) -> str:
    """'v5p' of 'v5p:4x4x2'."""
    return name.split(":", 1)[0]


def chips(name: str) -> int:
    out = 1
    for side in _NAME.fullmatch(name).group(2).split("x"):
        out *= int(side)
    return out


def libtpu_available() -> bool:
    return importlib.util.find_spec("libtpu") is not None


def libtpu_version() -> str:
    try:
        return version("libtpu")
    except PackageNotFoundError:
        return "unknown"


def machine_has_tpu() -> bool:
    """TPU chips attached to this machine (the device files jax's own check looks for)."""
    return bool(glob.glob("/dev/accel[0-9]*") or glob.glob("/dev/vfio/[0-9]*"))


def _machine_has_nvidia_gpu() -> bool:
    return bool(glob.glob("/dev/nvidia[0-9]*"))


def keep_jax_off_absent_tpu() -> None:
    """Pins jax to the CPU where libtpu is installed but no TPU (nor NVIDIA GPU) is attached and
    JAX_PLATFORMS is unset: jax would otherwise start libtpu's TPU client, which prints a screen
    of warnings and fails, before falling back to the CPU (see the module doc)."""
    if os.environ.get("JAX_PLATFORMS") is not None or not libtpu_available():
        return
    if machine_has_tpu() or _machine_has_nvidia_gpu():
        return
    if "jax" not in sys.modules:
        os.environ["JAX_PLATFORMS"] = "cpu"  # read by jax at import
        return
    # jax is imported here, never at the top: this module decides JAX_PLATFORMS before it loads
    import jax
    from jax._src import config, xla_bridge

    if not xla_bridge.backends_are_initialized() and not config.jax_platforms.value:
        jax.config.update("jax_platforms", "cpu")


def _quiet_host_discovery(name: str) -> None:
    if machine_has_tpu():
        return  # a real TPU host: libtpu discovers it itself
    prefix, per_chip = _ACCELERATOR.get(generation(name), (generation(name), 1))
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", f"{prefix}-{chips(name) * per_chip}")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    # libtpu lets one process per machine load it (/tmp/libtpu_lockfile) unless told otherwise;
    # with no TPU to share, compiling processes (test workers, several plans) need not queue
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


def topology_devices(name: str) -> list:
    """The devices of TPU slice `name` (v5p:4x4x2) to compile for. ConfigError naming the
    topology and the valid forms when libtpu cannot build it; naming the extra without libtpu."""
    if not is_topology_name(name):
        raise ConfigError(
            f"topology {name!r}: not a TPU topology; valid forms: {FORMS}", param="topology"
        )
    if not libtpu_available():
        raise ConfigError(
            f"topology {name!r}: the TPU compiler needs libtpu: {EXTRA}", param="topology"
        )
    _quiet_host_discovery(name)
    from jax.experimental import topologies  # jax: after the platform is decided (see above)

    try:
        topo = topologies.get_topology_desc(topology_name=name, platform="tpu")
    except Exception as e:  # libtpu's INVALID_ARGUMENT: unknown generation, bad slice shape
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(
            f"topology {name!r}: libtpu cannot build this slice ({reason}); valid forms: {FORMS}",
            param="topology",
        ) from e
    return list(topo.devices)
