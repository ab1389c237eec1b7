"""An offline teacher: its top-k next-token log-probs over a corpus, stored once, read by `distill`.

Layout of a cache folder (`tinywave teacher-cache build`, cache_build.py):

    DIR/cache.json              what it was built from: format, teacher (sha256 over its checkpoint's
                                recorded file hashes, dtype), top_k, token layout and stream kinds,
                                corpus identity (split, records, sha256 of its dataset_info.json),
                                window, records_per_shard, num_shards
    DIR/shard-00000.ids.npy     uint16 [tokens, k] the teacher's top-k next-token ids
    DIR/shard-00000.lp.npy      float16 [tokens, k] their log-probs at T = 1 (log-softmax over the
                                whole vocabulary, so any temperature follows)
    DIR/shard-00000.json        written last (the shard's commit): its records [lo, hi), per stream
                                kind the token offset of each record, the sha256 and size of its files

Keys: (stream kind, record index in the split, token position in that record's sequence), so the
training pipeline's packing, mixture weights and shuffling may change without losing alignment:
each batch carries the key of every token (data/pipeline.py `keys=True`) and `CacheJoin` looks it
up. The teacher saw each record alone (context from the record's start, in windows of `window`
tokens), never packed next to another: a token's cached distribution does not depend on where
packing put it. 16 bits per id and per log-prob: 4 k bytes per token (256 at k = 64).

Reading verifies like checkpoints: cache.json against the run (teacher, layout, corpus, top_k;
a difference is named), every shard present (a missing one names its records), every file's size
up front (a truncated shard names the shard and the first record it lost) and its sha256 when the
shard is first read (a damaged one names the shard).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .. import storage
from ..checkpoint import FILES_KEY, HASHES_KEY, load_model_info
from ..config import to_dict
from ..data.batches import TOKEN_KEYS
from ..data.corpus_read import CorpusSource, version_dir
from ..errors import ConfigError, InputError

FORMAT, VERSION = "tinywave-teacher-cache", 1
INFO = "cache.json"
ID_DTYPE, LP_DTYPE = np.uint16, np.float16
# the identity keys a run must match (cache.json key -> what it is)
IDENTITY = ("teacher", "top_k", "layout", "corpus")


# how a cache is built, from Python and on the command line: a run reading `teacher.cache` sends
# the user back to that other step, whichever way they run it
_BUILD = (
    "cache_build.build_teacher_cache(config, out), or `tinywave teacher-cache build CONFIG "
    "--out DIR`"
)


class TeacherCacheError(InputError):
    """A teacher cache that does not fit the run, or is incomplete or damaged; names what."""


def shard_name(s: int) -> str:
    return f"shard-{s:05d}"


def teacher_identity(teacher) -> dict:
    """The teacher a cache belongs to (`teacher:` section): a checkpoint by the sha256 over its
    recorded file hashes (no weights read), a random one by shape and seed; and the dtype it ran in."""
    if teacher.path is not None:
        info = load_model_info(teacher.path)
        if HASHES_KEY not in info:
            raise TeacherCacheError(
                f"teacher.path {teacher.path}: its tinywave.json records no file hashes, so a "
                "cache cannot be tied to it; save the checkpoint again"
            )
        recorded = {"params": info[HASHES_KEY], "files": info.get(FILES_KEY, {})}
    else:
        recorded = {"shape": to_dict(teacher.shape), "seed": teacher.seed}
    digest = hashlib.sha256(json.dumps(recorded, sort_keys=True).encode()).hexdigest()
    return {"sha256": digest, "dtype": teacher.dtype}


def corpus_identity(corpus_cfg, source) -> dict:
    """The corpus split a cache covers: split, record count and a sha256 of the corpus's
    dataset_info.json (its files, their record counts and features), or a source's own
    `identity()` (in-memory sources)."""
    if hasattr(source, "identity"):
        digest = source.identity()
    else:
        info = storage.path(version_dir(corpus_cfg.corpus_dir)) / "dataset_info.json"
        digest = hashlib.sha256(info.read_bytes()).hexdigest()
    return {"split": corpus_cfg.split, "records": len(source), "sha256": digest}


def layout_identity(corpus_cfg) -> dict:
    """What turns a record into token ids: the token layout, tokenizer and stream options."""

    return {
        "layout": to_dict(corpus_cfg.layout),
        "tokenizer": corpus_cfg.tokenizer,
        "leading_marker": corpus_cfg.leading_marker,
    }


def _differences(saved: dict, want: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(saved) | set(want)):
        a, b = saved.get(k), want.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: cache {a!r}, run {b!r}")
    return out


class TeacherCache:
    """A verified cache folder, opened for reading (`lookup`)."""

    def __init__(self, folder, expect: Optional[dict] = None, kinds=()):
        self.where = str(folder)
        local = storage.local_mirror(folder, "teacher cache") if storage.is_remote(folder) else None
        self.dir = Path(local or folder)
        info_path = self.dir / INFO
        if not info_path.is_file():
            raise TeacherCacheError(
                f"teacher.cache {self.where}: no {INFO}; build it first ({_BUILD})"
            )
        try:
            self.info = json.loads(info_path.read_text())
        except ValueError as e:
            raise TeacherCacheError(f"{self.where}/{INFO}: not JSON ({e})") from None
        if self.info.get("format") != FORMAT or self.info.get("version") != VERSION:
            raise TeacherCacheError(
                f"{self.where}/{INFO}: not a {FORMAT} v{VERSION} cache "
                f"(format {self.info.get('format')!r}, version {self.info.get('version')!r})"
            )
        if expect is not None:
            diff = _differences({k: self.info.get(k) for k in expect}, expect)
            if diff:
                raise TeacherCacheError(
                    f"teacher.cache {self.where} was built for another run: " + "; ".join(diff)
                )
        missing_kinds = sorted(set(kinds) - set(self.info["kinds"]))
        if missing_kinds:
            raise TeacherCacheError(
                f"teacher.cache {self.where}: holds stream kinds {self.info['kinds']}, the run's "
                f"mixture also has {missing_kinds}"
            )
        self.k, self.rps = int(self.info["top_k"]), int(self.info["records_per_shard"])
        self.kinds = list(self.info["kinds"])
        # each shard's meta (None: unfinished, which _check_complete refuses)
        self.shards: list[Any] = [self._shard_meta(s) for s in range(int(self.info["num_shards"]))]
        self._check_complete()
        self._open: dict[int, tuple] = {}

    def _shard_meta(self, s: int) -> Optional[dict]:
        p = self.dir / f"{shard_name(s)}.json"
        if not p.is_file():
            return None
        try:
            return json.loads(p.read_text())
        except ValueError as e:
            raise TeacherCacheError(
                f"{self.where}/{p.name}: not JSON ({e}); rebuild the shard"
            ) from None

    def _check_complete(self) -> None:
        n = int(self.info["corpus"]["records"])
        missing = [s for s, m in enumerate(self.shards) if m is None]
        if missing:
            lost = sum(min(n, (s + 1) * self.rps) - s * self.rps for s in missing)
            raise TeacherCacheError(
                f"teacher.cache {self.where} is missing {lost} of its corpus's {n} records: "
                f"shards {[shard_name(s) for s in missing][:10]} were never finished; build it "
                f"again into the same folder, which resumes ({_BUILD})"
            )
        for s, meta in enumerate(self.shards):
            for suffix, dtype in (("ids", ID_DTYPE), ("lp", LP_DTYPE)):
                name = f"{shard_name(s)}.{suffix}.npy"
                want = meta["files"][name]["bytes"]
                have = (self.dir / name).stat().st_size if (self.dir / name).is_file() else 0
                if have != want:
                    raise TeacherCacheError(
                        f"teacher.cache {self.where}: {name} is {have} bytes, not the {want} "
                        f"recorded: truncated, {self._first_lost(meta, have, want, dtype)}; rebuild "
                        f"it (delete {shard_name(s)}.json and run teacher-cache build again)"
                    )

    def _first_lost(self, meta: dict, have: int, want: int, dtype) -> str:
        row = self.k * np.dtype(dtype).itemsize
        header = want - int(meta["tokens"]) * row  # the .npy header
        rows = max(0, (have - header) // row)
        base = 0
        for kind in self.kinds:
            offs = meta["offsets"][kind]
            for j in range(len(offs) - 1):
                if base + offs[j + 1] > rows:
                    return f"first lost record {meta['records'][0] + j} ({kind} stream)"
            base += offs[-1]
        return "its records' ends are intact"

    def _arrays(self, s: int) -> tuple:
        if s not in self._open:
            meta = self.shards[s]
            for suffix in ("ids", "lp"):
                name = f"{shard_name(s)}.{suffix}.npy"
                if storage.sha256_file(self.dir / name) != meta["files"][name]["sha256"]:
                    raise TeacherCacheError(
                        f"teacher.cache {self.where}: {name} differs from the sha256 recorded "
                        f"in {shard_name(s)}.json (damaged; it holds records "
                        f"{meta['records'][0]} to {meta['records'][1] - 1}); rebuild it (delete "
                        f"{shard_name(s)}.json and run teacher-cache build again)"
                    )
            ids = np.load(self.dir / f"{shard_name(s)}.ids.npy", mmap_mode="r")
            lp = np.load(self.dir / f"{shard_name(s)}.lp.npy", mmap_mode="r")
            starts, base = {}, 0
            for kind in self.kinds:
                offs = np.asarray(meta["offsets"][kind], np.int64)
                starts[kind] = (base + offs[:-1], offs[1:] - offs[:-1])
                base += int(offs[-1])
            self._open[s] = (ids, lp, starts)
        return self._open[s]

    def lookup(self, stream: np.ndarray, record: np.ndarray, position: np.ndarray, kinds) -> tuple:
        """Top-k ids [N, k] uint16 and log-probs [N, k] float16 of N tokens, each given by its
        stream (an index into `kinds`), record index and position in the record's sequence."""
        n = len(record)
        ids = np.zeros((n, self.k), ID_DTYPE)
        lp = np.zeros((n, self.k), LP_DTYPE)
        total = int(self.info["corpus"]["records"])
        if n and (record.min() < 0 or record.max() >= total):
            raise TeacherCacheError(
                f"teacher.cache {self.where}: a batch holds record {int(record.max())}, the cache "
                f"covers records [0, {total})"
            )
        shard = record // self.rps
        for s in np.unique(shard):
            arr_ids, arr_lp, starts = self._arrays(int(s))
            for ki in np.unique(stream[shard == s]):
                sel = np.nonzero((shard == s) & (stream == ki))[0]
                kind = kinds[int(ki)]
                first, length = starts[kind]
                local = record[sel] - int(s) * self.rps
                bad = position[sel] >= length[local]
                if bad.any():
                    i = sel[np.argmax(bad)]
                    raise TeacherCacheError(
                        f"teacher.cache {self.where}: record {int(record[i])} ({kind} stream, "
                        f"{shard_name(int(s))}) has {int(length[local[np.argmax(bad)]])} cached "
                        f"tokens, the batch holds its token {int(position[i])}: the corpus's "
                        "sequences differ from the ones the cache was built on"
                    )
                rows = first[local] + position[sel]
                order = np.argsort(rows)  # sorted reads from the memory map
                ids[sel[order]] = arr_ids[rows[order]]
                lp[sel[order]] = arr_lp[rows[order]]
        return ids, lp


