"""The corpus's record and its TFDS form, shared by the writer (corpus_build) and the reader
(corpus_read).

A corpus is one record per utterance, stored as ArrayRecord through TFDS in
`<out>/tinywave_corpus/1.0.0/`. A record holds `id`, `speaker`, `transcript`, `duration` (s),
for each unit stream (`hubert`, `pitch`, `style`) the unit ids and their start times in seconds
(`<stream>_times`; raw per-frame ids as the extractor gives them, or already deduplicated units:
deduplication at sequence time is idempotent), and an optional word alignment `words` (word,
start, end). Unit start times are stored as integer microseconds (`<stream>_time_us`): TFDS keeps
floats as float32, which would blur equal frame times of different streams; word times are
float32 seconds.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from ..errors import InputError
from .layout import STREAMS, time_key

NAME, VERSION = "tinywave_corpus", "1.0.0"
SPLITS = ("train", "validation", "test")


class CorpusError(InputError):
    """A bad corpus input or file; the message names the file and record."""


def features():
    """The TFDS features of a stored record."""

    spec = {
        "id": tfds.features.Text(),
        "speaker": tfds.features.Text(),
        "transcript": tfds.features.Text(),
        "duration": np.float32,
        # flat tensors: a Sequence of dicts decodes element by element (slow)
        "words": tfds.features.Tensor(shape=(None,), dtype=np.str_),
        "word_start": tfds.features.Tensor(shape=(None,), dtype=np.float32),
        "word_end": tfds.features.Tensor(shape=(None,), dtype=np.float32),
    }
    for s in STREAMS:
        spec[s] = tfds.features.Tensor(shape=(None,), dtype=np.int32)
        spec[s + "_time_us"] = tfds.features.Tensor(shape=(None,), dtype=np.int64)
    return tfds.features.FeaturesDict(spec)


def encode_example(rec: dict) -> dict:
    """A built record (corpus_inputs.make_record) -> the TFDS example stored for it."""
    words = rec["words"] or []
    ex = {k: rec[k] for k in ("id", "speaker", "transcript", "duration")}
    ex["words"] = np.array([w.encode() for w, _, _ in words] or [], dtype=object)
    ex["word_start"] = np.array([s for _, s, _ in words], np.float32)
    ex["word_end"] = np.array([e for _, _, e in words], np.float32)
    for s in STREAMS:
        ex[s] = rec[s]
        ex[s + "_time_us"] = time_key(rec[s + "_times"])
    return ex


def decode_record(ex: dict, where: str) -> dict:
    """TFDS example -> the record dict `streams.py` uses."""
    txt = lambda v: v.decode() if isinstance(v, bytes) else str(v)  # noqa: E731
    words = [
        (txt(a), float(b), float(c))
        for a, b, c in zip(ex["words"], ex["word_start"], ex["word_end"])
    ]
    return {
        "id": txt(ex["id"]),
        "speaker": txt(ex["speaker"]),
        "transcript": txt(ex["transcript"]),
        "duration": float(ex["duration"]),
        "words": words or None,
        "where": where,
        "streams": {
            s: (np.asarray(ex[s]), np.asarray(ex[s + "_time_us"]) / 1e6)
            for s in STREAMS
            if len(ex[s])
        },
    }
