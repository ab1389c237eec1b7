"""F0 tracking (YIN, numpy) and pitch tokens: speaker-mean-normalised log-F0 quantised into bins.

Pitch tokens (defaults match SpiritLM's 64 codes at 12.5 Hz): the tracker runs at `f0_frame_rate`
(100 Hz); a token frame of 1/frame_rate s is voiced when at least half of its tracker frames are,
and its value is the median log-F0 of those voiced tracker frames minus the speaker's mean log-F0.
Bin 0 is the UNVOICED bin; voiced values fall into bins 1..bins-1 through `bins - 2` edges fitted as
quantiles of training values (`units fit`), so every voiced bin is about equally likely.
`f0_mean` everywhere is the mean of natural-log F0 in Hz over voiced frames (log of the geometric
mean F0; e.g. log(120) = 4.79), not F0 in Hz.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import fft

from ..errors import ConfigError, InputError
from .features import FRAMES_PER_BLOCK, check_frame_rate, hop_samples
from .io import SAMPLE_RATE

UNVOICED_BIN = 0


@dataclasses.dataclass
class PitchConfig:
    frame_rate: float = 12.5  # pitch tokens per second
    bins: int = 64  # including the unvoiced bin 0
    f0_frame_rate: float = 100.0  # F0 tracker frames per second
    fmin: float = 50.0  # Hz, lowest F0 searched
    fmax: float = 550.0  # Hz, highest F0 searched
    threshold: float = 0.25  # YIN absolute threshold (0.25 keeps breathy voicing)
    silence_db: float = 40.0  # frames this far below the loudest frame are unvoiced

    def validate(self):
        check_frame_rate(self.frame_rate, "pitch.frame_rate")
        check_frame_rate(self.f0_frame_rate, "pitch.f0_frame_rate")
        if self.bins < 2:
            raise ConfigError(f"pitch.bins: need >= 2 (unvoiced + voiced), got {self.bins}")
        if not 0 < self.fmin < self.fmax < SAMPLE_RATE / 4:
            raise ConfigError(
                f"pitch.fmin/fmax: need 0 < fmin < fmax < {SAMPLE_RATE // 4}, got "
                f"{self.fmin}, {self.fmax}"
            )


def estimate_f0(
    wav: np.ndarray,
    *,
    frame_rate: float = 100.0,
    fmin: float = 50.0,
    fmax: float = 550.0,
    threshold: float = 0.25,
    silence_db: float = 40.0,
    window_seconds: float = 0.03,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """YIN F0 (de Cheveigne & Kawahara 2002) of 16 kHz mono `wav` (options keyword-only).

    Returns (f0_hz float64 [T], voiced bool [T], times float64 [T]) with T = len(wav) // hop and
    times the centres of the hop spans [t*hop, (t+1)*hop) in seconds; f0 is 0 where unvoiced.
    A frame is voiced when its cumulative-mean-normalised difference dips below `threshold` for a
    lag in [SR/fmax, SR/fmin] and its energy is within `silence_db` of the loudest frame.
    """
    hop = hop_samples(frame_rate)
    tau_min = max(2, int(np.floor(SAMPLE_RATE / fmax)))
    tau_max = int(np.ceil(SAMPLE_RATE / fmin))
    win = max(int(round(window_seconds * SAMPLE_RATE)), tau_max)
    n = len(wav) // hop
    times = (np.arange(n) + 0.5) * hop / SAMPLE_RATE
    seg = win + tau_max + 1
    first = hop // 2 - seg // 2  # frame 0's segment centred on its hop span
    padded = np.pad(np.asarray(wav, dtype=np.float32), (max(0, -first), seg + n * hop))
    offset = first + max(0, -first)
    periods, voiced, energy = [np.zeros(0)], [np.zeros(0, bool)], [np.zeros(0)]
    for lo in range(0, n, FRAMES_PER_BLOCK):  # blocks bound memory on long files
        starts = np.arange(lo, min(lo + FRAMES_PER_BLOCK, n)) * hop + offset
        x = padded[starts[:, None] + np.arange(seg)[None, :]].astype(np.float64)
        p, v, e = _yin_frames(x - x.mean(axis=1, keepdims=True), win, tau_min, tau_max, threshold)
        periods.append(p), voiced.append(v), energy.append(e)
    period, voiced, energy = map(np.concatenate, (periods, voiced, energy))
    if energy.size and energy.max() > 0:
        voiced &= energy > energy.max() * 10 ** (-silence_db / 10)
    else:
        voiced[:] = False
    f0 = np.where(voiced, SAMPLE_RATE / period, 0.0)
    return f0, voiced, times


def _yin_frames(
    x: np.ndarray, win: int, tau_min: int, tau_max: int, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """YIN on frames x [n, win + tau_max + 1]: (period in samples, dips under threshold, energy)."""
    n = len(x)
    # d(tau) = sum_{j<win} (x_j - x_{j+tau})^2 = e(0) + e(tau) - 2 r(tau), r by FFT correlation

    nfft = 1 << (x.shape[1] - 1).bit_length()  # lags < x.shape[1] - win never wrap around
    r = fft.irfft(np.conj(fft.rfft(x[:, :win], nfft)) * fft.rfft(x, nfft), nfft)
    r = r[:, : tau_max + 1]
    csum = np.concatenate([np.zeros((n, 1)), np.cumsum(x * x, axis=1)], axis=1)
    lags = np.arange(tau_max + 1)
    e_shift = csum[:, lags + win] - csum[:, lags]
    d = np.maximum(e_shift[:, :1] + e_shift - 2 * r, 0.0)
    cum = np.cumsum(d[:, 1:], axis=1)
    cmnd = np.ones_like(d)
    cmnd[:, 1:] = d[:, 1:] * lags[1:] / np.maximum(cum, 1e-300)

    # first lag under the threshold, then down to the bottom of that dip
    search = cmnd[:, tau_min : tau_max + 1]
    below = search < threshold
    first_hit = np.argmax(below, axis=1)
    rising = np.zeros_like(below)
    rising[:, :-1] = search[:, 1:] >= search[:, :-1]
    rising[:, -1] = True
    rising &= np.arange(search.shape[1])[None, :] >= first_hit[:, None]
    tau = np.argmax(rising, axis=1) + tau_min

    # parabolic interpolation of the raw difference around the chosen lag
    rows = np.arange(n)
    inner = np.clip(tau, 1, tau_max - 1)
    a, b, c = d[rows, inner - 1], d[rows, inner], d[rows, inner + 1]
    denom = a - 2 * b + c
    shift = np.where(denom > 0, 0.5 * (a - c) / np.where(denom > 0, denom, 1.0), 0.0)
    return inner + np.clip(shift, -1.0, 1.0), below.any(axis=1), e_shift[:, 0]


def tracker_f0(wav: np.ndarray, cfg: PitchConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return estimate_f0(
        wav,
        frame_rate=cfg.f0_frame_rate,
        fmin=cfg.fmin,
        fmax=cfg.fmax,
        threshold=cfg.threshold,
        silence_db=cfg.silence_db,
    )


def check_f0_mean(f0_mean: float | None) -> float | None:
    if f0_mean is None:
        return None
    if not np.isfinite(f0_mean) or not 2.0 < f0_mean < 8.0:
        raise ValueError(
            f"f0_mean={f0_mean}: expected the mean natural-log F0 of the speaker "
            f"(e.g. log(120 Hz) = 4.79), not F0 in Hz"
        )
    return float(f0_mean)


def mean_log_f0(wavs: list[np.ndarray], cfg: PitchConfig | None = None) -> float | None:
    """A speaker's mean log-F0 over the voiced frames of `wavs` (None if nothing is voiced)."""
    cfg = cfg or PitchConfig()
    values = [np.log(f0[v]) for f0, v, _ in (tracker_f0(w, cfg) for w in wavs)]
    values = np.concatenate(values) if values else np.zeros(0)
    return float(values.mean()) if values.size else None


