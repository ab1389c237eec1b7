"""Pairwise-likelihood accuracy: a pair counts 1 when the positive scores higher than the
negative, 0.5 on an exact tie, 0 otherwise; accuracy is the mean over pairs (overall and per
group).

A sequence's score is its mean (default, as the reference scorers: -mean NLL per scored token)
or summed log-likelihood over the scored tokens (see `Seq.score_from`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..jsonl import iter_jsonl
from ..scoring import score_sequences
from .sequences import Seq, checked_seq

SCORINGS = ("mean", "sum")


@dataclasses.dataclass
class PairItem:
    positive: Seq
    negative: Seq
    group: str = ""
    name: str = ""


def sequence_score(logprobs: np.ndarray, score_from: int, scoring: str) -> float:
    """logprobs[t-1] = log p(ids[t] | ids[:t]); scores tokens score_from.. in float64."""
    scored = np.asarray(logprobs, np.float64)[score_from - 1 :]
    if scoring == "mean":
        return float(scored.mean())
    if scoring == "sum":
        return float(scored.sum())
    raise ValueError(f"scoring {scoring!r} is not one of {SCORINGS}")


def pair_outcome(positive: float, negative: float) -> float:
    return 1.0 if positive > negative else 0.5 if positive == negative else 0.0


def read_pairs_jsonl(path: str | Path) -> list[PairItem]:
    """Lines {"positive": [ids], "negative": [ids], "group": "..."?, "score_from": int?}."""
    items = []
    for where, rec in iter_jsonl(path, "pairs file"):
        if "positive" not in rec or "negative" not in rec:
            raise InputError(f"{where}: expected an object with 'positive' and 'negative' id lists")
        start = rec.get("score_from", 1)
        items.append(
            PairItem(
                checked_seq(rec["positive"], f"{where} positive", start),
                checked_seq(rec["negative"], f"{where} negative", start),
                str(rec.get("group", "")),
                where,
            )
        )
    if not items:
        raise InputError(f"{path}: no pairs")
    return items


def check_vocab(seqs: list[Seq], vocab_size: int, max_len: int) -> None:
    """Fails naming the sequence (file:line or audio file) and its out-of-range ids / length."""
    for s in seqs:
        bad = s.ids[(s.ids < 0) | (s.ids >= vocab_size)]
        if bad.size:
            raise InputError(
                f"{s.name}: ids outside the model's vocabulary [0, {vocab_size}): "
                f"{sorted(set(bad.tolist()))[:10]}"
            )
        if len(s.ids) > max_len:
            raise InputError(
                f"{s.name}: {len(s.ids)} tokens, longer than the model's "
                f"max_position_embeddings ({max_len})"
            )


def score_seqs(
    params,
    config,
    seqs: list[Seq],
    scoring: str,
    batch_size: int = 8,
    progress: bool = False,
    mesh=None,
) -> np.ndarray:
    """Scores (float64) of `seqs`, each scored once, batched by length bucket; `mesh`: split
    over its devices (`scoring.score_sequences`)."""

    check_vocab(seqs, config.vocab_size, config.max_position_embeddings)
    lps = score_sequences(
        params, config, [s.ids.tolist() for s in seqs], batch_size, progress, mesh=mesh
    )
    return np.array([sequence_score(lp, s.score_from, scoring) for lp, s in zip(lps, seqs)])


def pairwise_accuracy(
    params,
    config,
    items: list[PairItem],
    scoring: str = "mean",
    batch_size: int = 8,
    progress: bool = False,
    mesh=None,
) -> dict:
    """{"accuracy", "n_pairs", "groups": {group: {"accuracy", "n_pairs"}}, "pairs": [...]}.
    Accuracies are fractions in [0, 1]. mesh: None (one device) or a mesh to split the
    sequences over (`scoring.scoring_mesh`)."""
    if scoring not in SCORINGS:
        raise ValueError(f"scoring {scoring!r} is not one of {SCORINGS}")
    seqs = [s for it in items for s in (it.positive, it.negative)]
    scores = score_seqs(params, config, seqs, scoring, batch_size, progress, mesh)
    pos, neg = scores[0::2], scores[1::2]
    outcomes = np.array([pair_outcome(p, n) for p, n in zip(pos, neg)])
    groups: dict[str, list[float]] = {}
    for it, o in zip(items, outcomes):
        groups.setdefault(it.group, []).append(o)
    return {
        "accuracy": float(outcomes.mean()),
        "n_pairs": len(items),
        "groups": {
            g: {"accuracy": float(np.mean(v)), "n_pairs": len(v)}
            for g, v in sorted(groups.items())
            if g
        },
        "pairs": [
            {
                "name": it.name or f"{it.positive.name} | {it.negative.name}",
                "group": it.group,
                "positive": float(p),
                "negative": float(n),
                "outcome": float(o),
            }
            for it, p, n, o in zip(items, pos, neg, outcomes)
        ],
    }
