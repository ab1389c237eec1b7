"""`build_corpus`: inputs -> the TFDS ArrayRecord corpus (corpus_format), parallel and restartable.

Two stages:
  1. staging: the inputs (corpus_inputs) are cut into fixed shards of utterances; worker
     processes turn each shard into records (`units_record`, or `corpus_audio.audio_record` with
     an extractor) and write `_staging/shard-NNNNN.npz` atomically (numpy arrays and one JSON
     entry, read with allow_pickle=False: the staging folder may be shared by several hosts, so
     nothing in it is unpickled). A rerun skips shards whose
     file exists (the plan, i.e. inputs and shard size, must be unchanged).
  2. TFDS: `TinywaveCorpus` (a GeneratorBasedBuilder, file_format="array_record", no
     TensorFlow) reads the staged shards and writes `<out>/tinywave_corpus/1.0.0/`, readable with
     `tfds.builder_from_directory(...)`, `tfds.data_source("tinywave_corpus", data_dir=out)`, or
     `corpus_read.CorpusSource(out, split)` (which names file and record on a decoding error).
Then `summarize` / `format_summary` report hours, speakers, tokens and skipped utterances.

Host-sharded (`num_hosts` > 1, `tinywave corpus build --num-hosts N --host-index I` on every
host into one shared `out`): the shard plan and each utterance's split depend on the inputs and
settings only, never on the host count, so host I stages shards `k % N == I` and records its
share in `_staging/share-I-of-N.json` (plan digest, readable settings, its shard numbers). Then
`finalize_corpus` (`tinywave corpus finalize OUT`) checks that every share is there and built
alike and runs stage 2 over all shards: the corpus is the one a one-process build writes (same
files, same records in the same order per split; TFDS orders records by a hash of their id).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import multiprocessing
import os
import re
import tempfile
import time
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from .. import storage
from ..audio.extractor import CONFIG_FILE
from ..errors import ConfigError, MissingInputError, naming
from ..outputs import atomic_output_dir, write_file_atomic
from .corpus_audio import audio_record, cached_extractor, combine_log_f0, item_log_f0_stats
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

    if workers <= 1:
        return contextlib.nullcontext(None)

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
    write_file_atomic(storage.path(out) / shard_name(shard), _encode_shard(records, skipped))
    return len(records), len(skipped)


def shard_name(k: int) -> str:
    return f"shard-{k:05d}.npz"


_ARRAYS = tuple(f"{s}{t}" for s in STREAMS for t in ("", "_times"))


def _encode_shard(records: list[dict], skipped: list) -> bytes:
    """A staged shard as .npz bytes: each record's arrays as `R.FIELD`, everything else (ids,
    words, skips) in one JSON entry `meta`; no pickled object anywhere."""

    meta = {
        "records": [{k: v for k, v in r.items() if k not in _ARRAYS} for r in records],
        "skipped": [list(x) for x in skipped],
    }
    arrays = {"meta": np.frombuffer(json.dumps(meta).encode(), np.uint8)}
    arrays.update({f"{i}.{k}": np.asarray(r[k]) for i, r in enumerate(records) for k in _ARRAYS})
    buf = io.BytesIO()
    # np.savez's layout, with a fixed timestamp: equal shards are equal bytes on every host
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name, a in arrays.items():
            with z.open(zipfile.ZipInfo(name + ".npy", (1980, 1, 1, 0, 0, 0)), "w") as f:
                np.lib.format.write_array(f, a, allow_pickle=False)
    return buf.getvalue()


def read_shard(f) -> dict:
    """{"records", "skipped"} of a staged shard file; CorpusError naming the file when it is
    truncated, damaged or not a staged shard (allow_pickle=False: a planted pickle is refused,
    never run)."""

    try:
        with np.load(io.BytesIO(storage.path(f).read_bytes()), allow_pickle=False) as z:
            meta = json.loads(bytes(z["meta"]))
            records = []
            for i, r in enumerate(meta["records"]):
                rec = dict(r)
                for k in _ARRAYS:
                    rec[k] = z[f"{i}.{k}"]
                if rec["words"] is not None:
                    rec["words"] = [tuple(w) for w in rec["words"]]
                records.append(rec)
            skipped = [tuple(x) for x in meta["skipped"]]
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as e:
        raise CorpusError(
            f"{f}: not a readable staged shard ({type(e).__name__}: {str(e)[:200]}); it is "
            "truncated or damaged: delete it and rerun the `corpus build` that staged it "
            "(only the missing shards are redone)"
        ) from None
    return {"records": records, "skipped": skipped}


def _staged_records(staging: Path, split: str | None = None):
    for f in sorted(staging.glob("shard-*.npz")):
        for rec in read_shard(f)["records"]:
            if split is None or rec["split"] == split:
                yield rec


# ---------------------------------------------------------------- TFDS builder


def _builder_class():

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


def check_hosts(num_hosts: int, host_index: int) -> None:
    """Refuses a host share that cannot exist (ConfigError, before any input is read)."""
    if num_hosts < 1:
        raise ConfigError(f"num_hosts {num_hosts} must be at least 1", param="num_hosts")
    if not 0 <= host_index < num_hosts:
        raise ConfigError(
            f"host_index {host_index} is outside 0..{num_hosts - 1} (num_hosts {num_hosts})",
            param=("host_index", "num_hosts"),
        )


def share_name(host_index: int, num_hosts: int) -> str:
    """The file in `_staging` that records one host's finished share."""
    return f"share-{host_index:05d}-of-{num_hosts:05d}.json"


