"""Multi-process start-up: call `jax.distributed.initialize` when, and only when, a run needs it.

`maybe_initialize()` must run before anything touches a jax device. It reads the environment:

    TINYWAVE_DISTRIBUTED=off          never initialise (one process per host, by choice)
    TINYWAVE_COORDINATOR=host:port    explicit: all three of these, as `launch/gpu.sh` exports them
    TINYWAVE_NUM_PROCESSES=N          (optional TINYWAVE_LOCAL_DEVICE_IDS=0,1,... restricts the
    TINYWAVE_PROCESS_ID=i              devices this process drives)
    SLURM_JOB_ID, SLURM_NTASKS, ...   inside `srun`: process count/id from SLURM; the coordinator is
                                      TINYWAVE_COORDINATOR or the step's first node
    a Cloud TPU VM                    jax finds workers and coordinator itself (TPU metadata)

One process in all (no variables, N=1, one SLURM task) means no initialisation. The explicit and
SLURM forms pass all four arguments and turn jax's own cluster detection off, because under SLURM
jax would otherwise restrict each process to one GPU (`SLURM_LOCALID`), whereas we run one
process per node driving all of its GPUs; with several tasks per node each task gets
`[SLURM_LOCALID]`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
from pathlib import Path
from typing import Callable, Mapping, Optional

import jax

from ..errors import ConfigError

_EXPLICIT = ("TINYWAVE_COORDINATOR", "TINYWAVE_NUM_PROCESSES", "TINYWAVE_PROCESS_ID")


@dataclasses.dataclass(frozen=True)
class DistributedSpec:
    """The arguments for `jax.distributed.initialize`, and where they came from."""

    source: str  # "env" | "slurm" | "tpu"
    coordinator_address: Optional[str] = None  # None for "tpu": jax detects it
    num_processes: Optional[int] = None
    process_id: Optional[int] = None
    local_device_ids: Optional[tuple[int, ...]] = None

    def initialize_kwargs(self) -> dict:
        if self.source == "tpu":
            return {}
        return {
            "coordinator_address": self.coordinator_address,
            "num_processes": self.num_processes,
            "process_id": self.process_id,
            "local_device_ids": None
            if self.local_device_ids is None
            else list(self.local_device_ids),
            "cluster_detection_method": "deactivate",
        }


def _int(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise ConfigError(f"environment variable {name}={env[name]!r} is not an integer") from None


def _device_ids(env: Mapping[str, str]) -> Optional[tuple[int, ...]]:
    raw = env.get("TINYWAVE_LOCAL_DEVICE_IDS", "").strip()
    if not raw:
        return None
    try:
        return tuple(int(x) for x in raw.split(","))
    except ValueError:
        raise ConfigError(
            f"TINYWAVE_LOCAL_DEVICE_IDS={raw!r} is not a comma-separated list of integers"
        ) from None


def _check_rank(source: str, num: int, pid: int) -> None:
    if num < 1 or not 0 <= pid < num:
        raise ConfigError(
            f"{source}: process id {pid} is outside 0..{num - 1} (process count {num})"
        )


def first_slurm_host(nodelist: str) -> str:
    """First host of a SLURM node list: 'gpu[003-004,9],cpu1' -> 'gpu003'."""
    m = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not m or not m.group(1):
        raise ConfigError(f"SLURM node list {nodelist!r} has no host name")
    prefix, ranges = m.group(1), m.group(2)
    if ranges is None:
        return prefix
    return prefix + re.split(r"[,-]", ranges, maxsplit=1)[0]


def _slurm_spec(env: Mapping[str, str]) -> Optional[DistributedSpec]:
    num = _int(env, "SLURM_NTASKS")
    if num <= 1:
        return None
    pid = _int(env, "SLURM_PROCID")
    _check_rank("SLURM_PROCID", num, pid)
    coordinator = env.get("TINYWAVE_COORDINATOR")
    if not coordinator:
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST")
        if not nodelist:
            raise ConfigError(
                "SLURM run of several tasks without SLURM_STEP_NODELIST or "
                "TINYWAVE_COORDINATOR: cannot tell the coordinator host"
            )
        # A port every task derives alike, in the ephemeral range (as jax's own SLURM support).
        port = env.get("TINYWAVE_COORDINATOR_PORT") or str(61440 + _int(env, "SLURM_JOB_ID") % 4096)
        coordinator = f"{first_slurm_host(nodelist)}:{port}"
    nodes_var = "SLURM_STEP_NUM_NODES" if "SLURM_STEP_NUM_NODES" in env else "SLURM_NNODES"
    nodes = _int(env, nodes_var) if nodes_var in env else num
    local = _device_ids(env)
    if local is None and num > nodes:  # several tasks per node: one device each
        local = (_int(env, "SLURM_LOCALID"),)
    return DistributedSpec("slurm", coordinator, num, pid, local)


def on_tpu_vm() -> bool:
    """A Cloud TPU VM: libtpu installed, and TPU chips at /dev/accel* (v4) or /dev/vfio/N (v5e,
    v5p, v6e; VFIO alone is not enough, other machines have it too)."""

    chips = any(Path("/dev").glob("accel[0-9]*")) or any(Path("/dev/vfio").glob("[0-9]*"))
    return chips and importlib.util.find_spec("libtpu") is not None


def detect(
    environ: Mapping[str, str] | None = None, tpu_vm: bool | None = None
) -> Optional[DistributedSpec]:
    """What `jax.distributed.initialize` needs here; None when this is a single-process run."""
    env = os.environ if environ is None else environ
    mode = env.get("TINYWAVE_DISTRIBUTED", "auto").strip().lower()
    if mode not in ("auto", "off"):
        raise ConfigError(f"TINYWAVE_DISTRIBUTED={mode!r} must be 'auto' or 'off'")
    if mode == "off":
        return None
    given = [k for k in _EXPLICIT if env.get(k)]
    in_slurm = all(k in env for k in ("SLURM_JOB_ID", "SLURM_NTASKS", "SLURM_PROCID"))
    if given and not (in_slurm and given == ["TINYWAVE_COORDINATOR"]):
        missing = [k for k in _EXPLICIT if k not in given]
        if missing:
            raise ConfigError(
                f"multi-process environment is incomplete: {', '.join(given)} set "
                f"but {', '.join(missing)} missing"
            )
        num, pid = _int(env, "TINYWAVE_NUM_PROCESSES"), _int(env, "TINYWAVE_PROCESS_ID")
        _check_rank("TINYWAVE_PROCESS_ID", num, pid)
        if num == 1:
            return None
        return DistributedSpec("env", env["TINYWAVE_COORDINATOR"], num, pid, _device_ids(env))
    if in_slurm:  # TINYWAVE_COORDINATOR alone may name the coordinator for SLURM
        return _slurm_spec(env)
    if on_tpu_vm() if tpu_vm is None else tpu_vm:
        return DistributedSpec("tpu")
    return None


def maybe_initialize(
    environ: Mapping[str, str] | None = None,
    tpu_vm: bool | None = None,
    initialize: Callable[..., object] | None = None,
) -> Optional[DistributedSpec]:
    """Initialises jax's distributed runtime if the environment asks for several processes.

    Call first thing in a command (before any jax device use). Returns the spec used, or None for
    a single-process run; calling it again after initialisation does nothing.
    """
    spec = detect(environ, tpu_vm)
    if spec is None:
        return None

    if initialize is None:
        if jax.distributed.is_initialized():
            return spec
        initialize = jax.distributed.initialize
    initialize(**spec.initialize_kwargs())
    return spec
