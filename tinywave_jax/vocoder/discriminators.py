"""HiFi-GAN's discriminators in Flax, for vocoder training: multi-period (MPD: the waveform folded
into (T / p, p) for periods 2, 3, 5, 7, 11, 2-D convs along time) and multi-scale (MSD: 1-D grouped
convs on the waveform, 2x and 4x average-pooled). Each returns its logits and the feature maps
after every conv (feature-matching loss). Channel lists are configurable so that tests run small;
the defaults are HiFi-GAN's (jik876/hifi-gan models.py). Weight / spectral norm, a training
reparametrisation there, is left out.
"""

from __future__ import annotations

from dataclasses import dataclass

import flax.linen as nn
import jax.numpy as jnp

from ..errors import ConfigError

LRELU_SLOPE = 0.1


@dataclass(frozen=True)
class DiscriminatorConfig:
    periods: tuple[int, ...] = (2, 3, 5, 7, 11)
    mpd_channels: tuple[int, ...] = (32, 128, 512, 1024, 1024)
    msd_channels: tuple[int, ...] = (128, 128, 256, 512, 1024, 1024, 1024)
    msd_groups: tuple[int, ...] = (1, 4, 16, 16, 16, 16, 1)
    scales: int = 3

    def validate(self) -> None:

        if len(self.msd_groups) != len(self.msd_channels) or len(self.msd_channels) != 7:
            raise ConfigError("msd_channels / msd_groups: 7 layers each (HiFi-GAN's MSD)")
        prev = 1
        for i, (c, g) in enumerate(zip(self.msd_channels, self.msd_groups)):
            if c % g or prev % g:
                raise ConfigError(f"msd_groups[{i}]: {g} must divide channels {prev} and {c}")
            prev = c


class PeriodDiscriminator(nn.Module):
    period: int
    channels: tuple[int, ...]

    @nn.compact
    def __call__(self, wav):  # (B, T)
        b, t = wav.shape
        if t % self.period:
            n = self.period - t % self.period
            wav = jnp.pad(wav, ((0, 0), (0, n)), mode="reflect")
        x = wav.reshape(b, -1, self.period, 1)  # (B, T / p, p, 1): convs run along T / p
        fmap = []
        for i, c in enumerate(self.channels):
            last = i == len(self.channels) - 1
            x = nn.Conv(c, (5, 1), (1 if last else 3, 1), padding=((2, 2), (0, 0)))(x)
            x = nn.leaky_relu(x, LRELU_SLOPE)
            fmap.append(x)
        x = nn.Conv(1, (3, 1), padding=((1, 1), (0, 0)))(x)
        fmap.append(x)
        return x.reshape(b, -1), fmap


class ScaleDiscriminator(nn.Module):
    channels: tuple[int, ...]
    groups: tuple[int, ...]

    @nn.compact
    def __call__(self, wav):  # (B, T)
        x = wav[..., None]
        fmap = []
        layers = [(15, 1), (41, 2), (41, 2), (41, 4), (41, 4), (41, 1), (5, 1)]
        for (k, s), c, g in zip(layers, self.channels, self.groups):
            x = nn.Conv(
                c, (k,), (s,), padding=[((k - 1) // 2, (k - 1) // 2)], feature_group_count=g
            )(x)
            x = nn.leaky_relu(x, LRELU_SLOPE)
            fmap.append(x)
        x = nn.Conv(1, (3,), padding=[(1, 1)])(x)
        fmap.append(x)
        return x.reshape(x.shape[0], -1), fmap


class Discriminators(nn.Module):
    """Every period and scale discriminator: lists of logits and of feature-map lists."""

    config: DiscriminatorConfig

    @nn.compact
    def __call__(self, wav):
        c = self.config
        outs = [PeriodDiscriminator(p, c.mpd_channels)(wav) for p in c.periods]
        x = wav
        for i in range(c.scales):
            if i:  # AvgPool1d(4, 2, padding=2), zero padding counted as in torch's default
                x = nn.avg_pool(x[..., None], (4,), (2,), padding=[(2, 2)])[..., 0]
            outs.append(ScaleDiscriminator(c.msd_channels, c.msd_groups)(x))
        return [o[0] for o in outs], [o[1] for o in outs]