def _names(folder, pattern: str) -> set[str]:
    """The names in `folder` matching `pattern` (one listing, also on object storage)."""
    return {p.name for p in folder.glob(pattern)}


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
    num_hosts=1,
    host_index=0,
    log=print,
) -> dict:
    """Builds the corpus under `out` (a TFDS data_dir); returns the summary dict.

    Inputs: `manifest` (jsonl of pre-extracted units, or of audio `path`s when `extractor` is
    given) or `audio_dir` (with `extractor`). `max_skipped`: None skips bad utterances without
    limit (each named in the summary), 0 fails on the first, n fails when more than n are skipped.
    When every utterance is skipped nothing is written and a CorpusError names the reasons.
    With workers > 1 this spawns processes: a calling script needs `if __name__ == "__main__":`.

    `num_hosts` > 1: this call is host `host_index`'s share of a host-sharded build into a
    shared `out`. Every host reads the same inputs and makes the same shard plan (the shards,
    and each utterance's split, do not depend on the host count); this host stages shards
    `k % num_hosts == host_index`, writes `_staging/share-I-of-N.json` and returns its share's
    summary (with a "share" entry); `finalize_corpus(out)` then writes the corpus, which equals
    a one-process build's. Pitch normalised per speaker needs every host's pitch statistics:
    each host computes those of its shards, then waits for the others' before extracting.
    """
    check_hosts(num_hosts, host_index)
    with naming("out"):
        storage.check_gcs(out, write=True, what="out")
    out = storage.absolute(out)
    if (manifest is None) == (audio_dir is None):
        raise CorpusError("give exactly one of a manifest or an audio folder")
    items = read_manifest(manifest) if manifest is not None else scan_audio_folder(audio_dir)
    mode = "audio" if extractor is not None else "units"
    if mode == "units" and audio_dir is not None:
        raise CorpusError(
            "extractor: an audio folder needs a units folder to tokenise it", param="extractor"
        )
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
        plan["extractor"] = (Path(extractor) / CONFIG_FILE).read_text()
        if not speaker_f0:  # (only when off: digests of earlier stagings stay valid)
            plan["speaker_f0"] = False
    digest = hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()
    plan_file = staging / "plan.sha256"
    if plan_file.exists() and plan_file.read_text() != digest:
        raise CorpusError(
            f"{staging} was staged from different inputs or settings"
            + (" (by another host or an earlier build)" if num_hosts > 1 else "")
            + "; delete it (or use another out) to rebuild",
            param=(None, "out"),
        )
    write_file_atomic(plan_file, digest)

    shards = [
        (k, items[a : a + shard_size], splits[a : a + shard_size])
        for k, a in enumerate(range(0, len(items), shard_size))
    ]
    mine = [s for s in shards if s[0] % num_hosts == host_index]
    staged = _names(staging, "shard-*.npz")
    todo = [s for s in mine if shard_name(s[0]) not in staged]
    share = f" (host {host_index} of {num_hosts}: {len(mine)} of them)" if num_hosts > 1 else ""
    log(
        f"corpus: {len(items)} utterances in {len(shards)} shards{share}; "
        f"{len(mine) - len(todo)} already staged, {len(todo)} to do with {workers} worker(s)"
    )
    if todo and mode == "audio" and speaker_f0 and {"pitch", "style"} & set(ext.vocab_sizes):
        opts["f0_means"] = _speaker_f0(
            items, shards, mine, staging, opts["extractor"], workers, num_hosts, log
        )
    jobs = [(k, its, sps, str(staging), mode, opts) for k, its, sps in todo]
    with _pool(workers) as pool:
        for done, (n_ok, n_bad) in enumerate(
            pool.imap_unordered(_stage_shard, jobs) if pool else map(_stage_shard, jobs), 1
        ):
            log(f"  shard {done}/{len(jobs)}: {n_ok} records, {n_bad} skipped")

    if num_hosts > 1:
        settings = {
            "utterances": len(items),
            "inputs": hashlib.sha256(json.dumps([plan["items"], splits]).encode()).hexdigest()[:16],
            "valid_fraction": valid_fraction,
            "test_fraction": test_fraction,
            **{k: plan[k] for k in ("shard_size", "mode", "vocab_sizes", "frame_rates")},
            "extractor": hashlib.sha256(plan["extractor"].encode()).hexdigest()[:16]
            if mode == "audio"
            else None,
            "speaker_f0": speaker_f0,
        }
        return _finish_share(
            out,
            staging,
            digest,
            settings,
            len(shards),
            mine,
            host_index,
            num_hosts,
            max_skipped,
            log,
        )
    return _finish(out, staging, max_skipped, bool(todo))


