"""`build_corpus`: inputs -> the TFDS ArrayRecord corpus (corpus_format), parallel and restartable.

Two stages:
  1. staging: the inputs (corpus_inputs) are cut into fixed shards of utterances; worker
     processes turn each shard into records (`units_record`, or `corpus_audio.audio_record` with
     an extractor) and write `_staging/shard-NNNNN.pkl` atomically. A rerun skips shards whose
     file exists (the plan, i.e. inputs and shard size, must be unchanged).
  2. TFDS: `TinywaveCorpus` (a GeneratorBasedBuilder, file_format="array_record", no
     TensorFlow) reads the staged shards and writes `<out>/tinywave_corpus/1.0.0/`, readable with
     `tfds.builder_from_directory(...)`, `tfds.data_source("tinywave_corpus", data_dir=out)`, or
     `corpus_read.CorpusSource(out, split)` (which names file and record on a decoding error).
Then `summarize` / `format_summary` report hours, speakers, tokens and skipped utterances.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
from collections import Counter
from pathlib import Path

from .corpus_audio import audio_record, cached_extractor, speaker_log_f0_means
from .corpus_format import NAME, SPLITS, VERSION, CorpusError, encode_example, features
from .corpus_inputs import (
    DEFAULT_FRAME_RATES,
    assign_split,
    item_id,
    read_manifest,
    scan_audio_folder,
    units_record,
)
from .layout import STREAMS, dedup

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
                records.append(
                    audio_record(
                        item, split, opts["extractor"], opts["vocab_sizes"], opts.get("f0_means")
                    )
                )
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


def _builder_class():
    import tensorflow_datasets as tfds

    class TinywaveCorpus(tfds.core.GeneratorBasedBuilder):
        """Tokenized speech corpus (see tinywave_jax.data.corpus_format)."""

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
            return tfds.core.DatasetInfo(
                builder=self, features=features(), description="TinyWave tokenized speech corpus"
            )

        def _split_generators(self, dl_manager):
            return {s: self._generate_examples(s) for s in self._splits}

        def _generate_examples(self, split):
            for rec in _staged_records(Path(self._staging_dir), split):
                yield rec["id"], encode_example(rec)

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


def build_corpus(
    out,
    *,
    manifest=None,
    audio_dir=None,
    extractor=None,
    shard_size=256,
    workers=1,
    valid_fraction=0.01,
    test_fraction=0.01,
    vocab_sizes=None,
    frame_rates=None,
    max_skipped=None,
    speaker_f0=True,
    log=print,
) -> dict:
    """Builds the corpus under `out` (a TFDS data_dir); returns the summary dict.

    Inputs: `manifest` (jsonl of pre-extracted units, or of audio `path`s when `extractor` is
    given) or `audio_dir` (with `extractor`). `max_skipped`: None skips bad utterances without
    limit (each named in the summary), 0 fails on the first, n fails when more than n are skipped.
    When every utterance is skipped nothing is written and a CorpusError names the reasons.
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

    opts = {
        "vocab_sizes": dict(vocab_sizes or {"hubert": 501, "pitch": 64, "style": 100}),
        "frame_rates": {**DEFAULT_FRAME_RATES, **(frame_rates or {})},
        "strict": max_skipped == 0,
        "extractor": str(extractor) if extractor else None,
    }
    ext = cached_extractor(opts["extractor"]) if mode == "audio" else None

    staging = out / "_staging"
    staging.mkdir(parents=True, exist_ok=True)
    plan = {
        "items": [i.where for i in items],
        "splits": splits,
        "shard_size": shard_size,
        "mode": mode,
        "vocab_sizes": opts["vocab_sizes"],
        "frame_rates": opts["frame_rates"],
    }
    if mode == "audio":  # a refitted extractor must not mix with shards staged by the old one
        from ..audio.extractor import CONFIG_FILE

        plan["extractor"] = (Path(extractor) / CONFIG_FILE).read_text()
    digest = hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()
    plan_file = staging / "plan.sha256"
    if plan_file.exists() and plan_file.read_text() != digest:
        raise CorpusError(
            f"{staging} was staged from different inputs or settings; delete it "
            "(or use another --out) to rebuild"
        )
    plan_file.write_text(digest)

    shards = [
        (k, items[a : a + shard_size], splits[a : a + shard_size])
        for k, a in enumerate(range(0, len(items), shard_size))
    ]
    todo = [s for s in shards if not (staging / f"shard-{s[0]:05d}.pkl").exists()]
    log(
        f"corpus: {len(items)} utterances in {len(shards)} shards; {len(shards) - len(todo)} "
        f"already staged, {len(todo)} to do with {workers} worker(s)"
    )
    if todo and mode == "audio" and speaker_f0 and {"pitch", "style"} & set(ext.vocab_sizes):
        f0_file = staging / "speaker_f0.json"
        if not f0_file.exists():
            with _pool(workers) as pool:
                means = speaker_log_f0_means(items, opts["extractor"], pool.map if pool else map)
            f0_file.write_text(json.dumps(means))
        opts["f0_means"] = json.loads(f0_file.read_text())
    jobs = [(k, its, sps, str(staging), mode, opts) for k, its, sps in todo]
    with _pool(workers) as pool:
        for done, (n_ok, n_bad) in enumerate(
            pool.imap_unordered(_stage_shard, jobs) if pool else map(_stage_shard, jobs), 1
        ):
            log(f"  shard {done}/{len(jobs)}: {n_ok} records, {n_bad} skipped")

    summary = summarize(staging)
    if max_skipped is not None and summary["skipped"]["count"] > max_skipped:
        raise CorpusError(
            f"{summary['skipped']['count']} utterances skipped (allowed "
            f"{max_skipped}): {summary['skipped']['examples'][:3]}"
        )
    present = [s for s in SPLITS if summary["splits"].get(s, {}).get("utterances", 0) > 0]
    if not present:  # an empty corpus would "succeed" and fail later in training
        sk = summary["skipped"]
        reasons = "; ".join(f"{n} x {r}" for r, n in list(sk["by_reason"].items())[:3])
        first = f"; first: {sk['examples'][0]}" if sk["examples"] else ""
        raise CorpusError(
            f"no usable utterance: all {sk['count']} were skipped ({reasons}){first}; "
            f"no corpus was written to {out}"
        )
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
    builder = builder_class()(
        data_dir=str(out), file_format="array_record", staging_dir=str(staging), splits=splits
    )
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(
            download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
        )
    )


