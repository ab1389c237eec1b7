"""The unit vocoder's typed config, read from and written as speech-resynthesis's config.json.

Keys and defaults are those of the generator in speech-resynthesis (CodeGenerator) and SpiritLM
(spiritlm/speech_tokenizer/hifigan): `cfg.get(key, default)` there is a field default here.
Training keys of the same file (learning rate, mel settings, data paths ...) do not change the
generator and are accepted and ignored (TRAINING_KEYS). A generator key this implementation
cannot express (a continuous-f0 input, a speaker embedder, ResBlock2, an upsampling kernel whose
padding does not give exactly `rate` times as many samples) fails naming it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

from ..config import from_dict, to_dict
from ..errors import ConfigError, InputError, MissingInputError

# Keys of speech-resynthesis / SpiritLM config.json files that only training or data loading read.
TRAINING_KEYS = frozenset(
    """input_training_file input_validation_file num_gpus batch_size learning_rate adam_b1 adam_b2
    lr_decay seed segment_size num_mels num_freq n_fft hop_size win_size fmin fmax fmax_for_loss
    num_workers dist_config dur_prediction_weight f0_stats f0_normalize f0_feats f0_median
    f0_interp f0_quantizer_path f0_quantizer lambda_commit multispkr_file_dir speakers styles
    f0_vq_params f0_encoder_params f0_decoder_params""".split()
)

# Generator keys whose feature this implementation lacks, with what is missing.
UNSUPPORTED = {
    "f0": "a continuous (or quantised) f0 input next to the units",
    "f0_quant_num_bin": "a quantised-f0 embedding (f0_quant_embed)",
    "embedder_params": "a speaker embedder (a speaker vector instead of a speaker id)",
    "code_encoder_params": "a VQ-VAE code encoder",
    "code_vq_params": "a VQ-VAE code quantiser",
}

# SpiritLM Base's generator as far as public sources give it (its config.json is not in the
# spiritlm repository): speech-resynthesis's Expresso generator (units + speaker + style, 512
# channels, ResBlock1 kernels 3/7/11) at SpiritLM's 25 Hz units (640 samples per unit at 16 kHz,
# so one more x4 stage) with a duration predictor; 14M parameters, as SpiritLM reports. For
# benchmarks and shape tests with random weights; an imported generator.pt brings its own.
SPIRITLM_BASE_SHAPED = {
    "resblock": "1",
    "upsample_rates": [5, 4, 4, 4, 2],
    "upsample_kernel_sizes": [11, 8, 8, 8, 4],
    "upsample_initial_channel": 512,
    "resblock_kernel_sizes": [3, 7, 11],
    "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
    "num_embeddings": 501,
    "embedding_dim": 128,
    "model_in_dim": 384,
    "multispkr": "from_input_file",
    "num_speakers": 4,
    "multistyle": "from_input_file",
    "num_styles": 10,
    "code_hop_size": 640,
    "sampling_rate": 16000,
    "dur_predictor_params": {
        "encoder_embed_dim": 128,
        "var_pred_hidden_dim": 128,
        "var_pred_kernel_size": 3,
        "var_pred_dropout": 0.5,
    },
}


@dataclass(frozen=True)
class DurPredictorParams:
    """speech-resynthesis's VariancePredictor: two conv + ReLU + LayerNorm blocks, a projection."""

    encoder_embed_dim: int
    var_pred_hidden_dim: int
    var_pred_kernel_size: int
    var_pred_dropout: float = 0.5


