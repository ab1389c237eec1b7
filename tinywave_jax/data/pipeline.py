"""Grain training pipelines: corpus records -> token sequences -> packed global batches.

Per host: record indices [process_index::process_count] -> per-epoch shuffle -> repeat ->
per-stream `random_map` (record -> sequence; deterministic for (seed, index)) -> weighted
mixture of streams -> concat-then-split packing into rows of `seq_len` (a document longer than a
row continues in the next row as a new segment) -> batches of batch_size / process_count rows ->
the batch contract below. Everything before packing is indexed, so an iterator's state is small
and restores exactly.

Batch contract (numpy, one dict per step; B rows of this host, T = seq_len):
    input_ids int32[B,T]    token ids, 0 on padding
    targets   int32[B,T]    input_ids[t+1] when t+1 is in the same segment, else 0
    loss_mask float32[B,T]  1 where targets is a real next token: 0 at a segment's last token
                            and on padding
    segment_ids int32[B,T]  1, 2, ... per packed document in a row; 0 = padding
    positions int32[B,T]    0, 1, ... restarting at each segment; 0 on padding
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import threading
from typing import Literal, Optional

import grain
import jax
import numpy as np
from absl import flags
from grain._src.python.experimental.index_shuffle.python import index_shuffle_module
from grain.experimental import ConcatThenSplitIterDataset

from ..errors import ConfigError, InputError
from .batches import contract_batch
from .corpus_format import CorpusError
from .corpus_read import CorpusSource
from .layout import LayoutConfig, load_tokenizer
from .streams import DEFAULT_PATTERN_PROBS, KINDS, PATTERNS, BadRecord, sequence_for

log = logging.getLogger(__name__)


@dataclasses.dataclass
class DataConfig:
    """Training data: which corpus, which streams in which proportions, how it is packed."""

    corpus_dir: str = ""
    split: str = "train"
    mixture: dict[str, float] = dataclasses.field(
        default_factory=lambda: {"speech": 1.0}
    )  # kind -> weight
    seq_len: int = 1024
    batch_size: int = 8  # global: summed over hosts
    seed: int = 0
    layout: LayoutConfig = dataclasses.field(default_factory=LayoutConfig)
    tokenizer: Optional[str] = None  # Hugging Face tokenizer folder (text/interleaved)
    interleave_patterns: dict[str, float] = dataclasses.field(
        default_factory=lambda: dict(DEFAULT_PATTERN_PROBS)
    )
    interleaved_speech: Literal["hubert", "expressive"] = "hubert"
    leading_marker: bool = True  # a modality marker before the first span too
    shuffle: bool = True
    num_epochs: Optional[int] = None  # None: repeat forever
    max_bad_records: int = 0  # bad records skipped (per stream and process, not
    # restored with the state) before failing
    worker_count: int = 0  # grain worker processes (0: in this process)
    read_threads: int = 8  # threads that read and tokenise records

    def validate(self, key: str = ""):
        """`key`: where this config sits in its file (`data.corpus` in a run config), so that
        errors name the keys as written there; a DataConfig built in Python names its fields."""
        at = _at(key)
        if not self.mixture:
            raise ConfigError(f"{at('mixture')}: give at least one stream kind")
        for k, w in self.mixture.items():
            if k not in KINDS:
                raise ConfigError(f"{at('mixture')}.{k}: unknown stream kind; expected {KINDS}")
            if isinstance(w, bool) or not isinstance(w, (int, float)) or w <= 0:
                raise ConfigError(f"{at('mixture')}.{k}: weight must be a positive number")
        for k, p in self.interleave_patterns.items():
            if k not in PATTERNS:
                raise ConfigError(
                    f"{at('interleave_patterns')}.{k}: unknown pattern; expected {list(PATTERNS)}"
                )
            if isinstance(p, bool) or not isinstance(p, (int, float)) or p < 0:
                raise ConfigError(f"{at('interleave_patterns')}.{k}: must be a number >= 0")
        if sum(self.interleave_patterns.values()) <= 0:
            raise ConfigError(f"{at('interleave_patterns')}: probabilities sum to 0")
        if {"text", "interleaved"} & set(self.mixture) and not self.tokenizer:
            raise ConfigError(
                f"{at('tokenizer')}: the text and interleaved streams need a tokenizer"
            )
        for f in ("seq_len", "batch_size"):
            if getattr(self, f) < 1:
                raise ConfigError(f"{at(f)}: must be >= 1")
        for f in ("max_bad_records", "worker_count", "read_threads"):
            if getattr(self, f) < 0:
                raise ConfigError(f"{at(f)}: must be >= 0")
        if self.num_epochs is not None and self.num_epochs < 1:
            raise ConfigError(f"{at('num_epochs')}: must be >= 1 or null")


def _at(key: str):
    """name -> the dotted key under `key` ("" at the top level)."""
    return lambda name: f"{key}.{name}" if key else name


# ---------------------------------------------------------------- record -> sequence


class _Tokens:
    """grain random_map: record index -> {'input_ids': ids}, or None for a bad record that the
    allowance covers (counted per process)."""

    def __init__(
        self, kind, source, cfg: DataConfig, layout, tokenizer, key: str = "", stream=None
    ):
        self.kind, self.source, self.cfg, self.layout, self.tokenizer = (
            kind,
            source,
            cfg,
            layout,
            tokenizer,
        )
        self.stream = stream  # with keys: this stream's index in the mixture
        self.max_bad_key = _at(key)("max_bad_records")
        self.bad = 0
        self._lock = threading.Lock()

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __call__(self, index, rng: np.random.Generator):

        try:
            rec = self.source[int(index)]
            ids = sequence_for(
                self.kind,
                rec,
                self.layout,
                self.tokenizer,
                rng,
                self.cfg.interleave_patterns,
                self.cfg.interleaved_speech == "expressive",
                self.cfg.leading_marker,
            )
        except (BadRecord, CorpusError) as e:
            with self._lock:
                self.bad += 1
                if self.bad > self.cfg.max_bad_records:
                    raise type(e)(
                        f"{e} [{self.kind} stream; more bad records than "
                        f"{self.max_bad_key}={self.cfg.max_bad_records}]"
                    ) from None
            log.warning("skipping bad record (%d so far): %s", self.bad, e)
            return None
        if self.stream is None:
            return {"input_ids": ids}
        n = len(ids)  # every token's key: (stream, record, position), for a teacher cache
        return {
            "input_ids": ids,
            "stream": np.full(n, self.stream, np.int32),
            "record": np.full(n, int(index), np.int64),
            "position": np.arange(n, dtype=np.int32),
        }


class EpochShuffle(grain.MapDataset):
    """Shuffles each epoch of a repeated MapDataset differently (and deterministically).

    grain's `MapDataset.shuffle` computes a keyed permutation per index, which takes milliseconds
    per index on small datasets (its cycle walking); below 65536 records the permutation of an
    epoch is drawn with numpy once and cached instead."""

    def __init__(self, parent, n: int, seed: int):
        super().__init__(parent)
        self._n, self._seed, self._perms = n, seed, {}

    def __len__(self):
        return len(self._parent)

    def __str__(self):
        return f"EpochShuffle(n={self._n}, seed={self._seed})"

    def _permuted(self, epoch: int, i: int) -> int:
        if self._n >= 65536:
            return index_shuffle_module.index_shuffle(
                i, max_index=self._n - 1, seed=(self._seed + epoch) % 2**32, rounds=4
            )
        perm = self._perms.get(epoch)
        if perm is None:  # read threads may be in several epochs at once: keep a few
            perm = np.random.default_rng([self._seed, epoch]).permutation(self._n)
            self._perms = {e: p for e, p in self._perms.items() if e > epoch - 8}
            self._perms[epoch] = perm
        return int(perm[i])

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        epoch, i = divmod(index, self._n)
        return self._parent[epoch * self._n + self._permuted(epoch, i)]


def sequence_dataset(kind, k, source, base, cfg, layout, tokenizer, key: str = "", keys=False):
    """MapDataset of {"input_ids"} for stream `kind` (mixture slot k) over record indices `base`:
    per-epoch shuffle, repeat, then record -> sequence, deterministic for (seed, k, index).
    `key`: the config's place in its file (DataConfig.validate)."""
    ds = base.repeat(cfg.num_epochs)
    if cfg.shuffle:
        ds = EpochShuffle(ds, len(base), (cfg.seed * 7919 + 2 * k) % 2**32)
    return ds.random_map(
        _Tokens(kind, source, cfg, layout, tokenizer, key, k if keys else None),
        seed=(cfg.seed * 7919 + 2 * k + 1) % 2**32,
    )


