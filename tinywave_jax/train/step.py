"""The jitted train step: teacher features (frozen, no gradient) -> student loss -> AdamW update.

One step takes the global batch [B, T], splits it into `microbatches` interleaved row groups
(rows j, j+M, j+2M, ... form microbatch j, so each stays evenly sharded over (data, fsdp)),
and `lax.scan`s over them summing gradients. Each microbatch's loss terms are weighted by its share
of the batch's tokens (loss_mask tokens for CE / logit KL, non-padding tokens for the hidden and
attention terms), so the accumulated gradient equals the full-batch gradient of the token-mean loss
exactly, whatever the padding.

Compiled with `jax.jit(in_shardings, out_shardings, donate_argnums=0)`: the student TrainState is
donated; the frozen params (teacher / LoRA base) are a separate, non-donated input.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import optax
from jax import lax

from ..distill.objective import DistillLossConfig, distill_loss
from ..models.config import LlamaConfig
from ..models.llama import Llama, lm_head_kernel
from ..parallel import axis_rules_context, batch_sharding, replicated
from ..parallel.rules import logical_to_spec
from .lora import LoraConfig, apply_lora
from .state import TrainState

BATCH_KEYS = ("input_ids", "targets", "loss_mask", "segment_ids", "positions")
_MASK_TERMS = ("ce", "logit_kl", "kl_t1", "teacher_ce")   # means over loss_mask tokens
_VALID_TERMS = ("hidden", "attention_kl")                 # means over non-padding tokens


@dataclasses.dataclass(frozen=True)
class StepSpec:
    """Everything static about the step (hashable)."""
    student: LlamaConfig
    loss: DistillLossConfig
    teacher: Optional[LlamaConfig] = None
    student_taps: tuple[int, ...] = ()
    teacher_taps: tuple[int, ...] = ()
    microbatches: int = 1
    lora: Optional[LoraConfig] = None

    @property
    def tap_hidden(self) -> bool:
        return self.loss.weights.hidden > 0

    @property
    def tap_qk(self) -> bool:
        return self.loss.weights.attention > 0

    @property
    def needs_teacher(self) -> bool:
        w = self.loss.weights
        return w.logit_kl > 0 or w.hidden > 0 or w.attention > 0


def student_params(spec: StepSpec, trainable: dict, frozen: dict) -> dict:
    """The params the student runs with: its own, or the frozen base plus LoRA adapters."""
    if spec.lora is not None:
        return apply_lora(frozen["base"], trainable["lora"], spec.lora)
    return trainable["model"]


def _features(config: LlamaConfig, params: dict, mb: dict, taps: tuple, hidden: bool, qk: bool,
              output: bool) -> dict:
    out = Llama(config).apply({"params": params}, mb["input_ids"], mb["positions"],
                              mb["segment_ids"], tap_layers=taps if (hidden or qk) else (),
                              tap_hidden=hidden, tap_qk=qk, return_logits=False)
    feats = {"hidden": out.hidden, "q": out.queries, "k": out.keys}
    if output:
        feats.update(final_hidden=out.final_hidden, head_kernel=lm_head_kernel(params, config))
    return {k: v for k, v in feats.items() if v is not None}


def teacher_features(spec: StepSpec, teacher: dict, mb: dict) -> dict:
    """Only what a term with weight > 0 needs; constants for the student's gradient."""
    if not spec.needs_teacher:
        return {}
    feats = _features(spec.teacher, teacher, mb, spec.teacher_taps, spec.tap_hidden, spec.tap_qk,
                      output=spec.loss.weights.logit_kl > 0)
    return lax.stop_gradient(feats)


