"""The training batch source named by `data.source`: synthetic documents or the grain corpus pipeline.

Both yield this host's rows of the batch contract (`data/pipeline.py`: input_ids, targets,
loss_mask, segment_ids, positions, each [B, T]) and checkpoint their position with
`get_state()` (a JSON-able dict) / `set_state()`.
"""

from __future__ import annotations

import numpy as np

from ..data.batches import contract_batch
from ..data.corpus_format import SPLITS
from ..errors import ConfigError
from .config import CORPUS_KEY, DataSection


class SyntheticIterator:
    """Deterministic documents packed into rows: batch i depends only on (seed, process, i).

    Each document is a walk on a fixed sparse random bigram table (`branching` successors per
    token, from `table_seed`), so a model can learn it; documents are packed back to back into
    rows, the last one cut at the row end, like the corpus pipeline."""

    def __init__(
        self,
        cfg: DataSection,
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


def make_batches(
    cfg: DataSection,
    vocab_size: int,
    process_index: int = 0,
    process_count: int = 1,
    keys: bool = False,
):
    """This host's batch iterator for `data.source`. `keys`: the corpus pipeline's batches also
    carry every token's (stream, record, position) key, for a teacher cache."""
    if cfg.source == "synthetic":
        return SyntheticIterator(cfg, vocab_size, process_index, process_count)
    from ..data.pipeline import make_train_iterator

    return make_train_iterator(
        cfg.corpus_config(), process_index, process_count, key=CORPUS_KEY, keys=keys
    )


def held_out_batches(
    cfg: DataSection,
    split: str,
    n: int,
    vocab_size: int,
    process_index: int = 0,
    process_count: int = 1,
) -> list[dict]:
    """The first `n` batches of held-out `split` (train.eval_split), in order and once each: the
    same sequences at every evaluation. A corpus split shorter than n batches gives fewer (the
    last one padded, which the loss mask leaves out); a split the corpus lacks is a ConfigError
    naming the splits it has."""
    if cfg.source == "synthetic":
        it = SyntheticIterator(cfg, vocab_size, process_index, process_count, split)
        return [next(it) for _ in range(n)]
    import dataclasses

    from ..data.corpus_read import corpus_splits
    from ..data.pipeline import make_train_iterator

    corpus = cfg.corpus_config()
    have = corpus_splits(corpus.corpus_dir)
    if split not in have:
        raise ConfigError(
            f"train.eval_split: corpus {corpus.corpus_dir} has no split {split!r}; it has {have}"
        )
    held_out = dataclasses.replace(corpus, split=split, num_epochs=1, shuffle=False, worker_count=0)
    it = make_train_iterator(held_out, process_index, process_count, key=CORPUS_KEY)
    return [b for _, b in zip(range(n), it)]
