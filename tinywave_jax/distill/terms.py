"""The declared loss terms: each term once, with what it needs and how it computes.

A `Term` names its weight (a `distill.weights` field for the paper's four terms, a
`distill.terms.<name>` entry for every other registered term), the metrics it reports (each with
its normaliser, `Metric`), the features it needs from the student and the teacher, and a pure
function `fn(ctx) -> {metric: (sum, count)}`. At the seams the records are typed: each model's
features are a `Features` (the train step builds them; a mapping of the same names is converted),
each metric's pair a `TermSum(total, tokens)`. Everything else derives from the active terms
(weight > 0): which features the step taps, whether and how far the teacher runs, which teacher
outputs a cache must hold, the FLOPs counted, the progress line.

Features (`needs_student` / `needs_teacher`):
    "output"  final post-norm hidden [B, T, D] and LM-head kernel [D, V] ("final_hidden",
              "head_kernel"): the model runs to its last layer and its head counts
    "hidden"  hidden states at the layer map's tapped pairs ("hidden")
    "qk"      post-RoPE queries and keys at the tapped pairs ("q", "k")
    "topk"    teacher only: its top-k next-token ids and log-probs at T = 1 ("topk_ids",
              "topk_logprobs" [B, T, k]), from the online teacher's head or from a teacher cache

A user's own term: `register_term(Term(...))` from Python before the config is loaded, then
`distill.terms: {my_term: 0.5}` selects it (tests/test_terms.py adds one).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Final, Literal, Mapping, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp

from .attention_kl import attention_kl
from .losses import (
    chunked_cross_entropy,
    chunked_logit_losses,
    chunked_topk_losses,
    hidden_alignment,
)

FEATURES = frozenset({"output", "hidden", "qk", "topk"})


@dataclasses.dataclass(frozen=True)
class Metric:
    """One quantity the objective reports: the tokens it is averaged over and the term whose
    weight puts it in the loss; `weight=None` is reported only."""

    normaliser: Literal["loss_tokens", "valid_tokens"]
    weight: Optional[str] = None
    per_layer: bool = False  # one value per mapped layer pair; the term is their mean


PerPair = Union[jax.Array, list, tuple]  # per mapped layer pair: a list, or stacked on axis 0


class Features(NamedTuple):
    """What one model hands the loss terms: each field None unless an active term needs it (the
    feature names above). A pytree, so it passes jit, `lax.stop_gradient` and scans as is."""

    final_hidden: Optional[jax.Array] = None  # "output": [B, T, D] after the final norm
    head_kernel: Optional[jax.Array] = None  # "output": [D, V], logits = final_hidden @ it
    hidden: Optional[PerPair] = None  # "hidden": [B, T, D] per mapped pair
    q: Optional[PerPair] = None  # "qk": post-RoPE queries [B, T, H, hd] per mapped pair
    k: Optional[PerPair] = None  # "qk": post-RoPE keys [B, T, KVH, hd] per mapped pair
    topk_ids: Optional[jax.Array] = None  # "topk", teacher only: [B, T, k] ids
    topk_logprobs: Optional[jax.Array] = None  # "topk", teacher only: [B, T, k] log-probs

    @classmethod
    def of(cls, feats: "Features | Mapping | None") -> "Features":
        """`feats` as a Features: a mapping's keys must be field names (a typo fails naming it)."""
        if isinstance(feats, Features):
            return feats
        feats = dict(feats or {})
        unknown = sorted(set(feats) - set(cls._fields))
        if unknown:
            raise KeyError(f"unknown features {unknown}; features are {list(cls._fields)}")
        return cls(**feats)


class TermSum(NamedTuple):
    """One metric of a batch as the exact (sum, count) pair the train step accumulates: the sum
    over the tokens it averages and their count, float32 scalars or [pairs] arrays for a
    per-layer metric."""

    total: jax.Array
    tokens: jax.Array