def make_dataset(
    cfg: DataConfig,
    process_index: int = 0,
    process_count: int = 1,
    source=None,
    key: str = "",
    keys: bool = False,
):
    """The grain IterDataset of contract batches for one host (see the module docstring).
    `key`: where `cfg` sits in its config file, for error messages (DataConfig.validate).
    `keys`: batches also carry each token's key (`_to_contract`), for a teacher cache."""

    cfg.validate(key)  # also when built in Python rather than from YAML
    if cfg.batch_size % process_count:
        raise ConfigError(
            f"data.batch_size {cfg.batch_size} is not divisible by {process_count} processes"
        )
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} outside [0, {process_count})")
    layout = cfg.layout.build()
    tokenizer = load_tokenizer(cfg.tokenizer, layout) if cfg.tokenizer else None
    if "expressive" in cfg.mixture and not layout.is_expressive:
        raise ConfigError(
            f"{_at(key)('mixture')}.expressive: layout {layout.name} has no pitch/style"
        )
    source = source if source is not None else CorpusSource(cfg.corpus_dir, cfg.split)
    if len(source) < process_count:
        raise InputError(f"{len(source)} records cannot be shared by {process_count} hosts")
    base = grain.MapDataset.range(len(source))[process_index::process_count]
    kinds = list(cfg.mixture)
    streams = [
        sequence_dataset(kind, k, source, base, cfg, layout, tokenizer, key, keys)
        for k, kind in enumerate(kinds)
    ]
    ds = (
        streams[0]
        if len(streams) == 1
        else grain.MapDataset.mix(streams, [float(cfg.mixture[k]) for k in kinds])
    )
    ds = ds.to_iter_dataset(
        grain.ReadOptions(
            num_threads=cfg.read_threads, prefetch_buffer_size=max(64, cfg.read_threads * 4)
        )
    )
    feats = ("input_ids", "stream", "record", "position") if keys else ("input_ids",)
    ds = ConcatThenSplitIterDataset(ds, length_struct=dict.fromkeys(feats, cfg.seq_len))
    rows = cfg.batch_size // process_count
    ds = ds.batch(rows, drop_remainder=False)
    ds = ds.map(lambda b: _to_contract(b, rows))
    if cfg.worker_count > 0:
        _parse_absl_flags()
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=cfg.worker_count))
    return ds


