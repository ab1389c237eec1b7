"""Demo audio: the world's stories spoken by espeak-ng voices, as 16 kHz wavs and corpus manifests.

Which audio exists (every utterance its own synthesis, `synth.utterance_voice`):

  pretrain   every training story in the target voice and in one other voice (in turn): the
             teacher's pretraining corpus (`tinywave demo-teacher`)
  distill    the target-voice audio of the first `distill_stories` training stories: the small
             target-domain subset (byte for byte the audio the teacher saw, as Libri-Light is in
             SpiritLM's data) for teacher correction, distillation and the baseline
  heldout    validation and test stories in the target voice: perplexity, and (validation only)
             the learning-rate sweeps' choice
  bench/     test stories as benchmark pairs: ssc/ (in a scene world each story and its
             mirror, world.mirror), tsc/, swuggy/ + items.json; for the
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
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from . import world as world_text
from .synth import (
    OTHER_VOICES,
    RATE,
    ROSTERS,
    TARGET_VOICE,
    Voice,
    join,
    render,
    speak,
    synthesize_words,
    utterance_voice,
    write_wav,
)

THREADS = 4  # word banks: espeak-ng runs as subprocesses, threads overlap them


@dataclasses.dataclass(frozen=True)
class Cast:
    """Who speaks what. `natural`: every sentence one espeak-ng library call (coarticulated,
    word times from its word events) and the voice roster `roster` (synth.ROSTERS: "accents",
    twelve voices over eight English accents; "us", twelve speakers of one accent); otherwise
    the first world's word banks in the target voice (the shipped teacher's speech).

      distill   voices of the distillation corpus (story i in distill[i % n]) and of the
                benchmark's "training voices" column; the teacher hears them too
      pretrain  the teacher's other voices (story i also in pretrain[i % n])
      unseen    voices no model hears in training: the benchmark's "unseen voice" column
    """

    natural: bool = False
    roster: str = "accents"

    @property
    def distill(self) -> tuple[Voice, ...]:
        return ROSTERS[self.roster][0] if self.natural else (TARGET_VOICE,)

    @property
    def pretrain(self) -> tuple[Voice, ...]:
        return ROSTERS[self.roster][1] if self.natural else OTHER_VOICES

    @property
    def unseen(self) -> tuple[Voice, ...]:
        return ROSTERS[self.roster][2] if self.natural else ()

    def voices(self) -> tuple[Voice, ...]:
        return (*self.distill, *self.pretrain, *self.unseen)


def _sentences(texts) -> list[list[str]]:
    return [world_text.words_of(s) for s in texts]


class Speaker:
    """One utterance voice speaking sentences into files; `natural` as in Cast. A sentence said
    twice by one Speaker is synthesised once, so a cloze pair's context audio is identical."""

    def __init__(self, voice: Voice, natural: bool, texts=()):
        """`texts`: every sentence this speaker will say (synthesised here, in this order)."""
        self.voice, self.natural = voice, natural
        self.bank, self._said = None, {}
        if natural:
            distinct = list(dict.fromkeys(texts))
            self._said = dict(zip(distinct, speak(distinct, voice)))
        else:
            self.bank = synthesize_words([w for s in _sentences(texts) for w in s], voice)

    def say(self, texts, speakers=None) -> tuple[np.ndarray, list]:
        """(waveform, [(word, start_s, end_s)]); `speakers`: one Speaker per sentence instead."""
        speakers = speakers or [self] * len(texts)
        if self.natural:
            return join([sp._said[t] for sp, t in zip(speakers, texts)])
        return render(_sentences(texts), [sp.bank for sp in speakers])

    def write(self, out: Path, rel: str, texts, speakers=None) -> tuple[Path, list, float]:
        wav, words = self.say(texts, speakers)
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        write_wav(path, wav)
        return path, words, len(wav) / RATE


def _story_row(out: Path, story, voice: Voice, split: str, natural: bool) -> dict:
    variant = utterance_voice(voice, story.id, held_out=split != "train")
    rel = f"audio/{voice.name}/{split}/{story.id}.wav"
    _, words, seconds = Speaker(variant, natural, story.sentences).write(out, rel, story.sentences)
    return {
        "path": rel,
        "id": f"{voice.name}/{story.id}",
        "speaker": voice.name,
        "split": split,
        "transcript": story.text,
        "seconds": round(seconds, 3),
        "words": [[w, round(s, 6), round(e, 6)] for w, s, e in words],
    }


def _call(job):
    fn, *args = job
    return fn(*args)


