"""Unit extractors: audio -> per-frame unit streams ("hubert" phonetic units, "pitch", "style").

A units folder holds `units.json` (a UnitsConfig) and the arrays it names (centroids, pitch bin
edges, style normalisation), paths relative to the folder. `units fit` writes one with built-in
spectral phonetic units; a HuBERT spec folder is the same file with `phonetic.kind: hubert`:

    {"format": "tinywave-units/1",
     "phonetic": {"kind": "hubert", "centroids": "km500.npy",
                  "hubert": {"model_dir": "/models/mhubert-25hz-hf", "layer": 11,
                             "frame_rate": 25}},
     "pitch": null, "style": null}
"""

from __future__ import annotations

import abc
import dataclasses
import json
from pathlib import Path
from typing import Literal

import numpy as np

from ..config import from_dict, to_dict
from ..errors import ConfigError, InputError, MissingInputError
from . import vtln
from .features import SpectralConfig, hop_samples, phonetic_features, timestamps
from .hubert import HubertFeatures, HubertModelConfig
from .io import check_waveform
from .kmeans import load_centroids, nearest_centroid
from .lda import project
from .pitch import PitchConfig, normalised_log_f0, quantise_pitch, speaker_mean, tracker_f0
from .style import STYLE_FEATURES, StyleConfig, style_features

CONFIG_FILE = "units.json"
FORMAT = "tinywave-units/1"


@dataclasses.dataclass
class PhoneticConfig:
    kind: Literal["spectral", "hubert"] = "spectral"
    centroids: str = "phonetic_centroids.npy"
    # an affine projection [dim + 1, out] applied to the features before k-means (audio/lda.py;
    # `units fit --lda-dims`); None: the features as they are
    projection: str | None = None
    # spectral.vtln: the codebook each utterance's mel-filter warp is chosen against [k, dim
    # without context frames] (audio/vtln.py; `units fit --vtln`)
    warp_codebook: str | None = None
    spectral: SpectralConfig = dataclasses.field(default_factory=SpectralConfig)
    hubert: HubertModelConfig | None = None

    def validate(self):
        if self.kind == "hubert" and self.hubert is None:
            raise ConfigError("phonetic.hubert: required when phonetic.kind is 'hubert'")

    @property
    def frame_rate(self) -> float:
        return self.hubert.frame_rate if self.kind == "hubert" else self.spectral.frame_rate


@dataclasses.dataclass
class PitchFiles(PitchConfig):
    edges: str = "pitch_edges.npy"  # [bins - 2] float64 quantile edges


@dataclasses.dataclass
class StyleFiles(StyleConfig):
    centroids: str = "style_centroids.npy"  # [classes, STYLE_FEATURES] in standardised units
    norm: str = "style_norm.npy"  # [2, STYLE_FEATURES]: training mean, std


@dataclasses.dataclass
class UnitsConfig:
    format: str = FORMAT
    phonetic: PhoneticConfig = dataclasses.field(default_factory=PhoneticConfig)
    pitch: PitchFiles | None = None
    style: StyleFiles | None = None

    def validate(self):
        if self.format != FORMAT:
            raise ConfigError(f"format: expected {FORMAT!r}, got {self.format!r}")


