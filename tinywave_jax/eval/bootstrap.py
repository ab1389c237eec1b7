"""95 % bootstrap intervals: the resamples (items drawn with replacement, seeded), the percentile
interval, and the paired per-task intervals that `tinywave eval`, the demo's benchmark tables and
`tinywave vocoder eval` print.

A task's per-item scores (`task_scores`) are pairwise outcomes [n] (1, 0.5 on a tie, 0), or for
perplexity per-sequence (NLL [n], scored tokens [n]); its statistic is the accuracy in % or the
pooled perplexity exp(sum NLL / sum tokens). The tasks of one set are resampled in sorted order
with seeds seed, seed + 1, ...: the resamples depend only on (task position, n, draws, seed), so
every model scored on the same items gets the same ones and the difference of two models gets
its own (paired) interval.
"""

from __future__ import annotations

import math
from typing import Iterator, Mapping, Union

import numpy as np

PPL = "ppl"  # the one task whose items are sequences, not pairs
Scores = Union[np.ndarray, tuple[np.ndarray, np.ndarray]]  # outcomes, or (nll, tokens)


def resamples(n: int, draws: int, seed: int) -> np.ndarray:
    """[draws, n] item indices, drawn with replacement (the same for the same n, draws, seed)."""
    return np.random.default_rng(seed).integers(0, n, size=(draws, n))


def interval(values: np.ndarray, digits: int = 2) -> list[float]:
    """The 95 % percentile interval of a statistic's bootstrap values, rounded to `digits`."""
    lo, hi = np.percentile(values, [2.5, 97.5])
    return [round(float(lo), digits), round(float(hi), digits)]


def task_scores(task: str, result: Mapping) -> Scores:
    """The per-item scores of one `run_task` / `evaluate` result (which keeps its "pairs", or
    "sequence_nll" and "sequence_tokens" for perplexity)."""
    if task == PPL:
        return (
            np.asarray(result["sequence_nll"], np.float64),
            np.asarray(result["sequence_tokens"], np.float64),
        )
    return np.asarray([p["outcome"] for p in result["pairs"]], np.float64)


def num_items(task: str, scores: Scores) -> int:
    return len(scores[0] if task == PPL else scores)


def statistic(task: str, scores: Scores, idx: np.ndarray | None = None):
    """A task's statistic (accuracy in %, or perplexity) on all items, or with `idx` [draws, n]
    on each resample (an array of `draws` values)."""
    if task == PPL:
        nll, tok = scores
        if idx is None:
            return math.exp(nll.sum() / tok.sum())
        return np.exp(nll[idx].sum(1) / tok[idx].sum(1))
    assert isinstance(scores, np.ndarray)
    return 100 * float(scores.mean()) if idx is None else 100 * scores[idx].mean(1)


def task_resamples(raw: Mapping[str, Scores], draws: int, seed: int) -> Iterator[tuple]:
    """(task, its resamples [draws, n]) for each task of `raw`, in sorted order, seeds seed + k."""
    for k, task in enumerate(sorted(raw)):
        yield task, resamples(num_items(task, raw[task]), draws, seed + k)


def _digits(task: str) -> int:
    return 3 if task == PPL else 2


def summarize(raw: Mapping[str, Scores], draws: int, seed: int = 0) -> dict:
    """{task: {"value", "ci", "n"}}: each task's statistic (rounded to 2 digits, perplexity 3)
    and its 95 % interval (2 digits) over `draws` resamples of its n items."""
    out = {}
    for task, idx in task_resamples(raw, draws, seed):
        out[task] = {
            "value": round(statistic(task, raw[task]), _digits(task)),
            "ci": interval(statistic(task, raw[task], idx)),
            "n": num_items(task, raw[task]),
        }
    return out


def difference(raw_a: Mapping[str, Scores], raw_b: Mapping[str, Scores], draws: int, seed=0):
    """{task: {"diff", "ci"}}: model a minus model b (accuracy points, perplexity) on the same
    items, with the paired interval (on `summarize`'s resamples)."""
    out = {}
    for task, idx in task_resamples(raw_a, draws, seed):
        a, b = raw_a[task], raw_b[task]
        if num_items(task, a) != num_items(task, b):
            raise ValueError(
                f"{task}: {num_items(task, a)} vs {num_items(task, b)} items; a paired "
                "difference needs both models scored on the same items"
            )
        if task == PPL:
            diff = statistic(task, a) - statistic(task, b)
            boot = statistic(task, a, idx) - statistic(task, b, idx)
        else:  # accuracy is linear in the outcomes: score the paired differences
            assert isinstance(a, np.ndarray) and isinstance(b, np.ndarray)
            diff, boot = statistic(task, a - b), statistic(task, a - b, idx)
        out[task] = {"diff": round(diff, _digits(task)), "ci": interval(boot)}
    return out
