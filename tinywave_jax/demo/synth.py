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
import re
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
_WORD_RE = re.compile(r"[a-z']+")  # as world.words_of


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

# Natural speech (whole-sentence synthesis): many voices, as Libri-Light has many speakers.
# Distillation voices (the teacher hears them too), the teacher's other voices, and voices no
# model hears in training (the benchmark's unseen-voice column): accents x espeak variants.
DISTILL_VOICES = (
    TARGET_VOICE,
    Voice("d1", "en+f3", 165, 65),
    Voice("d2", "en-gb-scotland+m1", 150, 40),
    Voice("d3", "en-us+f2", 180, 55),
)
PRETRAIN_VOICES = (
    Voice("p0", "en-029+m7", 170, 45),
    Voice("p1", "en-gb-x-rp+f4", 160, 60),
    Voice("p2", "en-us-nyc+m2", 175, 35),
    Voice("p3", "en-gb-x-gbclan+f1", 155, 70),
    Voice("p4", "en-gb-x-gbcwmd+m4", 165, 50),
    Voice("p5", "en-us+f5", 170, 60),
    Voice("p6", "en+m6", 185, 45),
    Voice("p7", "en-gb-scotland+f2", 160, 55),
)
UNSEEN_VOICES = (Voice("unseen", "en-gb-x-rp+m5", 158, 42),)

# One accent (espeak-ng's US English), many speakers: the variants change vocal tract, pitch and
# voice quality but not the phonemes, where the accents above change how words are pronounced
# (bench/unit_robustness.py: a word's units match across two voices of one accent far more often
# than across accents; docs/demo_teacher.md).
US_DISTILL_VOICES = (
    TARGET_VOICE,
    Voice("u1", "en-us+f3", 165, 65),
    Voice("u2", "en-us+m1", 150, 40),
    Voice("u3", "en-us+f2", 180, 55),
)
US_PRETRAIN_VOICES = (
    Voice("u4", "en-us+m7", 170, 45),
    Voice("u5", "en-us+f4", 160, 60),
    Voice("u6", "en-us+m2", 175, 35),
    Voice("u7", "en-us+f1", 155, 70),
    Voice("u8", "en-us+m4", 165, 50),
    Voice("u9", "en-us+f5", 170, 60),
    Voice("u10", "en-us+m6", 185, 45),
    Voice("u11", "en-us+m5", 160, 55),
)
US_UNSEEN_VOICES = (Voice("unseen", "en-us+m8", 158, 42),)
# roster name -> (distillation, other pretraining, unseen) voices of natural speech
ROSTERS = {
    "accents": (DISTILL_VOICES, PRETRAIN_VOICES, UNSEEN_VOICES),
    "us": (US_DISTILL_VOICES, US_PRETRAIN_VOICES, US_UNSEEN_VOICES),
}


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


def _word_spans(sentence: str) -> list[tuple[str, int]]:
    """(word, character offset) of each spoken word of `sentence`, as `world.words_of` splits it."""
    return [
        (m.group().strip("'"), m.start())
        for m in _WORD_RE.finditer(sentence.lower())
        if m.group().strip("'")
    ]


def speak(sentences: list[str], voice: Voice) -> list[tuple[np.ndarray, list]]:
    """One espeak-ng call per sentence (coarticulated, with its own prosody), all by one fresh
    synthesiser (the same sentences in the same order give the same audio) -> per sentence
    (waveform at RATE, [(word, start, end) samples]). Word starts are the synthesiser's word
    events; a word ends where the next starts (the last where the sound ends). espeak-ng joins
    some function words into one phonological word ("in the", "from the") with one event: such
    a group's span is shared out in proportion to its words' letters."""
    from .espeak import synthesize_many

    spoken = synthesize_many(list(sentences), voice.espeak, voice.speed, voice.pitch)
    return [_timed(s, out, voice) for s, out in zip(sentences, spoken)]


def _timed(sentence: str, out, voice: Voice) -> tuple[np.ndarray, list]:
    from scipy.signal import resample_poly

    spans = _word_spans(sentence)
    runs = _sound_runs(out.wav, 1.0)
    if not spans or not runs:
        raise RuntimeError(f"espeak-ng said nothing for {sentence!r} ({voice.espeak})")
    # Some sentences also carry a word event at text position 0 (offset -1) at their end; it
    # starts no word. A first word without its own event starts with the sound (group -1).
    events = sorted(e for e in out.words if e[0] >= 0)
    groups: dict[int, list[str]] = {}  # event index -> the words it starts
    for w, at in spans:
        k = max([i for i, (c, _) in enumerate(events) if c <= at], default=-1)
        groups.setdefault(k, []).append(w)
    order = sorted(groups)
    starts = [runs[0][0] if k < 0 else max(runs[0][0], events[k][1]) for k in order]
    bounds = [*np.minimum(np.maximum.accumulate(starts), runs[-1][1]).tolist(), runs[-1][1]]
    words = []
    for k, a, b in zip(order, bounds, bounds[1:]):
        letters = np.cumsum([0] + [len(w) for w in groups[k]])
        for w, l0, l1 in zip(groups[k], letters, letters[1:]):
            words.append((w, a + (b - a) * l0 // letters[-1], a + (b - a) * l1 // letters[-1]))
    g = math.gcd(RATE, ESPEAK_RATE)
    wav = resample_poly(out.wav, RATE // g, ESPEAK_RATE // g).astype(np.float32)
    scale = RATE / ESPEAK_RATE
    return wav, [(w, int(a * scale), int(b * scale)) for w, a, b in words]


def join(parts) -> tuple[np.ndarray, list[tuple[str, float, float]]]:
    """Spoken sentences [(waveform, [(word, start, end) samples]), ...] (each from `speak`) ->
    one utterance: each sentence cut to its sound, SENTENCE_GAP_S between sentences, EDGE_S of
    silence at both ends; word times in seconds."""
    pieces, words = [np.zeros(int(EDGE_S * RATE), np.float32)], []
    t = len(pieces[0])
    for k, (wav, spoken) in enumerate(parts):
        a, b = spoken[0][1], spoken[-1][2]
        words += [(w, (t + s - a) / RATE, (t + e - a) / RATE) for w, s, e in spoken]
        gap = SENTENCE_GAP_S if k < len(parts) - 1 else EDGE_S
        pieces += [wav[a:b], np.zeros(int(gap * RATE), np.float32)]
        t += b - a + len(pieces[-1])
    return np.concatenate(pieces), words


def write_wav(path, wav: np.ndarray) -> None:
    import soundfile as sf

    sf.write(str(path), wav, RATE, subtype="PCM_16")
