"""The unit HiFi-GAN generator (CodeHiFiGAN of speech-resynthesis, as SpiritLM ships it) in Flax.

Layout is (batch, time, channels). Submodule names follow the PyTorch attribute names with the
list index joined by '_' (`ups.2` -> `ups_2`, `resblocks.4.convs1.0` -> `resblocks_4/convs1_0`),
so import.py maps a state dict by name. Weight norm is folded at import: kernels are plain.

Forward, as the reference: unit embedding (+ pitch-code, style-code, speaker and style embeddings
concatenated along channels, in that order) -> conv_pre (k 7) -> per stage: leaky-ReLU 0.1,
transposed conv (rate u, kernel k, padding (k - u) / 2), mean of the stage's ResBlock1s -> a final
leaky-ReLU with slope 0.01 (the reference's `F.leaky_relu(x)` default) -> conv_post (k 7) -> tanh.

`mask` (batch, frames) marks the valid frames of each row (one contiguous run). Every
convolution's input is zeroed outside it, which is exactly the zero padding the reference applies
at an utterance's ends: a padded batch row, or a window cut out of a longer utterance, gives the
samples the reference gives for the valid frames alone (synthesis.py builds on this).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from .config import VocoderConfig

LRELU_SLOPE = 0.1
_DIMS = ("NWC", "WIO", "NWC")


def _masked(x, mask):
    return x if mask is None else x * mask[..., None].astype(x.dtype)


class Conv1d(nn.Module):
    """torch Conv1d (stride 1): kernel (k, in, out) = torch weight (out, in, k) transposed."""

    features: int
    kernel_size: int
    dilation: int = 1
    padding: int | None = None  # default: 'same' for odd kernels, as get_padding

    @nn.compact
    def __call__(self, x, mask=None):
        k, d = self.kernel_size, self.dilation
        pad = (k * d - d) // 2 if self.padding is None else self.padding
        kernel = self.param("kernel", nn.initializers.normal(0.01), (k, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        y = lax.conv_general_dilated(
            _masked(x, mask), kernel, (1,), [(pad, pad)], rhs_dilation=(d,), dimension_numbers=_DIMS
        )
        return y + bias


class ConvTranspose1d(nn.Module):
    """torch ConvTranspose1d: kernel (k, in, out) = torch weight (in, out, k) transposed; computed
    as the equivalent input-dilated convolution with the kernel flipped in time."""

    features: int
    kernel_size: int
    stride: int

    @nn.compact
    def __call__(self, x, mask=None):
        k, s = self.kernel_size, self.stride
        p = (k - s) // 2
        kernel = self.param("kernel", nn.initializers.normal(0.01), (k, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        y = lax.conv_general_dilated(
            _masked(x, mask),
            kernel[::-1],
            (1,),
            [(k - 1 - p, k - 1 - p)],
            lhs_dilation=(s,),
            dimension_numbers=_DIMS,
        )
        return y + bias


class ResBlock1(nn.Module):
    channels: int
    kernel_size: int
    dilations: tuple[int, ...]

    def setup(self):
        self.convs1 = [Conv1d(self.channels, self.kernel_size, d) for d in self.dilations]
        self.convs2 = [Conv1d(self.channels, self.kernel_size, 1) for _ in self.dilations]

    def __call__(self, x, mask=None):
        for c1, c2 in zip(self.convs1, self.convs2):
            xt = c1(nn.leaky_relu(x, LRELU_SLOPE), mask)
            x = x + c2(nn.leaky_relu(xt, LRELU_SLOPE), mask)
        return x


class DurationPredictor(nn.Module):
    """VariancePredictor (inference: dropout off): log(1 + frames) per unit."""

    hidden: int
    kernel_size: int

    def setup(self):
        k = self.kernel_size
        self.conv1 = Conv1d(self.hidden, k, padding=(k - 1) // 2)
        self.ln1 = nn.LayerNorm(epsilon=1e-5)
        self.conv2 = Conv1d(self.hidden, k, padding=1)
        self.ln2 = nn.LayerNorm(epsilon=1e-5)
        self.proj = nn.Dense(1)

    def __call__(self, x, mask=None):
        x = self.ln1(nn.relu(self.conv1(x, mask)))
        x = self.ln2(nn.relu(self.conv2(x, mask)))
        return self.proj(x)[..., 0]


class CodeHiFiGAN(nn.Module):
    config: VocoderConfig

    def setup(self):
        c = self.config
        self.dict = nn.Embed(c.num_embeddings, c.embedding_dim)
        if c.num_f0_tokens:
            self.f0_dict = nn.Embed(c.num_f0_tokens, c.embedding_dim)
        if c.num_style_tokens:
            self.style_dict = nn.Embed(c.num_style_tokens, c.embedding_dim)
        if c.has_speaker:
            self.spkr = nn.Embed(c.num_speakers, c.embedding_dim)
        if c.has_style:
            self.style = nn.Embed(c.num_styles, c.embedding_dim)
        if c.dur_predictor_params is not None:
            dp = c.dur_predictor_params
            self.dur_predictor = DurationPredictor(dp.var_pred_hidden_dim, dp.var_pred_kernel_size)
        self.conv_pre = Conv1d(c.upsample_initial_channel, 7)
        self.ups = [
            ConvTranspose1d(c.channels(i), k, u)
            for i, (u, k) in enumerate(zip(c.upsample_rates, c.upsample_kernel_sizes))
        ]
        self.resblocks = [
            ResBlock1(c.channels(i), k, tuple(d))
            for i in range(len(c.upsample_rates))
            for k, d in zip(c.resblock_kernel_sizes, c.resblock_dilation_sizes)
        ]
        self.conv_post = Conv1d(1, 7)

    def __call__(self, codes, mask=None, f0_codes=None, style_codes=None, speaker=None, style=None):
        """Waveform (batch, frames * hop) in [-1, 1] from unit ids (batch, frames) at frame rate;
        f0_codes / style_codes (batch, frames) already at frame rate; speaker / style (batch,)."""
        c = self.config
        x = self.dict(codes)
        feats = [x]
        for name, value, module in (
            ("f0_codes", f0_codes, "f0_dict"),
            ("style_codes", style_codes, "style_dict"),
        ):
            if module in c.conditions():
                if value is None:
                    raise ValueError(f"this vocoder needs {name} ({module} embedding)")
                feats.append(getattr(self, module)(value))
        for name, value, module in (("speaker", speaker, "spkr"), ("style", style, "style")):
            if module in c.conditions():
                if value is None:
                    raise ValueError(f"this vocoder needs a {name} id per utterance")
                e = getattr(self, module)(jnp.asarray(value).reshape(-1))
                feats.append(jnp.broadcast_to(e[:, None, :], x.shape))
        x = jnp.concatenate(feats, axis=-1)
        return self.decode(x, mask)

    def decode(self, x, mask=None):
        """The HiFi-GAN generator proper on (batch, frames, model_in_dim) features."""
        c = self.config
        x = self.conv_pre(x, mask)
        for i, (up, rate) in enumerate(zip(self.ups, c.upsample_rates)):
            x = up(nn.leaky_relu(x, LRELU_SLOPE), mask)
            if mask is not None:
                mask = jnp.repeat(mask, rate, axis=1)
            blocks = self.resblocks[i * c.num_kernels : (i + 1) * c.num_kernels]
            x = sum(block(x, mask) for block in blocks) / c.num_kernels
        x = self.conv_post(nn.leaky_relu(x, 0.01), mask)
        return jnp.tanh(x[..., 0])

    def every_layer(self, codes, **kw):
        """Runs every layer once (so that init creates all parameters)."""
        if self.config.dur_predictor_params is not None:
            self.log_durations(codes)
        return self(codes, **kw)

    def log_durations(self, codes, mask=None):
        """The duration predictor's log(1 + frames) per (deduplicated) unit, (batch, units)."""
        return self.dur_predictor(self.dict(codes), mask)

    def durations(self, codes, mask=None):
        """Frames per unit as the reference rounds them: max(1, round(exp(log_dur) - 1))."""
        d = jnp.round(jnp.exp(self.log_durations(codes, mask)) - 1)
        return jnp.maximum(d, 1).astype(jnp.int32)


def _init(config: VocoderConfig, rng) -> dict:
    codes = jnp.zeros((1, 2), jnp.int32)
    kw = _dummy_conditions(config, codes)
    return CodeHiFiGAN(config).init(rng, codes, method=CodeHiFiGAN.every_layer, **kw)["params"]


def init_params(config: VocoderConfig, seed: int = 0) -> dict:
    """Random parameters (HiFi-GAN's N(0, 0.01) conv init); for tests, benchmarks, training."""
    return jax.jit(lambda rng: _init(config, rng))(jax.random.PRNGKey(seed))


def param_shapes(config: VocoderConfig) -> dict:
    """The params tree as jax.ShapeDtypeStructs, without computing anything."""
    return jax.eval_shape(lambda rng: _init(config, rng), jax.random.PRNGKey(0))


def _dummy_conditions(config: VocoderConfig, codes) -> dict:
    kw = {}
    if config.num_f0_tokens:
        kw["f0_codes"] = codes
    if config.num_style_tokens:
        kw["style_codes"] = codes
    if config.has_speaker:
        kw["speaker"] = codes[:, 0]
    if config.has_style:
        kw["style"] = codes[:, 0]
    return kw
