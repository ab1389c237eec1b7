"""Cross-modal story cloze (SpiritLM, TinyWave): the context in one modality, the two candidate
endings in another, scored on the ending's tokens.

Tasks (context -> ending): `cloze_ss` speech -> speech, `cloze_st` speech -> text, `cloze_ts`
text -> speech, `cloze_tt` text -> text.

Input: a JSONL file, one pair per line (audio paths relative to the file's folder):

    {"context":  {"text": "...", "audio": "ctx/0.wav"},
     "positive": {"text": "...", "audio": "pos/0.wav"},
     "negative": {"text": "...", "audio": "neg/0.wav"}, "group": "..."}

A task reads only the fields of its modalities; every field and audio file it needs is checked
before any tokenisation or scoring, and a missing one is named with its line.

Sequence of one candidate (`data/layout.join_spans`): bos, the context's marker ([Speech] or
[Text]), the context's tokens, the ending's marker only where the modality switches, the ending's
tokens. Text spans are tokenised each on their own (no special tokens); an audio span is its
file's units (HuBERT deduplicated; pitch and style merged in when the layout is expressive).
Scored: the ending's tokens only (a switch marker is the same for both endings and is not scored).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..data.layout import SPEECH, TEXT, encode_text, join_spans
from ..errors import ConfigError, InputError, MissingInputError
from ..jsonl import iter_jsonl
from .benchmarks import CROSS_MODAL_TASKS
from .pairwise import PairItem
from .sequences import Seq

_FIELD = {SPEECH: "audio", TEXT: "text"}
_PARTS = ("context", "positive", "negative")


@dataclasses.dataclass(frozen=True)
class ClozeItem:
    """One pair's spans, each already checked: text strings or resolved audio paths."""

    context: str | Path
    positive: str | Path
    negative: str | Path
    group: str
    where: str


def read_cloze_jsonl(path: str | Path, task: str) -> list[ClozeItem]:
    """The pairs of `path` for `task`, every needed field present and every audio file found."""
    if task not in CROSS_MODAL_TASKS:
        raise ConfigError(
            f"task: {task!r} is not a cross-modal task {list(CROSS_MODAL_TASKS)}", param="task"
        )
    path = Path(path)
    ctx_mod, end_mod = CROSS_MODAL_TASKS[task]
    modality = {"context": ctx_mod, "positive": end_mod, "negative": end_mod}
    items = []
    for where, rec in iter_jsonl(path, "cross-modal cloze file"):
        spans = {}
        for part in _PARTS:
            field = _FIELD[modality[part]]
            value = rec.get(part, {}).get(field) if isinstance(rec.get(part), dict) else None
            if not isinstance(value, str) or not value.strip():
                raise InputError(
                    f"{where}: {task} needs {part}.{field} ({modality[part]}); the line has "
                    f"{sorted(rec.get(part, {})) if isinstance(rec.get(part), dict) else 'none'}"
                )
            if field == "audio":
                value = (path.parent / value).resolve()
                if not value.is_file():
                    raise MissingInputError(f"{where}: {part}.audio {value} not found")
            spans[part] = value
        items.append(ClozeItem(**spans, group=str(rec.get("group", "")), where=where))
    if not items:
        raise InputError(f"{path}: no pairs")
    return items


def cloze_pairs(items: list[ClozeItem], task: str, layout, tokenizer=None, audio=None) -> list:
    """PairItems scored on the ending's tokens. `audio`: an AudioTokenizer (speech tasks);
    `tokenizer`: the text tokenizer (text tasks)."""
    ctx_mod, end_mod = CROSS_MODAL_TASKS[task]
    if SPEECH in (ctx_mod, end_mod) and audio is None:
        raise ConfigError(
            f"{task}: speech spans need extractor (a units folder)", param=(None, "extractor")
        )
    if TEXT in (ctx_mod, end_mod) and tokenizer is None:
        raise ConfigError(
            f"{task}: text spans need tokenizer (a Hugging Face folder)",
            param=(None, "tokenizer"),
        )

    def tokens(value, modality, where):
        if modality == SPEECH:
            return audio.units(value)
        return encode_text(value, tokenizer, layout, where)

    out = []
    for it in items:
        ctx = tokens(it.context, ctx_mod, f"{it.where} context")
        seqs = []
        for part in ("positive", "negative"):
            ending = tokens(getattr(it, part), end_mod, f"{it.where} {part}")
            if len(ending) == 0:
                raise InputError(f"{it.where}: the {part} ending has no tokens")
            ids = join_spans(layout, [(ctx_mod, ctx), (end_mod, ending)])
            seqs.append(Seq(ids.astype("int64"), len(ids) - len(ending), f"{it.where} {part}"))
        out.append(PairItem(seqs[0], seqs[1], it.group, it.where))
    return out
