"""Reference solvers for pairwise benchmarks: what a benchmark gives away without understanding.

A pair's two sequences share a prefix (the story, and its ending up to where the two endings
part); what follows is each sequence's *remainder*.

  copy    parameter-free, no model: each remainder scores the mean, over n = 1..4, of the
          fraction of its token n-grams that occur among the prefix's n-grams; the pair is
          won as usual (1, 0.5 on a tie, 0). A benchmark this rule passes rewards copying
          units from the context (a name the story mentioned, a repeated phrase).
  ending  the model scores each remainder alone (the sequence's own leading tokens, bos and
          the speech marker, then the remainder): what the endings give away without the story.

Both report in pairwise_accuracy's form, so tables and reports print them like model rows.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from .pairwise import PairItem, pair_outcome
from .sequences import Seq

REFERENCES = ("copy", "ending")
COPY_MAX_N = 4


def shared_prefix(a: np.ndarray, b: np.ndarray) -> int:
    """How many leading tokens the two sequences share."""
    n = min(len(a), len(b))
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if differ.size else n


def copy_score(prefix: np.ndarray, rest: np.ndarray, max_n: int = COPY_MAX_N) -> float:
    """Mean over n = 1..max_n of the share of `rest`'s n-grams found among `prefix`'s (an n with
    no n-gram in `rest` is left out; an empty `rest` scores 0)."""
    prefix, rest = [int(x) for x in prefix], [int(x) for x in rest]
    shares = []
    for n in range(1, max_n + 1):
        grams = [tuple(rest[i : i + n]) for i in range(len(rest) - n + 1)]
        if not grams:
            continue
        seen = {tuple(prefix[i : i + n]) for i in range(len(prefix) - n + 1)}
        shares.append(sum(g in seen for g in grams) / len(grams))
    return float(np.mean(shares)) if shares else 0.0


def _split(item: PairItem) -> tuple[int, np.ndarray, np.ndarray]:
    pos, neg = item.positive.ids, item.negative.ids
    start = max(shared_prefix(pos, neg), item.positive.score_from)
    return start, pos[start:], neg[start:]


def copy_rule_accuracy(items: list[PairItem]) -> dict:
    """The copy rule's result, in `pairwise_accuracy`'s form (scores are copy shares)."""
    rows, groups = [], {}
    for it in items:
        start, pos_rest, neg_rest = _split(it)
        prefix = it.positive.ids[it.positive.score_from : start]
        p, n = copy_score(prefix, pos_rest), copy_score(prefix, neg_rest)
        o = pair_outcome(p, n)
        groups.setdefault(it.group, []).append(o)
        rows.append(
            {
                "name": it.name or f"{it.positive.name} | {it.negative.name}",
                "group": it.group,
                "positive": p,
                "negative": n,
                "outcome": o,
            }
        )
    outcomes = np.array([r["outcome"] for r in rows])
    return {
        "accuracy": float(outcomes.mean()) if len(rows) else 0.0,
        "n_pairs": len(rows),
        "groups": {
            g: {"accuracy": float(np.mean(v)), "n_pairs": len(v)}
            for g, v in sorted(groups.items())
            if g
        },
        "pairs": rows,
    }


def ending_alone(items: list[PairItem]) -> list[PairItem]:
    """Each pair with its shared prefix cut out: the leading unscored tokens (bos, marker), then
    the remainder, all of it scored."""
    out = []
    for it in items:
        start, pos_rest, neg_rest = _split(it)
        head = it.positive.ids[: it.positive.score_from]
        seqs = []
        for seq, rest in ((it.positive, pos_rest), (it.negative, neg_rest)):
            if not len(rest):  # identical sequences: score the last token of each
                rest = seq.ids[-1:]
            seqs.append(Seq(np.concatenate([head, rest]), len(head), seq.name, None))
        out.append(PairItem(seqs[0], seqs[1], it.group, it.name))
    return out


def check_reference(reference: str | None, task: str, compare) -> None:
    if reference is None:
        return
    if reference not in REFERENCES:
        raise ConfigError(f"reference: {reference!r} is not one of {REFERENCES}", param="reference")
    if task == "ppl":
        raise ConfigError("reference: only for pairwise tasks, not ppl", param="reference")
    if reference == "copy" and compare:
        raise ConfigError(
            "reference copy scores no model: drop compare", param=("reference", "compare")
        )
