"""Demo audio: the world's stories spoken by espeak-ng voices, as 16 kHz wavs and corpus manifests.

Which audio exists (every utterance its own synthesis, `synth.utterance_voice`):

  pretrain   every training story in the target voice and in one other voice (in turn): the
             teacher's pretraining corpus (`tinywave demo-teacher`)
  distill    the target-voice audio of the first `distill_stories` training stories: the small
             target-domain subset (byte for byte the audio the teacher saw, as Libri-Light is in
             SpiritLM's data) for teacher correction, distillation and the baseline
  heldout    validation and test stories in the target voice: perplexity, and (validation only)
             the learning-rate sweeps' choice
  bench/     test stories as benchmark pairs: ssc/, tsc/, swuggy/ + items.json; for the
             expressive and interleaved variants also salmon/speaker_consistency/ (the ending in
             the story's voice vs. in another pitch range and speed, SALMon's layout) and
             crossmodal.jsonl + crossmodal/ (context and endings as separate audio, with their
             text, for cross-modal topic cloze: `tinywave eval --task cloze_ts` etc.)
  bench_valid/  the same for validation stories: ssc/, tsc/ (and the expressive extras)

No validation or test story is in a training corpus, and held-out audio is synthesised at speeds
no training utterance of that voice uses, so no held-out word waveform equals a training one.
Benchmark folders follow the reference loaders: files sorted by the integer before "_", files
2i and 2i + 1 are (positive, negative); a pair's two files share one synthesis, so their context
audio is identical.
"""

from __future__ import annotations

import dataclasses
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import world as world_text
from .synth import (
    OTHER_VOICES,
    RATE,
    TARGET_VOICE,
    Voice,
    render,
    synthesize_words,
    utterance_voice,
    write_wav,
)

THREADS = 4  # espeak-ng runs as subprocesses: threads overlap them


def _sentences(texts) -> list[list[str]]:
    return [world_text.words_of(s) for s in texts]


def _write(out: Path, rel: str, sentences, bank) -> tuple[Path, list, float]:
    wav, words = render(sentences, bank)
    path = out / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    write_wav(path, wav)
    return path, words, len(wav) / RATE


def _bank(texts, voice: Voice) -> dict:
    return synthesize_words([w for s in _sentences(texts) for w in s], voice)


def _story_row(out: Path, story, voice: Voice, split: str) -> dict:
    variant = utterance_voice(voice, story.id, held_out=split != "train")
    sentences = _sentences(story.sentences)
    rel = f"audio/{voice.name}/{split}/{story.id}.wav"
    _, words, seconds = _write(out, rel, sentences, _bank(story.sentences, variant))
    return {
        "path": rel,
        "id": f"{voice.name}/{story.id}",
        "speaker": voice.name,
        "split": split,
        "transcript": story.text,
        "seconds": round(seconds, 3),
        "words": [[w, round(s, 6), round(e, 6)] for w, s, e in words],
    }


def _map(fn, jobs) -> list:
    with ThreadPoolExecutor(THREADS) as pool:
        return list(pool.map(lambda job: fn(*job), jobs))


def pretrain_rows(out: Path, stories) -> list[dict]:
    """Every training story in the target voice and in one other voice, in turn."""
    jobs = []
    for i, st in enumerate(stories):
        jobs += [
            (out, st, TARGET_VOICE, "train"),
            (out, st, OTHER_VOICES[i % len(OTHER_VOICES)], "train"),
        ]
    return _map(_story_row, jobs)


def distill_rows(out: Path, stories) -> list[dict]:
    """The target-voice utterances of `stories` exactly as in `pretrain_rows`."""
    return _map(_story_row, [(out, st, TARGET_VOICE, "train") for st in stories])


def heldout_rows(out: Path, world: dict) -> list[dict]:
    return _map(
        _story_row,
        [(out, st, TARGET_VOICE, split) for split in ("validation", "test") for st in world[split]],
    )


def other_pitch_range(voice: Voice) -> Voice:
    """The same voice 30 pitch steps away (down from high voices, up from low ones) and 30 wpm
    faster or slower: another speaker's pitch range and rate, nearly the same spectra."""
    up = voice.pitch < 50
    return dataclasses.replace(
        voice, pitch=voice.pitch + (30 if up else -30), speed=voice.speed + (-30 if up else 30)
    )