@dataclasses.dataclass(frozen=True)
class TermInputs:
    """What a term's function gets: the `distill:` config, the batch (targets, loss_mask,
    segment_ids), the student's and teacher's features (only those some active term needs) and
    the width projector ({"kernel": [P, D_s, D_t]} or None)."""

    cfg: Any  # objective.DistillLossConfig
    batch: Mapping
    student: Features
    teacher: Features
    projector: Optional[Mapping] = None

    def need(self, who: str, key: str, term: str):
        feats = self.student if who == "student" else self.teacher
        if key not in Features._fields:
            raise KeyError(f"{term}: no feature named {key!r}; features are {Features._fields}")
        value = getattr(feats, key)
        if value is None:
            raise KeyError(
                f"{who} features lack {key!r}, needed by the {term} term (its weight is > 0)"
            )
        return value

    def aligned(self, key: str, term: str) -> list[tuple]:
        """(student, teacher) per mapped pair of per-pair feature `key`."""
        s = _layers(self.need("student", key, term))
        t = _layers(self.need("teacher", key, term))
        if len(s) != len(t):
            raise ValueError(
                f"{term}: {len(s)} student {key!r} layers vs {len(t)} teacher layers; "
                "they must be given in layer-map order, one per mapped pair"
            )
        return list(zip(s, t))


@dataclasses.dataclass(frozen=True)
class Term:
    name: str  # also its weight's name
    fn: Callable[[TermInputs], Mapping]  # -> {metric: TermSum or (sum, count)}, as declared
    metrics: Mapping[str, Metric]
    needs_student: frozenset = frozenset()
    needs_teacher: frozenset = frozenset()
    # terms whose pass already reports this term's metrics: then this one is not computed again
    covered_by: tuple = ()

    def __post_init__(self):
        bad = (set(self.needs_student) - (FEATURES - {"topk"})) | (
            set(self.needs_teacher) - FEATURES
        )
        if bad:
            raise ValueError(f"term {self.name!r}: unknown features {sorted(bad)}")
        if not any(m.weight == self.name for m in self.metrics.values()):
            raise ValueError(f"term {self.name!r}: no metric weighted by it")


def _layers(x) -> list:
    """A list of per-layer arrays from a list/tuple, or an array stacked on a leading layer axis."""
    return list(x) if isinstance(x, (list, tuple)) else [x[i] for i in range(x.shape[0])]


def _stack(per_layer: list[dict]) -> TermSum:
    return TermSum(
        jnp.stack([o["sum"] for o in per_layer]), jnp.stack([o["count"] for o in per_layer])
    )


def _pairs(sums: dict) -> dict[str, TermSum]:
    count = sums.pop("num_tokens")
    return {k: TermSum(v, count) for k, v in sums.items()}


# ---- the paper's four terms (weights: distill.weights.<name>) -----------------------------------
def _ce(x: TermInputs) -> dict[str, TermSum]:
    b = x.batch
    return _pairs(
        chunked_cross_entropy(
            x.need("student", "final_hidden", "ce"),
            x.need("student", "head_kernel", "ce"),
            b["targets"],
            b["loss_mask"],
            x.cfg.logit_chunk_size,
        )
    )


def _logit_kl(x: TermInputs) -> dict[str, TermSum]:
    b = x.batch
    return _pairs(
        chunked_logit_losses(
            x.need("student", "final_hidden", "logit_kl"),
            x.need("student", "head_kernel", "logit_kl"),
            x.need("teacher", "final_hidden", "logit_kl"),
            x.need("teacher", "head_kernel", "logit_kl"),
            b["targets"],
            b["loss_mask"],
            x.cfg.temperature,
            x.cfg.logit_chunk_size,
        )
    )


def _hidden(x: TermInputs) -> dict[str, TermSum]:
    valid = x.batch["segment_ids"] != 0
    per_layer = []
    for i, (s, t) in enumerate(x.aligned("hidden", "hidden")):
        kernel = None
        if s.shape[-1] != t.shape[-1] or x.projector is not None:
            if x.projector is None:
                raise ValueError(
                    f"hidden: student width {s.shape[-1]} != teacher width "
                    f"{t.shape[-1]}; pass projector=init_hidden_projector(...)"
                )
            kernel = x.projector["kernel"][i]
        per_layer.append(hidden_alignment(s, t, valid, x.cfg.hidden_loss, kernel))
    return {"hidden": _stack(per_layer)}


