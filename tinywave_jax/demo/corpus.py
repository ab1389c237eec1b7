"""Demo stages 1 and 2: spoken stories (espeak-ng) -> units -> tokenized corpora.

Stage 1 writes `speech/`: one wav per (voice, story) with its word alignment, the manifests of the
two corpora (`pretrain`: training voices; `target`: the held-out target voice, used for teacher
correction, distillation and evaluation) and the benchmark audio, all in the target voice:
  bench/ssc/     context + correct ending / context + wrong ending
  bench/tsc/     context + correct ending / context + the next test story's ending
  bench/swuggy/  a real word of the training stories / a made-up non-word
(bench/items.json lists what each pair says and where the endings start, in seconds).
Stage 2 fits the built-in units on the training audio (`tinywave units fit`), writes a word-level
text tokenizer and the token layout, and builds both corpora (`tinywave corpus build`).
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from . import stories as story_data
from .synth import RATE, TARGET_VOICE, VOICES, Voice, render, synthesize_words, write_wav

SPLITS = ("train", "validation", "test")


def demo_stories(settings) -> list:
    """The run's stories: the hand-written ones (the first `max_stories`, 0 = all) and
    `generated_stories` template stories."""
    hand = story_data.stories()
    if settings.max_stories:
        hand = hand[:settings.max_stories]
    return hand + story_data.generated_stories(settings.generated_stories, seed=settings.seed)


def split_stories(settings) -> dict[str, list]:
    """Stories split by story with a fixed shuffle: test, validation, then the rest for training."""
    order = demo_stories(settings)
    random.Random(1234).shuffle(order)
    t, v = settings.test_stories, settings.valid_stories
    if t + v >= len(order):
        raise ValueError(f"{len(order)} stories cannot give {t} test + {v} validation stories "
                         "and leave some for training")
    return {"test": order[:t], "validation": order[t:t + v], "train": order[t + v:]}


def _sentences(texts) -> list[list[str]]:
    return [story_data.words_of(s) for s in texts]


def _utterance(out_dir: Path, name: str, sentences, bank) -> tuple[Path, list, float]:
    wav, words = render(sentences, bank)
    path = out_dir / f"{name}.wav"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_wav(path, wav)
    return path, words, len(wav)


def build_speech(settings, out: Path, log=print) -> dict:
    """Stage 1 (see module doc). Returns counts for the stage record."""
    splits = split_stories(settings)
    if settings.train_voices > len(VOICES):
        raise ValueError(f"train_voices {settings.train_voices}: only {len(VOICES)} voices exist")
    voices = list(VOICES[:settings.train_voices])
    train_vocab = {w for st in splits["train"] for s in st.sentences for w in story_data.words_of(s)}
    pairs = story_data.word_pairs(train_vocab)
    manifests = {"pretrain": [], "target": []}
    counts = {"seconds": 0.0}

    def add(corpus, voice: Voice, story, split, bank):
        sents = _sentences(story.sentences)
        path, words, n = _utterance(out / "audio" / voice.name, story.id, sents, bank)
        manifests[corpus].append({"path": str(path.relative_to(out)), "id": f"{voice.name}/{story.id}",
                                  "speaker": voice.name, "split": split,
                                  "transcript": " ".join(story.sentences),
                                  "words": [[w, round(s, 6), round(e, 6)] for w, s, e in words]})
        counts["seconds"] += n / RATE

    # Each pretraining story is spoken by `voices_per_story` of the training voices, in turn.
    per_story = min(settings.voices_per_story or len(voices), len(voices))
    pretrain = [(sp, st) for sp in ("train", "validation") for st in splits[sp]]
    for v, voice in enumerate(voices):
        mine = [(sp, st) for i, (sp, st) in enumerate(pretrain)
                if (v - i) % len(voices) < per_story]
        texts = [s for _, st in mine for s in st.sentences]
        bank = synthesize_words([w for s in texts for w in story_data.words_of(s)], voice)
        for sp, st in mine:
            add("pretrain", voice, st, sp, bank)
        log(f"  voice {voice.name} ({voice.espeak}, {voice.speed} wpm, pitch {voice.pitch}): "
            f"{len(mine)} stories, {len(bank)} words")

    target = TARGET_VOICE
    texts = [s for sp in SPLITS for st in splits[sp] for s in (*st.sentences, st.wrong)]
    vocab = [w for s in texts for w in story_data.words_of(s)] + [w for p in pairs for w in p]
    bank = synthesize_words(vocab, target)
    for sp in SPLITS:
        for st in splits[sp]:
            add("target", target, st, sp, bank)
    log(f"  target voice {target.name} ({target.espeak}): {len(bank)} words")

    # File names follow the reference loaders: sorted by the integer before "_", files 2i and
    # 2i + 1 are (positive, negative); `tinywave eval ssc|tsc|swuggy` reads these folders.
    items = {"ssc": [], "tsc": [], "swuggy": []}
    test = splits["test"]
    for k, st in enumerate(test):
        other = test[(k + 1) % len(test)]
        context = _sentences(st.context)
        for task, wrong in (("ssc", st.wrong), ("tsc", other.ending)):
            pos, pos_words, _ = _utterance(out / "bench" / task, f"{2 * k}_{st.id}",
                                           context + _sentences([st.ending]), bank)
            neg, _, _ = _utterance(out / "bench" / task, f"{2 * k + 1}_{st.id}",
                                   context + _sentences([wrong]), bank)
            ending_start = pos_words[sum(len(s) for s in context)][1]
            items[task].append({"story": st.id, "positive": st.ending, "negative": wrong,
                                "files": [pos.name, neg.name], "ending_start": ending_start})
    for k, (word, nonword) in enumerate(pairs):
        pos, _, _ = _utterance(out / "bench" / "swuggy", f"{2 * k}_{word}", [[word]], bank)
        neg, _, _ = _utterance(out / "bench" / "swuggy", f"{2 * k + 1}_{nonword}", [[nonword]], bank)
        items["swuggy"].append({"positive": word, "negative": nonword,
                                "files": [pos.name, neg.name]})
    (out / "bench" / "items.json").write_text(json.dumps(items, indent=1))
    for name, lines in manifests.items():
        (out / f"{name}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return {"stories": {sp: [st.id for st in v] for sp, v in splits.items()},
            "utterances": {k: len(v) for k, v in manifests.items()},
            "hours": round(counts["seconds"] / 3600, 4),
            "benchmark_pairs": {k: len(v) for k, v in items.items()}}


# ---------------------------------------------------------------- stage 2

def write_text_tokenizer(words, out_dir: Path) -> int:
    """A word-level Hugging Face tokenizer over `words` (<unk>=0, <s>=1, </s>=2); returns its size."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for w in sorted(set(words)):
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>")
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out_dir))
    return len(vocab)