def _speaker_f0(items, shards, mine, staging, extractor, workers, num_hosts, log, poll=1.0):
    """Per-speaker mean log-F0 over all items, restartable and host-sharded: the per-item
    statistics of each shard go to `_staging/f0-NNNNN.json` (this host computes its own shards'),
    and once every shard's are there they are combined in item order into speaker_f0.json."""
    f0_file = staging / "speaker_f0.json"
    if f0_file.exists():
        return json.loads(f0_file.read_text())

    def stats_file(k):
        return staging / f"f0-{k:05d}.json"

    have = _names(staging, "f0-*.json")
    need = [(k, its) for k, its, _ in mine if stats_file(k).name not in have]
    if need:
        log(f"  pitch statistics of {len(need)} shard(s) for per-speaker F0")
        with _pool(workers) as pool:
            for k, its in need:
                stats = item_log_f0_stats(its, extractor, pool.map if pool else map)
                write_file_atomic(stats_file(k), json.dumps(stats))
    last = time.monotonic()
    while not f0_file.exists():
        have = _names(staging, "f0-*.json")
        missing = [k for k, _, _ in shards if stats_file(k).name not in have]
        if not missing:
            stats = [tuple(x) for k, _, _ in shards for x in json.loads(stats_file(k).read_text())]
            write_file_atomic(f0_file, json.dumps(combine_log_f0(items, stats)))
            break
        if time.monotonic() - last > 60:
            hosts = sorted({k % num_hosts for k in missing})
            log(
                f"  waiting for the pitch statistics of {len(missing)} shard(s) from host(s) "
                f"{', '.join(map(str, hosts))} (first: {stats_file(missing[0])})"
            )
            last = time.monotonic()
        time.sleep(poll)
    return json.loads(f0_file.read_text())


