"""The device mesh over axes (data, fsdp, tensor), built from the config's `mesh:` section.

`data` replicates the parameters and splits the batch; `fsdp` splits the batch AND shards the
parameters/optimizer state along their `embed` axis (ZeRO-3 style); `tensor` shards heads, MLP width
and vocabulary (Megatron style). One size may be -1: all devices left over.

Built with `jax.sharding.Mesh` and Auto axis types: `jax.make_mesh` defaults to Explicit axes in
jax >= 0.7, under which GSPMD-style `in_shardings` / sharding constraints fail at trace time.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

from ..errors import ConfigError

AXES = ("data", "fsdp", "tensor")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """`mesh:` section: devices per axis; their product must be the device count (-1: the rest)."""

    data: int = 1
    fsdp: int = -1
    tensor: int = 1

    def validate(self):
        sizes = [getattr(self, a) for a in AXES]
        if any(s == 0 or s < -1 for s in sizes):
            raise ConfigError(
                f"mesh: axis sizes must be positive or -1, got {dict(zip(AXES, sizes))}"
            )
        if sizes.count(-1) > 1:
            raise ConfigError("mesh: at most one axis may be -1")

    def shape(self, num_devices: int) -> dict[str, int]:
        """Axis sizes with -1 resolved; ConfigError naming `mesh` when they do not fit the devices."""
        sizes = {a: getattr(self, a) for a in AXES}
        known = math.prod(s for s in sizes.values() if s != -1)
        for a, s in sizes.items():
            if s == -1:
                if num_devices % known:
                    raise ConfigError(
                        f"mesh.{a}: -1 cannot fill {num_devices} devices with the other "
                        f"axes using {known}"
                    )
                sizes[a] = num_devices // known
        if math.prod(sizes.values()) != num_devices:
            raise ConfigError(
                f"mesh: {sizes} uses {math.prod(sizes.values())} devices but "
                f"{num_devices} are available"
            )
        return sizes


def make_mesh(config: MeshConfig, devices=None):
    """A `jax.sharding.Mesh` over (data, fsdp, tensor) with Auto axis types."""

    devices = list(jax.devices() if devices is None else devices)
    sizes = config.shape(len(devices))
    grid = np.array(devices, dtype=object).reshape([sizes[a] for a in AXES])
    return Mesh(grid, AXES, axis_types=(AxisType.Auto,) * len(AXES))
