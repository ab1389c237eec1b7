"""Tokenized speech corpus: one record per utterance, stored as ArrayRecord through TFDS.

A record holds `id`, `speaker`, `transcript`, `duration` (s), for each unit stream (`hubert`,
`pitch`, `style`) the unit ids and their start times in seconds (`<stream>_times`; raw per-frame
ids as the extractor gives them, or already deduplicated units: deduplication at sequence time is
idempotent), and an optional word alignment `words` (word, start, end). Unit start times are
stored as integer microseconds (`<stream>_time_us`): TFDS keeps floats as float32, which would
blur equal frame times of different streams; word times are float32 seconds.

Building (`build_corpus`) runs in two stages so that it is parallel and restartable:
  1. staging: the inputs are cut into fixed shards of utterances; worker processes turn each
     shard into records and write `_staging/shard-NNNNN.pkl` atomically. A rerun skips shards
     whose file exists (the plan, i.e. inputs and shard size, must be unchanged).
  2. TFDS: `TinywaveCorpus` (a GeneratorBasedBuilder, file_format="array_record", no
     TensorFlow) reads the staged shards and writes `<out>/tinywave_corpus/1.0.0/`, readable with
     `tfds.builder_from_directory(...)`, `tfds.data_source("tinywave_corpus", data_dir=out)`, or
     `CorpusSource(out, split)` here (which names file and record on a decoding error).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
import re
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from ..jsonl import iter_jsonl
from .layout import STREAMS, dedup, time_key

NAME, VERSION = "tinywave_corpus", "1.0.0"
SPLITS = ("train", "validation", "test")
DEFAULT_FRAME_RATES = {"hubert": 25.0, "pitch": 12.5, "style": 1.0}   # SpiritLM's (Hz)
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")


class CorpusError(ValueError):
    """A bad corpus input or file; the message names the file and record."""


# ---------------------------------------------------------------- inputs

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
        raise FileNotFoundError(f"audio folder not found: {folder}")
    items = []
    for p in sorted(q for q in folder.rglob("*") if q.suffix.lower() in AUDIO_SUFFIXES):
        data = {"path": str(p), "id": str(p.relative_to(folder).with_suffix("")),
                "speaker": p.parent.name}
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
    return "validation" if h < valid_fraction else "test" if h < valid_fraction + test_fraction \
        else "train"


# ---------------------------------------------------------------- item -> record

def _record(item: Item, split: str, streams: dict, duration: float) -> dict:
    d = item.data
    rec = {"id": item_id(item), "speaker": str(d.get("speaker", "")), "split": split,
           "transcript": str(d.get("transcript") or ""), "duration": float(duration),
           "words": _words(d.get("words"), item.where)}
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
            raise CorpusError(f"{where}: {s} unit {int(bad)} is outside the layout's "
                              f"{vocab_sizes[s]} {s} tokens")
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
    return _record(item, split, streams, float(d.get("duration", end)))


_EXTRACTORS: dict = {}


def _extractor(directory: str):
    from ..audio import load_extractor
    if directory not in _EXTRACTORS:
        _EXTRACTORS[directory] = load_extractor(directory)
    return _EXTRACTORS[directory]


def _read(item):
    """Waveform (float32, 16 kHz) of an audio item; unreadable, empty or silent audio is a
    CorpusError naming the item."""
    from ..audio import read_audio
    path = item.data.get("path")
    if not path:
        raise CorpusError(f"{item.where}: needs an audio `path`")
    try:
        return read_audio(path)
    except Exception as e:  # read_audio names the file; add the manifest line
        raise CorpusError(f"{item.where}: {e}") from None


def audio_record(item: Item, split: str, extractor_dir: str, vocab_sizes: dict,
                 f0_means: dict | None) -> dict:
    """An audio file -> record through `tinywave_jax.audio`; `f0_means` maps speaker -> mean
    log-F0 for pitch/style normalisation (None: each utterance's own mean)."""
    from ..audio import SAMPLE_RATE
    ext = _extractor(extractor_dir)
    wav = _read(item)
    try:
        streams = ext.extract(wav, f0_mean=(f0_means or {}).get(str(item.data.get("speaker", ""))))
    except Exception as e:  # too short, silent...: name the file
        raise CorpusError(f"{item.where}: unit extraction failed: {e}") from None
    for s, (units, _) in streams.items():
        units = np.asarray(units)
        if s in vocab_sizes and units.size and (units.min() < 0 or units.max() >= vocab_sizes[s]):
            raise CorpusError(f"{item.where}: extractor gave {s} unit {int(units.max())} outside "
                              f"the layout's {vocab_sizes[s]} {s} tokens")
    return _record(item, split, {s: v for s, v in streams.items() if s in STREAMS},
                   len(wav) / SAMPLE_RATE)


def _utterance_log_f0(job):
    """First pass: (sum of log F0 over voiced frames, voiced frame count) of one utterance,
    with the extractor's own pitch tracker settings."""
    item, extractor_dir = job
    from ..audio.pitch import PitchConfig, tracker_f0
    cfg = getattr(getattr(_extractor(extractor_dir), "cfg", None), "pitch", None) or PitchConfig()
    try:
        f0, voiced, _ = tracker_f0(_read(item), cfg)
    except Exception:  # reported by the second pass, which names the file
        return 0.0, 0
    return float(np.log(f0[voiced]).sum()), int(voiced.sum())


def speaker_log_f0_means(items: list[Item], extractor_dir: str, workers: int) -> dict:
    """Mean log-F0 over each speaker's voiced frames (SpiritLM normalises pitch per speaker)."""
    jobs = [(i, extractor_dir) for i in items]
    with _pool(workers) as pool:
        stats = pool.map(_utterance_log_f0, jobs) if pool else list(map(_utterance_log_f0, jobs))
    sums: dict = {}
    for item, (total, count) in zip(items, stats):
        spk = str(item.data.get("speaker", ""))
        s, c = sums.get(spk, (0.0, 0))
        sums[spk] = (s + total, c + count)
    return {spk: s / c for spk, (s, c) in sums.items() if c > 0}


# ---------------------------------------------------------------- staging (parallel, restartable)

def _pool(workers):
    import contextlib
    if workers <= 1:
        return contextlib.nullcontext(None)
    import multiprocessing
    return multiprocessing.get_context("spawn").Pool(workers)


def _stage_shard(job) -> tuple[int, int]:
    """Worker: turns one shard of items into records; writes the shard file atomically."""
    shard, items, splits, out, mode, opts = job
    records, skipped = [], []
    for item, split in zip(items, splits):
        try:
            if mode == "units":
                records.append(units_record(item, split, opts["vocab_sizes"], opts["frame_rates"]))
            else:
                records.append(audio_record(item, split, opts["extractor"], opts["vocab_sizes"],
                                            opts.get("f0_means")))
        except CorpusError as e:
            if opts["strict"]:
                raise
            skipped.append((item.where, str(e)))
    tmp = Path(out) / f".shard-{shard:05d}.tmp"
    with open(tmp, "wb") as f:
        pickle.dump({"records": records, "skipped": skipped}, f)
    os.replace(tmp, Path(out) / f"shard-{shard:05d}.pkl")
    return len(records), len(skipped)


def _staged_records(staging: Path, split: str | None = None):
    for f in sorted(staging.glob("shard-*.pkl")):
        with open(f, "rb") as fh:
            for rec in pickle.load(fh)["records"]:
                if split is None or rec["split"] == split:
                    yield rec


# ---------------------------------------------------------------- TFDS builder

def _features():
    import tensorflow_datasets as tfds
    spec = {"id": tfds.features.Text(), "speaker": tfds.features.Text(),
            "transcript": tfds.features.Text(), "duration": np.float32,
            # flat tensors: a Sequence of dicts decodes element by element (slow)
            "words": tfds.features.Tensor(shape=(None,), dtype=np.str_),
            "word_start": tfds.features.Tensor(shape=(None,), dtype=np.float32),
            "word_end": tfds.features.Tensor(shape=(None,), dtype=np.float32)}
    for s in STREAMS:
        spec[s] = tfds.features.Tensor(shape=(None,), dtype=np.int32)
        spec[s + "_time_us"] = tfds.features.Tensor(shape=(None,), dtype=np.int64)
    return tfds.features.FeaturesDict(spec)


def _builder_class():
    import tensorflow_datasets as tfds

    class TinywaveCorpus(tfds.core.GeneratorBasedBuilder):
        """Tokenized speech corpus (see tinywave_jax.data.corpus)."""
        VERSION = tfds.core.Version(VERSION)

        # TFDS looks for a checksums file beside the builder's code through
        # `importlib_resources`, which is not installed (and there are no downloads).
        @tfds.core.utils.classproperty
        @classmethod
        def code_path(cls):
            return None

        def __init__(self, *, staging_dir=None, splits=(), **kwargs):
            self._staging_dir, self._splits = staging_dir, tuple(splits)
            super().__init__(**kwargs)

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=_features(),
                                         description="TinyWave tokenized speech corpus")

        def _split_generators(self, dl_manager):
            return {s: self._generate_examples(s) for s in self._splits}

        def _generate_examples(self, split):
            for rec in _staged_records(Path(self._staging_dir), split):
                words = rec["words"] or []
                ex = {k: rec[k] for k in ("id", "speaker", "transcript", "duration")}
                ex["words"] = np.array([w.encode() for w, _, _ in words] or [], dtype=object)
                ex["word_start"] = np.array([s for _, s, _ in words], np.float32)
                ex["word_end"] = np.array([e for _, _, e in words], np.float32)
                for s in STREAMS:
                    ex[s] = rec[s]
                    ex[s + "_time_us"] = time_key(rec[s + "_times"])
                yield rec["id"], ex

    return TinywaveCorpus


