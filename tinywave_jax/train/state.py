"""The student train state, the optimizer, and their shardings.

TrainState.params holds only what is trained: {"model": student params} plus {"projector": ...}
when hidden widths differ (kept apart so export ignores it), or {"lora": adapters} for LoRA
fine-tuning. Frozen inputs (the teacher, a LoRA base model) are never part of the state: they are
separate, non-donated step inputs without optimizer state.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from ..parallel import replicated
from .config import OptimizerConfig


class TrainState(NamedTuple):
    step: jax.Array  # int32 scalar: optimizer steps taken
    params: dict  # trainable params only (see module doc)
    opt_state: Any  # optax AdamW state over `params`
    rng: jax.Array  # uint32 key data; per-step randomness is fold_in(rng, step)


def lr_schedule(cfg: OptimizerConfig, total_steps: int) -> optax.Schedule:
    """Linear warmup 0 -> lr over warmup_steps, then cosine to lr * min_lr_ratio at total_steps."""
    warmup = min(cfg.warmup_steps, max(total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=cfg.learning_rate,
        warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1),
        end_value=cfg.learning_rate * cfg.min_lr_ratio,
    )


def _decay_mask(params):
    """Weight decay on every leaf except norm scales and biases."""

    def keep(path, _):
        name = str(getattr(path[-1], "key", path[-1]))
        return name not in ("scale", "bias")

    return jax.tree_util.tree_map_with_path(keep, params)


def make_optimizer(
    cfg: OptimizerConfig, total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    schedule = lr_schedule(cfg, total_steps)
    parts = [optax.clip_by_global_norm(cfg.clip_norm)] if cfg.clip_norm is not None else []
    parts.append(
        optax.adamw(
            schedule,
            b1=cfg.b1,
            b2=cfg.b2,
            eps=cfg.eps,
            weight_decay=cfg.weight_decay,
            mask=_decay_mask,
        )
    )
    return optax.chain(*parts), schedule


def init_state(params: dict, tx: optax.GradientTransformation, seed: int) -> TrainState:
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        rng=jax.random.key_data(jax.random.key(seed)),
    )


def state_shardings(
    mesh, tx: optax.GradientTransformation, abstract_params: dict, param_shardings: dict
) -> TrainState:
    """Shardings of a TrainState: optimizer moments follow their params, the rest replicated."""
    abstract_opt = jax.eval_shape(tx.init, abstract_params)
    rep = replicated(mesh)
    opt_sh = optax.tree_map_params(
        tx, lambda _, s: s, abstract_opt, param_shardings, transform_non_params=lambda _: rep
    )
    return TrainState(step=rep, params=param_shardings, opt_state=opt_sh, rng=rep)


def abstract_state(tx, abstract_params: dict, shardings: TrainState, seed: int = 0) -> TrainState:
    """ShapeDtypeStructs (with shardings) of the state: the restore target of a checkpoint."""
    shapes = jax.eval_shape(lambda p: init_state(p, tx, seed), abstract_params)
    return jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings
    )