class CacheJoin:
    """A batch iterator (with `keys=True`) whose batches gain the cache's "topk_ids" [B, T, k]
    and "topk_logprobs" [B, T, k] rows (zeros on padding) and lose the key arrays; its state is
    the wrapped iterator's."""

    KEYS = TOKEN_KEYS

    def __init__(self, batches, cache: TeacherCache, kinds):
        self.batches, self.cache, self.kinds = batches, cache, list(kinds)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        b = dict(next(self.batches))
        stream, record, pos = (b.pop(k) for k in self.KEYS)
        shape = record.shape
        real = (b["segment_ids"] != 0).reshape(-1)
        ids = np.zeros((real.size, self.cache.k), ID_DTYPE)
        lp = np.zeros((real.size, self.cache.k), LP_DTYPE)
        ids[real], lp[real] = self.cache.lookup(
            stream.reshape(-1)[real], record.reshape(-1)[real], pos.reshape(-1)[real], self.kinds
        )
        b["topk_ids"] = ids.reshape(*shape, -1)
        b["topk_logprobs"] = lp.reshape(*shape, -1)
        return b

    def get_state(self) -> dict:
        return self.batches.get_state()

    def set_state(self, state: dict):
        self.batches.set_state(state)


def run_identity(cfg, source=None) -> tuple[dict, Any]:
    """(the identity a run's cache must have, the corpus config) of a DistillConfig."""

    if cfg.data.source != "corpus":
        raise ConfigError(
            "teacher.cache: needs data.source: corpus (synthetic documents have no record ids "
            "to key a cache by)"
        )
    corpus = cfg.data.corpus_config()
    if "interleaved" in corpus.mixture:
        raise ConfigError(
            "teacher.cache: data.corpus.mixture.interleaved draws a new interleaving of each "
            "record per epoch, which a cache cannot hold; drop it from the mixture"
        )
    source = source if source is not None else CorpusSource(corpus.corpus_dir, corpus.split)
    return {
        "teacher": teacher_identity(cfg.teacher),
        "top_k": cfg.distill.top_k,
        "layout": layout_identity(corpus),
        "corpus": corpus_identity(corpus, source),
    }, corpus


def open_for_run(cfg, source=None) -> TeacherCache:
    """The run's `teacher.cache`, checked against its teacher, top_k, layout and corpus."""
    expect, corpus = run_identity(cfg, source)
    return TeacherCache(cfg.teacher.cache, expect, kinds=list(corpus.mixture))
