"""The resume checkpoint of a run: train state + data iterator state + meta, under run_dir/checkpoints.

    checkpoints/<N>/  orbax CheckpointManager steps: `state` (trainable params, optimizer state,
                      step, RNG), `data` (every process's iterator state, JSON), `meta` (kind,
                      process count, config)

Not the model format (checkpoint.py holds that: what `final/` and `import-hf` write). The state is
restored into abstract targets carrying this run's shardings, so the mesh may differ from the one
that saved it; the data iterator state is per process, so the process count may not.

A resume (`restore_intact`) takes the newest checkpoint that restores whole: a checkpoint whose
files are truncated or damaged (tensorstore checks its OCDBT data files and fails on a short or
altered one; a cut JSON item fails to parse) is skipped with a warning naming the step and the
reason, and moved to run_dir/corrupt_checkpoints/ so that the resumed run can save that step
again. No intact checkpoint left: `CheckpointCorruptError` listing each step and why. Damage
that still decodes (a flipped byte in a parameter) is found by the digests each checkpoint's meta
records when it is saved (`state_digest`: checksums of every state array's bits; a sha256 of the
data iterator state), compared after the restore.

Before the state is read, the checkpoint's config (meta "config") is compared with the new run's:
any difference outside RESUME_MAY_CHANGE, and not named by `--allow-config-change KEY`, is refused
with a ConfigError naming each dotted key and its two values.
"""

from __future__ import annotations

import difflib
import gc
import hashlib
import json
import logging
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Optional, cast

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax import lax
from jax.experimental import multihost_utils

from .. import storage
from ..config import to_dict
from ..errors import ConfigError, InputError, MissingInputError, TinywaveError
from ..models.config import LlamaConfig
from .state import TrainState

log = logging.getLogger(__name__)

# The config keys a resume may change without --allow-config-change (a key also covers the keys
# under it). They set how long the run goes, how often it logs and checkpoints, where the run
# folder is and how the devices are laid out; none changes what a training step computes, except
# train.steps, which also sets the length of the learning-rate decay (cosine over train.steps).
RESUME_MAY_CHANGE = (
    "run_dir",  # the folder may move; the lock and checkpoints travel with it
    "train.steps",
    "train.log_every",
    "train.checkpoint_every",
    "train.checkpoint_keep",
    "train.async_checkpoint",
    "train.tensorboard",
    "train.throttle_s",
    "train.peak_flops_per_device",  # MFU reporting only
    "train.eval_every",  # validation reporting only (train/validation.py)
    "train.eval_batches",
    "train.eval_split",
    "mesh",  # resharded on restore; results equal up to float round-off
)


class CheckpointCorruptError(InputError):
    """No checkpoint of the run restores whole; the message lists each step and why."""


def _flatten(tree, prefix: str = "") -> dict:
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: tree}


def _covered(key: str, allowed: Iterable[str]) -> bool:
    return any(key == a or key.startswith(a + ".") for a in allowed)


def config_changes(
    saved: dict, new: dict, allow: Iterable[str] = (), defaults: dict | None = None
) -> list[tuple]:
    """(dotted key, saved value, new value) for each key that differs between two config dicts
    (as `config.to_dict` writes them) and is neither in RESUME_MAY_CHANGE nor in `allow`.
    `defaults` (the config class's defaults, as a dict): a key the saved config lacks (added to
    the package after it was written) is no change while the new config keeps its default."""
    # JSON round trip: the saved config went through JSON (tuples are lists, keys strings)
    a, b, d = (_flatten(json.loads(json.dumps(c or {}))) for c in (saved, new, defaults))
    allowed = (*RESUME_MAY_CHANGE, *allow)
    absent = "(absent)"
    return [
        (k, a.get(k, absent), b.get(k, absent))
        for k in sorted(a.keys() | b.keys())
        if a.get(k, absent) != b.get(k, absent)
        and not _covered(k, allowed)
        and not (k not in a and k in d and b[k] == d[k])
    ]


def config_defaults(cls) -> dict:
    """The defaults `config_changes` compares absent keys with: `cls()` as a dict, with every
    model shape the default leaves None (model.shape, teacher.shape) filled by LlamaConfig's
    defaults, so a shape key added since a checkpoint (model.shape.attention) is no change
    while it keeps its default."""

    d = to_dict(cls())
    for section in d.values():
        if isinstance(section, dict) and "shape" in section and section["shape"] is None:
            section["shape"] = to_dict(LlamaConfig())
    return d


