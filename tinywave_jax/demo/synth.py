"""espeak-ng speech with word timings known by construction.

A *bank* is one synthesis of the words an utterance needs: the utterance is the concatenation of
its words' waveforms with fixed pauses, so every word's start and end is exact. Every utterance
gets its own bank, spoken by a variant of its voice with its own speed and pitch offset
(`utterance_voice`), so no two utterances share a waveform, as no two recordings do: a model
must learn words, not memorise a few renderings of them. Training audio uses even speed offsets
and held-out (validation, test, benchmark) audio odd ones, so no held-out word waveform can equal
a training one. One espeak-ng call renders a chunk of words separated by long SSML breaks and is
cut at those silences; a chunk whose cut does not give one piece per word is rendered word by
word instead. Banks are resampled to the extractors' 16 kHz, so utterances are written at 16 kHz.
"""

from __future__ import annotations

import dataclasses
import io
import math
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

import numpy as np

ESPEAK_RATE = 22050  # espeak-ng's output rate
RATE = 16000  # banks and utterances (the extractors' rate: no resampling later)
WORD_GAP_S = 0.06  # pause between words
SENTENCE_GAP_S = 0.30  # pause after a sentence
EDGE_S = 0.10  # silence at the start and end of an utterance
# Every word starts on the 25 Hz unit-frame grid (40 ms = 882 samples at 22050 Hz, 640 at the
# extractor's 16 kHz), so a word spoken twice gets the same frames, and the same units, wherever
# it occurs within one bank; a jittered start would change them and hide repetitions from the model.
WORD_ALIGN = 640
_BREAK_MS = 400  # SSML break between words of one espeak call
_SILENT = 0.01  # |amplitude| below this is silence (espeak output is clean)
_CHUNK = 40  # words per espeak call


@dataclasses.dataclass(frozen=True)
class Voice:
    name: str  # folder / speaker name
    espeak: str  # espeak-ng voice, e.g. "en-us+m1"
    speed: int  # words per minute
    pitch: int  # 0-99


# The target-domain voice (teacher correction, distillation, benchmarks), then the other voices
# of the teacher's pretraining corpus.
TARGET_VOICE = Voice("target", "en-us+m3", 160, 50)
OTHER_VOICES = (
    Voice("v0", "en-us+m1", 175, 40),
    Voice("v1", "en+f3", 165, 65),
    Voice("v2", "en-gb+m3", 155, 30),
    Voice("v3", "en-us+f2", 185, 55),
    Voice("v4", "en+m7", 170, 50),
    Voice("v5", "en-gb+f4", 160, 45),
)
VOICES = (TARGET_VOICE, *OTHER_VOICES)


def utterance_voice(voice: Voice, key: str, held_out: bool) -> Voice:
    """The variant of `voice` that speaks utterance `key` (the same for the same key): speed offset
    even in [-14, 14] wpm for training audio, odd in [-13, 13] for held-out audio; pitch offset in
    [-8, 8]."""
    import hashlib

    seed = int.from_bytes(hashlib.sha256(f"{voice.name}/{key}".encode()).digest()[:8], "little")
    rng = np.random.default_rng(seed)
    speed = 2 * int(rng.integers(-7, 8 - held_out)) + held_out
    pitch = int(rng.integers(-8, 9))
    return dataclasses.replace(
        voice, speed=voice.speed + speed, pitch=min(99, max(0, voice.pitch + pitch))
    )


def _espeak(text: str, voice: Voice, ssml: bool) -> np.ndarray:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError(
            "espeak-ng is not installed: run `make espeak` (apt-get install espeak-ng)"
        )
    cmd = [exe, "--stdout", "-v", voice.espeak, "-s", str(voice.speed), "-p", str(voice.pitch)]
    out = subprocess.run(
        cmd + (["-m"] if ssml else []) + [text], check=True, capture_output=True
    ).stdout
    import soundfile as sf

    wav, rate = sf.read(io.BytesIO(out), dtype="float32")
    if rate != ESPEAK_RATE:
        raise RuntimeError(f"espeak-ng produced {rate} Hz audio, expected {ESPEAK_RATE}")
    return wav


