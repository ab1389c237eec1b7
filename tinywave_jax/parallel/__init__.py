"""Device mesh (data, fsdp, tensor) and the one logical-axis rules table."""

from .mesh import AXES, MeshConfig, make_mesh
from .rules import (
    LOGICAL_AXIS_RULES,
    axis_rules_context,
    batch_divisor,
    batch_sharding,
    fit_spec,
    logical_to_spec,
    named_sharding,
    replicated,
    tree_shardings,
)

__all__ = [
    "AXES",
    "MeshConfig",
    "make_mesh",
    "LOGICAL_AXIS_RULES",
    "axis_rules_context",
    "batch_divisor",
    "batch_sharding",
    "fit_spec",
    "logical_to_spec",
    "named_sharding",
    "replicated",
    "tree_shardings",
]