_BUILDER = None


def builder_class():
    """The TFDS builder class (created lazily so that importing this module stays light;
    registered under the name 'tinywave_corpus' once created)."""
    global _BUILDER
    if _BUILDER is None:
        _BUILDER = _builder_class()
    return _BUILDER


# ---------------------------------------------------------------- build

def build_corpus(out, *, manifest=None, audio_dir=None, extractor=None, shard_size=256,
                 workers=1, valid_fraction=0.01, test_fraction=0.01, vocab_sizes=None,
                 frame_rates=None, max_skipped=None, speaker_f0=True, log=print) -> dict:
    """Builds the corpus under `out` (a TFDS data_dir); returns the summary dict.

    Inputs: `manifest` (jsonl of pre-extracted units, or of audio `path`s when `extractor` is
    given) or `audio_dir` (with `extractor`). `max_skipped`: None skips bad utterances without
    limit (each named in the summary), 0 fails on the first, n fails when more than n are skipped.
    With workers > 1 this spawns processes: a calling script needs `if __name__ == "__main__":`.
    """
    out = Path(out)
    if (manifest is None) == (audio_dir is None):
        raise CorpusError("give exactly one of a manifest or an audio folder")
    items = read_manifest(manifest) if manifest is not None else scan_audio_folder(audio_dir)
    mode = "audio" if extractor is not None else "units"
    if mode == "units" and audio_dir is not None:
        raise CorpusError("an audio folder needs --extractor DIR")
    if not items:
        raise CorpusError(f"no utterances found in {manifest or audio_dir}")
    ids = Counter(item_id(i) for i in items)
    dupes = [i.where for i in items if ids[item_id(i)] > 1]
    if dupes:
        raise CorpusError(f"duplicate utterance ids at {', '.join(dupes[:5])}")
    splits = [assign_split(i, valid_fraction, test_fraction) for i in items]

    opts = {"vocab_sizes": dict(vocab_sizes or {"hubert": 501, "pitch": 64, "style": 100}),
            "frame_rates": {**DEFAULT_FRAME_RATES, **(frame_rates or {})},
            "strict": max_skipped == 0, "extractor": str(extractor) if extractor else None}
    ext = _extractor(opts["extractor"]) if mode == "audio" else None

    staging = out / "_staging"
    staging.mkdir(parents=True, exist_ok=True)
    plan = {"items": [i.where for i in items], "splits": splits, "shard_size": shard_size,
            "mode": mode, "vocab_sizes": opts["vocab_sizes"], "frame_rates": opts["frame_rates"]}
    if mode == "audio":   # a refitted extractor must not mix with shards staged by the old one
        from ..audio.extractor import CONFIG_FILE
        plan["extractor"] = (Path(extractor) / CONFIG_FILE).read_text()
    digest = hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()
    plan_file = staging / "plan.sha256"
    if plan_file.exists() and plan_file.read_text() != digest:
        raise CorpusError(f"{staging} was staged from different inputs or settings; delete it "
                          "(or use another --out) to rebuild")
    plan_file.write_text(digest)

    shards = [(k, items[a:a + shard_size], splits[a:a + shard_size])
              for k, a in enumerate(range(0, len(items), shard_size))]
    todo = [s for s in shards if not (staging / f"shard-{s[0]:05d}.pkl").exists()]
    log(f"corpus: {len(items)} utterances in {len(shards)} shards; {len(shards) - len(todo)} "
        f"already staged, {len(todo)} to do with {workers} worker(s)")
    if todo and mode == "audio" and speaker_f0 and {"pitch", "style"} & set(ext.vocab_sizes):
        f0_file = staging / "speaker_f0.json"
        if not f0_file.exists():
            f0_file.write_text(json.dumps(speaker_log_f0_means(items, opts["extractor"], workers)))
        opts["f0_means"] = json.loads(f0_file.read_text())
    jobs = [(k, its, sps, str(staging), mode, opts) for k, its, sps in todo]
    with _pool(workers) as pool:
        for done, (n_ok, n_bad) in enumerate(pool.imap_unordered(_stage_shard, jobs)
                                             if pool else map(_stage_shard, jobs), 1):
            log(f"  shard {done}/{len(jobs)}: {n_ok} records, {n_bad} skipped")

    summary = summarize(staging)
    if max_skipped is not None and summary["skipped"]["count"] > max_skipped:
        raise CorpusError(f"{summary['skipped']['count']} utterances skipped (allowed "
                          f"{max_skipped}): {summary['skipped']['examples'][:3]}")
    present = [s for s in SPLITS if summary["splits"].get(s, {}).get("utterances", 0) > 0]
    version_dir = out / NAME / VERSION
    if todo or not (version_dir / "dataset_info.json").exists():
        import shutil
        shutil.rmtree(version_dir, ignore_errors=True)
        _prepare(out, staging, present)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def _prepare(out: Path, staging: Path, splits):
    import logging
    import tensorflow_datasets as tfds
    logging.getLogger("absl").setLevel(logging.WARNING)
    tfds.disable_progress_bar()
    builder = builder_class()(data_dir=str(out), file_format="array_record",
                              staging_dir=str(staging), splits=splits)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS))