def _die_with_parent() -> None:
    """A worker must not outlive a killed demo: it would go on writing into a workdir that a
    rerun is writing too (Linux: SIGKILL when the parent exits)."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the pool's own shutdown still applies
        pass


def _map(fn, jobs, natural: bool) -> list:
    """fn(*job) for every job, in order. Natural synthesis runs in worker processes (the
    espeak-ng library is one synthesiser per process); word banks in threads."""
    jobs = [(fn, *job) for job in jobs]
    if not natural:
        with ThreadPoolExecutor(THREADS) as pool:
            return list(pool.map(_call, jobs))
    workers = min(len(jobs), os.cpu_count() or 1)
    if workers <= 1:
        return [_call(j) for j in jobs]
    ctx = multiprocessing.get_context("spawn")  # the caller may hold jax's threads
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_die_with_parent) as pool:
        return list(pool.map(_call, jobs, chunksize=max(1, len(jobs) // (8 * workers))))


def pretrain_rows(out: Path, stories, cast: Cast = Cast()) -> list[dict]:
    """Every training story in its distillation voice (the same audio as `distill_rows`) and
    in one of the teacher's other voices, in turn."""
    jobs = []
    for i, st in enumerate(stories):
        jobs += [
            (out, st, cast.distill[i % len(cast.distill)], "train", cast.natural),
            (out, st, cast.pretrain[i % len(cast.pretrain)], "train", cast.natural),
        ]
    return _map(_story_row, jobs, cast.natural)


def distill_rows(out: Path, stories, cast: Cast = Cast()) -> list[dict]:
    """The distillation-voice utterances of `stories` exactly as in `pretrain_rows`."""
    voices = cast.distill
    return _map(
        _story_row,
        [(out, st, voices[i % len(voices)], "train", cast.natural) for i, st in enumerate(stories)],
        cast.natural,
    )


def heldout_rows(out: Path, world: dict, cast: Cast = Cast()) -> list[dict]:
    """Validation and test stories in the distillation voices (story k in voice k % n)."""
    voices = cast.distill
    return _map(
        _story_row,
        [
            (out, st, voices[k % len(voices)], split, cast.natural)
            for split in ("validation", "test")
            for k, st in enumerate(world[split])
        ],
        cast.natural,
    )


def other_pitch_range(voice: Voice) -> Voice:
    """The same voice 30 pitch steps away (down from high voices, up from low ones) and 30 wpm
    faster or slower: another speaker's pitch range and rate, nearly the same spectra."""
    up = voice.pitch < 50
    return dataclasses.replace(
        voice, pitch=voice.pitch + (30 if up else -30), speed=voice.speed + (-30 if up else 30)
    )


def _cloze_pair(
    out: Path,
    folder: str,
    k: int,
    story,
    other,
    extras: bool,
    voice: Voice,
    natural: bool,
    ssc_stories: tuple | None = None,
) -> dict:
    """sSC and tSC pairs of one story in one utterance voice (the context said once, so both
    files of a pair share its audio); with `extras` also its speaker-consistency pair and its
    cross-modal cloze files. `ssc_stories` (scene worlds): the stories whose sSC pairs this one
    writes instead of its own, the story and its mirror (world.mirror), whose endings are then
    the same audio with right and wrong swapped, or none; items["ssc"] is a list of pairs."""
    variant = utterance_voice(voice, story.id, held_out=True)
    mirrored = ssc_stories is not None
    extra_contexts = [c for st in ssc_stories or () for c in st.context]
    sp = Speaker(variant, natural, (*story.sentences, story.wrong, other.ending, *extra_contexts))

    def pair(task: str, index: int, st, wrong: str) -> dict:
        context = list(st.context)
        n_context = sum(len(x) for x in _sentences(context))
        pos, pos_words, _ = sp.write(
            out, f"{folder}/{task}/{index}_{st.id}.wav", context + [st.ending]
        )
        neg, _, _ = sp.write(out, f"{folder}/{task}/{index + 1}_{st.id}.wav", context + [wrong])
        return {
            "story": st.id,
            "speaker": voice.name,
            "positive": st.ending,
            "negative": wrong,
            "files": [pos.name, neg.name],
            "ending_start": pos_words[n_context][1],
        }

    items: dict = {
        "tsc": pair("tsc", 2 * k, story, other.ending),
        "ssc": [pair("ssc", 4 * k + 2 * j, st, st.wrong) for j, st in enumerate(ssc_stories)]
        if mirrored
        else [pair("ssc", 2 * k, story, story.wrong)],
    }
    context = list(story.context)
    if extras:
        texts = context + [story.ending]
        shifted = Speaker(other_pitch_range(variant), natural, [story.ending])
        sub = f"{folder}/salmon/speaker_consistency"
        sp.write(out, f"{sub}/sample_{k}_0.wav", texts)
        sp.write(out, f"{sub}/sample_{k}_1.wav", texts, [sp] * len(context) + [shifted])
        items["voice"] = {"story": story.id, "files": [f"sample_{k}_0.wav", f"sample_{k}_1.wav"]}
        items["crossmodal"] = _crossmodal_files(out, folder, k, story, other, sp)
    return items


