"""Reading audio files as float32 mono at 16 kHz, and listing the audio files of a corpus."""

from __future__ import annotations

from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly  # slow first import; 16 kHz files skip it

from ..errors import InputError, MissingInputError

SAMPLE_RATE = 16000
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")
# Below one 16-bit LSB (3e-5): the file holds digital silence, nothing a unit extractor can use.
SILENCE_PEAK = 1e-5


def read_audio(path: str | Path) -> np.ndarray:
    """Reads `path` as float32 mono at SAMPLE_RATE (channels averaged; resample_poly resampling).

    Raises InputError (a ValueError) naming the file when it is missing, unreadable/corrupt, empty
    or silent-only: a missing file is a bad record of a corpus (`units fit --skip-bad` skips it),
    so it is not a MissingInputError.
    """

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: audio file not found")
    try:
        wav, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:  # libsndfile raises its own error type for corrupt/unsupported files
        raise InputError(f"{path}: not readable audio ({e})") from None
    if wav.shape[0] == 0:
        raise InputError(f"{path}: audio file is empty (0 samples)")
    wav = wav.mean(axis=1)
    if rate != SAMPLE_RATE:
        g = gcd(int(rate), SAMPLE_RATE)
        wav = resample_poly(wav, SAMPLE_RATE // g, int(rate) // g).astype(np.float32)
    check_waveform(wav, name=str(path))
    return np.ascontiguousarray(wav, dtype=np.float32)


def check_waveform(wav: np.ndarray, name: str = "waveform", min_samples: int = 1) -> np.ndarray:
    """Validates a mono float waveform; `name` (a file name or 'waveform') goes into the error.
    Too short, non-finite or silent audio is an InputError; a waveform that is not 1-D is a
    caller's bug (read_audio always mixes down), a plain ValueError."""
    wav = np.asarray(wav)
    if wav.ndim != 1:
        raise ValueError(f"{name}: expected a mono 1-D waveform, got shape {wav.shape}")
    if wav.size < min_samples:
        raise InputError(
            f"{name}: audio too short ({wav.size} samples at {SAMPLE_RATE} Hz; "
            f"need at least {min_samples})"
        )
    if not np.all(np.isfinite(wav)):
        raise InputError(f"{name}: waveform holds NaN or infinite samples")
    if np.max(np.abs(wav)) < SILENCE_PEAK:
        raise InputError(f"{name}: audio is silent (peak amplitude below {SILENCE_PEAK})")
    return wav.astype(np.float32, copy=False)


def list_audio(source: str | Path) -> list[Path]:
    """Audio files of a corpus: a directory (searched recursively, sorted) or a manifest file.

    A manifest lists one path per line, relative to the manifest's folder or absolute; text after a
    tab is ignored and `#` lines are comments. A fairseq-style `.tsv` manifest (first line the root
    folder, then `relative_path<TAB>num_samples`) is read the same way, relative to that root.
    """
    source = Path(source)
    if source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
        if not files:
            raise InputError(f"{source}: no audio files ({', '.join(AUDIO_SUFFIXES)}) found")
        return files
    if not source.is_file():
        raise MissingInputError(f"{source}: neither an audio folder nor a manifest file")
    try:
        text = source.read_text()
    except UnicodeDecodeError:
        raise InputError(
            f"{source}: not a text manifest (one audio path per line); pass a folder "
            "of audio files or a manifest listing them"
        ) from None
    lines = [ln.split("\t")[0].strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    root = source.parent
    if source.suffix == ".tsv" and lines and Path(lines[0]).is_dir():
        root, lines = Path(lines[0]), lines[1:]
    files = [p if p.is_absolute() else root / p for p in map(Path, lines)]
    if not files:
        raise InputError(f"{source}: manifest lists no audio files")
    return files
