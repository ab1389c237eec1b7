"""The resume checkpoint of a run: train state + data iterator state + meta, under run_dir/checkpoints.

    checkpoints/<N>/  orbax CheckpointManager steps: `state` (trainable params, optimizer state,
                      step, RNG), `data` (every process's iterator state, JSON), `meta` (kind,
                      process count, config)

Not the model format (checkpoint.py holds that: what `final/` and `import-hf` write). The state is
restored into abstract targets carrying this run's shardings, so the mesh may differ from the one
that saved it; the data iterator state is per process, so the process count may not.
"""

from __future__ import annotations

from pathlib import Path

import jax

from ..errors import ConfigError, MissingInputError
from .state import TrainState


def checkpoint_manager(run_dir: str | Path, keep: int = 3, async_save: bool = True):
    import orbax.checkpoint as ocp

    return ocp.CheckpointManager(
        (Path(run_dir) / "checkpoints").resolve(),
        item_names=("state", "data", "meta"),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=async_save
        ),
    )


def _all_process_states(data_state: dict) -> dict:
    """Every process's data-iterator state (orbax writes JSON items from process 0 only)."""
    if jax.process_count() == 1:
        return data_state
    import json

    import numpy as np
    from jax.experimental import multihost_utils

    raw = np.frombuffer(json.dumps(data_state).encode(), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.array([raw.size], np.int32))).reshape(
        -1
    )
    buf = np.zeros(int(sizes.max()), np.uint8)
    buf[: raw.size] = raw
    rows = np.asarray(multihost_utils.process_allgather(buf))
    return {"processes": [json.loads(bytes(rows[i, : sizes[i]])) for i in range(len(sizes))]}


def save_checkpoint(mngr, state: TrainState, data_state: dict, meta: dict) -> None:
    import orbax.checkpoint as ocp

    step = int(jax.device_get(state.step))
    data_state = _all_process_states(data_state)
    mngr.save(
        step,
        force=True,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state._asdict()),
            data=ocp.args.JsonSave(data_state),
            meta=ocp.args.JsonSave({**meta, "step": step, "process_count": jax.process_count()}),
        ),
    )


def restore_checkpoint(
    mngr, target: TrainState, step: int | None = None
) -> tuple[TrainState, dict, dict]:
    """(state, data iterator state, meta) of `step` (default: latest), restored onto the shardings
    carried by `target` (ShapeDtypeStructs). Fails clearly when the process count changed."""
    import orbax.checkpoint as ocp

    step = mngr.latest_step() if step is None else step
    if step is None:
        raise MissingInputError(f"{mngr.directory}: no checkpoint to restore")
    meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
    if meta.get("process_count") != jax.process_count():
        raise ConfigError(
            f"{mngr.directory}/{step}: saved by {meta.get('process_count')} processes, "
            f"this run has {jax.process_count()}; the data iterator state is per "
            "process and cannot be remapped (resume with the same process count)"
        )
    got = mngr.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target._asdict()), data=ocp.args.JsonRestore()
        ),
    )
    # orbax hands back dicts/tuples; rebuild the target's structure field by field (a dict's
    # leaves come in key order, a NamedTuple's in field order).
    state = TrainState(
        **{
            f: jax.tree_util.tree_unflatten(
                jax.tree_util.tree_structure(getattr(target, f)),
                jax.tree_util.tree_leaves(got.state[f]),
            )
            for f in TrainState._fields
        }
    )
    data = got.data
    if isinstance(data, dict) and "processes" in data:  # saved by several processes
        data = data["processes"][jax.process_index()]
    return state, data, meta