@dataclass(frozen=True)
class VocoderConfig:
    upsample_rates: tuple[int, ...]
    upsample_kernel_sizes: tuple[int, ...]
    upsample_initial_channel: int
    resblock_kernel_sizes: tuple[int, ...]
    resblock_dilation_sizes: tuple[tuple[int, ...], ...]
    num_embeddings: int
    embedding_dim: int
    model_in_dim: int = 80
    resblock: str = "1"
    dur_predictor_params: DurPredictorParams | None = None
    # speaker / style ids, one per utterance ("from_input_file", "single" or true switch them on)
    multispkr: bool | str | None = None
    num_speakers: int = 200
    multistyle: bool | str | None = None
    num_styles: int = 100
    # pitch / style codes at their own frame rate, upsampled to the unit rate by hop ratio
    num_f0_tokens: int | None = None
    f0_hop_size: int | None = None
    num_style_tokens: int | None = None
    style_hop_size: int | None = None
    code_hop_size: int | None = None
    sampling_rate: int = 16000
    # unsupported features (UNSUPPORTED): accepted only when switched off
    f0: bool | None = None
    f0_quant_num_bin: int = 0
    embedder_params: dict | None = None
    embedder_dim: int | None = None
    code_encoder_params: dict | None = None
    code_vq_params: dict | None = None

    @property
    def hop_length(self) -> int:
        """Waveform samples per unit frame (the product of the upsampling rates)."""
        return math.prod(self.upsample_rates)

    @property
    def num_kernels(self) -> int:
        return len(self.resblock_kernel_sizes)

    @property
    def has_speaker(self) -> bool:
        return bool(self.multispkr)

    @property
    def has_style(self) -> bool:
        return bool(self.multistyle)

    @property
    def f0_ratio(self) -> int | None:
        """Unit frames per pitch code (CodeGenerator.hubert_to_f0), or None without pitch codes."""
        if not self.num_f0_tokens:
            return None
        return round(self.f0_hop_size / self.code_hop_size)

    @property
    def style_ratio(self) -> int | None:
        """Unit frames per style code (CodeGenerator.hubert_to_style)."""
        if not self.num_style_tokens:
            return None
        return round(self.style_hop_size / self.code_hop_size)

    def channels(self, stage: int) -> int:
        """Channels after upsampling stage `stage` (-1: after conv_pre)."""
        return self.upsample_initial_channel // 2 ** (stage + 1)

    def conditions(self) -> list[str]:
        """The embeddings concatenated to the unit embedding, in the reference's order."""
        names = []
        if self.num_f0_tokens:
            names.append("f0_dict")
        if self.num_style_tokens:
            names.append("style_dict")
        if self.has_speaker:
            names.append("spkr")
        if self.has_style:
            names.append("style")
        return names

    def validate(self) -> None:
        def bad(key: str, why: str):
            raise ConfigError(f"{key}: {why}")

        for key, what in UNSUPPORTED.items():
            if getattr(self, key):
                bad(key, f"{getattr(self, key)!r} asks for {what}, which tinywave's vocoder lacks")
        if self.resblock != "1":
            bad("resblock", f'{self.resblock!r}: only ResBlock1 ("1", SpiritLM\'s) is supported')
        if not self.upsample_rates:
            bad("upsample_rates", "empty")
        if len(self.upsample_kernel_sizes) != len(self.upsample_rates):
            bad("upsample_kernel_sizes", "needs one kernel size per upsample rate")
        for i, (u, k) in enumerate(zip(self.upsample_rates, self.upsample_kernel_sizes)):
            if u < 1 or k < u or (k - u) % 2:
                # padding (k - u) // 2 then gives rate * frames (+1 for odd k - u) samples
                bad(
                    f"upsample_kernel_sizes[{i}]",
                    f"kernel {k} with rate {u}: the scheme needs kernel >= rate and kernel - rate "
                    "even (otherwise a stage does not give exactly rate x its input length)",
                )
            if self.channels(i) < 1:
                bad("upsample_initial_channel", f"{self.upsample_initial_channel} halves to 0")
        if not self.resblock_kernel_sizes:
            bad("resblock_kernel_sizes", "empty")
        if len(self.resblock_dilation_sizes) != len(self.resblock_kernel_sizes):
            bad("resblock_dilation_sizes", "needs one list of dilations per resblock kernel size")
        for i, k in enumerate(self.resblock_kernel_sizes):
            if k < 1 or k % 2 == 0:
                bad(f"resblock_kernel_sizes[{i}]", f"{k}: must be odd (same-length convolutions)")
            if not self.resblock_dilation_sizes[i] or min(self.resblock_dilation_sizes[i]) < 1:
                bad(f"resblock_dilation_sizes[{i}]", "needs dilations >= 1")
        for key in ("num_embeddings", "embedding_dim", "num_speakers", "num_styles"):
            if getattr(self, key) < 1:
                bad(key, f"{getattr(self, key)} must be >= 1")
        for tokens, hop in (
            ("num_f0_tokens", "f0_hop_size"),
            ("num_style_tokens", "style_hop_size"),
        ):
            if getattr(self, tokens):
                for key in (hop, "code_hop_size"):
                    if not getattr(self, key) or getattr(self, key) < 1:
                        bad(key, f"needed (a positive number of samples) with {tokens}")
                if round(getattr(self, hop) / self.code_hop_size) < 1:
                    bad(hop, f"shorter than half of code_hop_size {self.code_hop_size}")
        expected = self.embedding_dim * (1 + len(self.conditions()))
        if self.model_in_dim != expected:
            parts = " + ".join(["units"] + self.conditions())
            bad(
                "model_in_dim",
                f"{self.model_in_dim}, but the generator's input is {parts}, "
                f"{1 + len(self.conditions())} x embedding_dim {self.embedding_dim} = {expected}",
            )
        dp = self.dur_predictor_params
        if dp is not None:
            if dp.encoder_embed_dim != self.embedding_dim:
                bad(
                    "dur_predictor_params.encoder_embed_dim",
                    f"{dp.encoder_embed_dim} differs from embedding_dim {self.embedding_dim}",
                )
            if dp.var_pred_kernel_size != 3:
                # the reference pads its second conv by 1 whatever the kernel: only 3 keeps length
                bad("dur_predictor_params.var_pred_kernel_size", "only 3 keeps the unit count")

    @classmethod
    def from_json_dict(
        cls, data: dict, where: str = "config.json", allow_unknown: bool = False
    ) -> tuple["VocoderConfig", list[str]]:
        """The config from a config.json mapping; also the unknown keys that were ignored (only
        with `allow_unknown`; otherwise an unknown key is a ConfigError naming it)."""
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: expected a JSON object")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields - TRAINING_KEYS)
        if unknown and not allow_unknown:
            raise ConfigError(
                f"{where}: unknown key(s) {', '.join(unknown)}: tinywave's vocoder does not know "
                "whether they change the generator (allow_unknown_keys=True imports regardless)",
                param=(None, "allow_unknown_keys"),
            )
        try:
            return from_dict(cls, {k: v for k, v in data.items() if k in fields}), unknown
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None

    @classmethod
    def from_file(cls, path: str | Path, allow_unknown: bool = False):
        path = Path(path)
        if not path.is_file():
            raise MissingInputError(f"{path}: vocoder config not found")
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise InputError(f"{path}: not a readable JSON config ({e})") from None
        return cls.from_json_dict(data, where=str(path), allow_unknown=allow_unknown)

    def to_json_dict(self) -> dict:
        """The config.json form: defaults of switched-off features left out."""
        out = to_dict(self)
        for key in list(out):
            if key in UNSUPPORTED or key == "embedder_dim" or out[key] is None:
                out.pop(key)
        return out

    def frame_context(self) -> tuple[int, int]:
        """(left, right): how many unit frames before and after a frame can change its samples.

        Derived exactly from the layers: the interval of inputs that one frame's output samples
        [0, hop) read is carried back through conv_post (kernel 7), each stage's residual blocks
        (the widest: sum over dilations d of (d + 1)(k - 1) / 2 samples each side) and transposed
        convolution (output n reads inputs m with 0 <= n + p - m * s < k), and conv_pre (7)."""
        lo, hi = -3, self.hop_length - 1 + 3  # conv_post
        for i in reversed(range(len(self.upsample_rates))):
            r = max(
                sum((d + 1) * (k - 1) // 2 for d in dils)
                for k, dils in zip(self.resblock_kernel_sizes, self.resblock_dilation_sizes)
            )
            lo, hi = lo - r, hi + r
            s, k = self.upsample_rates[i], self.upsample_kernel_sizes[i]
            p = (k - s) // 2
            lo, hi = -((-(lo + p - k + 1)) // s), (hi + p) // s  # ceil, floor
        lo, hi = lo - 3, hi + 3  # conv_pre
        return -lo, hi
