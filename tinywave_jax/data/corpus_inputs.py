"""Corpus inputs: a jsonl manifest or an audio folder as Items, their ids and splits, and the
record of one utterance (`make_record`; `units_record` for a pre-extracted units line, audio goes
through corpus_audio)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import numpy as np

from ..errors import MissingInputError
from ..jsonl import iter_jsonl
from .corpus_format import SPLITS, CorpusError
from .layout import STREAMS

DEFAULT_FRAME_RATES = {"hubert": 25.0, "pitch": 12.5, "style": 1.0}  # SpiritLM's (Hz)
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")


@dataclasses.dataclass
class Item:
    """One utterance to build: a manifest line or an audio file (`where` names it in errors)."""

    where: str
    data: dict


def _words(raw, where):
    """[[w, s, e], ...] or [{'word','start','end'}, ...] -> list of (str, float, float)."""
    if raw is None:
        return None
    out = []
    for k, w in enumerate(raw):
        try:
            word, s, e = (w["word"], w["start"], w["end"]) if isinstance(w, dict) else w
            out.append((str(word), float(s), float(e)))
        except (KeyError, TypeError, ValueError):
            raise CorpusError(f"{where}: word {k} is not (word, start, end): {w!r}") from None
    return out


def read_manifest(path) -> list[Item]:
    """jsonl; each line one utterance. Relative `path` entries are relative to the manifest."""
    path = Path(path)
    items = []
    for where, data in iter_jsonl(path, "manifest", CorpusError):
        if "path" in data and not os.path.isabs(data["path"]):
            data["path"] = str(path.parent / data["path"])
        items.append(Item(where, data))
    return items


def scan_audio_folder(folder) -> list[Item]:
    """Audio files under `folder`: speaker = parent folder name, id = relative path without
    suffix, transcript from `x.txt`, alignment from `x.words.json` ([[word, start, end], ...])."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingInputError(f"audio folder not found: {folder}")
    items = []
    for p in sorted(q for q in folder.rglob("*") if q.suffix.lower() in AUDIO_SUFFIXES):
        data = {
            "path": str(p),
            "id": str(p.relative_to(folder).with_suffix("")),
            "speaker": p.parent.name,
        }
        if p.with_suffix(".txt").is_file():
            data["transcript"] = p.with_suffix(".txt").read_text().strip()
        if p.with_suffix(".words.json").is_file():
            data["words"] = json.loads(p.with_suffix(".words.json").read_text())
        items.append(Item(str(p), data))
    return items


def item_id(item: Item) -> str:
    d = item.data
    if "id" in d:
        return str(d["id"])
    if "path" in d:
        return Path(d["path"]).stem
    raise CorpusError(f"{item.where}: needs an `id` (or an audio `path`)")


def assign_split(item: Item, valid_fraction: float, test_fraction: float) -> str:
    """The manifest's `split`, else a stable hash of the id."""
    split = item.data.get("split")
    if split is not None:
        if split not in SPLITS:
            raise CorpusError(f"{item.where}: split {split!r} is not one of {SPLITS}")
        return split
    h = int(hashlib.md5(item_id(item).encode()).hexdigest()[:8], 16) / 2**32
    return (
        "validation"
        if h < valid_fraction
        else "test"
        if h < valid_fraction + test_fraction
        else "train"
    )


def make_record(item: Item, split: str, streams: dict, duration: float) -> dict:
    """The record of `item` (corpus_format's fields); `streams`: {stream: (units, times)}."""
    d = item.data
    rec = {
        "id": item_id(item),
        "speaker": str(d.get("speaker", "")),
        "split": split,
        "transcript": str(d.get("transcript") or ""),
        "duration": float(duration),
        "words": _words(d.get("words"), item.where),
    }
    for s in STREAMS:
        units, times = streams.get(s, ((), ()))
        rec[s] = np.asarray(units, np.int32)
        rec[s + "_times"] = np.asarray(times, np.float64)
    return rec


def units_record(item: Item, split: str, vocab_sizes: dict, frame_rates: dict) -> dict:
    """A pre-extracted units manifest line -> record. `units: {stream: [ids] | "1 2 3"}`,
    optional `times: {stream: [s]}` (else frame i starts at i / frame_rate), optional
    `duration`. Raises CorpusError naming the line for anything that would give wrong tokens."""
    d, where = item.data, item.where
    if not isinstance(d.get("units"), dict) or not d["units"]:
        raise CorpusError(f"{where}: needs `units`: {{stream: [ids]}}")
    streams, end = {}, 0.0
    for s, raw in d["units"].items():
        if s not in STREAMS:
            raise CorpusError(f"{where}: unknown unit stream {s!r}; expected {STREAMS}")
        try:
            units = np.asarray(raw.split() if isinstance(raw, str) else raw, np.float64)
        except ValueError:
            raise CorpusError(f"{where}: {s} units are not numbers") from None
        if units.ndim != 1 or np.any(units != np.round(units)):
            raise CorpusError(f"{where}: {s} units must be a flat list of integers")
        if units.size and (units.min() < 0 or units.max() >= vocab_sizes[s]):
            bad = units[(units < 0) | (units >= vocab_sizes[s])][0]
            raise CorpusError(
                f"{where}: {s} unit {int(bad)} is outside the layout's {vocab_sizes[s]} {s} tokens"
            )
        rate = float((d.get("frame_rates") or {}).get(s, frame_rates[s]))
        times = d.get("times", {}).get(s)
        times = np.arange(len(units)) / rate if times is None else np.asarray(times, np.float64)
        if len(times) != len(units):
            raise CorpusError(f"{where}: {s} has {len(units)} units but {len(times)} times")
        if len(times) > 1 and np.any(np.diff(times) < 0):
            raise CorpusError(f"{where}: {s} times are not non-decreasing")
        streams[s] = (units.astype(np.int32), times)
        if len(times):
            end = max(end, float(times[-1]) + 1.0 / rate)
    return make_record(item, split, streams, float(d.get("duration", end)))