def summarize(staging: Path) -> dict:
    """Hours, utterances and speakers per split, frames and tokens per stream, skips and why."""
    splits: dict = {}
    frames, tokens = Counter(), Counter()
    skipped = []
    for f in sorted(Path(staging).glob("shard-*.pkl")):
        with open(f, "rb") as fh:
            shard = pickle.load(fh)
        skipped += shard["skipped"]
        for rec in shard["records"]:
            sp = splits.setdefault(rec["split"], {"utterances": 0, "hours": 0.0,
                                                  "speakers": set(), "aligned": 0})
            sp["utterances"] += 1
            sp["hours"] += rec["duration"] / 3600
            sp["speakers"].add(rec["speaker"])
            sp["aligned"] += bool(rec["words"])
            for s in STREAMS:
                frames[s] += len(rec[s])
                tokens[s] += len(dedup(rec[s])[0]) if s != "style" else len(rec[s])
    for sp in splits.values():
        sp["speakers"] = len(sp["speakers"])
    reasons = Counter(re.sub(r"-?\d+(\.\d+)?", "N", r[len(w) + 2:] if r.startswith(w) else r)
                      for w, r in skipped)
    return {"splits": splits, "frames": dict(frames), "tokens_dedup": dict(tokens),
            "skipped": {"count": len(skipped), "by_reason": dict(reasons),
                        "examples": [r for _, r in skipped[:20]]}}