def speaker_mean(f0: np.ndarray, voiced: np.ndarray, f0_mean: float | None) -> float | None:
    """The given speaker mean log-F0, else the utterance's own (None when nothing is voiced)."""
    f0_mean = check_f0_mean(f0_mean)
    if f0_mean is not None:
        return f0_mean
    return float(np.log(f0[voiced]).mean()) if voiced.any() else None


def normalised_log_f0(
    wav: np.ndarray,
    cfg: PitchConfig,
    f0_mean: float | None = None,
    track: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """[len(wav) // pitch hop] log-F0 minus the speaker mean per pitch frame; NaN where unvoiced.

    `track` is a precomputed `tracker_f0(wav, cfg)` result (the extractor shares it with style)."""
    f0, voiced, times = track if track is not None else tracker_f0(wav, cfg)
    n = len(wav) // hop_samples(cfg.frame_rate)
    out = np.full(n, np.nan)
    mean = speaker_mean(f0, voiced, f0_mean)
    if mean is None:
        return out
    log_f0 = np.log(np.where(voiced, f0, 1.0))
    frame_of = (times * cfg.frame_rate).astype(np.int64)  # sorted: tracker frames in order
    bounds = np.searchsorted(frame_of, np.arange(n + 1))
    for i in range(n):
        v = voiced[bounds[i] : bounds[i + 1]]
        if v.any() and 2 * v.sum() >= len(v):
            out[i] = np.median(log_f0[bounds[i] : bounds[i + 1]][v]) - mean
    return out


def fit_pitch_edges(values: np.ndarray, bins: int) -> np.ndarray:
    """`bins - 2` quantile edges of voiced normalised log-F0 values (for bins 1..bins-1)."""
    values = values[np.isfinite(values)]
    if values.size == 0:
        raise InputError(
            "pitch: no voiced frames in the training audio to fit pitch bins on "
            "(pass pitch_bins=0 to leave pitch out)",
            param=(None, "pitch_bins"),
        )
    return np.quantile(values, np.linspace(0, 1, bins)[1:-1]).astype(np.float64)


def quantise_pitch(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """int32 bins: UNVOICED_BIN (0) for NaN, else 1 + index among the quantile edges."""
    voiced = np.isfinite(values)
    ids = np.searchsorted(edges, np.where(voiced, values, 0.0), side="right") + 1
    return np.where(voiced, ids, UNVOICED_BIN).astype(np.int32)