def _finish(out, staging, max_skipped, rebuild: bool) -> dict:
    """Summary, skip limit and the TFDS pass over every staged shard; writes summary.json.
    On object storage the staged shards are read from a local mirror and the TFDS folder is
    written locally (ArrayRecord writes local files), then uploaded, dataset_info.json last
    (the reader's marker of a complete version folder)."""
    remote = storage.is_remote(out)
    if remote:
        staging = storage.local_mirror(staging, "corpus staging")
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
    if rebuild or not (version_dir / "dataset_info.json").exists():
        # written aside (locally: on the same disk, so that it can be renamed), then put in
        # place as one folder replacing the old one only once complete: a killed re-finalize
        # leaves the corpus that was there
        scratch_in = Path(tempfile.gettempdir()) if remote else out
        storage.remove_dead_temps(scratch_in, ".tinywave-corpus-")  # left by a killed one
        with (
            tempfile.TemporaryDirectory(
                prefix=f".tinywave-corpus-{storage.temp_tag()}-", dir=scratch_in
            ) as scratch,
            atomic_output_dir(version_dir, overwrite=True) as tmp,
        ):
            _prepare(Path(scratch), staging, present)
            built = Path(scratch) / NAME / VERSION
            if remote:
                storage.copy_tree(built, tmp, last=("dataset_info.json",))
            else:
                tmp.rmdir()
                os.rename(built, tmp)
    write_file_atomic(out / "summary.json", json.dumps(summary, indent=1))
    return summary


def _finish_share(
    out, staging, digest, settings, num_shards, mine, host_index, num_hosts, max_skipped, log
) -> dict:
    """Records this host's finished share (`_staging/share-I-of-N.json`) for finalize_corpus."""
    summary = summarize(staging, [k for k, _, _ in mine])
    if max_skipped is not None and summary["skipped"]["count"] > max_skipped:
        raise CorpusError(
            f"{summary['skipped']['count']} utterances skipped in this host's share alone "
            f"(allowed {max_skipped}): {summary['skipped']['examples'][:3]}"
        )
    f0 = staging / "speaker_f0.json"
    share = {
        "host_index": host_index,
        "num_hosts": num_hosts,
        "plan": digest,
        "settings": settings,
        "num_shards": num_shards,
        "shards": [k for k, _, _ in mine],
        "utterances": sum(sp["utterances"] for sp in summary["splits"].values()),
        "skipped": summary["skipped"]["count"],
        "max_skipped": max_skipped,
        "speaker_f0": hashlib.sha256(f0.read_bytes()).hexdigest()[:16] if f0.exists() else None,
    }
    write_file_atomic(staging / share_name(host_index, num_hosts), json.dumps(share, indent=1))
    log(
        f"corpus: share {host_index} of {num_hosts} staged; once all {num_hosts} are, "
        f"`tinywave corpus finalize {out}` writes the corpus"
    )
    return {**summary, "share": share}


def _build_share(n="N", i="I") -> str:
    """How a host's share is built, from Python and on the command line (finalize's errors send
    the user back to that other step, whichever way it was run)."""
    return (
        f"build_corpus(..., num_hosts={n}, host_index={i}), or `tinywave corpus build ... "
        f"--num-hosts {n} --host-index {i}`"
    )


