"""`units fit`: fits built-in phonetic units, pitch bins and style classes on a user's audio."""

from __future__ import annotations

import dataclasses
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import ConfigError, InputError, OutputExistsError
from ..jsonl import iter_jsonl
from . import vtln as vtln_lib
from .extractor import (
    CONFIG_FILE,
    PhoneticConfig,
    PitchFiles,
    StyleFiles,
    UnitsConfig,
    load_extractor,
    read_units_config,
    write_units_config,
)
from .features import SpectralConfig, hop_samples, phonetic_features, stack_context
from .io import SAMPLE_RATE, check_waveform, read_audio
from .kmeans import clamp_clusters, fit_kmeans
from .lda import fit_word_lda, project
from .pitch import fit_pitch_edges, normalised_log_f0, speaker_mean, tracker_f0
from .style import style_features


@dataclasses.dataclass
class FitSummary:
    files: int
    skipped: int
    hours: float
    frames: dict[str, int]  # training frames per stream
    vocab_sizes: dict[str, int]
    out_dir: str


def _resolve_phonetic(spec_dir: Path) -> PhoneticConfig:
    """The phonetic section of a HuBERT spec folder with its paths made absolute."""
    ph = read_units_config(spec_dir).phonetic
    if ph.kind != "hubert":
        raise InputError(
            f"hubert_spec {spec_dir}: not a HuBERT spec folder (phonetic.kind hubert)",
            param="hubert_spec",
        )
    absolute = lambda p: str(p if Path(p).is_absolute() else (spec_dir / p).resolve())  # noqa: E731
    return dataclasses.replace(
        ph,
        centroids=absolute(ph.centroids),
        hubert=dataclasses.replace(ph.hubert, model_dir=absolute(ph.hubert.model_dir)),
    )


def read_word_timed_manifest(path: str | Path) -> tuple[list[Path], list[list]]:
    """A speech manifest (jsonl: `path` relative to its folder or absolute, `words` as
    [[word, start_s, end_s], ...]) -> (audio files, word times per file); a line without
    usable word times is named."""
    path = Path(path)
    files, word_times = [], []
    for where, row in iter_jsonl(path, "speech manifest"):
        try:
            words = [(str(w), float(s), float(e)) for w, s, e in row["words"]]
            audio = Path(row["path"])
        except (KeyError, TypeError, ValueError):
            raise InputError(
                f"{where}: needs `path` and `words` as [[word, start_s, end_s], ...] "
                "(word times label the frames an LDA projection is fitted on)"
            ) from None
        files.append(audio if audio.is_absolute() else path.parent / audio)
        word_times.append(words)
    if not files:
        raise InputError(f"{path}: speech manifest lists no audio files")
    return files, word_times


