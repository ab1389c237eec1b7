"""The training loop: data -> compiled step -> metrics, checkpoints, final model export.

Run folder (`run_dir`):
    config.yaml       the resolved config of the latest (re)start
    checkpoints/<N>/  the resume checkpoint (resume.py): state, data iterator state, meta
    metrics.jsonl     one row per logged step;  tb/  TensorBoard event files
    final/            the trained student as a tinywave model checkpoint (`tinywave export-hf`)

Checkpoints are written asynchronously every `train.checkpoint_every` steps, at the end, and when
SIGTERM arrives (the step in flight finishes, the state is saved, the run exits). `resume=True`
continues from the latest checkpoint exactly: same parameters, optimizer state, data position
(onto any mesh; with the same process count).
"""

from __future__ import annotations

import logging
import signal
import time
from pathlib import Path

import jax
import yaml

from ..config import ConfigError, to_dict
from ..errors import OutputExistsError
from .data import make_batches
from .metrics import MetricsWriter, Progress, flops_per_token
from .recipes import prepare
from .resume import checkpoint_manager, restore_checkpoint, save_checkpoint
from .session import Session
from .state import TrainState

log = logging.getLogger(__name__)


class _StopFlag:
    """Set by SIGTERM: the loop saves a checkpoint after the current step and exits."""

    def __init__(self):
        self.set = False
        self._old = None

    def __enter__(self):
        try:
            self._old = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: no signal handling
            self._old = None
        return self

    def _handle(self, signum, frame):
        log.warning("SIGTERM: saving a checkpoint after this step, then exiting")
        self.set = True

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


def _global_batch(session: Session, batch: dict) -> dict:
    from ..parallel import batch_sharding

    sh = batch_sharding(session.mesh)
    return {k: jax.make_array_from_process_local_data(sh, batch[k]) for k in batch}


def run(cfg, resume: bool = False, mesh=None, echo: bool = True) -> dict:
    """Trains per `cfg` (DistillConfig or TrainConfig). Returns {"step", "final_dir", "metrics"}."""
    recipe = prepare(cfg)
    session = Session(recipe, mesh)
    run_dir = Path(cfg.run_dir)
    primary = jax.process_index() == 0
    mngr = checkpoint_manager(run_dir, cfg.train.checkpoint_keep, cfg.train.async_checkpoint)
    meta = {"kind": recipe.kind, "config": to_dict(cfg)}
    batches = make_batches(
        cfg.data, recipe.spec.student.vocab_size, jax.process_index(), jax.process_count()
    )
    writer = MetricsWriter(run_dir, cfg.train.tensorboard, enabled=primary)
    try:
        latest = mngr.latest_step()
        if latest is not None and not resume:
            raise OutputExistsError(
                f"{run_dir} already holds checkpoints (latest step {latest}); "
                "pass --resume to continue it or choose another run_dir"
            )
        frozen, trainable = session.frozen_and_trainable(trainable_too=latest is None)
        if latest is not None:
            del trainable  # the checkpoint has them
            state, data_state, saved = restore_checkpoint(mngr, session.abstract_state(), latest)
            if saved.get("kind") != recipe.kind:
                raise ConfigError(
                    f"{run_dir}: holds a {saved.get('kind')!r} run, not {recipe.kind!r}"
                )
            batches.set_state(data_state)
            writer.truncate_after(latest)
            log.info("resumed %s at step %d", run_dir, latest)
        else:
            state = session.init_state(trainable)
        if primary:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        state, done = _train(session, state, frozen, batches, mngr, meta, writer, echo)
        final_dir = None
        if done:
            final_dir = _export(session, state, frozen, run_dir)
        return {"step": int(jax.device_get(state.step)), "final_dir": final_dir}
    finally:
        mngr.wait_until_finished()
        mngr.close()
        writer.close()


def _train(
    session: Session, state, frozen, batches, mngr, meta, writer, echo
) -> tuple[TrainState, bool]:
    cfg, spec = session.cfg, session.spec
    total = cfg.train.steps
    start = int(jax.device_get(state.step))
    tokens_per_step = cfg.data.batch_size * cfg.data.seq_len
    flops = (
        flops_per_token(
            spec.student,
            cfg.data.seq_len,
            spec.teacher if spec.needs_teacher else None,
            teacher_head=spec.loss.weights.logit_kl > 0,
        )
        * tokens_per_step
    )
    peak = cfg.train.peak_flops_per_device
    progress = Progress(total)
    t_last, step_last = time.time(), start
    with _StopFlag() as stop:
        for step in range(start + 1, total + 1):
            try:
                batch = _global_batch(session, next(batches))
            except StopIteration:  # a finite corpus (data.corpus.num_epochs) ran out
                log.warning("data exhausted after %d steps; finishing early", step - 1)
                if step - 1 > start and mngr.latest_step() != step - 1:
                    save_checkpoint(mngr, state, batches.get_state(), meta)
                break
            state, metrics = session.step(state, frozen, batch)
            if step % cfg.train.log_every == 0 or step == total or stop.set:
                m = {k: float(v) for k, v in jax.device_get(metrics).items()}
                now = time.time()
                rate = (step - step_last) / max(now - t_last, 1e-9)
                t_last, step_last = now, step
                m["tokens_per_s"] = rate * tokens_per_step
                m["model_flops_per_step"] = flops
                if peak:
                    m["mfu"] = rate * flops / (peak * jax.device_count())
                writer.write(step, m)
                if echo and jax.process_index() == 0:
                    progress.print(step, m)
            if step % cfg.train.checkpoint_every == 0 or step == total or stop.set:
                save_checkpoint(mngr, state, batches.get_state(), meta)
            if stop.set:
                return state, False
            if cfg.train.throttle_s:
                time.sleep(cfg.train.throttle_s)
    return state, True


def _export(session: Session, state: TrainState, frozen: dict, run_dir: Path) -> Path:
    from ..checkpoint import save_model

    recipe = session.recipe
    provenance = {
        "trained_by": f"tinywave {recipe.kind}",
        "steps": int(jax.device_get(state.step)),
        "run_dir": str(run_dir),
        **recipe.provenance(),
    }
    config = session.spec.student.replace(remat="none")
    return save_model(
        run_dir / "final", session.export_params(state, frozen), config, provenance, overwrite=True
    )
