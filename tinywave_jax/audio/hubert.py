"""Phonetic units from a Hugging Face `HubertModel` checkpoint (e.g. mHuBERT-25Hz converted to HF):
hidden states of one transformer layer, assigned to the nearest k-means centroid.

`layer` counts like fairseq's `output_layer`: layer L is the output of the L-th transformer block,
i.e. `hidden_states[L]` of `output_hidden_states=True` (0 = the input of the first block).
The model's hop (product of its conv strides) must equal SAMPLE_RATE / frame_rate: mHuBERT-25Hz has
a 640-sample hop, the usual 50 Hz HuBERT 320. The waveform is fed as is (fairseq HuBERT-base was
trained without normalisation); set `normalize_waveform` for checkpoints trained with it.
The whole utterance is encoded at once (attention is quadratic: split very long files first).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from ..errors import ConfigError, InputError
from .features import check_frame_rate, hop_samples
from .io import SAMPLE_RATE


@dataclasses.dataclass
class HubertModelConfig:
    model_dir: str  # HF checkpoint folder; relative paths: to the units folder
    layer: int = 11
    frame_rate: float = 25.0  # Hz; must match the model's conv stride product
    normalize_waveform: bool = False

    def validate(self):
        check_frame_rate(self.frame_rate, "phonetic.hubert.frame_rate")
        if self.layer < 0:
            raise ConfigError(f"phonetic.hubert.layer: must be >= 0, got {self.layer}")


def conv_output_length(n_samples: int, kernels, strides) -> int:
    """Frames the HuBERT conv feature encoder gives for `n_samples` (no padding)."""
    for k, s in zip(kernels, strides):
        n_samples = (n_samples - k) // s + 1 if n_samples >= k else 0
    return max(n_samples, 0)


class HubertFeatures:
    """Layer-`layer` hidden states [frames, hidden] (float32, CPU) of a local HF HubertModel."""

    def __init__(self, cfg: HubertModelConfig, base_dir: Path | None = None):
        import torch  # the torch extra
        from transformers import HubertModel  # the torch extra

        path = Path(cfg.model_dir)
        if base_dir is not None and not path.is_absolute():
            path = base_dir / path
        if not (path / "config.json").is_file():
            raise InputError(f"{path}: not a Hugging Face HubertModel folder (no config.json)")
        self.model = HubertModel.from_pretrained(str(path), dtype=torch.float32).eval()
        conf = self.model.config
        self.kernels, self.strides = tuple(conf.conv_kernel), tuple(conf.conv_stride)
        model_hop = int(np.prod(self.strides))
        if model_hop != hop_samples(cfg.frame_rate):
            raise InputError(
                f"{path}: the model's conv stride product is {model_hop} samples "
                f"({SAMPLE_RATE / model_hop:g} Hz) but the configured frame rate "
                f"{cfg.frame_rate:g} Hz needs a hop of {hop_samples(cfg.frame_rate)} samples"
            )
        if cfg.layer > conf.num_hidden_layers:
            raise InputError(
                f"{path}: layer {cfg.layer} asked but the model has {conf.num_hidden_layers} layers"
            )
        self.cfg, self.path, self.dim = cfg, path, conf.hidden_size
        # Shortest input giving one frame (the conv encoder's receptive field).
        self.min_samples = 1
        while conv_output_length(self.min_samples, self.kernels, self.strides) < 1:
            self.min_samples += 1

    def __call__(self, wav: np.ndarray) -> np.ndarray:
        import torch  # the torch extra

        x = torch.from_numpy(np.asarray(wav, dtype=np.float32))[None]
        if self.cfg.normalize_waveform:
            x = (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-7)
        with torch.inference_mode():
            out = self.model(x, output_hidden_states=True)
        return out.hidden_states[self.cfg.layer][0].float().numpy()
