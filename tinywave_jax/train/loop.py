"""The training loop: data -> compiled step -> metrics, checkpoints, final model export.

Run folder (`run_dir`):
    config.yaml       the resolved config of the latest (re)start
    checkpoints/<N>/  orbax CheckpointManager steps: `state` (student params, optimizer state, step,
                      RNG), `data` (iterator state, JSON), `meta` (kind, process count, config)
    metrics.jsonl     one row per logged step;  tb/  TensorBoard event files
    final/            the trained student as a tinywave model checkpoint (`tinywave export-hf`)

Checkpoints are written asynchronously every `train.checkpoint_every` steps, at the end, and when
SIGTERM arrives (the step in flight finishes, the state is saved, the run exits). `resume=True`
continues from the latest checkpoint exactly: same parameters, optimizer state, data position.
The state is restored into abstract targets carrying this run's shardings, so the mesh may differ
from the one that saved it; the data iterator state is per process, so the process count may not.
"""
from __future__ import annotations

import logging
import signal
import time
from pathlib import Path

import jax
import yaml

from ..config import ConfigError, to_dict
from .data import make_batches
from .metrics import MetricsWriter, Progress, flops_per_token
from .session import Job, Session, prepare
from .state import TrainState

log = logging.getLogger(__name__)


# ---- checkpoints ---------------------------------------------------------------------------------
def checkpoint_manager(run_dir: str | Path, keep: int = 3, async_save: bool = True):
    import orbax.checkpoint as ocp
    return ocp.CheckpointManager(
        (Path(run_dir) / "checkpoints").resolve(), item_names=("state", "data", "meta"),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep,
                                             enable_async_checkpointing=async_save))


def _all_process_states(data_state: dict) -> dict:
    """Every process's data-iterator state (orbax writes JSON items from process 0 only)."""
    if jax.process_count() == 1:
        return data_state
    import json

    import numpy as np
    from jax.experimental import multihost_utils
    raw = np.frombuffer(json.dumps(data_state).encode(), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.array([raw.size], np.int32))).reshape(-1)
    buf = np.zeros(int(sizes.max()), np.uint8)
    buf[:raw.size] = raw
    rows = np.asarray(multihost_utils.process_allgather(buf))
    return {"processes": [json.loads(bytes(rows[i, :sizes[i]])) for i in range(len(sizes))]}


def save_checkpoint(mngr, state: TrainState, data_state: dict, meta: dict) -> None:
    import orbax.checkpoint as ocp
    step = int(jax.device_get(state.step))
    data_state = _all_process_states(data_state)
    mngr.save(step, force=True, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state._asdict()), data=ocp.args.JsonSave(data_state),
        meta=ocp.args.JsonSave({**meta, "step": step, "process_count": jax.process_count()})))


def restore_checkpoint(mngr, target: TrainState, step: int | None = None) -> tuple[TrainState, dict, dict]:
    """(state, data iterator state, meta) of `step` (default: latest), restored onto the shardings
    carried by `target` (ShapeDtypeStructs). Fails clearly when the process count changed."""
    import orbax.checkpoint as ocp
    step = mngr.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"{mngr.directory}: no checkpoint to restore")
    meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
    if meta.get("process_count") != jax.process_count():
        raise ValueError(f"{mngr.directory}/{step}: saved by {meta.get('process_count')} processes, "
                         f"this run has {jax.process_count()}; the data iterator state is per "
                         "process and cannot be remapped (resume with the same process count)")
    got = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target._asdict()), data=ocp.args.JsonRestore()))
    # orbax hands back dicts/tuples; rebuild the target's structure field by field (a dict's
    # leaves come in key order, a NamedTuple's in field order).
    state = TrainState(**{f: jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(getattr(target, f)),
                                                           jax.tree_util.tree_leaves(got.state[f]))
                          for f in TrainState._fields})
    data = got.data
    if isinstance(data, dict) and "processes" in data:  # saved by several processes
        data = data["processes"][jax.process_index()]
    return state, data, meta


# ---- the loop ---------------------------------------------------------------------------------
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
    job: Job = prepare(cfg)
    session = Session(job, mesh)
    run_dir = Path(cfg.run_dir)
    primary = jax.process_index() == 0
    mngr = checkpoint_manager(run_dir, cfg.train.checkpoint_keep, cfg.train.async_checkpoint)
    meta = {"kind": job.kind, "config": to_dict(cfg)}
    batches = make_batches(cfg.data, job.spec.student.vocab_size, jax.process_index(),
                           jax.process_count())
    writer = MetricsWriter(run_dir, cfg.train.tensorboard, enabled=primary)
    try:
        latest = mngr.latest_step()
        if latest is not None and not resume:
            raise FileExistsError(f"{run_dir} already holds checkpoints (latest step {latest}); "
                                  "pass --resume to continue it or choose another run_dir")
        frozen, trainable = session.frozen_and_trainable(trainable_too=latest is None)
        if latest is not None:
            del trainable  # the checkpoint has them
            state, data_state, saved = restore_checkpoint(mngr, session.abstract_state(), latest)
            if saved.get("kind") != job.kind:
                raise ConfigError(f"{run_dir}: holds a {saved.get('kind')!r} run, not {job.kind!r}")
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


def _train(session: Session, state, frozen, batches, mngr, meta, writer, echo) -> tuple[TrainState, bool]:
    cfg, spec = session.cfg, session.spec
    total = cfg.train.steps
    start = int(jax.device_get(state.step))
    tokens_per_step = cfg.data.batch_size * cfg.data.seq_len
    flops = flops_per_token(spec.student, cfg.data.seq_len,
                            spec.teacher if spec.needs_teacher else None,
                            teacher_head=spec.loss.weights.logit_kl > 0) * tokens_per_step
    peak = cfg.train.peak_flops_per_device
    progress = Progress(total)
    t_last, step_last = time.time(), start
    with _StopFlag() as stop:
        for step in range(start + 1, total + 1):
            try:
                batch = _global_batch(session, next(batches))
            except StopIteration:   # a finite corpus (data.corpus.num_epochs) ran out
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
    cfg, job = session.cfg, session.job
    params = session.export_params(state, frozen)
    provenance = {"trained_by": f"tinywave {job.kind}", "steps": int(jax.device_get(state.step)),
                  "run_dir": str(run_dir)}
    if job.kind == "distill":
        provenance.update(teacher=cfg.teacher.path or "random",
                          layer_map=list(job.layer_map.teacher_for_student))
    else:
        provenance.update(model=cfg.model.path or "random",
                          lora=to_dict(cfg.lora) if cfg.lora.enabled else None)
    config = session.spec.student.replace(remat="none")
    return save_model(run_dir / "final", params, config, provenance, overwrite=True)
