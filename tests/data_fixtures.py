"""Helpers for the data tests: a small local Hugging Face tokenizer and synthetic utterances."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

WORDS = (
    "and they went out together hello world the a of to in is was for on that with as "
    "at by this it he she we you not but or from"
).split()


def make_tokenizer(directory, words=WORDS) -> str:
    """A WordLevel tokenizer (<unk>=0, <s>=1, </s>=2, then `words` and w0..w99) saved as a
    Hugging Face tokenizer folder, loadable with AutoTokenizer.from_pretrained."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for w in list(words) + [f"w{k}" for k in range(100)]:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    fast.save_pretrained(str(directory))
    return str(directory)


def synthetic_utterance(rng, k: int, units=501, pitch=64, style=100, words=True):
    """Per-frame streams at SpiritLM's rates (25, 12.5, 1 Hz) with runs of repeated units, and a
    word alignment with pauses between words (words are named w0, w1, ...)."""
    seconds = rng.uniform(1.5, 4.0)
    n_hu = int(seconds * 25)
    hubert = np.repeat(rng.integers(0, units, n_hu), rng.integers(1, 4, n_hu))[:n_hu]
    n_pi = int(seconds * 12.5)
    pitch_u = np.repeat(rng.integers(0, pitch, n_pi), rng.integers(1, 4, n_pi))[:n_pi]
    style_u = rng.integers(0, style, max(1, int(seconds)))
    rec = {
        "id": f"utt{k:04d}",
        "speaker": f"spk{k % 3}",
        "units": {"hubert": hubert.tolist(), "pitch": pitch_u.tolist(), "style": style_u.tolist()},
    }
    if words:
        t, ws = 0.1, []
        while True:
            dur = rng.uniform(0.15, 0.5)
            if t + dur > seconds - 0.05:
                break
            ws.append([f"w{rng.integers(0, 100)}", round(t, 3), round(t + dur, 3)])
            t += dur + rng.choice([0.0, 0.12])
        rec["words"] = ws
        rec["transcript"] = " ".join(w for w, _, _ in ws)
    return rec


def write_units_manifest(path, records) -> Path:
    path = Path(path)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def as_source_record(rec, where="mem"):
    """A manifest-style dict -> the record dict that CorpusSource returns (frame i at i/rate)."""
    rates = {"hubert": 25.0, "pitch": 12.5, "style": 1.0}
    units = {
        s: [int(x) for x in u.split()] if isinstance(u, str) else u for s, u in rec["units"].items()
    }
    streams = {s: (np.asarray(u, np.int32), np.arange(len(u)) / rates[s]) for s, u in units.items()}
    words = [tuple(w) for w in rec["words"]] if rec.get("words") else None
    return {
        "id": rec["id"],
        "speaker": rec["speaker"],
        "transcript": rec.get("transcript", ""),
        "duration": 0.0,
        "words": words,
        "where": f"{where}:{rec['id']}",
        "streams": streams,
    }