def layout_config(settings, text_vocab_size: int) -> dict:
    """The demo's custom token layout (LayoutConfig fields)."""
    return {"preset": None, "text_vocab_size": text_vocab_size, "num_units": settings.units,
            "num_pitch": settings.pitch_bins if settings.expressive else 0,
            "num_style": settings.style_classes if settings.expressive else 0,
            "pad_to_multiple": 64, "bos_id": 1}


def build_tokens(settings, speech_dir: Path, out: Path, log=print) -> dict:
    """Stage 2: units folder, tokenizer, layout.json and the two corpora under `out`."""
    from ..audio.fit import fit_units
    from ..config import from_dict
    from ..data.corpus import build_corpus
    from ..data.layout import LayoutConfig

    pretrain = [json.loads(x) for x in (speech_dir / "pretrain.jsonl").read_text().splitlines()]
    train_wavs = [speech_dir / x["path"] for x in pretrain if x["split"] == "train"]
    fit = fit_units(train_wavs, out / "units", units=settings.units, features="mfcc",
                    pitch_bins=settings.pitch_bins, style_classes=settings.style_classes,
                    seed=settings.seed, max_hours=settings.units_fit_hours, overwrite=True,
                    # No utterance-mean removal: the cloze pairs share their context audio, and
                    # with it the context's units must not depend on which ending follows.
                    cmn=False, log=lambda m: log("  " + m))
    words = [w for st in demo_stories(settings) for s in (*st.sentences, st.wrong)
             for w in story_data.words_of(s)]
    n_text = write_text_tokenizer(words, out / "tokenizer")
    layout_dict = layout_config(settings, n_text)
    layout = from_dict(LayoutConfig, layout_dict, prefix="layout").build()
    (out / "layout.json").write_text(json.dumps(layout_dict, indent=1))
    vocab_sizes = {"hubert": settings.units, "pitch": settings.pitch_bins,
                   "style": settings.style_classes}
    summaries = {}
    for name in ("pretrain", "target"):
        manifest = speech_dir / f"{name}.jsonl"
        n = len(manifest.read_text().splitlines())
        workers = 2 if n > 40 else 1          # a worker process costs seconds of imports
        summaries[name] = build_corpus(out / "corpus" / name, manifest=manifest,
                                       extractor=out / "units", vocab_sizes=vocab_sizes,
                                       shard_size=max(8, -(-n // 4)), max_skipped=0,
                                       workers=workers, log=lambda m: log("  " + m))
    return {"units": fit.vocab_sizes, "text_vocab": n_text, "vocab_size": layout.vocab_size,
            "corpus_tokens": {k: v["tokens_dedup"] for k, v in summaries.items()},
            "corpus_utterances": {k: {sp: d["utterances"] for sp, d in v["splits"].items()}
                                  for k, v in summaries.items()}}
