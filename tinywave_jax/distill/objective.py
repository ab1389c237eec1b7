"""The distillation objective: `DistillLossConfig` (the `distill:` config section), the active
terms and how they combine. The terms themselves are declared once, in terms.py.

total = w_ce * CE + w_logit_kl * T^2 KL_T(teacher || student) + w_hidden * mean_layers(hidden)
        + w_attention * mean_layers(attention KL) + sum over `distill.terms` of w_name * name
Every term is a (sum, count) pair over the tokens it averages (`loss_terms`): CE and the logit KL
over `loss_mask` tokens; the hidden loss and the attention KL (a mean over heads/groups per query
row) over valid (segment != 0) tokens. Each metric's normaliser and weight is declared with its
term (terms.py); a name not declared there fails loudly. The train step sums terms over
microbatches and divides once. A term with weight 0 is not computed at all, and its inputs need
not be given.

Defaults where the TinyWave paper is silent (all configurable): every weight 1.0, temperature 2.0
(Hinton et al.'s usual choice; the KL is scaled by T^2 so its gradient scale does not depend on T),
cosine hidden loss (the paper's), heads compared in groups, attention tiles of 256 x 256, logit
chunks of 256 tokens, the "uniform" layer map (TinyWave's own is the "tinywave" preset).
"""

from __future__ import annotations

import dataclasses
from typing import Literal, Mapping, Optional, Union

import jax
import jax.numpy as jnp

from ..errors import ConfigError
from .layer_map import check_layer_map_spec
from .terms import PAPER_TERMS, TERMS, Features, Metric, TermInputs, TermSum, declared_metrics


@dataclasses.dataclass(frozen=True)
class LossWeights:
    ce: float = 1.0  # cross-entropy on the ground-truth next token
    logit_kl: float = 1.0  # T^2 * KL(teacher_T || student_T) on the output distribution
    hidden: float = 1.0  # hidden-state alignment at mapped layer pairs
    attention: float = 1.0  # attention-map KL at mapped layer pairs


@dataclasses.dataclass(frozen=True)
class DistillLossConfig:
    """The `distill:` section. Keys are named `distill.<field>` in errors."""

    weights: LossWeights = dataclasses.field(default_factory=LossWeights)
    temperature: float = 2.0
    hidden_loss: Literal["cosine", "mse"] = "cosine"
    attention_heads: Literal["grouped", "mean"] = "grouped"  # see attention_kl.py
    attention_block_size: int = 256
    attention_scale: Optional[float] = None  # None: head_dim ** -0.5 (each model its own)
    logit_chunk_size: Optional[int] = 256  # None: unchunked (full [B, T, V] logits)
    layer_map: Union[str, tuple[int, ...]] = "uniform"  # "uniform", "tinywave" or a list
    init_layers: Union[str, tuple[int, ...]] = "mapped"  # teacher layers the student copies
    # weights of further registered terms (terms.py), by name: e.g. {topk_kl: 1.0}
    terms: dict[str, float] = dataclasses.field(default_factory=dict)
    top_k: int = 64  # the teacher's support size for topk_kl (online; a cache fixes its own)

    def weight(self, name: str) -> float:
        """The weight of term `name`: a `weights` field (the paper's terms) or a `terms` entry."""
        if name in PAPER_TERMS:
            return getattr(self.weights, name)
        return float(self.terms.get(name, 0.0))

    def active_terms(self) -> tuple[str, ...]:
        """The terms with weight > 0, in registry order."""
        return tuple(n for n in TERMS if self.weight(n) > 0)

    def needs(self, who: str) -> frozenset:
        """The features ("output", "hidden", "qk", "topk") the active terms need from `who`
        ("student" or "teacher")."""
        attr = "needs_student" if who == "student" else "needs_teacher"
        return frozenset().union(*(getattr(TERMS[n], attr) for n in self.active_terms()))

    def validate(self):
        for name in (f.name for f in dataclasses.fields(LossWeights)):
            if getattr(self.weights, name) < 0:
                raise ConfigError(
                    f"distill.weights.{name}: must be >= 0, got {getattr(self.weights, name)}"
                )
        if not self.temperature > 0:
            raise ConfigError(f"distill.temperature: must be > 0, got {self.temperature}")
        if self.attention_block_size < 1:
            raise ConfigError(
                f"distill.attention_block_size: must be >= 1, got {self.attention_block_size}"
            )
        if self.attention_scale is not None and not self.attention_scale > 0:
            raise ConfigError(
                f"distill.attention_scale: must be > 0 or null, got {self.attention_scale}"
            )
        if self.logit_chunk_size is not None and self.logit_chunk_size < 1:
            raise ConfigError(
                f"distill.logit_chunk_size: must be >= 1 or null, got {self.logit_chunk_size}"
            )
        check_layer_map_spec(self.layer_map, "distill.layer_map")
        if isinstance(self.init_layers, str):
            if self.init_layers != "mapped":
                raise ConfigError(
                    f"distill.init_layers: {self.init_layers!r} is not 'mapped' "
                    "or a list of teacher layers"
                )
        else:
            check_layer_map_spec(self.init_layers, "distill.init_layers")
        for name, w in self.terms.items():
            if name in PAPER_TERMS:
                raise ConfigError(f"distill.terms.{name}: set distill.weights.{name} instead")
            if name not in TERMS:
                raise ConfigError(
                    f"distill.terms.{name}: no loss term of that name is registered "
                    f"(registered: {sorted(n for n in TERMS if n not in PAPER_TERMS)}; a "
                    "user's term is registered from Python: tinywave_jax.distill.register_term)"
                )
            if isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0:
                raise ConfigError(f"distill.terms.{name}: weight must be a number >= 0, got {w!r}")
        if self.top_k < 1:
            raise ConfigError(f"distill.top_k: must be >= 1, got {self.top_k}")
        if not self.active_terms():
            raise ConfigError("distill.weights: all weights are 0; nothing to train on")


