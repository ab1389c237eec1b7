"""Perplexity of a token corpus: a corpus split (`tinywave corpus build`) or a jsonl of
{"ids": [...], "seconds": float?, "score_from": int?}.

    per token:   ppl = exp(sum of NLL over scored tokens / number of scored tokens)
    per second:  ppl_per_second = exp(sum of NLL / total seconds of audio)

Both pool over the whole corpus (a token-weighted mean, not a mean of per-utterance
perplexities, which would over-weight short utterances). The per-second figure is the exp of the
information rate in nats per second; it does not depend on how many tokens a second of speech
becomes, which deduplication makes vary by utterance and which the expressive layout raises
(pitch and style tokens), so it compares models with different tokenisations of the same audio.
It is reported only when every sequence has a duration.

Corpus records become bos [Speech] units (deduplicated HuBERT, or the expressive merge for an
expressive layout) and only the units are scored (`score_from` = 2), as for the benchmarks.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..data.corpus_read import CorpusSource
from ..data.streams import sequence_for
from ..errors import InputError
from ..jsonl import iter_jsonl
from ..scoring import score_sequences
from .pairwise import check_vocab
from .sequences import AUDIO_SCORE_FROM, Seq, checked_seq


def read_ppl_jsonl(path: str | Path) -> list[Seq]:
    seqs = []
    for where, rec in iter_jsonl(path, "ppl input"):
        if "ids" not in rec:
            raise InputError(f"{where}: expected an object with an 'ids' list")
        seqs.append(checked_seq(rec["ids"], where, rec.get("score_from", 1), rec.get("seconds")))
    if not seqs:
        raise InputError(f"{path}: no sequences")
    return seqs


def corpus_seqs(corpus_dir: str | Path, split: str, layout, limit: int | None = None) -> list[Seq]:
    """A corpus split's utterances as speech (or expressive) sequences with their durations."""

    source = CorpusSource(corpus_dir, split)
    kind = "expressive" if layout.is_expressive else "speech"
    n = len(source) if limit is None else min(limit, len(source))
    seqs = []
    for i in range(n):
        rec = source[i]
        ids = sequence_for(kind, rec, layout)
        seqs.append(
            Seq(
                np.asarray(ids, np.int64),
                AUDIO_SCORE_FROM,
                rec["where"],
                rec["duration"] if rec["duration"] > 0 else None,
            )
        )
    if not seqs:
        raise InputError(f"corpus {corpus_dir} split {split} is empty")
    return seqs


def perplexity(
    params, config, seqs: list[Seq], batch_size: int = 8, progress: bool = False, mesh=None
) -> dict:
    """mesh: None (one device) or a mesh to split the sequences over (`scoring.scoring_mesh`)."""

    check_vocab(seqs, config.vocab_size, config.max_position_embeddings)
    lps = score_sequences(
        params, config, [s.ids.tolist() for s in seqs], batch_size, progress, mesh=mesh
    )
    per_seq = [
        float(-np.asarray(lp, np.float64)[s.score_from - 1 :].sum()) for lp, s in zip(lps, seqs)
    ]
    nll = float(sum(per_seq))
    tokens = sum(s.num_scored for s in seqs)
    out = {
        "n_sequences": len(seqs),
        "scored_tokens": tokens,
        "nll_sum": nll,
        "nll_per_token": nll / tokens,
        "ppl": math.exp(nll / tokens),
        # per sequence, for resampling (confidence intervals)
        "sequence_nll": per_seq,
        "sequence_tokens": [s.num_scored for s in seqs],
    }
    if all(s.seconds is not None for s in seqs):
        seconds = float(sum(s.seconds for s in seqs))
        out.update(
            seconds=seconds,
            nll_per_second=nll / seconds,
            bits_per_second=nll / seconds / math.log(2),
            ppl_per_second=math.exp(min(nll / seconds, 700.0)),
        )
    return out
