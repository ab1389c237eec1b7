"""Synthetic training data: documents that are walks on a fixed sparse random bigram table, packed
into rows of the batch contract (data/batches.py), with no corpus on disk (`data.source:
synthetic`, the default of a run config)."""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from ..errors import ConfigError
from .batches import contract_batch
from .corpus_format import SPLITS


@dataclasses.dataclass(frozen=True)
class SyntheticDataConfig:
    """In-memory documents: each a walk on a fixed random sparse bigram table (`table_seed`), so
    there is structure to learn; `data.seed` picks the walks (a held-out set: another seed)."""

    vocab_size: Optional[int] = None  # ids drawn from [first_id, vocab_size); null: the model's
    first_id: int = 3  # keep 0..2 (pad/bos/eos) out of the documents
    branching: int = 4  # successors per token (lower: easier to learn)
    min_doc_len: int = 8
    max_doc_len: int = 96
    table_seed: int = 0

    def validate(self):
        if self.branching < 1:
            raise ConfigError("data.synthetic.branching: must be >= 1")
        if not 2 <= self.min_doc_len <= self.max_doc_len:
            raise ConfigError("data.synthetic.min_doc_len/max_doc_len: need 2 <= min <= max")
        if self.vocab_size is not None and self.vocab_size <= self.first_id + 1:
            raise ConfigError("data.synthetic.vocab_size: must exceed first_id + 1")


class SyntheticIterator:
    """Deterministic documents packed into rows: batch i depends only on (seed, process, i).

    Each document is a walk on a fixed sparse random bigram table (`branching` successors per
    token, from `table_seed`), so a model can learn it; documents are packed back to back into
    rows, the last one cut at the row end, like the corpus pipeline. `cfg`: a run config's data
    section (train/config.py DataSection: synthetic, seq_len, batch_size, seed)."""

    def __init__(
        self,
        cfg,
        vocab_size: int,
        process_index: int = 0,
        process_count: int = 1,
        split: str = "train",
    ):
        s = cfg.synthetic
        # a held-out split: walks on the same table from another random stream
        self._stream = () if split == "train" else (SPLITS.index(split),)
        if cfg.batch_size % process_count:
            raise ConfigError(
                f"data.batch_size {cfg.batch_size} is not divisible by the "
                f"{process_count} processes"
            )
        self.cfg, self.rows = cfg, cfg.batch_size // process_count
        self.process_index, self.process_count = process_index, process_count
        self.vocab = s.vocab_size or vocab_size
        if self.vocab > vocab_size:
            raise ConfigError(
                f"data.synthetic.vocab_size {self.vocab} exceeds the model vocabulary {vocab_size}"
            )
        table_rng = np.random.default_rng(s.table_seed)
        n = self.vocab - s.first_id
        self.successors = s.first_id + table_rng.integers(0, n, size=(n, s.branching))
        self.index = 0

    def _doc(self, rng: np.random.Generator, length: int) -> np.ndarray:
        s = self.cfg.synthetic
        doc = np.empty(length, np.int64)
        doc[0] = rng.integers(s.first_id, self.vocab)
        choice = rng.integers(0, s.branching, size=length)
        for t in range(1, length):
            doc[t] = self.successors[doc[t - 1] - s.first_id, choice[t]]
        return doc

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        s, t = self.cfg.synthetic, self.cfg.seq_len
        rng = np.random.default_rng([self.cfg.seed, self.process_index, self.index, *self._stream])
        ids = np.zeros((self.rows, t), np.int32)
        seg = np.zeros((self.rows, t), np.int32)
        for r in range(self.rows):
            pos, k = 0, 1
            while pos < t:
                n = min(int(rng.integers(s.min_doc_len, s.max_doc_len + 1)), t - pos)
                ids[r, pos : pos + n] = self._doc(rng, n)
                seg[r, pos : pos + n] = k
                pos, k = pos + n, k + 1
        self.index += 1
        return contract_batch(ids, seg)

    def get_state(self) -> dict:
        return {
            "source": "synthetic",
            "index": self.index,
            "seed": self.cfg.seed,
            "process_count": self.process_count,
            "process_index": self.process_index,
            "batch_size": self.cfg.batch_size,
            "seq_len": self.cfg.seq_len,
        }

    def set_state(self, state: dict):
        mine = self.get_state()
        diff = [k for k in mine if k != "index" and state.get(k) != mine[k]]
        if diff:
            raise ConfigError(
                "data iterator state does not match this run: "
                + ", ".join(f"{k} saved {state.get(k)!r} now {mine[k]!r}" for k in diff)
            )
        self.index = int(state["index"])