# the metrics of the paper's four terms (what a default config computes; "ce" as the ce term
# declares it); every registered term's: terms.declared_metrics()
METRICS: dict[str, Metric] = {}
for _name in PAPER_TERMS:
    for _metric, _decl in TERMS[_name].metrics.items():
        METRICS.setdefault(_metric, _decl)


def normalisers(batch: Mapping) -> dict:
    """The token counts the metrics are averaged over (float32 scalars): `loss_mask` tokens and
    non-padding (segment != 0) tokens. They depend on the batch only, never on the params."""
    return {
        "loss_tokens": jnp.sum(batch["loss_mask"].astype(jnp.float32)),
        "valid_tokens": jnp.sum((batch["segment_ids"] != 0).astype(jnp.float32)),
    }


def _declared(name: str) -> Metric:
    declared = declared_metrics()
    if name not in declared:
        raise KeyError(
            f"objective: metric {name!r} is not declared by any registered term "
            f"({sorted(declared)}); declare its normaliser and weight with its term (terms.py)"
        )
    return declared[name]


# ---- terms: (sum, count) over the tokens each averages ------------------------------------------
Terms = dict[str, TermSum]  # metric name -> its (sum, count)


def loss_terms(
    cfg: DistillLossConfig,
    batch: Mapping,
    student: Features | Mapping,
    teacher: Features | Mapping,
    projector: Optional[Mapping] = None,
) -> Terms:
    """Every term with weight > 0 (and the metrics computed alongside) as a `TermSum`.

    batch: "targets" [B, T], "loss_mask" [B, T], "segment_ids" [B, T].
    student / teacher: `Features` (or a mapping of its field names), each field needed only
    when its term's weight is > 0:
      "final_hidden" [B, T, D] post-norm, "head_kernel" [D, V]   (ce, logit_kl; ce needs student only)
      "hidden": per mapped pair [B, T, D]                          (hidden)
      "q": per mapped pair [B, T, H, hd], "k": [B, T, KVH, hd]     (attention)
      teacher "topk_ids", "topk_logprobs" [B, T, k]                 (topk_kl)
    Per-pair features are lists in layer-map
    order (entry i of the student list is aligned to entry i of the teacher list) or arrays
    stacked on a leading pair axis.
    projector: {"kernel": [P, D_s, D_t]} from `init_hidden_projector`, required when widths differ.
    """
    inputs = TermInputs(cfg, batch, Features.of(student), Features.of(teacher), projector)
    active = cfg.active_terms()
    terms: Terms = {}
    for name in active:
        t = TERMS[name]
        if any(c in active for c in t.covered_by):
            continue  # an active term's pass reports this one's metrics already
        for metric, value in t.fn(inputs).items():
            if metric not in t.metrics:
                raise KeyError(f"term {name!r} returned undeclared metric {metric!r}")
            terms.setdefault(metric, TermSum(*value))  # "ce" from the first pass reporting it
    return terms


# ---- combining terms ------------------------------------------------------------------------------
def means(terms: Terms, counts: Optional[Mapping] = None) -> dict:
    """name -> sum / count. With `counts` (from `normalisers`), every term is divided by its declared
    normaliser instead of its own count: a microbatch's means over the FULL batch's counts sum, over
    microbatches, to the full batch's means exactly (the step's gradient accumulation)."""
    out = {}
    for name, (total, count) in terms.items():
        if counts is not None:
            count = counts[_declared(name).normaliser]
        out[name] = total / jnp.maximum(count, 1.0)
    return out


def weighted_loss(cfg: DistillLossConfig, term_means: Mapping) -> jax.Array:
    """sum over weighted terms of weight * mean (a per-layer term: the mean over its layers)."""
    total = jnp.zeros((), jnp.float32)
    for name, value in term_means.items():
        metric = _declared(name)
        if metric.weight is not None:
            total += cfg.weight(metric.weight) * jnp.mean(value)
    return total


def metric_values(cfg: DistillLossConfig, terms: Terms, counts: Mapping) -> dict:
    """The flat metrics of `terms` (each divided once by its own accumulated count): every term,
    per-layer ones also as "<name>/<i>", "num_tokens" (loss_mask tokens) and "loss"."""
    term_means = means(terms)
    out = {}
    for name, value in term_means.items():
        if _declared(name).per_layer:
            out.update({f"{name}/{i}": value[i] for i in range(value.shape[0])})
        out[name] = jnp.mean(value)
    out["num_tokens"] = counts["loss_tokens"]
    out["loss"] = weighted_loss(cfg, term_means)
    return out


def distill_loss(
    cfg: DistillLossConfig,
    batch: Mapping,
    student: Features | Mapping,
    teacher: Features | Mapping,
    projector: Optional[Mapping] = None,
) -> tuple[jax.Array, dict]:
    """The weighted loss of one batch and its metrics (`loss_terms` for the arguments): total =
    sum over weighted terms of weight * mean, metrics as `metric_values`."""
    terms = loss_terms(cfg, batch, student, teacher, projector)
    metrics = metric_values(cfg, terms, normalisers(batch))
    return metrics["loss"], metrics