def _short(value) -> str:
    text = value if value == "(absent)" else json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _check_allowed_keys(allow: Iterable[str], saved: dict, new: dict) -> None:
    """Refuses an allow_config_change KEY that names no config key (a typo would otherwise
    allow nothing, silently)."""

    keys = set(_flatten(json.loads(json.dumps(saved)))) | set(_flatten(json.loads(json.dumps(new))))
    sections = {k.rsplit(".", i)[0] for k in keys for i in range(k.count(".") + 1)}
    for a in allow:
        if a not in sections:
            near = difflib.get_close_matches(a, sorted(sections), n=1)
            raise ConfigError(
                f"allow_config_change {a}: no such config key"
                + (f" (did you mean {near[0]}?)" if near else ""),
                param="allow_config_change",
            )


def check_resume_config(
    saved: dict | None, new: dict, allow: Iterable[str], where: str, defaults: dict | None = None
) -> None:
    """Refuses (ConfigError) a resume whose config differs from the checkpoint's (see module doc)."""
    if saved is None:
        log.warning("%s: holds no config to compare with; resuming without the check", where)
        return
    _check_allowed_keys(allow, saved, new)
    changes = config_changes(saved, new, allow, defaults)
    if changes:
        keys = " ".join(k for k, _, _ in changes)
        raise ConfigError(
            f"{where}: the resumed config differs from the checkpoint's: "
            + ", ".join(f"{k} {_short(x)} -> {_short(y)}" for k, x, y in changes)
            + f"; resume with the checkpoint's values, or allow_config_change {keys} "
            "to change them on purpose",
            param=(None, "allow_config_change"),
        )


def _absolute(p):
    """An absolute local path, or the gs:// path itself (pathlib's resolve would make it
    ./gs:/...)."""
    return p if storage.is_remote(p) else Path(p).resolve()


def checkpoint_manager(run_dir: str | Path, keep: int = 3, async_save: bool = True):

    if storage.is_remote(run_dir):
        storage.bound_tensorstore_retries()
    return ocp.CheckpointManager(
        _absolute(storage.path(run_dir) / "checkpoints"),
        item_names=("state", "data", "meta"),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=async_save
        ),
    )


def _all_process_states(data_state: dict) -> dict:
    """Every process's data-iterator state (orbax writes JSON items from process 0 only)."""
    if jax.process_count() == 1:
        return data_state

    raw = np.frombuffer(json.dumps(data_state).encode(), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.array([raw.size], np.int32))).reshape(
        -1
    )
    buf = np.zeros(int(sizes.max()), np.uint8)
    buf[: raw.size] = raw
    rows = np.asarray(multihost_utils.process_allgather(buf))
    return {"processes": [json.loads(bytes(rows[i, : sizes[i]])) for i in range(len(sizes))]}


def _leaf_digest(x):
    """Two uint32 checksums of an array's bits (a plain and a position-weighted wrapping sum):
    integer sums are exact in any order, so the digest does not depend on the mesh."""

    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    x = x.reshape(-1)
    size = x.dtype.itemsize
    if x.dtype == jnp.bool_:
        u = x.astype(jnp.uint32)
    elif size == 8:
        u = lax.bitcast_convert_type(x, jnp.uint32).reshape(-1)
    elif size == 4:
        u = lax.bitcast_convert_type(x, jnp.uint32)
    else:
        u = lax.bitcast_convert_type(x, {2: jnp.uint16, 1: jnp.uint8}[size]).astype(jnp.uint32)
    weights = jnp.arange(u.size, dtype=jnp.uint32) * jnp.uint32(2654435761) + jnp.uint32(1)
    return jnp.stack([jnp.sum(u, dtype=jnp.uint32), jnp.sum(u * weights, dtype=jnp.uint32)])


_DIGEST = None


def state_digest(state: TrainState) -> dict[str, str]:
    """{leaf path: checksum of its bits} of a train state, recorded in a checkpoint's meta when it
    is saved and compared after a restore: a flipped byte that still decodes (a parameter changed,
    not a file cut short) is found, and the checkpoint is treated as damaged."""

    global _DIGEST
    if _DIGEST is None:  # one jitted function: compiled once per state structure
        _DIGEST = jax.jit(lambda xs: [_leaf_digest(x) for x in xs])
    leaves = jax.tree_util.tree_leaves_with_path(state._asdict())
    sums = jax.device_get(_DIGEST([x for _, x in leaves]))
    return {
        jax.tree_util.keystr(path): "%08x%08x" % tuple(int(v) for v in np.asarray(d))
        for (path, _), d in zip(leaves, sums)
    }


