"""95 % bootstrap intervals: the resamples (items drawn with replacement, seeded) and the
percentile interval, shared by the demo's benchmark tables and `tinywave vocoder eval`. A
statistic is computed on each resample by the caller, so paired comparisons (two models or two
audio versions scored on the same items) use the same index array."""

from __future__ import annotations

import numpy as np


def resamples(n: int, draws: int, seed: int) -> np.ndarray:
    """[draws, n] item indices, drawn with replacement (the same for the same n, draws, seed)."""
    return np.random.default_rng(seed).integers(0, n, size=(draws, n))


def interval(values: np.ndarray, digits: int = 2) -> list[float]:
    """The 95 % percentile interval of a statistic's bootstrap values, rounded to `digits`."""
    lo, hi = np.percentile(values, [2.5, 97.5])
    return [round(float(lo), digits), round(float(hi), digits)]
