"""Audio utterances -> unit records for the corpus, through `tinywave_jax.audio`'s unit
extractor; and the per-speaker mean log-F0 that normalises pitch and style (SpiritLM's)."""

from __future__ import annotations

import numpy as np

from ..audio import SAMPLE_RATE, load_extractor, read_audio
from ..audio.pitch import PitchConfig, tracker_f0
from .corpus_format import CorpusError
from .corpus_inputs import Item, make_record
from .layout import STREAMS

_EXTRACTORS: dict = {}


def cached_extractor(directory: str):
    """The extractor in `directory`, loaded once per process (workers reuse it across shards)."""

    if directory not in _EXTRACTORS:
        _EXTRACTORS[directory] = load_extractor(directory)
    return _EXTRACTORS[directory]


def _read(item):
    """Waveform (float32, 16 kHz) of an audio item; unreadable, empty or silent audio is a
    CorpusError naming the item."""

    path = item.data.get("path")
    if not path:
        raise CorpusError(f"{item.where}: needs an audio `path`")
    try:
        return read_audio(path)
    except Exception as e:  # read_audio names the file; add the manifest line
        raise CorpusError(f"{item.where}: {e}") from None


def audio_record(
    item: Item, split: str, extractor_dir: str, vocab_sizes: dict, f0_means: dict | None
) -> dict:
    """An audio file -> record through `tinywave_jax.audio`; `f0_means` maps speaker -> mean
    log-F0 for pitch/style normalisation (None: each utterance's own mean)."""

    ext = cached_extractor(extractor_dir)
    wav = _read(item)
    try:
        streams = ext.extract(wav, f0_mean=(f0_means or {}).get(str(item.data.get("speaker", ""))))
    except Exception as e:  # too short, silent...: name the file
        raise CorpusError(f"{item.where}: unit extraction failed: {e}") from None
    for s, (units, _) in streams.items():
        units = np.asarray(units)
        if s in vocab_sizes and units.size and (units.min() < 0 or units.max() >= vocab_sizes[s]):
            raise CorpusError(
                f"{item.where}: extractor gave {s} unit {int(units.max())} outside "
                f"the layout's {vocab_sizes[s]} {s} tokens"
            )
    return make_record(
        item, split, {s: v for s, v in streams.items() if s in STREAMS}, len(wav) / SAMPLE_RATE
    )


def _utterance_log_f0(job):
    """First pass: (sum of log F0 over voiced frames, voiced frame count) of one utterance,
    with the extractor's own pitch tracker settings."""
    item, extractor_dir = job

    cfg = (
        getattr(getattr(cached_extractor(extractor_dir), "cfg", None), "pitch", None)
        or PitchConfig()
    )
    try:
        f0, voiced, _ = tracker_f0(_read(item), cfg)
    except Exception:  # reported by the second pass, which names the file
        return 0.0, 0
    return float(np.log(f0[voiced]).sum()), int(voiced.sum())


def item_log_f0_stats(items: list[Item], extractor_dir: str, map_fn=map) -> list:
    """(sum of log F0 over voiced frames, voiced frame count) of each item, in order.
    `map_fn`: `map`, or a process pool's `map` to run the utterances in parallel."""
    return [tuple(x) for x in map_fn(_utterance_log_f0, [(i, extractor_dir) for i in items])]


def combine_log_f0(items: list[Item], stats: list) -> dict:
    """Each speaker's mean log-F0 from the per-item `stats` of `item_log_f0_stats`, summed in
    item order (so that a host-sharded build, which gathers them shard by shard, gets the same
    floats as a one-process build)."""
    sums: dict = {}
    for item, (total, count) in zip(items, stats, strict=True):
        spk = str(item.data.get("speaker", ""))
        s, c = sums.get(spk, (0.0, 0))
        sums[spk] = (s + total, c + count)
    return {spk: s / c for spk, (s, c) in sums.items() if c > 0}


def speaker_log_f0_means(items: list[Item], extractor_dir: str, map_fn=map) -> dict:
    """Mean log-F0 over each speaker's voiced frames (SpiritLM normalises pitch per speaker).
    `map_fn`: `map`, or a process pool's `map` to run the utterances in parallel."""
    return combine_log_f0(items, item_log_f0_stats(items, extractor_dir, map_fn))
