"""The distillation objective: `DistillLossConfig` (the `distill:` config section) and `distill_loss`.

total = w_ce * CE + w_logit_kl * T^2 KL_T(teacher || student) + w_hidden * mean_layers(hidden)
        + w_attention * mean_layers(attention KL)
CE and the logit KL are means over `loss_mask` tokens; the hidden loss over valid (segment != 0)
tokens; the attention KL over heads (groups) and valid query rows. A term with weight 0 is not
computed at all, and its inputs need not be given.

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
    ce: float = 1.0          # cross-entropy on the ground-truth next token
    logit_kl: float = 1.0    # T^2 * KL(teacher_T || student_T) on the output distribution
    hidden: float = 1.0      # hidden-state alignment at mapped layer pairs
    attention: float = 1.0   # attention-map KL at mapped layer pairs


@dataclasses.dataclass(frozen=True)
class DistillLossConfig:
    """The `distill:` section. Keys are named `distill.<field>` in errors."""
    weights: LossWeights = dataclasses.field(default_factory=LossWeights)
    temperature: float = 2.0
    hidden_loss: Literal["cosine", "mse"] = "cosine"
    attention_heads: Literal["grouped", "mean"] = "grouped"  # see attention_kl.py
    attention_block_size: int = 256
    attention_scale: Optional[float] = None   # None: head_dim ** -0.5 (each model its own)
    logit_chunk_size: Optional[int] = 256     # None: unchunked (full [B, T, V] logits)
    layer_map: Union[str, tuple[int, ...]] = "uniform"   # "uniform", "tinywave" or a list
    init_layers: Union[str, tuple[int, ...]] = "mapped"  # teacher layers the student copies

    def validate(self):
        for name in ("ce", "logit_kl", "hidden", "attention"):
            if getattr(self.weights, name) < 0:
                raise ConfigError(f"distill.weights.{name}: must be >= 0, got "
                                  f"{getattr(self.weights, name)}")
        if not self.temperature > 0:
            raise ConfigError(f"distill.temperature: must be > 0, got {self.temperature}")
        if self.attention_block_size < 1:
            raise ConfigError(f"distill.attention_block_size: must be >= 1, got "
                              f"{self.attention_block_size}")
        if self.attention_scale is not None and not self.attention_scale > 0:
            raise ConfigError(f"distill.attention_scale: must be > 0 or null, got "
                              f"{self.attention_scale}")
        if self.logit_chunk_size is not None and self.logit_chunk_size < 1:
            raise ConfigError(f"distill.logit_chunk_size: must be >= 1 or null, got "
                              f"{self.logit_chunk_size}")
        check_layer_map_spec(self.layer_map, "distill.layer_map")
        if isinstance(self.init_layers, str):
            if self.init_layers != "mapped":
                raise ConfigError(f"distill.init_layers: {self.init_layers!r} is not 'mapped' "
                                  "or a list of teacher layers")
        else:
            check_layer_map_spec(self.init_layers, "distill.init_layers")
        if not any(getattr(self.weights, n) > 0 for n in ("ce", "logit_kl", "hidden", "attention")):
            raise ConfigError("distill.weights: all weights are 0; nothing to train on")


def _need(features: Mapping, key: str, who: str, term: str):
    if key not in features or features[key] is None:
        raise KeyError(f"{who} features lack {key!r}, needed by the {term} term (its weight is > 0)")
    return features[key]


def _layers(x) -> list:
    """A list of per-layer arrays from a list/tuple, or an array stacked on a leading layer axis."""
    return list(x) if isinstance(x, (list, tuple)) else [x[i] for i in range(x.shape[0])]


def _aligned(student: Mapping, teacher: Mapping, key: str, term: str) -> list[tuple]:
    s = _layers(_need(student, key, "student", term))
    t = _layers(_need(teacher, key, "teacher", term))
    if len(s) != len(t):
        raise ValueError(f"{term}: {len(s)} student {key!r} layers vs {len(t)} teacher layers; "
                         "they must be given in layer-map order, one per mapped pair")
    return list(zip(s, t))


def distill_loss(cfg: DistillLossConfig, batch: Mapping, student: Mapping, teacher: Mapping,
                 projector: Optional[Mapping] = None) -> tuple[jax.Array, dict]:
    """Weighted distillation loss and its metrics.

    batch: "targets" [B, T], "loss_mask" [B, T], "segment_ids" [B, T].
    student / teacher features (each needed only when its term's weight is > 0):
      "final_hidden" [B, T, D] post-norm, "head_kernel" [D, V]   (ce, logit_kl; ce needs student only)
      "hidden": per mapped pair [B, T, D]                          (hidden)
      "q": per mapped pair [B, T, H, hd], "k": [B, T, KVH, hd]     (attention)
    Per-pair features are lists in layer-map order (entry i of the student list is aligned to
    entry i of the teacher list) or arrays stacked on a leading pair axis.
    projector: {"kernel": [P, D_s, D_t]} from `init_hidden_projector`, required when widths differ.
    Returns (total float32 scalar, metrics) with metrics for each computed term: "ce", "logit_kl",
    "kl_t1", "teacher_ce", "hidden", "attention_kl", per-layer "hidden/<i>", "attention_kl/<i>",
    "num_tokens" and "loss".
    """
    w = cfg.weights
    metrics: dict = {}
    total = jnp.zeros((), jnp.float32)
    if w.ce > 0 or w.logit_kl > 0:
        sh = _need(student, "final_hidden", "student", "ce/logit_kl")
        sk = _need(student, "head_kernel", "student", "ce/logit_kl")
        if w.logit_kl > 0:
            sums = chunked_logit_losses(
                sh, sk, _need(teacher, "final_hidden", "teacher", "logit_kl"),
                _need(teacher, "head_kernel", "teacher", "logit_kl"), batch["targets"],
                batch["loss_mask"], cfg.temperature, cfg.logit_chunk_size)
        else:
            sums = chunked_cross_entropy(sh, sk, batch["targets"], batch["loss_mask"],
                                         cfg.logit_chunk_size)
        n = jnp.maximum(sums["num_tokens"], 1.0)
        metrics.update({k: v / n for k, v in sums.items() if k != "num_tokens"})
        metrics["num_tokens"] = sums["num_tokens"]
        total += w.ce * metrics["ce"] + (w.logit_kl * metrics["logit_kl"] if w.logit_kl > 0 else 0)
    valid = batch["segment_ids"] != 0
    if w.hidden > 0:
        per_layer = []
        for i, (s, t) in enumerate(_aligned(student, teacher, "hidden", "hidden")):
            kernel = None
            if s.shape[-1] != t.shape[-1] or projector is not None:
                if projector is None:
                    raise ValueError(f"hidden: student width {s.shape[-1]} != teacher width "
                                     f"{t.shape[-1]}; pass projector=init_hidden_projector(...)")
                kernel = projector["kernel"][i]
            out = hidden_alignment(s, t, valid, cfg.hidden_loss, kernel)
            per_layer.append(out["sum"] / jnp.maximum(out["count"], 1.0))
            metrics[f"hidden/{i}"] = per_layer[-1]
        metrics["hidden"] = jnp.mean(jnp.stack(per_layer))
        total += w.hidden * metrics["hidden"]
    if w.attention > 0:
        qs = _aligned(student, teacher, "q", "attention")
        ks = _aligned(student, teacher, "k", "attention")
        per_layer = []
        for i, ((sq, tq), (sk, tk)) in enumerate(zip(qs, ks)):
            out = attention_kl(sq, sk, tq, tk, batch["segment_ids"],
                               block_size=cfg.attention_block_size, heads=cfg.attention_heads,
                               student_scale=cfg.attention_scale, teacher_scale=cfg.attention_scale)
            per_layer.append(out["sum"] / jnp.maximum(out["count"], 1.0))
            metrics[f"attention_kl/{i}"] = per_layer[-1]
        metrics["attention_kl"] = jnp.mean(jnp.stack(per_layer))
        total += w.attention * metrics["attention_kl"]
    metrics["loss"] = total
    return total, metrics
