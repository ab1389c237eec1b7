"""The distillation objective: `DistillLossConfig` (the `distill:` config section), the declared
metrics (`METRICS`) and how terms combine.

total = w_ce * CE + w_logit_kl * T^2 KL_T(teacher || student) + w_hidden * mean_layers(hidden)
        + w_attention * mean_layers(attention KL)
Every term is a (sum, count) pair over the tokens it averages (`loss_terms`): CE and the logit KL
over `loss_mask` tokens; the hidden loss and the attention KL (a mean over heads/groups per query
row) over valid (segment != 0) tokens. `METRICS` declares each name's normaliser and weight, in
one place; a term not declared there fails loudly. The train step sums terms over microbatches
and divides once. A term with weight 0 is not computed at all, and its inputs need not be given.

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

from ..config import ConfigError
from .attention_kl import attention_kl
from .layer_map import check_layer_map_spec
from .losses import chunked_cross_entropy, chunked_logit_losses, hidden_alignment


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
        if not any(getattr(self.weights, f.name) > 0 for f in dataclasses.fields(LossWeights)):
            raise ConfigError("distill.weights: all weights are 0; nothing to train on")


def _need(features: Mapping, key: str, who: str, term: str):
    if key not in features or features[key] is None:
        raise KeyError(
            f"{who} features lack {key!r}, needed by the {term} term (its weight is > 0)"
        )
    return features[key]


def _layers(x) -> list:
    """A list of per-layer arrays from a list/tuple, or an array stacked on a leading layer axis."""
    return list(x) if isinstance(x, (list, tuple)) else [x[i] for i in range(x.shape[0])]


def _aligned(student: Mapping, teacher: Mapping, key: str, term: str) -> list[tuple]:
    s = _layers(_need(student, key, "student", term))
    t = _layers(_need(teacher, key, "teacher", term))
    if len(s) != len(t):
        raise ValueError(
            f"{term}: {len(s)} student {key!r} layers vs {len(t)} teacher layers; "
            "they must be given in layer-map order, one per mapped pair"
        )
    return list(zip(s, t))


# ---- the one declaration of what the objective computes ----------------------------------------
@dataclasses.dataclass(frozen=True)
class Metric:
    """One quantity the objective reports: the tokens it is averaged over and the weight (a
    `LossWeights` field) that puts it in the loss; `weight=None` is reported only."""

    normaliser: Literal["loss_tokens", "valid_tokens"]
    weight: Optional[str] = None
    per_layer: bool = False  # one value per mapped layer pair; the term is their mean


METRICS: dict[str, Metric] = {
    "ce": Metric("loss_tokens", "ce"),
    "logit_kl": Metric("loss_tokens", "logit_kl"),
    "kl_t1": Metric("loss_tokens"),  # KL at T = 1: the unsoftened student-teacher gap
    "teacher_ce": Metric("loss_tokens"),  # the teacher's own CE on the same tokens
    "hidden": Metric("valid_tokens", "hidden", per_layer=True),
    "attention_kl": Metric("valid_tokens", "attention", per_layer=True),
}


def normalisers(batch: Mapping) -> dict:
    """The token counts the metrics are averaged over (float32 scalars): `loss_mask` tokens and
    non-padding (segment != 0) tokens. They depend on the batch only, never on the params."""
    return {
        "loss_tokens": jnp.sum(batch["loss_mask"].astype(jnp.float32)),
        "valid_tokens": jnp.sum((batch["segment_ids"] != 0).astype(jnp.float32)),
    }


def _declared(name: str) -> Metric:
    if name not in METRICS:
        raise KeyError(
            f"objective: metric {name!r} is not declared in distill/objective.py "
            f"METRICS ({sorted(METRICS)}); declare its normaliser and weight there"
        )
    return METRICS[name]


# ---- terms: (sum, count) over the tokens each averages ------------------------------------------
Terms = dict  # name -> (sum, count): float32 scalars, or [pairs] arrays for per-layer metrics


def loss_terms(
    cfg: DistillLossConfig,
    batch: Mapping,
    student: Mapping,
    teacher: Mapping,
    projector: Optional[Mapping] = None,
) -> Terms:
    """Every term with weight > 0 (and the metrics computed alongside) as (sum, count).

    batch: "targets" [B, T], "loss_mask" [B, T], "segment_ids" [B, T].
    student / teacher features (each needed only when its term's weight is > 0):
      "final_hidden" [B, T, D] post-norm, "head_kernel" [D, V]   (ce, logit_kl; ce needs student only)
      "hidden": per mapped pair [B, T, D]                          (hidden)
      "q": per mapped pair [B, T, H, hd], "k": [B, T, KVH, hd]     (attention)
    Per-pair features are lists in layer-map order (entry i of the student list is aligned to
    entry i of the teacher list) or arrays stacked on a leading pair axis.
    projector: {"kernel": [P, D_s, D_t]} from `init_hidden_projector`, required when widths differ.
    """
    w = cfg.weights
    terms: Terms = {}
    if w.ce > 0 or w.logit_kl > 0:
        sh = _need(student, "final_hidden", "student", "ce/logit_kl")
        sk = _need(student, "head_kernel", "student", "ce/logit_kl")
        if w.logit_kl > 0:
            sums = chunked_logit_losses(
                sh,
                sk,
                _need(teacher, "final_hidden", "teacher", "logit_kl"),
                _need(teacher, "head_kernel", "teacher", "logit_kl"),
                batch["targets"],
                batch["loss_mask"],
                cfg.temperature,
                cfg.logit_chunk_size,
            )
        else:
            sums = chunked_cross_entropy(
                sh, sk, batch["targets"], batch["loss_mask"], cfg.logit_chunk_size
            )
        count = sums.pop("num_tokens")
        terms.update({k: (v, count) for k, v in sums.items()})
    valid = batch["segment_ids"] != 0
    if w.hidden > 0:
        per_layer = []
        for i, (s, t) in enumerate(_aligned(student, teacher, "hidden", "hidden")):
            kernel = None
            if s.shape[-1] != t.shape[-1] or projector is not None:
                if projector is None:
                    raise ValueError(
                        f"hidden: student width {s.shape[-1]} != teacher width "
                        f"{t.shape[-1]}; pass projector=init_hidden_projector(...)"
                    )
                kernel = projector["kernel"][i]
            per_layer.append(hidden_alignment(s, t, valid, cfg.hidden_loss, kernel))
        terms["hidden"] = _stack(per_layer)
    if w.attention > 0:
        qs = _aligned(student, teacher, "q", "attention")
        ks = _aligned(student, teacher, "k", "attention")
        terms["attention_kl"] = _stack(
            [
                attention_kl(
                    sq,
                    sk,
                    tq,
                    tk,
                    batch["segment_ids"],
                    block_size=cfg.attention_block_size,
                    heads=cfg.attention_heads,
                    student_scale=cfg.attention_scale,
                    teacher_scale=cfg.attention_scale,
                )
                for (sq, tq), (sk, tk) in zip(qs, ks)
            ]
        )
    for name in terms:
        _declared(name)
    return terms


def _stack(per_layer: list[dict]) -> tuple:
    return (jnp.stack([o["sum"] for o in per_layer]), jnp.stack([o["count"] for o in per_layer]))


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
            total += getattr(cfg.weights, metric.weight) * jnp.mean(value)
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
    student: Mapping,
    teacher: Mapping,
    projector: Optional[Mapping] = None,
) -> tuple[jax.Array, dict]:
    """The weighted loss of one batch and its metrics (`loss_terms` for the arguments): total =
    sum over weighted terms of weight * mean, metrics as `metric_values`."""
    terms = loss_terms(cfg, batch, student, teacher, projector)
    metrics = metric_values(cfg, terms, normalisers(batch))
    return metrics["loss"], metrics