def fit_units(
    files: list[Path],
    out_dir: str | Path,
    units: int = 100,
    features: str = "mfcc",
    pitch_bins: int = 64,
    style_classes: int = 100,
    seed: int = 0,
    hubert_spec: str | Path | None = None,
    max_hours: float | None = None,
    cmn: bool = True,
    cmn_seconds: float = 0.0,
    cmn_running: bool = False,
    frame_rate: float = SpectralConfig.frame_rate,
    window_seconds: float = SpectralConfig.window_seconds,
    context_frames: int = 0,
    lda_dims: int = 0,
    lda_bins: int = 8,
    vtln: bool = False,
    vtln_seconds: float = SpectralConfig.vtln_seconds,
    word_times: list | None = None,
    skip_bad: bool = False,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
) -> FitSummary:
    """Fits and writes a units folder; `pitch_bins`/`style_classes` 0 leave that stream out.

    With `hubert_spec`, phonetic units come from that HuBERT spec (nothing is fitted for them).
    Files are visited in a seeded random order when `max_hours` caps the training audio.
    `cmn`: subtract each utterance's feature mean (spectral units; see SpectralConfig.cmn);
    `cmn_seconds` > 0: the mean of its first seconds' sounding frames only; `cmn_running`: per
    frame, the mean of all frames so far (from the first `cmn_seconds` on).
    `frame_rate` (Hz) and `window_seconds`: the spectral units' hop and analysis window.
    `lda_dims` > 0: k-means runs on an LDA projection (audio/lda.py) of the features, each with
    `context_frames` frames either side, fitted on labels "word|position" (`lda_bins` parts per
    word) from `word_times`: per file, [(word, start_s, end_s), ...] (a speech manifest's
    `words`). `vtln`: each utterance's mel filters warped by the factor its first `vtln_seconds`
    choose against a codebook fitted here (audio/vtln.py), before any projection and k-means.
    """
    out_dir = Path(out_dir)
    if (out_dir / CONFIG_FILE).exists() and not overwrite:
        raise OutputExistsError(
            f"{out_dir / CONFIG_FILE} exists (pass overwrite=True to replace it)",
            param=(None, "overwrite"),
        )
    if units < 1 and hubert_spec is None:
        raise ConfigError(f"units: must be >= 1, got {units}", param="units")
    if lda_dims < 0 or lda_bins < 1:
        raise ConfigError(
            f"lda_dims: must be >= 0, got {lda_dims}; lda_bins >= 1, got {lda_bins}",
            param=("lda_dims", "lda_bins"),
        )
    if vtln and hubert_spec is not None:
        raise ConfigError("vtln: warps the spectral units' mel filters, not HuBERT's", param="vtln")
    if lda_dims and (hubert_spec is not None or word_times is None):
        raise ConfigError(
            "lda_dims: an LDA projection needs spectral units and word times for every file "
            "(a speech manifest with `words`)",
            param="lda_dims",
        )
    if word_times is not None and len(word_times) != len(files):
        raise InputError(f"word_times: {len(word_times)} entries for {len(files)} files")
    if pitch_bins == 1 or pitch_bins < 0 or style_classes < 0:
        raise ConfigError(
            f"pitch_bins: must be 0 (off) or >= 2, got {pitch_bins}; style_classes >= 0, got "
            f"{style_classes}",
            param=("pitch_bins", "style_classes"),
        )

    phonetic = (
        _resolve_phonetic(Path(hubert_spec))
        if hubert_spec is not None
        else PhoneticConfig(
            kind="spectral",
            spectral=SpectralConfig(
                features=features,
                cmn=cmn,
                cmn_seconds=cmn_seconds,
                cmn_running=cmn_running,
                frame_rate=frame_rate,
                window_seconds=window_seconds,
                context_frames=context_frames,
                vtln=vtln,
                vtln_seconds=vtln_seconds,
            ),
            projection="phonetic_projection.npy" if lda_dims else None,
            warp_codebook="phonetic_warp_codebook.npy" if vtln else None,
        )
    )
    if phonetic.kind == "spectral":
        phonetic.spectral.validate()  # its errors name the field, = fit_units' parameter
    pitch = PitchFiles(bins=pitch_bins) if pitch_bins else None
    style = StyleFiles(classes=style_classes) if style_classes else None
    if pitch:
        pitch.validate()
    if style:
        style.validate()

    min_samples = hop_samples(phonetic.frame_rate)  # one phonetic frame (style needs less)
    order = np.arange(len(files))
    if max_hours is not None:
        np.random.default_rng(seed).shuffle(order)
    phon, used_words, pitch_values, style_rows = [], [], [], []
    seconds, used, skipped, last_log = 0.0, 0, 0, time.monotonic()
    for i, index in enumerate(order):
        path = files[index]
        if max_hours is not None and seconds >= max_hours * 3600:
            break
        try:
            wav = check_waveform(read_audio(path), str(path), min_samples)
        except InputError as e:
            if not skip_bad:
                raise InputError(
                    f"{e} (pass skip_bad=True to leave such files out)", param=(None, "skip_bad")
                ) from None
            warnings.warn(f"skipping {e}", stacklevel=2)
            skipped += 1
            continue
        if phonetic.kind == "spectral":
            spec = phonetic.spectral
            phon.append(vtln_lib.candidates(wav, spec) if vtln else phonetic_features(wav, spec))
            if lda_dims:
                used_words.append(word_times[index])
        if pitch or style:
            track = tracker_f0(wav, pitch or PitchFiles())
            if pitch:
                pitch_values.append(normalised_log_f0(wav, pitch, track=track))
            if style:
                style_rows.append(style_features(wav, style, track, speaker_mean(*track[:2], None)))
        seconds += len(wav) / SAMPLE_RATE
        used += 1
        if time.monotonic() - last_log > 10 or i == len(order) - 1:
            log(f"units fit: read {used} files ({seconds / 3600:.3f} h)")
            last_log = time.monotonic()
    if used == 0:
        raise InputError("units fit: no readable audio among the inputs")

    out_dir.mkdir(parents=True, exist_ok=True)
    frames = {}
    if phonetic.kind == "spectral":
        if vtln:
            codebook, choice = vtln_lib.fit_codebook(phon, phonetic.spectral, seed)
            np.save(out_dir / phonetic.warp_codebook, codebook)
            counts = np.bincount(choice, minlength=len(vtln_lib.WARPS))
            log(
                "units fit: VTLN warps chosen "
                + ", ".join(f"{w}: {n}" for w, n in zip(vtln_lib.WARPS, counts) if n)
            )
            c = phonetic.spectral.context_frames
            phon = [stack_context(f[i], c) for f, i in zip(phon, choice)]
        x = np.concatenate(phon)
        frames["hubert"] = len(x)
        if lda_dims:
            log(f"units fit: LDA to {lda_dims} dims on {len(x)} frames of dim {x.shape[1]}")
            counts = [len(f) for f in phon]
            projection = fit_word_lda(x, counts, used_words, frame_rate, lda_dims, lda_bins)
            np.save(out_dir / phonetic.projection, projection)
            x = project(x, projection)
        k = clamp_clusters(x, units, "phonetic units")
        log(f"units fit: k-means with {k} phonetic units on {len(x)} frames of dim {x.shape[1]}")
        np.save(out_dir / phonetic.centroids, fit_kmeans(x, k, seed=seed))
    if pitch:
        values = np.concatenate(pitch_values)
        frames["pitch"] = len(values)
        np.save(out_dir / pitch.edges, fit_pitch_edges(values, pitch.bins))
        log(
            f"units fit: {pitch.bins} pitch bins from {int(np.isfinite(values).sum())} voiced of "
            f"{len(values)} frames (bin 0 = unvoiced)"
        )
    if style:
        raw = np.concatenate(style_rows)
        frames["style"] = len(raw)
        mean, std = raw.mean(axis=0), np.maximum(raw.std(axis=0), 1e-6)
        z = (raw - mean) / std
        k = clamp_clusters(z, style.classes, "style classes")
        style = dataclasses.replace(style, classes=k)
        log(f"units fit: k-means with {k} style classes on {len(z)} windows")
        np.save(out_dir / style.norm, np.stack([mean, std]))
        np.save(out_dir / style.centroids, fit_kmeans(z, k, seed=seed))
    write_units_config(UnitsConfig(phonetic=phonetic, pitch=pitch, style=style), out_dir)
    vocab = load_extractor(out_dir).vocab_sizes  # proves the folder loads
    summary = FitSummary(
        files=used,
        skipped=skipped,
        hours=seconds / 3600,
        frames=frames,
        vocab_sizes=vocab,
        out_dir=str(out_dir),
    )
    log(
        f"units fit: wrote {out_dir}: {used} files ({skipped} skipped), {summary.hours:.3f} h, "
        f"frames {frames}, vocab {vocab}"
    )
    return summary
