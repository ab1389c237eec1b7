"""Log-mel and MFCC features in numpy/scipy, framed at a chosen rate (the built-in phonetic units).

Framing: at `frame_rate` Hz the hop is `SAMPLE_RATE / frame_rate` samples and an audio of N samples
gives `N // hop` frames (floor; frame i starts at i * hop / SAMPLE_RATE seconds). Each frame's
analysis window (Hann, `window_seconds` long, default 40 ms = one 25 Hz hop) is centred on the
middle of its hop span, zero-padded at the edges, so frame i describes samples [i*hop, (i+1)*hop).
Mel scale: HTK (2595 log10(1 + f/700)), triangular filters on the power spectrum, natural log with
a 1e-10 floor; MFCC = orthonormal DCT-II of the log-mel energies.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np
from scipy.fft import dct

from ..errors import ConfigError
from .io import SAMPLE_RATE

LOG_FLOOR = 1e-10


@dataclasses.dataclass
class SpectralConfig:
    """Built-in phonetic features (stream "hubert" when no HuBERT model is used)."""

    features: Literal["mfcc", "logmel"] = "mfcc"
    frame_rate: float = 25.0  # Hz; 25 matches mHuBERT-25Hz units
    window_seconds: float = 0.04  # Hann window, centred on each hop span
    n_mels: int = 40
    n_mfcc: int = 13
    fmin: float = 20.0
    fmax: float = 7600.0
    deltas: bool = True  # append first-order deltas (context from +-2 frames)
    cmn: bool = True  # subtract the utterance mean (removes channel/speaker tilt)
    # > 0: the mean of the sounding frames of the first `cmn_seconds` only, so a frame's features
    # do not depend on audio long after it (a cloze pair's endings leave its context's units alone)
    cmn_seconds: float = 0.0
    # True: frame t subtracts the mean of ALL frames up to max(t, the first cmn_seconds): near the
    # whole utterance's mean (the most speaker-robust in bench/unit_robustness.py) yet causal after
    # the first cmn_seconds, so a cloze pair's shared context still gets the same units
    cmn_running: bool = False
    # > 0: each frame is its features and those of the `context_frames` frames either side
    # (edges repeated), the input of a fitted LDA projection (audio/lda.py) that can then use
    # the sound's course, not one frame's spectrum
    context_frames: int = 0
    # True: vocal tract length normalisation (audio/vtln.py): the mel filters of each utterance
    # are warped by the factor (of vtln.WARPS) whose features on its first `vtln_seconds` (0: all
    # of it) sit closest to a codebook fitted with the units; no speaker labels are needed
    vtln: bool = False
    vtln_seconds: float = 3.0

    def validate(self):
        check_frame_rate(self.frame_rate, "frame_rate")
        if not self.window_seconds > 0:
            raise ConfigError(
                f"window_seconds: must be > 0, got {self.window_seconds}", param="window_seconds"
            )
        if not 0 < self.fmin < self.fmax <= SAMPLE_RATE / 2:
            raise ConfigError(
                f"fmin/fmax: need 0 < fmin < fmax <= {SAMPLE_RATE // 2}, got "
                f"{self.fmin}, {self.fmax}"
            )
        if self.cmn_seconds < 0:
            raise ConfigError(
                f"cmn_seconds: must be >= 0, got {self.cmn_seconds}", param="cmn_seconds"
            )
        if self.vtln_seconds < 0:
            raise ConfigError(
                f"vtln_seconds: must be >= 0, got {self.vtln_seconds}", param="vtln_seconds"
            )
        if self.context_frames < 0:
            raise ConfigError(
                f"context_frames: must be >= 0, got {self.context_frames}", param="context_frames"
            )
        if self.cmn_running and not self.cmn:
            raise ConfigError("cmn_running: needs cmn (a mean to remove)", param="cmn_running")
        if self.features == "mfcc" and not 0 < self.n_mfcc <= self.n_mels:
            raise ConfigError(
                f"n_mfcc: need 0 < n_mfcc <= n_mels, got {self.n_mfcc} > {self.n_mels}"
            )

    @property
    def dim(self) -> int:
        base = self.n_mfcc if self.features == "mfcc" else self.n_mels
        return base * (2 if self.deltas else 1) * (2 * self.context_frames + 1)


def check_frame_rate(frame_rate: float, key: str) -> None:
    """A frame rate must give a whole number of samples per hop at SAMPLE_RATE (`key`: the
    setting's name, the error's `param`)."""
    hop = SAMPLE_RATE / frame_rate if frame_rate > 0 else 0.0
    if hop < 1 or abs(hop - round(hop)) > 1e-6:
        raise ConfigError(
            f"{key}: {frame_rate} Hz does not give a whole hop at {SAMPLE_RATE} Hz", param=key
        )


def hop_samples(frame_rate: float) -> int:
    return int(round(SAMPLE_RATE / frame_rate))


def timestamps(n: int, frame_rate: float) -> np.ndarray:
    """Start times (s, float64) of n frames of hop SAMPLE_RATE / frame_rate samples."""
    return np.arange(n) * hop_samples(frame_rate) / SAMPLE_RATE


def frame_signal(
    wav: np.ndarray, hop: int, window: int, first: int = 0, last: int | None = None
) -> np.ndarray:
    """[N] -> frames [first, last) of the N // hop, each [window] samples, frame i centred on the
    middle of samples [i*hop, (i+1)*hop) and zero-padded beyond the signal."""
    n = len(wav) // hop
    last = n if last is None else min(last, n)
    offset = (hop - window) // 2  # start of frame 0 (may be negative)
    lo = first * hop + offset
    hi = (last - 1) * hop + offset + window if last > first else lo
    seg = np.asarray(wav[max(lo, 0) : max(min(hi, len(wav)), 0)], dtype=np.float64)
    seg = np.pad(seg, (max(0, -lo), max(0, hi - max(lo, len(wav)))))
    starts = np.arange(last - first) * hop
    return seg[starts[:, None] + np.arange(window)[None, :]]


def warp_frequencies(f: np.ndarray, warp: float, fmax: float) -> np.ndarray:
    """Piecewise-linear frequency warp (as Kaldi's VTLN): f -> warp * f up to the knee
    0.85 * fmax / max(warp, 1), then the straight line to (fmax, fmax), so every filter stays
    below fmax and in order whatever the factor."""
    knee = 0.85 * fmax / max(warp, 1.0)
    f = np.asarray(f, np.float64)
    above = warp * knee + (fmax - warp * knee) * (f - knee) / (fmax - knee)
    return np.where(f <= knee, warp * f, above)


def mel_filterbank(
    n_mels: int,
    n_fft: int,
    fmin: float,
    fmax: float,
    sample_rate: int = SAMPLE_RATE,
    warp: float = 1.0,
) -> np.ndarray:
    """[n_mels, n_fft // 2 + 1] HTK triangular filters (peak 1) on the FFT bin frequencies;
    `warp` != 1 moves every filter edge by `warp_frequencies` (a voice whose formants sit
    `warp` times higher then lands on the same filters)."""

    def hz_to_mel(f):
        return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)

    def mel_to_hz(m):
        return 700.0 * (10.0 ** (np.asarray(m) / 2595.0) - 1.0)

    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    if warp != 1.0:
        edges = warp_frequencies(edges, warp, fmax)
    freqs = np.arange(n_fft // 2 + 1) * sample_rate / n_fft
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (freqs[None, :] - lower) / (centre - lower)
    falling = (upper - freqs[None, :]) / (upper - centre)
    return np.maximum(0.0, np.minimum(rising, falling))


FRAMES_PER_BLOCK = 4096  # frames analysed at once: bounds memory on hour-long files


def power_spectrogram(
    wav: np.ndarray,
    frame_rate: float,
    window_seconds: float,
    first: int = 0,
    last: int | None = None,
) -> np.ndarray:
    """[frames, n_fft // 2 + 1] power spectra of Hann-windowed frames [first, last)
    (n_fft: the next power of 2 of the window)."""
    window = int(round(window_seconds * SAMPLE_RATE))
    n_fft = 1 << (window - 1).bit_length()
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(window) / window)  # periodic Hann
    frames = frame_signal(wav, hop_samples(frame_rate), window, first, last) * hann
    return np.abs(np.fft.rfft(frames, n=n_fft, axis=-1)) ** 2


def log_mels(wav: np.ndarray, cfg: SpectralConfig, warps=(1.0,)) -> list[np.ndarray]:
    """[frames, n_mels] natural-log mel energies for each mel-filter warp in `warps` (one FFT)."""
    window = int(round(cfg.window_seconds * SAMPLE_RATE))
    n_fft = 1 << (window - 1).bit_length()
    banks = [mel_filterbank(cfg.n_mels, n_fft, cfg.fmin, cfg.fmax, warp=w).T for w in warps]
    n = len(wav) // hop_samples(cfg.frame_rate)
    blocks: list[list[np.ndarray]] = [[] for _ in warps]
    for i in range(0, n, FRAMES_PER_BLOCK):
        power = power_spectrogram(wav, cfg.frame_rate, cfg.window_seconds, i, i + FRAMES_PER_BLOCK)
        for out, bank in zip(blocks, banks):
            out.append(power @ bank)
    return [
        np.log(np.maximum(np.concatenate(b) if b else np.zeros((0, cfg.n_mels)), LOG_FLOOR))
        for b in blocks
    ]


def log_mel(wav: np.ndarray, cfg: SpectralConfig, warp: float = 1.0) -> np.ndarray:
    """[frames, n_mels] natural-log mel energies."""
    return log_mels(wav, cfg, (warp,))[0]


def mfcc(wav: np.ndarray, cfg: SpectralConfig, warp: float = 1.0) -> np.ndarray:
    """[frames, n_mfcc] orthonormal DCT-II of the log-mel energies."""

    return _cepstra(log_mel(wav, cfg, warp), cfg)


def _cepstra(logmel: np.ndarray, cfg: SpectralConfig) -> np.ndarray:
    return dct(logmel, type=2, norm="ortho", axis=-1)[:, : cfg.n_mfcc]


def deltas(feats: np.ndarray, width: int = 2) -> np.ndarray:
    """Regression deltas sum_k k (x[t+k] - x[t-k]) / (2 sum_k k^2), edges repeated."""
    padded = np.pad(feats, ((width, width), (0, 0)), mode="edge")
    n = len(feats)
    num = sum(
        k * (padded[width + k : width + k + n] - padded[width - k : width - k + n])
        for k in range(1, width + 1)
    )
    return num / (2 * sum(k * k for k in range(1, width + 1)))


def _cmn_mean(feats: np.ndarray, cfg: SpectralConfig) -> np.ndarray:
    """[1 or frames, dim] mean to subtract: the whole utterance's, that of the sounding frames
    (log energy within 30 dB-ish of the loudest) among the first `cmn_seconds`, or (cmn_running)
    per frame the mean of all frames up to max(t, the first cmn_seconds)."""
    if cfg.cmn_seconds <= 0 and not cfg.cmn_running:
        return feats.mean(axis=0, keepdims=True)
    n_head = min(len(feats), max(1, int(round(cfg.cmn_seconds * cfg.frame_rate))))
    if cfg.cmn_running:
        running = np.cumsum(feats, axis=0, dtype=np.float64) / np.arange(1, len(feats) + 1)[:, None]
        running[: n_head - 1] = running[n_head - 1]
        return running
    head = feats[:n_head]
    energy = head[:, 0]  # c0 (MFCC) or the lowest mel band: both track loudness
    sounding = head[energy >= energy.max() - SOUNDING_RANGE]
    return sounding.mean(axis=0, keepdims=True)


SOUNDING_RANGE = 7.0  # natural-log units below the loudest frame still counted as sound


def stack_context(feats: np.ndarray, c: int) -> np.ndarray:
    """[frames, d] -> [frames, d * (2c + 1)]: frames t-c..t+c side by side, edges repeated."""
    if c == 0:
        return feats
    padded = np.pad(feats, ((c, c), (0, 0)), mode="edge")
    return np.concatenate([padded[i : i + len(feats)] for i in range(2 * c + 1)], axis=1)


def frame_features(logmel: np.ndarray, cfg: SpectralConfig) -> np.ndarray:
    """[frames, n_mels] log-mel -> [frames, dim without context] float32: MFCC or log-mel, mean
    removal and deltas as `cfg` says."""
    feats = _cepstra(logmel, cfg) if cfg.features == "mfcc" else logmel
    if cfg.cmn and len(feats):
        feats = feats - _cmn_mean(feats, cfg)
    if cfg.deltas:
        feats = np.concatenate([feats, deltas(feats)], axis=-1)
    return feats.astype(np.float32)


def phonetic_features(wav: np.ndarray, cfg: SpectralConfig, warp: float = 1.0) -> np.ndarray:
    """[frames, cfg.dim] float32: MFCC or log-mel (mel filters warped by `warp`), plus mean
    removal, deltas and context frames if set. `cfg.vtln` is not applied here: the warp is
    chosen by audio/vtln.py, which needs the units' codebook."""
    return stack_context(frame_features(log_mel(wav, cfg, warp), cfg), cfg.context_frames)
