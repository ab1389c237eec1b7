"""HiFi-GAN's training losses: log-mel L1 (weight 45), feature matching (2 x L1 of every
discriminator feature map), least-squares adversarial losses; and speech-resynthesis's duration
loss (MSE of log(1 + frames) per deduplicated unit)."""

from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np

from ..audio.features import mel_filterbank


@dataclass(frozen=True)
class MelConfig:
    """HiFi-GAN's loss spectrogram (n_fft 1024, hop 256, window 1024, 80 mels, 0 Hz to Nyquist);
    our filterbank is audio.features' HTK one."""

    n_fft: int = 1024
    hop: int = 256
    n_mels: int = 80
    fmin: float = 0.0
    fmax: float | None = None


def log_mel(wav, cfg: MelConfig, sample_rate: int):
    """(B, T) -> (B, frames, n_mels) log(max(1e-5, mel magnitude)); reflect-padded by
    (n_fft - hop) / 2 each side, Hann window, no centring (as HiFi-GAN's mel_spectrogram)."""

    pad = (cfg.n_fft - cfg.hop) // 2
    x = jnp.pad(wav, ((0, 0), (pad, pad)), mode="reflect")
    n = 1 + (x.shape[1] - cfg.n_fft) // cfg.hop
    idx = np.arange(n)[:, None] * cfg.hop + np.arange(cfg.n_fft)[None, :]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(cfg.n_fft) / cfg.n_fft)
    spec = jnp.abs(jnp.fft.rfft(x[:, idx] * window, axis=-1))
    fb = mel_filterbank(cfg.n_mels, cfg.n_fft, cfg.fmin, cfg.fmax or sample_rate / 2, sample_rate)
    return jnp.log(jnp.maximum(spec @ jnp.asarray(fb.T, spec.dtype), 1e-5))


def feature_loss(fmap_real, fmap_fake):
    return 2 * sum(
        jnp.mean(jnp.abs(r - g)) for fr, fg in zip(fmap_real, fmap_fake) for r, g in zip(fr, fg)
    )


def discriminator_loss(real_logits, fake_logits):
    return sum(jnp.mean((1 - r) ** 2) + jnp.mean(g**2) for r, g in zip(real_logits, fake_logits))


def generator_adversarial_loss(fake_logits):
    return sum(jnp.mean((1 - g) ** 2) for g in fake_logits)


def duration_loss(log_dur_pred, durations, mask):
    """Masked MSE of log(1 + frames), the duration predictor's target."""
    err = (log_dur_pred - jnp.log1p(durations.astype(log_dur_pred.dtype))) ** 2
    return jnp.sum(err * mask) / jnp.maximum(jnp.sum(mask), 1)