def _data_digest(data_state) -> str:

    # as JsonRestore gives it back: tuples are lists
    text = json.dumps(json.loads(json.dumps(data_state)), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


class StateDigestError(ValueError):
    """A restored checkpoint whose content differs from the digest recorded when it was saved
    (damage that still decodes); restore_intact treats it like any damaged checkpoint."""


def save_checkpoint(mngr, state: TrainState, data_state: dict, meta: dict) -> None:

    step = int(jax.device_get(state.step))
    data_state = _all_process_states(data_state)
    digests = {"state_digest": state_digest(state), "data_digest": _data_digest(data_state)}
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(state._asdict()),
        data=ocp.args.JsonSave(data_state),
        meta=ocp.args.JsonSave(
            {**meta, **digests, "step": step, "process_count": jax.process_count()}
        ),
    )
    # the call also waits for the previous step's background commit
    storage.within_deadline(
        lambda: mngr.save(step, force=True, args=args),
        f"saving checkpoint step {step}",
        mngr.directory,
    )


def wait_for_saves(mngr) -> None:
    """Waits for the background commit of the latest checkpoint, within the storage deadline
    (storage.within_deadline); not at all once a storage operation failed or ran past it."""
    if storage.lost():
        return
    storage.within_deadline(
        mngr.wait_until_finished, "committing the latest checkpoint", mngr.directory
    )


def _verify(step: int, state: TrainState, data, meta: dict) -> None:
    """Compares a restored checkpoint with the digests its meta recorded at save time."""
    recorded = meta.get("state_digest")
    if recorded is None:
        log.warning(
            "checkpoint %d records no digest of its state (saved by an older tinywave_jax): "
            "damage that still decodes cannot be detected",
            step,
        )
        return
    got = state_digest(state)
    changed = sorted(k for k in recorded.keys() | got.keys() if recorded.get(k) != got.get(k))
    if changed:
        raise StateDigestError(
            f"state {changed[0]}"
            + (f" (and {len(changed) - 1} more)" if len(changed) > 1 else "")
            + " differs from the digest recorded when the checkpoint was saved"
        )
    if meta.get("data_digest") not in (None, _data_digest(data)):
        raise StateDigestError(
            "the data iterator state differs from the digest recorded when it was saved"
        )


def read_meta(mngr, step: int) -> dict:
    """The meta item of checkpoint `step` (kind, process count, config, step)."""

    return mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta


def _check_process_count(mngr, step: int, meta: dict) -> None:
    if meta.get("process_count") != jax.process_count():
        raise ConfigError(
            f"{mngr.directory}/{step}: saved by {meta.get('process_count')} processes, "
            f"this run has {jax.process_count()}; the data iterator state is per "
            "process and cannot be remapped (resume with the same process count)"
        )


def restore_checkpoint(
    mngr, target: TrainState, step: int | None = None, meta: dict | None = None
) -> tuple[TrainState, dict, dict]:
    """(state, data iterator state, meta) of `step` (default: latest), restored onto the shardings
    carried by `target` (ShapeDtypeStructs). Fails clearly when the process count changed.
    `meta`: that step's meta item, if read already."""

    step = mngr.latest_step() if step is None else step
    if step is None:
        raise MissingInputError(f"{mngr.directory}: no checkpoint to restore")
    if meta is None:
        meta = read_meta(mngr, step)
    _check_process_count(mngr, step, meta)
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
    _verify(step, state, got.data, meta)
    data = got.data
    if isinstance(data, dict) and "processes" in data:  # saved by several processes
        data = data["processes"][jax.process_index()]
    return state, data, meta


class _FailedReadNoise(logging.Filter):
    """The reports a failed restore leaves behind: its other tensorstore reads complete later
    into orbax's closed event loop, and Python reports each one (dozens of tracebacks: asyncio's
    "exception was never retrieved" log records and unraisable "Event loop is closed" errors),
    during the restore or as late as interpreter exit. `install()` drops those two kinds of
    report only; `remove()` takes the filters away again (when no restore failed)."""

    def filter(self, record):
        return "exception was never retrieved" not in record.getMessage()

    def _unraisable(self, unraisable):
        e = unraisable.exc_value
        if not (isinstance(e, RuntimeError) and str(e) == "Event loop is closed"):
            self._prev_hook(unraisable)

    def install(self):
        logging.getLogger("asyncio").addFilter(self)
        self._prev_hook, sys.unraisablehook = sys.unraisablehook, self._unraisable

    def remove(self):
        logging.getLogger("asyncio").removeFilter(self)
        if sys.unraisablehook == self._unraisable:
            sys.unraisablehook = self._prev_hook


