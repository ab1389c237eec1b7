"""Style tokens: one k-means class per window (1 s by default) of utterance-level prosody/timbre.

Window features (STYLE_FEATURES, 32 values): mean and std of 13 MFCCs (25 ms windows at 100 Hz),
mean and std of log frame energy, mean absolute MFCC change per frame (a speaking-rate proxy),
voiced fraction, and mean and std of speaker-normalised log-F0 over voiced frames (0 when none).
Features are standardised with the training mean/std before nearest-centroid assignment.
An utterance of N samples has max(1, round(N / window)) windows; window i covers
[i*window, (i+1)*window) and the last one runs to the end of the audio.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..errors import ConfigError, InputError
from .features import SpectralConfig, check_frame_rate, hop_samples, log_mel, mfcc
from .io import SAMPLE_RATE

STYLE_FEATURES = 32
_MFCC = SpectralConfig(
    features="mfcc",
    frame_rate=100.0,
    window_seconds=0.025,
    n_mels=40,
    n_mfcc=13,
    deltas=False,
    cmn=False,
)


@dataclasses.dataclass
class StyleConfig:
    frame_rate: float = 1.0  # style tokens per second
    classes: int = 100

    def validate(self):
        check_frame_rate(self.frame_rate, "style.frame_rate")
        if self.classes < 1:
            raise ConfigError(f"style.classes: need >= 1, got {self.classes}")


def window_count(n_samples: int, frame_rate: float) -> int:
    return max(1, int(round(n_samples / hop_samples(frame_rate))))


def _window_of(times: np.ndarray, frame_rate: float, n: int) -> np.ndarray:
    return np.minimum((times * frame_rate).astype(np.int64), n - 1)


def _group_mean_std(
    values: np.ndarray, group: np.ndarray, n: int, weight: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-group mean and std of rows of `values` [T, D] (0 for groups without rows)."""
    w = np.ones(len(values)) if weight is None else weight.astype(np.float64)
    count = np.bincount(group, weights=w, minlength=n)[:, None]
    sums = np.zeros((n, values.shape[1]))
    sq = np.zeros((n, values.shape[1]))
    np.add.at(sums, group, values * w[:, None])
    np.add.at(sq, group, values**2 * w[:, None])
    mean = np.where(count > 0, sums / np.maximum(count, 1e-12), 0.0)
    var = np.where(count > 0, sq / np.maximum(count, 1e-12) - mean**2, 0.0)
    return mean, np.sqrt(np.maximum(var, 0.0))


def style_features(
    wav: np.ndarray,
    cfg: StyleConfig,
    track: tuple[np.ndarray, np.ndarray, np.ndarray],
    log_f0_mean: float | None,
) -> np.ndarray:
    """[windows, STYLE_FEATURES] float64 raw (unstandardised) window features.

    `track` is `(f0_hz, voiced, times)` from the F0 tracker; `log_f0_mean` the speaker mean log-F0
    (None when nothing is voiced)."""
    n = window_count(len(wav), cfg.frame_rate)
    coeffs = mfcc(wav, _MFCC)
    if len(coeffs) == 0:
        raise InputError(f"audio too short for style features ({len(wav)} samples)")
    mfcc_times = (np.arange(len(coeffs)) + 0.5) * hop_samples(_MFCC.frame_rate) / SAMPLE_RATE
    mfcc_win = _window_of(mfcc_times, cfg.frame_rate, n)
    energy = np.log(np.exp(log_mel(wav, _MFCC)).sum(axis=1) + 1e-10)[:, None]
    flux = np.zeros((len(coeffs), 1))
    flux[1:, 0] = np.abs(np.diff(coeffs, axis=0)).mean(axis=1)

    f0, voiced, times = track
    f0_win = _window_of(times, cfg.frame_rate, n)
    norm = np.log(np.where(voiced, f0, 1.0)) - (log_f0_mean or 0.0)
    voiced_frac = (
        np.bincount(f0_win, weights=voiced.astype(float), minlength=n)
        / np.maximum(np.bincount(f0_win, minlength=n), 1)
    )[:, None]
    pitch_mean, pitch_std = _group_mean_std(norm[:, None], f0_win, n, weight=voiced)

    parts = [
        *_group_mean_std(coeffs, mfcc_win, n),
        *_group_mean_std(energy, mfcc_win, n),
        _group_mean_std(flux, mfcc_win, n)[0],
        voiced_frac,
        pitch_mean,
        pitch_std,
    ]
    return np.concatenate(parts, axis=1)