def format_summary(summary: dict) -> str:
    lines = []
    for s, sp in summary["splits"].items():
        lines.append(f"{s:>10}: {sp['utterances']} utterances, {sp['hours']:.3f} h, "
                     f"{sp['speakers']} speakers, {sp['aligned']} with word alignment")
    lines.append("tokens per stream (frames -> after dedup): " + ", ".join(
        f"{s} {summary['frames'].get(s, 0)} -> {summary['tokens_dedup'].get(s, 0)}"
        for s in STREAMS))
    sk = summary["skipped"]
    lines.append(f"skipped: {sk['count']}" + "".join(
        f"\n  {n} x {reason}" for reason, n in sk["by_reason"].items()))
    lines += [f"  e.g. {e}" for e in sk["examples"][:10]]
    return "\n".join(lines)


# ---------------------------------------------------------------- reading

def version_dir(corpus_dir) -> Path:
    """The TFDS dataset folder: `corpus_dir` itself or `corpus_dir/tinywave_corpus/<version>`."""
    d = Path(corpus_dir)
    if (d / "dataset_info.json").exists():
        return d
    base = d / NAME
    versions = sorted(p for p in base.glob("*") if (p / "dataset_info.json").exists()) \
        if base.is_dir() else []
    if not versions:
        raise FileNotFoundError(f"no {NAME} corpus under {d} (run `tinywave corpus build`)")
    return versions[-1]


