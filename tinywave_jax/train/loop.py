"""The training loop: data -> compiled step -> metrics, checkpoints, final model export.

Run folder (`run_dir`):
    .lock             held while a run uses the folder (run_lock.py): a second run is refused
    config.yaml       the resolved config of the latest (re)start
    checkpoints/<N>/  the resume checkpoint (resume.py): state, data iterator state, meta
    metrics.jsonl     one row per logged or evaluated step;  tb/  TensorBoard event files
    final/            the trained student as a tinywave model checkpoint (`tinywave export-hf`)

Checkpoints are written asynchronously every `train.checkpoint_every` steps, at the end, and when
SIGTERM or Ctrl-C (SIGINT; a second one stops at once, unsaved) arrives (the step in flight
finishes, the state is saved, `run` returns stopped=True; the CLI exits 143, 130 for Ctrl-C);
a step with a non-finite loss or gradient norm stops the run (NonFiniteError) with nothing of
it saved; in a multi-process run, SIGTERM to any one process stops all of them after
one agreed step, which they save together (`_StopFlag`). `resume=True` continues from the newest
intact checkpoint exactly: same parameters, optimizer state, data position (onto any mesh; with
the same process count), after checking that the config did not change outside
resume.RESUME_MAY_CHANGE and `allow_config_change`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import time
from pathlib import Path

import jax
import numpy as np
import yaml
from jax.experimental import multihost_utils

from .. import storage
from ..checkpoint import save_model
from ..config import to_dict
from ..distill.teacher_cache import CacheJoin, open_for_run
from ..errors import ConfigError, OutputExistsError, TinywaveError
from ..outputs import check_not_an_input
from .data import make_batches
from .metrics import MetricsWriter, Progress, step_flops
from .recipes import prepare
from .resume import (
    check_resume_config,
    checkpoint_manager,
    config_defaults,
    restore_intact,
    save_checkpoint,
    wait_for_saves,
)
from .run_lock import RunInUseError, RunLock
from .session import Session
from .state import TrainState
from .validation import Validation

log = logging.getLogger(__name__)


class NonFiniteError(TinywaveError, FloatingPointError):
    """A training step gave a non-finite loss or gradient norm: the run stops there, saving no
    checkpoint and no final/ of it (the message names the step, its metrics and the last good
    checkpoint)."""


def _check_finite(step: int, metrics, saved: int, run_dir) -> None:
    """Raises NonFiniteError when step `step`'s loss or grad_norm is not finite. Each step is
    checked once its successor is dispatched (no pipeline stall), and always before a checkpoint
    or export of its state."""

    m = {k: float(v) for k, v in jax.device_get(metrics).items()}
    bad = [k for k in ("loss", "grad_norm") if k in m and not math.isfinite(m[k])]
    if bad:
        shown = ", ".join(f"{k} {v:.6g}" for k, v in m.items())
        last = (
            f"the last checkpoint is step {saved} (continue from it by resuming, e.g. with a "
            "lower optimizer.learning_rate or clip_norm: allow_config_change optimizer)"
            if saved
            else "no checkpoint was saved"
        )
        raise NonFiniteError(
            f"{run_dir}: training diverged at step {step}: non-finite {' and '.join(bad)} "
            f"({shown}); nothing of it was saved, {last}",
            param=(None, "allow_config_change") if saved else None,
        )


class _StopFlag:
    """SIGTERM: the loop saves a checkpoint after a step and exits (the CLI with 143).

    One process: a Python SIGTERM handler sets `set`; the loop checks it before and after every
    step, at no cost.

    Several processes: SIGTERM may reach one of them only (or each at another step), yet all must
    save the same step and stop together, none left waiting in a collective. jax's preemption sync
    manager (created by `jax.distributed.initialize` unless `jax_enable_preemption_service` is
    off; orbax's `CheckpointManager.reached_preemption` is the same call) does that through the
    coordination service: its own C++ SIGTERM handler records the notice, the service tells every
    process, each reports the step of its latest `reached_preemption_sync_point(step)` call and all
    agree on the fastest one's next step, at which the call returns True on every process. No
    Python handler is installed then (it would replace jax's). Measured with two CPU processes
    over gloo on loopback: the agreed step comes about a second after the signal (the notifier
    polls once a second). The counter is the global step, as orbax's own calls (in `save`) pass
    it; `begin(step)` reports the step a resumed run starts from as early as possible, since a
    notice that arrives before any report agrees on step 1, which a resumed run never reaches.
    Without the sync manager each process's flag is all-gathered after every step (one tiny
    collective per step) and any set flag stops all of them.
    """

    def __init__(self):
        self.set = False
        self.signal = None  # the name of the signal that stopped the run
        self._old = None
        self._old_int = None
        self._multi = False
        self._sync = False

    def __enter__(self):
        self._multi = jax.process_count() > 1
        if self._multi:
            try:  # the sync manager's counter starts at 0 (no sync point is 0): a pure probe
                multihost_utils.reached_preemption_sync_point(0)
                self._sync = True
            except RuntimeError:  # preemption service off: no sync manager
                self._sync = False
        try:
            if not self._sync:
                self._old = signal.signal(signal.SIGTERM, self._handle)
            if not self._multi:  # Ctrl-C reaches one process only: one-process runs
                self._old_int = signal.signal(signal.SIGINT, self._handle_int)
        except ValueError:  # not the main thread: no signal handling
            pass
        return self

    def _handle(self, signum, frame):
        log.warning("SIGTERM: saving a checkpoint after this step, then exiting")
        self.set, self.signal = True, self.signal or "SIGTERM"

    def _handle_int(self, signum, frame):
        """Ctrl-C: as SIGTERM; a second Ctrl-C stops at once (KeyboardInterrupt, no save)."""
        if self.set:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        log.warning(
            "Ctrl-C: saving a checkpoint after this step, then exiting "
            "(Ctrl-C again to stop at once, without saving)"
        )
        self.set, self.signal = True, "SIGINT"

    def begin(self, step: int) -> None:
        """Reports `step` (the newest checkpoint's, or 0) to the sync manager, before the run
        restores and compiles; a sync point agreed before this is 1 (see the class doc)."""
        if self._sync:
            multihost_utils.reached_preemption_sync_point(step)

    def before_step(self) -> bool:
        """Stop before the next step (one process only: several agree after a step instead)."""
        return self.set and not self._multi

    def after_step(self, step: int) -> bool:
        """Stop after this step (several processes: True on all of them at the same step)."""
        if not self._multi:
            return self.set

        if self._sync:
            if multihost_utils.reached_preemption_sync_point(step):
                log.warning("SIGTERM reached a process: all save step %d, then exit", step)
                return True
            return False

        return bool(np.any(multihost_utils.process_allgather(np.array([self.set], np.int32))))

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)
        if self._old_int is not None:
            signal.signal(signal.SIGINT, self._old_int)


@contextlib.contextmanager
def _run_lock(run_dir: Path):
    """Holds run_dir/.lock for the block: process 0 takes it, every process learns the outcome
    (so that all stop together, none waiting in a collective for one that raised)."""
    lock, err = None, None
    if jax.process_index() == 0:
        lock = RunLock(run_dir)
        try:
            lock.acquire()
        except RunInUseError as e:
            lock, err = None, e
    if jax.process_count() > 1:
        ok = multihost_utils.process_allgather(np.array([err is None], np.int32))
        if err is None and not np.all(ok):
            err = RunInUseError(f"{run_dir}: in use (process 0 could not lock it; see its log)")
    if err is not None:
        raise err
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


def _saved_config(run_dir: Path, meta: dict) -> dict | None:
    """The config a checkpoint was trained with: its meta, else run_dir/config.yaml."""
    if "config" in meta:
        return meta["config"]
    path = run_dir / "config.yaml"
    return yaml.safe_load(path.read_text()) if path.is_file() else None


def run(
    cfg,
    resume: bool = False,
    mesh=None,
    echo: bool = True,
    allow_config_change=(),
    return_state: bool = False,
) -> dict:
    """Trains per `cfg` (DistillConfig or TrainConfig). Returns {"step", "final_dir", "stopped",
    "signal"} (and "state", the final TrainState, with `return_state`): stopped is True when
    SIGTERM or Ctrl-C ended the run early (after its checkpoint; final_dir is None), signal then
    names it ("SIGTERM" / "SIGINT"). A non-finite loss or
    gradient norm raises NonFiniteError (nothing of that step saved).

    One run per run_dir at a time (RunInUseError otherwise). `resume=True` continues from the
    newest intact checkpoint; config keys outside resume.RESUME_MAY_CHANGE may change only when
    named in `allow_config_change` (a key covers the keys under it)."""
    # a gs:// run folder must be writable before any work (not at the first checkpoint)
    storage.forget_lost()
    storage.check_gcs(cfg.run_dir, write=True, what="run_dir")
    recipe = prepare(cfg)
    run_dir = storage.path(cfg.run_dir)
    check_not_an_input(run_dir / "final", recipe.inputs())  # before any work, not at the end
    cache = None
    if recipe.kind == "distill" and recipe.spec.teacher_cached:
        cache = open_for_run(cfg)  # its teacher, top_k, layout and corpus: before any work
    primary = jax.process_index() == 0
    new_config = to_dict(cfg)
    meta = {"kind": recipe.kind, "config": new_config}
    with _StopFlag() as stop, _run_lock(run_dir):
        session = Session(recipe, mesh)
        mngr = checkpoint_manager(run_dir, cfg.train.checkpoint_keep, cfg.train.async_checkpoint)
        writer = None
        try:
            latest = mngr.latest_step()
            stop.begin(latest or 0)
            if latest is not None and not resume:
                raise OutputExistsError(
                    f"{run_dir} already holds checkpoints (latest step {latest}); "
                    "continue it with resume, or choose another run_dir",
                    param=(None, "resume"),
                )

            def check(step: int, saved: dict) -> None:
                if saved.get("kind") != recipe.kind:
                    raise ConfigError(
                        f"{run_dir}: holds a {saved.get('kind')!r} run, not {recipe.kind!r}"
                    )
                check_resume_config(
                    _saved_config(run_dir, saved),
                    new_config,
                    allow_config_change,
                    f"{run_dir} (checkpoint {step})",
                    config_defaults(type(cfg)),  # keys newer than the checkpoint, at defaults
                )

            if resume and latest is None:
                log.warning("resume: %s holds no checkpoint; starting the run from step 0", run_dir)
            if latest is not None:
                step, state, data_state, _ = storage.within_deadline(
                    lambda: restore_intact(
                        mngr, session.abstract_state(), check, allow_config_change
                    ),
                    "restoring the newest intact checkpoint",
                    mngr.directory,
                )
                if step >= cfg.train.steps:
                    log.warning(
                        "checkpoint %d is at or past train.steps=%d: nothing left to train; "
                        "final/ is written from it (raise train.steps to train on)",
                        step,
                        cfg.train.steps,
                    )
                frozen, _ = session.frozen_and_trainable(trainable_too=False)
                batches = _batches(cfg, recipe, cache)
                batches.set_state(data_state)
                writer = MetricsWriter(run_dir, cfg.train.tensorboard, enabled=primary)
                writer.truncate_after(step)
                log.info("resumed %s at step %d", run_dir, step)
            else:
                frozen, trainable = session.frozen_and_trainable()
                state = session.init_state(trainable)
                del trainable
                batches = _batches(cfg, recipe, cache)
                writer = MetricsWriter(run_dir, cfg.train.tensorboard, enabled=primary)
            validation = Validation(session) if cfg.train.eval_every else None
            if primary:
                (run_dir / "config.yaml").write_text(yaml.safe_dump(new_config, sort_keys=False))
            state, done = _train(
                session, state, frozen, batches, mngr, meta, writer, echo, stop, validation
            )
            final_dir = None
            if done:
                final_dir = _export(session, state, frozen, run_dir)
            step = int(jax.device_get(state.step))
            out = {
                "step": step,
                "final_dir": final_dir,
                "stopped": not done,
                "signal": None if done else (stop.signal or "SIGTERM"),
            }
            return {**out, "state": state} if return_state else out
        finally:
            wait_for_saves(mngr)
            # the bucket lost (an operation failed or ran past its deadline): close() would
            # wait on the failed commit again, the writer's last upload would retry
            # (metrics.jsonl was uploaded whole at each logged step)
            if not storage.lost():
                mngr.close()
                if writer is not None:
                    writer.close()


def _batches(cfg, recipe, cache=None):
    """This host's batches; with a teacher cache, joined to its top-k rows by token key."""
    batches = make_batches(
        cfg.data,
        recipe.spec.student.vocab_size,
        jax.process_index(),
        jax.process_count(),
        keys=cache is not None,
    )
    if cache is None:
        return batches

    return CacheJoin(batches, cache, list(cfg.data.corpus_config().mixture))


def _train(
    session: Session,
    state,
    frozen,
    batches,
    mngr,
    meta,
    writer,
    echo,
    stop: _StopFlag,
    validation: Validation | None = None,
) -> tuple[TrainState, bool]:
    """Steps to train.steps; (state, False) when SIGTERM stopped it (after a checkpoint).
    `validation`: evaluated when due, its metrics logged with the step's (or in a row alone)."""
    cfg, spec = session.cfg, session.spec
    total = cfg.train.steps
    start = int(jax.device_get(state.step))
    tokens_per_step = cfg.data.batch_size * cfg.data.seq_len
    flops = step_flops(spec, cfg.data.seq_len, cfg.data.batch_size)
    peak = cfg.train.peak_flops_per_device
    progress = Progress(total)
    t_last, step_last = time.time(), start
    saved = start  # the step of the latest checkpoint
    pending = None  # (step, metrics) of the step not yet checked for non-finite values
    run_dir = cfg.run_dir

    def check_pending():
        nonlocal pending
        if pending is not None:
            _check_finite(*pending, saved, run_dir)
            pending = None

    for step in range(start + 1, total + 1):
        if stop.before_step():  # SIGTERM between steps (or before the first): save unless saved
            check_pending()
            if saved != step - 1:
                save_checkpoint(mngr, state, batches.get_state(), meta)
            return state, False
        try:
            batch = session.global_batch(next(batches))
        except StopIteration:  # a finite corpus (data.corpus.num_epochs) ran out
            log.warning("data exhausted after %d steps; finishing early", step - 1)
            check_pending()
            if step - 1 > start and mngr.latest_step() != step - 1:
                save_checkpoint(mngr, state, batches.get_state(), meta)
            break
        state, metrics = session.step(state, frozen, batch)
        check_pending()  # the previous step's, now that this one is dispatched
        pending = (step, metrics)
        stopping = stop.after_step(step)
        if step % cfg.train.checkpoint_every == 0 or step == total or stopping:
            check_pending()
        val = {}
        if validation is not None and validation.due(step):
            check_pending()
            t_val = time.time()
            val = validation(state.params, frozen)
            t_last += time.time() - t_val  # not counted in tokens_per_s / mfu
        if step % cfg.train.log_every == 0 or step == total or stopping:
            check_pending()
            m = {k: float(v) for k, v in jax.device_get(metrics).items()}
            now = time.time()
            rate = (step - step_last) / max(now - t_last, 1e-9)
            t_last, step_last = now, step
            m["tokens_per_s"] = rate * tokens_per_step
            m["model_flops_per_step"] = flops
            if peak:
                m["mfu"] = rate * flops / (peak * jax.device_count())
            m.update(val)
            writer.write(step, m)
            if echo and jax.process_index() == 0:
                progress.print(step, m)
        elif val:
            writer.write(step, val)
            if echo and jax.process_index() == 0:
                progress.print(step, val)
        if step % cfg.train.checkpoint_every == 0 or step == total or stopping:
            save_checkpoint(mngr, state, batches.get_state(), meta)
            saved = step
        if stopping:
            return state, False
        if cfg.train.throttle_s:
            time.sleep(cfg.train.throttle_s)
    check_pending()
    return state, True


def _export(session: Session, state: TrainState, frozen: dict, run_dir: Path) -> Path:

    recipe = session.recipe
    provenance = {
        "trained_by": f"tinywave {recipe.kind}",
        "steps": int(jax.device_get(state.step)),
        "run_dir": str(run_dir),
        **recipe.provenance(),
    }
    config = session.spec.student.replace(remat="none")
    return save_model(
        run_dir / "final",
        session.export_params(state, frozen),
        config,
        provenance,
        overwrite=True,
        sources=recipe.inputs(),
    )
