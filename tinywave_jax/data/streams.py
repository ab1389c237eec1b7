"""One corpus record -> one token sequence, for each kind of training stream.

A record (as `corpus.CorpusSource` returns it) is a dict with `id`, `speaker`, `transcript`,
`duration`, `streams` ({'hubert'|'pitch'|'style': (units int32[n], start times float64[n])}),
`words` (list of (word, start, end) or None) and `where` (file and record index, for errors).

Kinds:
  speech       bos [Speech] deduplicated HuBERT units
  expressive   bos [Speech] style/pitch/HuBERT merged by time
  text         bos [Text] transcript (or the aligned words when there is no transcript)
  interleaved  one of five patterns, switching modality at word boundaries (see `interleave`)
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError, InputError
from .layout import SPEECH, TEXT, TokenLayout, encode_text, join_spans, merge_streams, time_key

PATTERNS = {  # name -> modality of each span
    "speech": (SPEECH,),
    "text": (TEXT,),
    "speech_text": (SPEECH, TEXT),
    "text_speech": (TEXT, SPEECH),
    "speech_text_speech": (SPEECH, TEXT, SPEECH),
}
DEFAULT_PATTERN_PROBS = dict.fromkeys(PATTERNS, 0.2)  # not published: uniform [?]
KINDS = ("speech", "expressive", "interleaved", "text")


class BadRecord(InputError):
    """A record that cannot give a correct sequence; the message names file, record and reason."""


def _where(rec) -> str:
    return f"{rec.get('where', '?')} (utterance {rec.get('id', '?')})"


def _speech(rec, layout: TokenLayout, expressive: bool):
    """Merged speech token ids and their times for a record."""
    names = ("hubert", "pitch", "style") if expressive else ("hubert",)
    streams = {}
    for n in names:
        if n not in rec["streams"] or len(rec["streams"][n][0]) == 0:
            raise BadRecord(f"{_where(rec)}: no {n} units")
        streams[n] = rec["streams"][n]
    try:
        return merge_streams(layout, streams, where=_where(rec))
    except ValueError as e:
        raise BadRecord(str(e)) from None


def speech_sequence(rec, layout, leading_marker=True) -> np.ndarray:
    return join_spans(layout, [(SPEECH, _speech(rec, layout, False)[0])], leading_marker)


def expressive_sequence(rec, layout, leading_marker=True) -> np.ndarray:
    if not layout.is_expressive:
        raise ConfigError(
            f"layout {layout.name} has no pitch/style tokens for the expressive stream"
        )
    return join_spans(layout, [(SPEECH, _speech(rec, layout, True)[0])], leading_marker)


def text_sequence(rec, layout, tokenizer, leading_marker=True) -> np.ndarray:
    text = rec.get("transcript") or " ".join(w for w, _, _ in (rec.get("words") or []))
    if not text.strip():
        raise BadRecord(f"{_where(rec)}: no transcript or words for the text stream")
    return join_spans(
        layout, [(TEXT, encode_text(text, tokenizer, layout, _where(rec)))], leading_marker
    )


def _checked_words(rec):
    words = rec.get("words")
    if not words:
        raise BadRecord(
            f"{_where(rec)}: interleaving needs a word alignment and this record has none"
        )
    starts = np.array([w[1] for w in words], np.float64)
    ends = np.array([w[2] for w in words], np.float64)
    if np.any(ends < starts) or np.any(np.diff(starts) < 0):
        raise BadRecord(
            f"{_where(rec)}: word alignment is not ordered (start <= end, non-decreasing starts)"
        )
    return words, starts, ends


def choose_pattern(rng: np.random.Generator, probs: dict, num_words: int) -> str:
    """Draws a pattern; patterns needing more spans than there are words are excluded (and the
    rest renormalised), which only matters for one- and two-word utterances."""
    names = [n for n in PATTERNS if probs.get(n, 0) > 0 and len(PATTERNS[n]) <= num_words]
    if not names:
        raise ValueError(f"no interleave pattern fits {num_words} words with probabilities {probs}")
    cum = np.cumsum([probs[n] for n in names], dtype=np.float64)
    return names[
        min(int(np.searchsorted(cum, rng.random() * cum[-1], side="right")), len(names) - 1)
    ]


def interleave(
    rec,
    layout,
    tokenizer,
    rng: np.random.Generator,
    probs=None,
    expressive=False,
    leading_marker=True,
):
    """Interleaved sequence and its pattern name. The words are cut into consecutive spans at
    random word boundaries; a speech span over words i..j takes the speech tokens whose start times
    lie in [start_i, end_j); a text span tokenises ' '.join(words i..j)."""
    words, starts, ends = _checked_words(rec)
    pattern = choose_pattern(rng, probs or DEFAULT_PATTERN_PROBS, len(words))
    modalities = PATTERNS[pattern]
    n, m = len(words), len(modalities)
    cuts = np.sort(rng.permutation(n - 1)[: m - 1] + 1) if m > 1 else []
    bounds = [0, *map(int, cuts), n]
    ids, times = _speech(rec, layout, expressive) if SPEECH in modalities else (None, None)
    spans = []
    for k, modality in enumerate(modalities):
        i, j = bounds[k], bounds[k + 1]
        if modality == SPEECH:
            t = time_key(times)
            sel = (t >= time_key(starts[i])) & (t < time_key(ends[j - 1]))
            spans.append((SPEECH, ids[sel]))
        else:
            text = " ".join(w for w, _, _ in words[i:j])
            spans.append((TEXT, encode_text(text, tokenizer, layout, _where(rec))))
    return join_spans(layout, spans, leading_marker), pattern


def sequence_for(
    kind: str,
    rec,
    layout,
    tokenizer=None,
    rng=None,
    probs=None,
    interleaved_expressive=False,
    leading_marker=True,
) -> np.ndarray:
    """Dispatches on the stream kind."""
    if kind == "speech":
        return speech_sequence(rec, layout, leading_marker)
    if kind == "expressive":
        return expressive_sequence(rec, layout, leading_marker)
    if kind == "text":
        return text_sequence(rec, layout, tokenizer, leading_marker)
    if kind == "interleaved":
        return interleave(
            rec, layout, tokenizer, rng, probs, interleaved_expressive, leading_marker
        )[0]
    raise ValueError(f"unknown stream kind {kind!r}; expected one of {KINDS}")