def finalize_corpus(out, *, max_skipped="shares", log=print) -> dict:
    """Checks the shares of a host-sharded build (`build_corpus(..., num_hosts=N,
    host_index=I)` for every I) and writes the corpus and summary.json from them; returns the
    summary. A missing share, a share built from other inputs or settings than the others, or
    shares of different host counts are refused (CorpusError naming the share file). The
    records, their splits and their order equal a one-process build's: the TFDS pass reads the
    same staged shards. `max_skipped`: "shares" uses the smallest limit the shares were built
    with; None (no limit) or a number overrides it."""
    with naming("out"):
        storage.check_gcs(out, write=True, what="out")
    out = storage.absolute(out)
    staging = out / "_staging"
    files = sorted(staging.glob("share-*-of-*.json"), key=str)
    if not files:
        raise MissingInputError(
            f"no host share in {staging}: build every host's share into {out} first "
            f"({_build_share()})"
        )
    shares = {}
    for f in files:
        try:
            s = json.loads(f.read_text())
            shares[f] = s
            int(s["host_index"]), int(s["num_hosts"]), s["plan"]
        except (ValueError, KeyError, TypeError):
            raise CorpusError(f"{f}: not a host share record (delete it)") from None
    counts = Counter(s["num_hosts"] for s in shares.values())
    if len(counts) > 1:
        n = max(counts, key=lambda c: (counts[c], -c))
        stale = [f.name for f, s in shares.items() if s["num_hosts"] != n]
        raise CorpusError(
            f"{staging} holds shares of different host counts: {', '.join(stale)} do not belong "
            f"to the {counts[n]} share(s) of num_hosts {n}; delete the stale ones"
        )
    n = next(iter(counts))
    by_index = {s["host_index"]: (f, s) for f, s in shares.items()}
    missing = [i for i in range(n) if i not in by_index]
    if missing:
        raise CorpusError(
            f"{len(missing)} of {n} host shares missing: "
            + ", ".join(f"share {i} ({staging / share_name(i, n)})" for i in missing)
            + f"; build (or finish) {'it' if len(missing) == 1 else 'them'} "
            + f"({_build_share(n)})"
        )
    digests = Counter(s["plan"] for _, s in by_index.values())
    ref = max(
        digests,
        key=lambda d: (digests[d], -min(i for i, (_, s) in by_index.items() if s["plan"] == d)),
    )
    ref_settings = next(s["settings"] for _, s in by_index.values() if s["plan"] == ref)
    for i in range(n):
        f, s = by_index[i]
        if s["plan"] != ref:
            diff = [
                f"{k}={s['settings'].get(k)!r} (others: {v!r})"
                for k, v in ref_settings.items()
                if s["settings"].get(k) != v
            ]
            raise CorpusError(
                f"share {i} of {n} ({f}) was built with different settings from the others: "
                + ("; ".join(diff) if diff else "the inputs differ")
                + f"; rebuild it with the others' settings (delete {f.name} and shards "
                f"k % {n} == {i} first)"
            )
    f0s = Counter(s["speaker_f0"] for _, s in by_index.values())
    if len(f0s) > 1:
        odd = [
            by_index[i][0].name
            for i in range(n)
            if by_index[i][1]["speaker_f0"] != f0s.most_common(1)[0][0]
        ]
        raise CorpusError(
            f"shares {', '.join(odd)} used other per-speaker F0 means than the others "
            f"({staging / 'speaker_f0.json'} changed while they were built); rebuild them"
        )
    staged = _names(staging, "shard-*.npz")
    for i in range(n):
        f, s = by_index[i]
        want = list(range(i, s["num_shards"], n))
        absent = [k for k in want if shard_name(k) not in staged]
        if s["shards"] != want or absent:
            raise CorpusError(
                f"share {i} of {n} ({f}) is incomplete: shard(s) "
                f"{', '.join(shard_name(k) for k in (absent or want))} missing from "
                f"{staging}; build it again ({_build_share(n, i)})"
            )
    if max_skipped == "shares":
        limits = [s["max_skipped"] for _, s in by_index.values() if s["max_skipped"] is not None]
        max_skipped = min(limits) if limits else None
    log(f"corpus: {n} host shares of {by_index[0][1]['num_shards']} shards checked; writing")
    return _finish(out, staging, max_skipped, True)


def _prepare(out: Path, staging: Path, splits):

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


def summarize(staging: Path, shards=None) -> dict:
    """Hours, utterances and speakers per split, frames and tokens per stream, skips and why;
    over every staged shard, or the shard numbers in `shards`."""
    splits: dict = {}
    frames, tokens = Counter(), Counter()
    skipped = []
    files = sorted(storage.path(staging).glob("shard-*.npz"), key=str)
    if shards is not None:
        files = [f for f in files if int(f.name[6:11]) in set(shards)]
    for f in files:
        shard = read_shard(f)
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