class UnitExtractor(abc.ABC):
    """Base of every extractor. `extract` returns stream name -> (int32 ids in
    [0, vocab_sizes[name]), float64 start times in seconds), one entry per frame, not deduplicated.
    "hubert" is always there (phonetic units, whatever produced them); "pitch" and "style" when the
    extractor is configured for expressive tokens."""

    vocab_sizes: dict[str, int]
    frame_rates: dict[str, float]

    @abc.abstractmethod
    def extract(
        self, wav: np.ndarray, f0_mean: float | None = None
    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """`f0_mean`: the speaker's mean natural-log F0 (log Hz) over voiced frames, used for pitch
        and style normalisation; None uses the utterance's own mean."""


class StreamExtractor(UnitExtractor):
    """Phonetic units (spectral k-means or HuBERT k-means) plus optional pitch and style tokens."""

    def __init__(self, cfg: UnitsConfig, directory: str | Path):
        self.cfg, self.directory = cfg, Path(directory)
        ph = cfg.phonetic
        if ph.kind == "hubert":
            self.hubert = HubertFeatures(ph.hubert, base_dir=self.directory)
            dim, self.min_samples = self.hubert.dim, self.hubert.min_samples
        else:
            self.hubert = None
            dim, self.min_samples = ph.spectral.dim, hop_samples(ph.spectral.frame_rate)
        self.warp_codebook = None
        if ph.kind == "spectral" and ph.spectral.vtln:
            if ph.warp_codebook is None:
                raise InputError(
                    f"{self.directory}: phonetic.spectral.vtln is set but phonetic.warp_codebook "
                    "names no file (refit the units with `units fit --vtln`)"
                )
            path = self._file(ph.warp_codebook)
            self.warp_codebook = _load_array(path, "VTLN warp codebook")
            base = ph.spectral.dim // (2 * ph.spectral.context_frames + 1)
            if self.warp_codebook.ndim != 2 or self.warp_codebook.shape[1] != base:
                raise InputError(
                    f"{path}: expected a VTLN warp codebook of shape [k, {base}], got "
                    f"{self.warp_codebook.shape}"
                )
        self.projection = None
        if ph.projection is not None:
            path = self._file(ph.projection)
            self.projection = _load_array(path, "phonetic projection")
            if self.projection.ndim != 2 or self.projection.shape[0] != dim + 1:
                raise InputError(
                    f"{path}: expected a phonetic projection of shape [{dim + 1}, out] for "
                    f"features of dim {dim}, got {self.projection.shape}"
                )
            dim = self.projection.shape[1]
        self.centroids = load_centroids(self._file(ph.centroids), dim)
        self.vocab_sizes = {"hubert": len(self.centroids)}
        self.frame_rates = {"hubert": ph.frame_rate}
        if cfg.pitch is not None:
            self.pitch_edges = _load_array(self._file(cfg.pitch.edges), "pitch edges")
            if self.pitch_edges.shape != (cfg.pitch.bins - 2,):
                raise InputError(
                    f"{self._file(cfg.pitch.edges)}: expected {cfg.pitch.bins - 2} "
                    f"pitch edges for {cfg.pitch.bins} bins, got "
                    f"{self.pitch_edges.shape}"
                )
            self.vocab_sizes["pitch"] = cfg.pitch.bins
            self.frame_rates["pitch"] = cfg.pitch.frame_rate
        if cfg.style is not None:
            self.style_centroids = load_centroids(self._file(cfg.style.centroids), STYLE_FEATURES)
            self.style_norm = _load_array(self._file(cfg.style.norm), "style normalisation")
            if self.style_norm.shape != (2, STYLE_FEATURES):
                raise InputError(
                    f"{self._file(cfg.style.norm)}: expected shape (2, "
                    f"{STYLE_FEATURES}), got {self.style_norm.shape}"
                )
            self.vocab_sizes["style"] = len(self.style_centroids)
            self.frame_rates["style"] = cfg.style.frame_rate

    def _file(self, name: str) -> Path:
        path = Path(name)
        return path if path.is_absolute() else self.directory / path

    def phonetic_features(self, wav: np.ndarray) -> np.ndarray:
        if self.hubert is not None:
            feats = self.hubert(wav)
        elif self.warp_codebook is not None:
            feats = vtln.features(wav, self.cfg.phonetic.spectral, self.warp_codebook)
        else:
            feats = phonetic_features(wav, self.cfg.phonetic.spectral)
        return feats if self.projection is None else project(feats, self.projection)

    def extract(self, wav, f0_mean=None):
        wav = check_waveform(wav, min_samples=self.min_samples)
        ids = nearest_centroid(self.phonetic_features(wav), self.centroids)
        out = {"hubert": (ids, timestamps(len(ids), self.frame_rates["hubert"]))}
        if self.cfg.pitch is None and self.cfg.style is None:
            return out
        pitch_cfg = self.cfg.pitch or PitchConfig()
        track = tracker_f0(wav, pitch_cfg)
        if self.cfg.pitch is not None:
            values = normalised_log_f0(wav, pitch_cfg, f0_mean, track=track)
            out["pitch"] = (
                quantise_pitch(values, self.pitch_edges),
                timestamps(len(values), pitch_cfg.frame_rate),
            )
        if self.cfg.style is not None:
            feats = style_features(wav, self.cfg.style, track, speaker_mean(*track[:2], f0_mean))
            mean, std = self.style_norm
            style = nearest_centroid((feats - mean) / std, self.style_centroids)
            out["style"] = (style, timestamps(len(style), self.cfg.style.frame_rate))
        return out


def _load_array(path: Path, what: str) -> np.ndarray:
    """A `.npy` array a units config names; a missing or unreadable file is named."""
    if not path.is_file():
        raise MissingInputError(f"{path}: {what} file not found")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise InputError(f"{path}: cannot read {what} ({e})") from None


def read_units_config(directory: str | Path) -> UnitsConfig:
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise InputError(
            f"{directory}: not a units folder (no {CONFIG_FILE}); write one with "
            "`tinywave units fit` or `tinywave units hubert-spec`"
        )
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    try:
        return from_dict(UnitsConfig, data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def write_units_config(cfg: UnitsConfig, directory: str | Path) -> Path:
    path = Path(directory) / CONFIG_FILE
    path.write_text(json.dumps(to_dict(cfg), indent=2) + "\n")
    return path


def load_extractor(path: str | Path) -> UnitExtractor:
    """The extractor described by units folder `path` (written by `units fit` or a HuBERT spec)."""
    return StreamExtractor(read_units_config(path), path)
