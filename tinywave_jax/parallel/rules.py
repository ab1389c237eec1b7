"""THE logical-axis rules table, and helpers that turn logical specs into NamedShardings.

Model code names array axes logically (`models/llama.py`: parameters via `param_logical_axes`,
activations via `nn.with_logical_constraint`); this table alone decides which mesh axis each name
lands on. A mesh axis is used at most once per array (flax drops a repeat: `batch` takes
(data, fsdp), so an activation's `embed` stays unsharded while the parameters' `embed` is split
over fsdp).

    logical   mesh axes        why
    batch     (data, fsdp)     every data-parallel replica and FSDP shard reads its own rows
    embed     fsdp             parameters + optimizer state sharded ZeRO-3 style over fsdp
    heads     tensor           attention heads split Megatron style
    kv_heads  tensor
    mlp       tensor           FFN width
    vocab     tensor           embedding rows / LM-head columns
    layers    -                the stacked layer axis is scanned over, never split
    length    -                sequence (no context parallelism)
    norm      -                RMSNorm scales are tiny

A dimension the mesh axes do not divide falls back to replication along that dimension (logged
once per array), e.g. a 211-token vocabulary on tensor=2.
"""

from __future__ import annotations

import logging
import math
from typing import cast

import flax.linen as nn
import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

log = logging.getLogger(__name__)

LOGICAL_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("layers", None),
    ("length", None),
    ("norm", None),
)


def logical_to_spec(logical: P | tuple) -> P:
    """Logical PartitionSpec -> mesh PartitionSpec via LOGICAL_AXIS_RULES."""

    return cast(P, nn.logical_to_mesh_axes(tuple(logical), LOGICAL_AXIS_RULES))


def _axis_size(mesh, entry) -> int:
    if entry is None:
        return 1
    names = entry if isinstance(entry, tuple) else (entry,)
    return math.prod(mesh.shape[n] for n in names)


def fit_spec(mesh, spec: P, shape: tuple[int, ...], name: str = "array") -> P:
    """`spec` with every entry that does not divide its dimension replaced by None (logged)."""
    entries = list(spec) + [None] * (len(shape) - len(spec))
    out: list = []
    for dim, entry in zip(shape, entries):
        size = _axis_size(mesh, entry)
        if size > 1 and dim % size:
            log.info(
                "sharding: %s dim %d (size %d) not divisible by %s (%d); replicated",
                name,
                len(out),
                dim,
                entry,
                size,
            )
            entry = None
        out.append(entry)
    return P(*out)


def named_sharding(mesh, logical: P | tuple, shape: tuple[int, ...], name: str = "array"):
    return NamedSharding(mesh, fit_spec(mesh, logical_to_spec(logical), tuple(shape), name))


def tree_shardings(mesh, logical_tree, abstract_tree):
    """NamedShardings for a pytree, from a matching tree of logical specs and of shapes."""
    paths = jax.tree_util.tree_flatten_with_path(abstract_tree)[0]
    specs = jax.tree_util.tree_leaves(logical_tree, is_leaf=lambda x: isinstance(x, P))
    if len(specs) != len(paths):
        raise ValueError(f"logical spec tree has {len(specs)} leaves, the array tree {len(paths)}")
    shardings = [
        named_sharding(mesh, spec, leaf.shape, jax.tree_util.keystr(path))
        for (path, leaf), spec in zip(paths, specs)
    ]
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(abstract_tree), shardings)


def replicated(mesh):
    return NamedSharding(mesh, P())


def batch_sharding(mesh, ndim: int = 2):
    """Sharding of [B, T, ...] batch arrays: rows over (data, fsdp)."""
    return NamedSharding(mesh, logical_to_spec(("batch",) + (None,) * (ndim - 1)))


def batch_divisor(mesh) -> int:
    """Rows of a (micro)batch must be a multiple of this (the data x fsdp devices)."""
    return _axis_size(mesh, ("data", "fsdp"))


def axis_rules_context():
    """Context making the model's `nn.with_logical_constraint` use LOGICAL_AXIS_RULES."""

    return nn.logical_axis_rules(LOGICAL_AXIS_RULES)