# ---------------------------------------------------------------- summary


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
            sp = splits.setdefault(
                rec["split"], {"utterances": 0, "hours": 0.0, "speakers": set(), "aligned": 0}
            )
            sp["utterances"] += 1
            sp["hours"] += rec["duration"] / 3600
            sp["speakers"].add(rec["speaker"])
            sp["aligned"] += bool(rec["words"])
            for s in STREAMS:
                frames[s] += len(rec[s])
                tokens[s] += len(dedup(rec[s])[0]) if s != "style" else len(rec[s])
    for sp in splits.values():
        sp["speakers"] = len(sp["speakers"])
    reasons = Counter(
        re.sub(r"-?\d+(\.\d+)?", "N", r[len(w) + 2 :] if r.startswith(w) else r) for w, r in skipped
    )
    return {
        "splits": splits,
        "frames": dict(frames),
        "tokens_dedup": dict(tokens),
        "skipped": {
            "count": len(skipped),
            "by_reason": dict(reasons),
            "examples": [r for _, r in skipped[:20]],
        },
    }


def format_summary(summary: dict) -> str:
    lines = []
    for s, sp in summary["splits"].items():
        lines.append(
            f"{s:>10}: {sp['utterances']} utterances, {sp['hours']:.3f} h, "
            f"{sp['speakers']} speakers, {sp['aligned']} with word alignment"
        )
    lines.append(
        "tokens per stream (frames -> after dedup): "
        + ", ".join(
            f"{s} {summary['frames'].get(s, 0)} -> {summary['tokens_dedup'].get(s, 0)}"
            for s in STREAMS
        )
    )
    sk = summary["skipped"]
    lines.append(
        f"skipped: {sk['count']}"
        + "".join(f"\n  {n} x {reason}" for reason, n in sk["by_reason"].items())
    )
    lines += [f"  e.g. {e}" for e in sk["examples"][:10]]
    return "\n".join(lines)