def microbatch_loss(spec: StepSpec, trainable: dict, frozen: dict, mb: dict, teacher: dict,
                    totals: dict) -> tuple[jax.Array, dict]:
    """This microbatch's share of the full-batch loss, and its share of every metric."""
    params = student_params(spec, trainable, frozen)
    w = spec.loss.weights
    student = _features(spec.student, params, mb, spec.student_taps, spec.tap_hidden, spec.tap_qk,
                        output=w.ce > 0 or w.logit_kl > 0)
    _, m = distill_loss(spec.loss, mb, student, teacher, trainable.get("projector"))
    f_mask = jnp.sum(mb["loss_mask"].astype(jnp.float32)) / jnp.maximum(totals["mask"], 1.0)
    f_valid = jnp.sum((mb["segment_ids"] != 0).astype(jnp.float32)) / jnp.maximum(totals["valid"], 1.0)
    out = {}
    for k, v in m.items():
        base = k.split("/")[0]
        if base in _MASK_TERMS:
            out[k] = v * f_mask
        elif base in _VALID_TERMS:
            out[k] = v * f_valid
        elif k == "num_tokens":
            out[k] = v
    loss = jnp.zeros((), jnp.float32)
    for term, weight in (("ce", w.ce), ("logit_kl", w.logit_kl), ("hidden", w.hidden),
                         ("attention_kl", w.attention)):
        if weight > 0:
            loss = loss + weight * out[term]
    out["loss"] = loss
    return loss, out


def split_microbatches(batch: dict, m: int) -> dict:
    """[B, ...] -> [m, B/m, ...]; microbatch j holds rows j, j+m, ... (keeps the row sharding)."""
    def split(x):
        b = x.shape[0]
        y = jnp.swapaxes(x.reshape(b // m, m, *x.shape[1:]), 0, 1)
        spec = logical_to_spec((None, "batch") + (None,) * (x.ndim - 1))
        return lax.with_sharding_constraint(y, spec)
    return {k: split(batch[k]) for k in BATCH_KEYS}


def train_step(spec: StepSpec, tx: optax.GradientTransformation, schedule, state: TrainState,
               frozen: dict, batch: dict) -> tuple[TrainState, dict]:
    totals = {"mask": jnp.sum(batch["loss_mask"].astype(jnp.float32)),
              "valid": jnp.sum((batch["segment_ids"] != 0).astype(jnp.float32))}
    grad_fn = jax.value_and_grad(
        lambda p, mb, t: microbatch_loss(spec, p, frozen, mb, t, totals), has_aux=True)

    def one(mb):
        teacher = teacher_features(spec, frozen.get("teacher"), mb)
        (_, metrics), grads = grad_fn(state.params, mb, teacher)
        return grads, metrics

    if spec.microbatches == 1:
        grads, metrics = one({k: batch[k] for k in BATCH_KEYS})
    else:
        mbs = split_microbatches(batch, spec.microbatches)
        first = jax.tree.map(lambda x: x[0], mbs)
        shapes = jax.eval_shape(one, first)
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

        def body(acc, mb):
            return jax.tree.map(jnp.add, acc, one(mb)), None

        (grads, metrics), _ = lax.scan(body, zeros, mbs)
    metrics = dict(metrics)
    metrics["grad_norm"] = optax.tree.norm(grads)
    metrics["learning_rate"] = schedule(state.step)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return TrainState(state.step + 1, params, opt_state, state.rng), metrics


class CompiledStep:
    """`train_step` jitted on `mesh` with explicit shardings; compiled on the first call (under
    the mesh and the logical-axis rules), then reused. Donates the state argument."""

    def __init__(self, spec: StepSpec, tx, schedule, mesh, state_sh: TrainState, frozen_sh: dict):
        self.mesh = mesh
        bsh = batch_sharding(mesh)
        self._jit = jax.jit(
            lambda state, frozen, batch: train_step(spec, tx, schedule, state, frozen, batch),
            in_shardings=(state_sh, frozen_sh, {k: bsh for k in BATCH_KEYS}),
            out_shardings=(state_sh, replicated(mesh)), donate_argnums=(0,))
        self._compiled = None

    def lower(self, state, frozen, batch):
        with jax.set_mesh(self.mesh), axis_rules_context():
            return self._jit.lower(state, frozen, batch)

    def __call__(self, state, frozen, batch):
        batch = {k: batch[k] for k in BATCH_KEYS}
        if self._compiled is None:
            self._compiled = self.lower(state, frozen, batch).compile()
        return self._compiled(state, frozen, batch)