def _cloze_pair(out: Path, folder: str, k: int, story, other, extras: bool) -> dict:
    """sSC and tSC pairs of one story, all four files from one synthesis; with `extras` also its
    speaker-consistency pair and its cross-modal cloze files."""
    variant = utterance_voice(TARGET_VOICE, story.id, held_out=True)
    bank = _bank((*story.sentences, story.wrong, other.ending), variant)
    context = _sentences(story.context)
    items = {}
    for task, wrong in (("ssc", story.wrong), ("tsc", other.ending)):
        pos, pos_words, _ = _write(
            out,
            f"{folder}/{task}/{2 * k}_{story.id}.wav",
            context + _sentences([story.ending]),
            bank,
        )
        neg, _, _ = _write(
            out, f"{folder}/{task}/{2 * k + 1}_{story.id}.wav", context + _sentences([wrong]), bank
        )
        items[task] = {
            "story": story.id,
            "positive": story.ending,
            "negative": wrong,
            "files": [pos.name, neg.name],
            "ending_start": pos_words[sum(len(s) for s in context)][1],
        }
    if extras:
        ending = _sentences([story.ending])
        shifted = _bank([story.ending], other_pitch_range(variant))
        sub = f"{folder}/salmon/speaker_consistency"
        _write(out, f"{sub}/sample_{k}_0.wav", context + ending, bank)
        _write(out, f"{sub}/sample_{k}_1.wav", context + ending, [bank] * len(context) + [shifted])
        items["voice"] = {"story": story.id, "files": [f"sample_{k}_0.wav", f"sample_{k}_1.wav"]}
        items["crossmodal"] = _crossmodal_files(out, folder, k, story, other, bank)
    return items


def _crossmodal_files(out: Path, folder: str, k: int, story, other, bank) -> dict:
    """One cross-modal topic-cloze line: the context and each ending as their own audio file
    (one synthesis) with their text; the wrong ending is tSC's."""
    line = {}
    for part, texts in (
        ("context", story.context),
        ("positive", [story.ending]),
        ("negative", [other.ending]),
    ):
        rel = f"crossmodal/{part}/{k}_{story.id}.wav"
        _write(out / folder, rel, _sentences(texts), bank)
        line[part] = {"text": " ".join(texts), "audio": rel}
    return line | {"group": story.id}


def _word_pair(out: Path, folder: str, k: int, word: str, nonword: str) -> dict:
    bank = synthesize_words([word, nonword], utterance_voice(TARGET_VOICE, f"word/{word}", True))
    pos, _, _ = _write(out, f"{folder}/swuggy/{2 * k}_{word}.wav", [[word]], bank)
    neg, _, _ = _write(out, f"{folder}/swuggy/{2 * k + 1}_{nonword}.wav", [[nonword]], bank)
    return {"positive": word, "negative": nonword, "files": [pos.name, neg.name]}


def write_bench(
    out: Path, stories, folder: str, word_pairs=(), extras: bool = False
) -> dict[str, int]:
    """sSC / tSC (and word-test) pair folders under `out/folder`; items.json says what each pair
    holds and where the ending starts (s). tSC's wrong ending is the next story's ending.
    `extras`: the speaker-consistency pairs and crossmodal.jsonl too."""
    from ..jsonl import write_jsonl_atomic

    pairs = _map(
        _cloze_pair,
        [
            (out, folder, k, st, stories[(k + 1) % len(stories)], extras)
            for k, st in enumerate(stories)
        ],
    )
    items = {task: [p[task] for p in pairs] for task in ("ssc", "tsc")}
    if extras:
        items["voice"] = [p["voice"] for p in pairs]
        write_jsonl_atomic(out / folder / "crossmodal.jsonl", [p["crossmodal"] for p in pairs])
        items["crossmodal"] = [p["crossmodal"] for p in pairs]
    if word_pairs:
        items["swuggy"] = _map(
            _word_pair, [(out, folder, k, w, n) for k, (w, n) in enumerate(word_pairs)]
        )
    (out / folder).mkdir(parents=True, exist_ok=True)
    (out / folder / "items.json").write_text(json.dumps(items, indent=1))
    return {k: len(v) for k, v in items.items()}


def hours(rows: list[dict]) -> float:
    return round(sum(r["seconds"] for r in rows) / 3600, 4)