def _crossmodal_files(out: Path, folder: str, k: int, story, other, sp: Speaker) -> dict:
    """One cross-modal topic-cloze line: the context and each ending as their own audio file
    (one synthesis) with their text; the wrong ending is tSC's."""
    line = {}
    for part, texts in (
        ("context", story.context),
        ("positive", [story.ending]),
        ("negative", [other.ending]),
    ):
        rel = f"crossmodal/{part}/{k}_{story.id}.wav"
        sp.write(out / folder, rel, list(texts))
        line[part] = {"text": " ".join(texts), "audio": rel}
    return line | {"group": story.id}


def _word_pair(
    out: Path, folder: str, k: int, word: str, nonword: str, voice: Voice, natural: bool
) -> dict:
    sp = Speaker(utterance_voice(voice, f"word/{word}", True), natural, [word, nonword])
    pos, _, _ = sp.write(out, f"{folder}/swuggy/{2 * k}_{word}.wav", [word])
    neg, _, _ = sp.write(out, f"{folder}/swuggy/{2 * k + 1}_{nonword}.wav", [nonword])
    return {"positive": word, "negative": nonword, "files": [pos.name, neg.name]}


def _with_mirror(story, mirror) -> tuple:
    """A scene story's sSC stories: it and its mirror, or none when it has no mirror (an
    unmirrored pair would let the endings alone win more or less than half)."""
    return (story, mirror) if mirror is not None else ()


def write_bench(
    out: Path,
    stories,
    folder: str,
    word_pairs=(),
    extras: bool = False,
    cast: Cast = Cast(),
    unseen: bool = False,
    mirrors: list | None = None,
) -> dict[str, int]:
    """sSC / tSC (and word-test) pair folders under `out/folder`; items.json says what each pair
    holds, in which voice, and where the ending starts (s). tSC's wrong ending is the next
    story's ending. Story k is spoken by voice k % n of the cast's distillation voices (or, with
    `unseen`, of its unseen ones). `extras`: the speaker-consistency pairs and crossmodal.jsonl.
    `mirrors` (scene worlds: `world.mirrored`, one per story): sSC holds each story whose mirror
    exists and its mirror, so an ending scored without its story wins exactly half the pairs."""
    from ..jsonl import write_jsonl_atomic

    voices = cast.unseen if unseen else cast.distill
    pairs = _map(
        _cloze_pair,
        [
            (out, folder, k, st, stories[(k + 1) % len(stories)], extras, voices[k % len(voices)])
            + (cast.natural, None if mirrors is None else _with_mirror(st, mirrors[k]))
            for k, st in enumerate(stories)
        ],
        cast.natural,
    )
    items = {"ssc": [x for p in pairs for x in p["ssc"]], "tsc": [p["tsc"] for p in pairs]}
    if extras:
        items["voice"] = [p["voice"] for p in pairs]
        write_jsonl_atomic(out / folder / "crossmodal.jsonl", [p["crossmodal"] for p in pairs])
        items["crossmodal"] = [p["crossmodal"] for p in pairs]
    if word_pairs:
        items["swuggy"] = _map(
            _word_pair,
            [
                (out, folder, k, w, n, voices[k % len(voices)], cast.natural)
                for k, (w, n) in enumerate(word_pairs)
            ],
            cast.natural,
        )
    (out / folder).mkdir(parents=True, exist_ok=True)
    (out / folder / "items.json").write_text(json.dumps(items, indent=1))
    return {k: len(v) for k, v in items.items()}


def bench_folders(cast: Cast) -> list[tuple[str, str, tuple, bool]]:
    """(folder, world split, word pairs, unseen voices?) of every benchmark folder: test stories
    in the training voices (bench/, with the word test) and, where the cast has unseen voices,
    in those (bench_unseen/); validation stories (bench_valid/) in the training voices."""
    from .world import WORD_PAIRS

    folders = [("bench", "test", WORD_PAIRS, False), ("bench_valid", "validation", (), False)]
    if cast.unseen:
        folders.insert(1, ("bench_unseen", "test", WORD_PAIRS, True))
    return folders


def hours(rows: list[dict]) -> float:
    return round(sum(r["seconds"] for r in rows) / 3600, 4)
