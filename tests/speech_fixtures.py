"""Real speech for tests: espeak-ng synthesises sentences into temporary 22.05 kHz 16-bit wavs.

espeak-ng is a system package (`make espeak` installs it); a missing binary fails loudly.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "She sells sea shells by the sea shore every summer.",
    "How much wood would a woodchuck chuck if it could chuck wood?",
    "Please call Stella and ask her to bring these things with her from the store.",
]
# (voice, words per minute, pitch 0-99): a low male, a female and a higher-pitched male voice.
VOICES = [("en+m3", 160, 35), ("en+f3", 170, 60), ("en-us+m1", 150, 50)]


def synthesize(
    path: str | Path, text: str, voice: str = "en+f3", speed: int = 160, pitch: int = 50
) -> Path:
    """Writes espeak-ng speech for `text` to `path` (wav, 22050 Hz mono 16-bit) and returns it."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError(
            "espeak-ng is not installed: run `make espeak` (apt-get install espeak-ng)"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [exe, "-w", str(path), "-v", voice, "-s", str(speed), "-p", str(pitch), text],
        check=True,
        capture_output=True,
    )
    return path


def two_speakers_with_units(tmp_path: Path) -> Path:
    """tmp_path/audio: two sentences by two voices (one folder per speaker), and
    tmp_path/units: expressive units fitted on them (16 units, 8 pitch bins, 2 styles)."""
    from tinywave_jax.audio.fit import fit_units

    audio = tmp_path / "audio"
    paths = speech_corpus(audio, sentences=SENTENCES[:2], voices=VOICES[:2])
    fit_units(
        paths,
        tmp_path / "units",
        units=16,
        pitch_bins=8,
        style_classes=2,
        seed=0,
        log=lambda *a: None,
    )
    return audio


def speech_corpus(
    directory: str | Path,
    sentences: list[str] = SENTENCES,
    voices: list[tuple[str, int, int]] = VOICES,
) -> list[Path]:
    """One wav per (voice, sentence) pair under `directory/<voice>/`; returns the paths in order."""
    directory = Path(directory)
    paths = []
    for v, (voice, speed, pitch) in enumerate(voices):
        for s, text in enumerate(sentences):
            paths.append(
                synthesize(directory / f"voice{v}" / f"utt{s}.wav", text, voice, speed, pitch)
            )
    return paths