def _reason(e: BaseException) -> str:
    lines = str(e).split(" [tensorstore_spec", 1)[0].strip().splitlines()
    text = re.sub(r'(Error opening "\w+" driver: )+', "", lines[0] if lines else "")
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _everyone(ok: bool) -> bool:
    """True when `ok` holds on every process (one process may see damage another does not)."""
    if jax.process_count() == 1:
        return ok

    return bool(np.all(multihost_utils.process_allgather(np.array([ok], np.int32))))


def _set_aside(mngr, steps: list[int]) -> Path:
    """Moves damaged checkpoint steps to run_dir/corrupt_checkpoints/ (a resumed run saves those
    step numbers again); process 0 moves, every process then re-reads the step list."""
    directory = storage.path(str(mngr.directory))
    dest = directory.parent / "corrupt_checkpoints"
    if jax.process_index() == 0:
        if not storage.is_remote(dest):
            dest.mkdir(exist_ok=True)
        for step in steps:
            target = dest / str(step)
            if target.exists():
                target = dest / f"{step}.{time.strftime('%Y%m%d-%H%M%S')}"
            if storage.is_remote(dest):  # no renames on object storage: copy, then delete
                storage.copy_tree(directory / str(step), target)
                storage.rmtree(directory / str(step))
            else:
                shutil.move(str(directory / str(step)), str(target))
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("tinywave_set_aside_corrupt_checkpoints")
    mngr.reload()
    return dest


def restore_intact(
    mngr,
    target: TrainState,
    check_meta: Callable[[int, dict], None] = lambda step, meta: None,
    allowed_changes: Iterable[str] = (),
) -> tuple[int, TrainState, dict, dict]:
    """(step, state, data iterator state, meta) of the newest checkpoint that restores whole.

    `check_meta(step, meta)` runs before the state is read and may refuse (a TinywaveError: a
    different kind of run, a changed config); such refusals stop the search, damage does not:
    a checkpoint that fails to restore is skipped with a warning and set aside (module doc)."""
    steps = sorted(mngr.all_steps(), reverse=True)
    if not steps:
        raise MissingInputError(f"{mngr.directory}: no checkpoint to restore")
    noise, skipped = _FailedReadNoise(), cast(list[tuple[int, str]], [])
    noise.install()
    try:
        return _newest_intact(mngr, target, check_meta, steps, skipped, tuple(allowed_changes))
    finally:
        gc.collect()  # the reports of failed reads come when their futures are collected
        if not skipped:
            noise.remove()  # nothing failed: nothing left to report later


def _newest_intact(mngr, target, check_meta, steps: list[int], skipped: list, allowed=()) -> tuple:
    for step in steps:
        reason: Optional[str] = None
        got: Any = None
        try:
            meta = read_meta(mngr, step)
        except TinywaveError:
            raise
        except Exception as e:  # orbax/tensorstore/json raise many kinds on damaged files
            if storage.storage_failure(e):  # a lost bucket is not damage: set nothing aside
                raise
            reason = f"meta: {_reason(e)}"
        else:
            _check_process_count(mngr, step, meta)
            check_meta(step, meta)
            try:
                got = restore_checkpoint(mngr, target, step, meta)
            except TinywaveError:
                raise
            except Exception as e:
                if storage.storage_failure(e):
                    raise
                reason = _reason(e)
        if _everyone(reason is None):
            if skipped:
                dest = _set_aside(mngr, [s for s, _ in skipped])
                log.warning(
                    "resuming from checkpoint %d; the damaged ones (%s) were moved to %s",
                    step,
                    ", ".join(str(s) for s, _ in skipped),
                    dest,
                )
            return (step, *got)
        reason = reason or "failed to restore on another process"
        log.warning("checkpoint %d does not restore, skipping it: %s", step, reason)
        skipped.append((step, reason))
    advice = (
        # every step failing alike after a change allowed on purpose: most likely the change
        f" (allow_config_change {' '.join(allowed)} may have changed the shape of the state, "
        "which the checkpoints, intact or not, cannot be restored into: resume without that "
        "change, or train it in a new run_dir)"
        if allowed
        else " (restore the folder from a copy, or delete it to start the run over)"
    )
    raise CheckpointCorruptError(
        f"{mngr.directory}: no checkpoint restores whole: "
        + "; ".join(f"step {s}: {r}" for s, r in skipped)
        + advice,
        param=(None, "allow_config_change") if allowed else None,
    )