def _to_contract(b, rows):
    """The batch contract; with keys also stream_ids int32, record_ids int64 and
    token_positions int32 [B, T] (each token's stream index in the mixture, record index in the
    split and position in that record's sequence; packing cuts neither)."""
    ids, seg = b["input_ids"], b["input_ids_segment_ids"]
    pad = ((0, rows - len(ids)), (0, 0))  # the last, partial batch of a finite run
    out = contract_batch(np.pad(ids, pad), np.pad(seg, pad))
    if "record" in b:
        for name, feat in (("stream_ids", "stream"), ("record_ids", "record")):
            out[name] = np.pad(b[feat], pad)
        out["token_positions"] = np.pad(b["position"], pad).astype(np.int32)
    return out


def _parse_absl_flags():
    # grain's worker processes read absl flags; unparsed flags raise UnparsedFlagAccessError.

    if not flags.FLAGS.is_parsed():
        flags.FLAGS(sys.argv[:1])


class TrainIterator:
    """Iterator of contract batches whose state a training checkpoint saves (`get_state`, a
    JSON-able dict) and restores exactly (`set_state`). The state is per process: restoring it
    under another process count or batch shape is refused with a clear error."""

    def __init__(
        self,
        cfg: DataConfig,
        process_index: int,
        process_count: int,
        source=None,
        key: str = "",
        keys: bool = False,
    ):
        self.cfg, self.process_index, self.process_count = cfg, process_index, process_count
        self._it = iter(make_dataset(cfg, process_index, process_count, source, key, keys))

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        return next(self._it)

    def _shape(self) -> dict:
        c = self.cfg
        return {
            "process_count": self.process_count,
            "process_index": self.process_index,
            "seq_len": c.seq_len,
            "batch_size": c.batch_size,
            "seed": c.seed,
            "mixture": dict(c.mixture),
            "split": c.split,
        }

    def get_state(self) -> dict:
        return {**self._shape(), "grain": self._it.get_state()}

    def set_state(self, state: dict):
        if state.get("process_count") != self.process_count:
            raise ConfigError(
                f"data iterator state was saved with process_count={state.get('process_count')} "
                f"but this run has {self.process_count}; per-host iterator states cannot be "
                "remapped (resume with the same number of hosts, or start the data afresh)"
            )
        mine = self._shape()
        diff = [k for k in mine if state.get(k) != mine[k]]
        if diff:
            raise ConfigError(
                "data iterator state does not match this config: "
                + ", ".join(f"{k} saved {state.get(k)!r} now {mine[k]!r}" for k in diff)
            )
        self._it.set_state(state["grain"])


def make_train_iterator(
    config: DataConfig,
    process_index: int | None = None,
    process_count: int | None = None,
    source=None,
    key: str = "",
    keys: bool = False,
) -> TrainIterator:
    """This host's iterator of contract batches; host defaults come from jax. `key`: where
    `config` sits in its config file (`data.corpus` in a run config), for error messages."""
    if process_index is None or process_count is None:
        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    return TrainIterator(config, process_index, process_count, source, key, keys)