def _attention(x: TermInputs) -> dict[str, TermSum]:
    c = x.cfg
    qs, ks = x.aligned("q", "attention"), x.aligned("k", "attention")
    return {
        "attention_kl": _stack(
            [
                attention_kl(
                    sq,
                    sk,
                    tq,
                    tk,
                    x.batch["segment_ids"],
                    block_size=c.attention_block_size,
                    heads=c.attention_heads,
                    student_scale=c.attention_scale,
                    teacher_scale=c.attention_scale,
                )
                for (sq, tq), (sk, tk) in zip(qs, ks)
            ]
        )
    }


def _topk_kl(x: TermInputs) -> dict[str, TermSum]:
    b = x.batch
    return _pairs(
        chunked_topk_losses(
            x.need("student", "final_hidden", "topk_kl"),
            x.need("student", "head_kernel", "topk_kl"),
            x.need("teacher", "topk_ids", "topk_kl"),
            x.need("teacher", "topk_logprobs", "topk_kl"),
            b["targets"],
            b["loss_mask"],
            x.cfg.temperature,
            x.cfg.logit_chunk_size,
        )
    )


_OUT, _HID, _QK, _TOPK = (frozenset({f}) for f in ("output", "hidden", "qk", "topk"))
LOSS: Final = "loss_tokens"
VALID: Final = "valid_tokens"

TERMS: dict[str, Term] = {}  # registry order = computing order = metric order


def register_term(term: Term, replace: bool = False) -> Term:
    """Adds `term` to the registry (selectable as `distill.terms.<name>: weight`). A name taken
    by another term, or a metric another term declares, is refused unless `replace`."""
    if not replace:
        if term.name in TERMS:
            raise ValueError(f"a loss term named {term.name!r} is registered already")
        taken = {m for t in TERMS.values() for m in t.metrics} & set(term.metrics)
        if taken:
            raise ValueError(f"term {term.name!r}: metrics {sorted(taken)} are declared already")
    TERMS[term.name] = term
    return term


def unregister_term(name: str) -> None:
    TERMS.pop(name, None)


# the paper's objective: its weights are the `distill.weights` fields (objective.LossWeights)
PAPER_TERMS = ("ce", "logit_kl", "hidden", "attention")
for _t in (
    Term("ce", _ce, {"ce": Metric(LOSS, "ce")}, _OUT, covered_by=("logit_kl", "topk_kl")),
    Term(
        "logit_kl",
        _logit_kl,
        {
            "ce": Metric(LOSS, "ce"),
            "logit_kl": Metric(LOSS, "logit_kl"),
            "kl_t1": Metric(LOSS),  # KL at T = 1: the unsoftened student-teacher gap
            "teacher_ce": Metric(LOSS),  # the teacher's own CE on the same tokens
        },
        _OUT,
        _OUT,
    ),
    Term("hidden", _hidden, {"hidden": Metric(VALID, "hidden", per_layer=True)}, _HID, _HID),
    Term(
        "attention",
        _attention,
        {"attention_kl": Metric(VALID, "attention", per_layer=True)},
        _QK,
        _QK,
    ),
    # KL over the teacher's top-k support, both sides renormalised over it (MaxText's sparse
    # KL); online from the teacher's head, offline from a teacher cache (distill/teacher_cache.py)
    Term(
        "topk_kl",
        _topk_kl,
        {"ce": Metric(LOSS, "ce"), "topk_kl": Metric(LOSS, "topk_kl")},
        _OUT,
        _TOPK,
    ),
):
    # "ce" is reported by three passes: declared once per pass, one metric
    TERMS[_t.name] = _t


def declared_metrics() -> dict[str, Metric]:
    """metric name -> its declaration, over every registered term."""
    out: dict[str, Metric] = {}
    for t in TERMS.values():
        for name, m in t.metrics.items():
            out.setdefault(name, m)
    return out


def term(name: str) -> Term:
    if name not in TERMS:
        raise KeyError(f"no loss term named {name!r} is registered (registered: {sorted(TERMS)})")
    return TERMS[name]


def weighted_metric_names() -> list[str]:
    """The metrics that enter the loss, in registry order (the progress line shows them)."""
    return [n for n, m in declared_metrics().items() if m.weight is not None]
