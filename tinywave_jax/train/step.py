"""The jitted train step: teacher features (frozen, no gradient) -> student loss -> AdamW update.

One step takes the global batch [B, T], splits it into `microbatches` interleaved row groups
(rows j, j+M, j+2M, ... form microbatch j, so each stays evenly sharded over (data, fsdp)),
and `lax.scan`s over them summing gradients and the objective's (sum, count) terms. Each
microbatch's terms are divided by the full batch's token counts (`objective.normalisers`, known
before any forward), so the accumulated gradient equals the full-batch gradient of the token-mean
loss exactly, whatever the padding; the logged metrics are the accumulated sums divided once.

Compiled with `jax.jit(in_shardings, out_shardings, donate_argnums=0)`: the student TrainState is
donated; the frozen params (teacher / LoRA base) are a separate, non-donated input.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, cast

import jax
import jax.numpy as jnp
import optax
from jax import lax

from ..data.batches import BATCH_KEYS, CACHE_KEYS
from ..distill.losses import teacher_topk
from ..distill.objective import (
    DistillLossConfig,
    LossWeights,
    Terms,
    loss_terms,
    means,
    metric_values,
    normalisers,
    weighted_loss,
)
from ..distill.terms import Features
from ..models.config import LlamaConfig
from ..models.llama import apply_llama, lm_head_kernel
from ..parallel import axis_rules_context, batch_sharding, replicated
from ..parallel.rules import logical_to_spec
from .lora import LoraConfig, apply_lora
from .state import TrainState


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
    teacher_cached: bool = False  # the teacher's top-k comes with the batch (teacher.cache)

    # what the step computes derives from the active terms' declared needs (distill/terms.py)
    @property
    def student_needs(self) -> frozenset:
        return self.loss.needs("student")

    @property
    def teacher_needs(self) -> frozenset:
        return self.loss.needs("teacher")

    @property
    def tap_hidden(self) -> bool:
        return "hidden" in self.student_needs | self.teacher_needs

    @property
    def tap_qk(self) -> bool:
        return "qk" in self.student_needs | self.teacher_needs

    @property
    def runs_teacher(self) -> bool:
        """Whether the teacher runs in the step (never with a cache); what it must compute is
        `teacher_needs`, the union of the active terms' `needs_teacher` (distill/terms.py)."""
        return bool(self.teacher_needs) and not self.teacher_cached

    @property
    def teacher_head(self) -> bool:
        """Whether the teacher runs to its last layer and its LM head (its logits or top-k)."""
        return self.runs_teacher and bool({"output", "topk"} & self.teacher_needs)

    @property
    def batch_keys(self) -> tuple:
        return BATCH_KEYS + (CACHE_KEYS if self.teacher_cached else ())


def student_params(spec: StepSpec, trainable: dict, frozen: dict) -> dict:
    """The params the student runs with: its own, or the frozen base plus LoRA adapters."""
    if spec.lora is not None:
        return apply_lora(frozen["base"], trainable["lora"], spec.lora)
    return trainable["model"]


def _features(
    config: LlamaConfig, params: dict, mb: dict, taps: tuple, hidden: bool, qk: bool, output: bool
) -> Features:
    out = apply_llama(
        config,
        params,
        mb["input_ids"],
        mb["positions"],
        mb["segment_ids"],
        tap_layers=taps if (hidden or qk) else (),
        tap_hidden=hidden,
        tap_qk=qk,
        return_logits=False,
    )
    feats = Features(hidden=out.hidden, q=out.queries, k=out.keys)
    if output:
        feats = feats._replace(
            final_hidden=out.final_hidden, head_kernel=lm_head_kernel(params, config)
        )
    return feats


def teacher_features(spec: StepSpec, teacher: Optional[dict], mb: dict) -> Features:
    """Only what an active term needs; constants for the student's gradient. With a teacher
    cache, its top-k rows come with the microbatch and the teacher does not run."""
    if spec.teacher_cached:
        return Features.of({k: mb[k] for k in CACHE_KEYS})
    if not spec.runs_teacher:
        return Features()
    need = spec.teacher_needs
    feats = _features(
        cast(LlamaConfig, spec.teacher),  # a step that runs its teacher has one, and its params
        cast(dict, teacher),
        mb,
        spec.teacher_taps,
        "hidden" in need,
        "qk" in need,
        output=spec.teacher_head,
    )
    if "topk" in need:  # the teacher ran to its head (`teacher_head`)
        assert feats.final_hidden is not None and feats.head_kernel is not None
        ids, logprobs = teacher_topk(
            feats.final_hidden, feats.head_kernel, spec.loss.top_k, spec.loss.logit_chunk_size
        )
        feats = feats._replace(topk_ids=ids, topk_logprobs=logprobs)
    if "output" not in need:
        feats = feats._replace(final_hidden=None, head_kernel=None)
    return lax.stop_gradient(feats)