class CorpusSource:
    """Random-access records of one split (a grain data source). Decoding errors name the
    ArrayRecord file and record; records come back in the dict form `streams.py` takes."""

    def __init__(self, corpus_dir, split="train"):
        self.dir, self.split = str(version_dir(corpus_dir)), split
        self._open()

    def _open(self):
        import tensorflow_datasets as tfds
        builder = tfds.builder_from_directory(self.dir)
        if self.split not in builder.info.splits:
            raise CorpusError(f"corpus {self.dir} has no split {self.split!r}; it has "
                              f"{sorted(builder.info.splits)}")
        instr = builder.info.splits[self.split].file_instructions
        self._files = [fi.filename for fi in instr]
        self._starts = np.cumsum([0] + [fi.take for fi in instr])
        self._features = builder.info.features
        self._readers = {}

    def __getstate__(self):        # reopened lazily in grain worker processes
        return {"dir": self.dir, "split": self.split}

    def __setstate__(self, state):
        self.dir, self.split = state["dir"], state["split"]
        self._open()

    def __len__(self):
        return int(self._starts[-1])

    def locate(self, index: int) -> tuple[str, int]:
        k = int(np.searchsorted(self._starts, index, side="right") - 1)
        return self._files[k], index - int(self._starts[k])

    def _reader(self, path):
        if path not in self._readers:
            from array_record.python.array_record_module import ArrayRecordReader
            self._readers[path] = ArrayRecordReader(path, "readahead_buffer_size:0")
        return self._readers[path]

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"record {index} outside split {self.split} ({len(self)} records)")
        path, local = self.locate(index)
        where = f"{path} record {local}"
        try:
            ex = self._features.deserialize_example_np(self._reader(path).read([local])[0])
        except Exception as e:
            raise CorpusError(f"{where}: cannot read or decode: {type(e).__name__}: {e}") from None
        return decode_record(ex, where)


def decode_record(ex: dict, where: str) -> dict:
    """TFDS example -> the record dict `streams.py` uses."""
    txt = lambda v: v.decode() if isinstance(v, bytes) else str(v)  # noqa: E731
    words = [(txt(a), float(b), float(c))
             for a, b, c in zip(ex["words"], ex["word_start"], ex["word_end"])]
    return {"id": txt(ex["id"]), "speaker": txt(ex["speaker"]),
            "transcript": txt(ex["transcript"]), "duration": float(ex["duration"]),
            "words": words or None, "where": where,
            "streams": {s: (np.asarray(ex[s]), np.asarray(ex[s + "_time_us"]) / 1e6)
                        for s in STREAMS if len(ex[s])}}


def log_stderr(msg):
    print(msg, file=sys.stderr)
