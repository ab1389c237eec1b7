"""Demo tokens: the word-level text tokenizer, the token layout, and corpora built from manifests.

The teacher's pretraining (`tinywave demo-teacher`) fits the units and writes the tokenizer and
layout; the demo reuses exactly those files from the teacher folder, as a user of SpiritLM reuses
its HuBERT units, tokenizer and layout.
"""

from __future__ import annotations

import json
from pathlib import Path


def write_text_tokenizer(words, out_dir: Path) -> int:
    """A word-level Hugging Face tokenizer over `words` (<unk>=0, <s>=1, </s>=2); returns its size."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for w in sorted(set(words)):
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out_dir))
    return len(vocab)


def layout_config(units: int, text_vocab_size: int, pitch: int = 0, style: int = 0) -> dict:
    """The demo's custom token layout (LayoutConfig fields): text words, markers, speech units
    (and, for the expressive teacher, pitch and style tokens)."""
    return {
        "preset": None,
        "text_vocab_size": text_vocab_size,
        "num_units": units,
        "num_pitch": pitch,
        "num_style": style,
        "pad_to_multiple": 64,
        "bos_id": 1,
    }


def vocab_size(layout: dict) -> int:
    from ..config import from_dict
    from ..data.layout import LayoutConfig

    return from_dict(LayoutConfig, layout, prefix="layout").build().vocab_size


def build_corpora(
    manifests: dict[str, Path], units_dir: Path, out: Path, layout: dict, log=print
) -> dict:
    """One corpus per manifest under `out/<name>` (audio through the units folder); returns
    {name: summary}."""
    from ..data.corpus_build import build_corpus

    summaries = {}
    for name, manifest in manifests.items():
        n = len(Path(manifest).read_text().splitlines())
        workers = 2 if n > 40 else 1  # a worker process costs seconds of imports
        summaries[name] = build_corpus(
            out / name,
            manifest=manifest,
            extractor=units_dir,
            vocab_sizes={
                k: v
                for k, v in (
                    ("hubert", layout["num_units"]),
                    ("pitch", layout["num_pitch"]),
                    ("style", layout["num_style"]),
                )
                if v
            },
            max_skipped=0,
            shard_size=max(8, min(256, -(-n // 4))),
            workers=workers,
            log=lambda m: log("  " + m),
        )
    return summaries


def corpus_counts(summaries: dict) -> dict:
    return {
        name: {
            "tokens": s["tokens_dedup"],
            "utterances": {sp: d["utterances"] for sp, d in s["splits"].items()},
        }
        for name, s in summaries.items()
    }


def read_layout(path: Path) -> dict:
    return json.loads(Path(path).read_text())