def microbatch_loss(
    spec: StepSpec, trainable: dict, frozen: dict, mb: dict, teacher: Features, counts: dict
) -> tuple[jax.Array, Terms]:
    """This microbatch's share of the full-batch loss (its term sums over the FULL batch's counts,
    so the shares add up to the full-batch loss exactly), and its terms as (sum, count)."""
    params = student_params(spec, trainable, frozen)
    need = spec.student_needs
    student = _features(
        spec.student,
        params,
        mb,
        spec.student_taps,
        "hidden" in need,
        "qk" in need,
        output="output" in need,
    )
    terms = loss_terms(spec.loss, mb, student, teacher, trainable.get("projector"))
    return weighted_loss(spec.loss, means(terms, counts)), terms


def split_microbatches(batch: dict, m: int) -> dict:
    """[B, ...] -> [m, B/m, ...]; microbatch j holds rows j, j+m, ... (keeps the row sharding)."""

    def split(x):
        b = x.shape[0]
        y = jnp.swapaxes(x.reshape(b // m, m, *x.shape[1:]), 0, 1)
        spec = logical_to_spec((None, "batch") + (None,) * (x.ndim - 1))
        return lax.with_sharding_constraint(y, spec)

    return {k: split(batch[k]) for k in batch}


def train_step(
    spec: StepSpec,
    tx: optax.GradientTransformation,
    schedule,
    state: TrainState,
    frozen: dict,
    batch: dict,
) -> tuple[TrainState, dict]:
    counts = normalisers(batch)
    grad_fn = jax.value_and_grad(
        lambda p, mb, t: microbatch_loss(spec, p, frozen, mb, t, counts), has_aux=True
    )

    def one(mb):
        teacher = teacher_features(spec, frozen.get("teacher"), mb)
        (_, terms), grads = grad_fn(state.params, mb, teacher)
        return grads, terms

    batch = {k: batch[k] for k in spec.batch_keys}
    if spec.microbatches == 1:
        grads, terms = one(batch)
    else:
        mbs = split_microbatches(batch, spec.microbatches)
        first = jax.tree.map(lambda x: x[0], mbs)
        shapes = jax.eval_shape(one, first)
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

        def body(acc, mb):
            return jax.tree.map(jnp.add, acc, one(mb)), None

        (grads, terms), _ = lax.scan(body, zeros, mbs)
    metrics = metric_values(spec.loss, terms, counts)  # accumulated sums / counts, divided once
    metrics["grad_norm"] = optax.tree.norm(grads)
    metrics["learning_rate"] = schedule(state.step)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return TrainState(state.step + 1, params, opt_state, state.rng), metrics


def eval_terms(spec: StepSpec, trainable: dict, frozen: dict, batch: dict) -> tuple:
    """The student's next-token cross-entropy on `batch` as (NLL sum, loss_mask tokens): the
    training CE term itself (`loss_terms`), whatever the run's loss weights; microbatched like
    the step, so it needs no more memory than a training step."""
    ce_only = dataclasses.replace(spec.loss, weights=LossWeights(1.0, 0.0, 0.0, 0.0), terms={})
    params = student_params(spec, trainable, frozen)

    def one(mb):
        student = _features(spec.student, params, mb, (), False, False, output=True)
        return loss_terms(ce_only, mb, student, Features())["ce"]

    batch = {k: batch[k] for k in BATCH_KEYS}
    if spec.microbatches == 1:
        return one(batch)
    sums = lax.map(one, split_microbatches(batch, spec.microbatches))
    return jax.tree.map(jnp.sum, sums)


class CompiledEval:
    """`eval_terms` jitted on `mesh` with the step's shardings (params as trained, rows over
    (data, fsdp)); nothing donated. Returns (sum, count) replicated."""

    def __init__(self, spec: StepSpec, mesh, params_sh: dict, frozen_sh: dict):
        self.mesh = mesh
        self._jit = jax.jit(
            lambda params, frozen, batch: eval_terms(spec, params, frozen, batch),
            in_shardings=(params_sh, frozen_sh, dict.fromkeys(BATCH_KEYS, batch_sharding(mesh))),
            out_shardings=replicated(mesh),
        )

    def __call__(self, params, frozen, batch):
        with jax.set_mesh(self.mesh), axis_rules_context():
            return self._jit(params, frozen, {k: batch[k] for k in BATCH_KEYS})


class CompiledStep:
    """`train_step` jitted on `mesh` with explicit shardings; compiled on the first call (under
    the mesh and the logical-axis rules), then reused. Donates the state argument."""

    def __init__(self, spec: StepSpec, tx, schedule, mesh, state_sh: TrainState, frozen_sh: dict):
        self.mesh = mesh
        bsh = batch_sharding(mesh)
        self._jit = jax.jit(
            lambda state, frozen, batch: train_step(spec, tx, schedule, state, frozen, batch),
            in_shardings=(state_sh, frozen_sh, dict.fromkeys(spec.batch_keys, bsh)),
            out_shardings=(state_sh, replicated(mesh)),
            donate_argnums=(0,),
        )
        self._compiled: Any = None
        self.keys = spec.batch_keys

    def lower(self, state, frozen, batch):
        with jax.set_mesh(self.mesh), axis_rules_context():
            return self._jit.lower(state, frozen, {k: batch[k] for k in self.keys})

    def __call__(self, state, frozen, batch):
        batch = {k: batch[k] for k in self.keys}
        if self._compiled is None:
            self._compiled = self.lower(state, frozen, batch).compile()
        return self._compiled(state, frozen, batch)