def _sound_runs(wav: np.ndarray, min_gap_s: float) -> list[tuple[int, int]]:
    """(start, end) samples of the sounding parts, merging parts closer than `min_gap_s`."""
    hop = ESPEAK_RATE // 200  # 5 ms blocks
    n = len(wav) // hop
    loud = np.abs(wav[: n * hop]).reshape(n, hop).max(axis=1) > _SILENT
    edges = np.flatnonzero(np.diff(np.r_[0, loud.astype(np.int8), 0]))
    runs = [[a, b] for a, b in zip(edges[::2], edges[1::2])]
    merged: list = []
    for a, b in runs:
        if merged and (a - merged[-1][1]) * hop < min_gap_s * ESPEAK_RATE:
            merged[-1][1] = b
        else:
            merged.append([a, b])
    return [(a * hop, b * hop) for a, b in merged]


def _trim(wav: np.ndarray) -> np.ndarray:
    runs = _sound_runs(wav, 1.0)
    if not runs:
        raise RuntimeError("espeak-ng produced silence")
    return wav[runs[0][0] : runs[-1][1]]


def _render_chunk(words: list[str], voice: Voice) -> dict[str, np.ndarray]:
    ssml = "<speak>" + f' <break time="{_BREAK_MS}ms"/> '.join(words) + "</speak>"
    wav = _espeak(ssml, voice, ssml=True)
    runs = _sound_runs(wav, 0.6 * _BREAK_MS / 1000)
    if len(runs) == len(words):
        return {w: wav[a:b] for w, (a, b) in zip(words, runs)}
    return {w: _trim(_espeak(w, voice, ssml=False)) for w in words}  # could not cut: one by one


def synthesize_words(words, voice: Voice, threads: int = 1) -> dict[str, np.ndarray]:
    """A bank: word -> trimmed waveform (float32, RATE Hz) for each distinct word."""
    from scipy.signal import resample_poly

    words = sorted(set(words))
    chunks = [words[i : i + _CHUNK] for i in range(0, len(words), _CHUNK)]
    bank: dict[str, np.ndarray] = {}
    with ThreadPoolExecutor(threads) as pool:
        for part in pool.map(lambda c: _render_chunk(c, voice), chunks):
            bank.update(part)
    g = math.gcd(RATE, ESPEAK_RATE)
    return {
        w: resample_poly(x, RATE // g, ESPEAK_RATE // g).astype(np.float32)
        for w, x in sorted(bank.items())
    }


def render(
    sentences: list[list[str]], bank: dict[str, np.ndarray] | list[dict[str, np.ndarray]]
) -> tuple[np.ndarray, list[tuple[str, float, float]]]:
    """Sentences (lists of words) -> (waveform, [(word, start_s, end_s), ...]); every word starts
    at a multiple of WORD_ALIGN samples (the pauses are stretched up to the grid). `bank`: one
    for all sentences, or one per sentence (a change of voice at a sentence boundary)."""
    banks = bank if isinstance(bank, list) else [bank] * len(sentences)

    def to_grid(n: int) -> int:
        return -(-n // WORD_ALIGN) * WORD_ALIGN

    pieces, words = [np.zeros(to_grid(int(EDGE_S * RATE)), np.float32)], []
    t = len(pieces[0])
    for k, sentence in enumerate(sentences):
        for i, w in enumerate(sentence):
            wav = banks[k][w]
            words.append((w, t / RATE, (t + len(wav)) / RATE))
            gap = (
                SENTENCE_GAP_S if i == len(sentence) - 1 and k < len(sentences) - 1 else WORD_GAP_S
            )
            end = t + len(wav) + int(gap * RATE)
            pieces += [wav, np.zeros(to_grid(end) - t - len(wav), np.float32)]
            t = to_grid(end)
    pieces.append(np.zeros(int(EDGE_S * RATE), np.float32))
    return np.concatenate(pieces), words


def write_wav(path, wav: np.ndarray) -> None:
    import soundfile as sf

    sf.write(str(path), wav, RATE, subtype="PCM_16")
