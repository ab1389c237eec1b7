"""The training batch source named by `data.source`: synthetic documents (data/synthetic.py) or
the grain corpus pipeline (data/pipeline.py).

Both yield this host's rows of the batch contract (`data/pipeline.py`: input_ids, targets,
loss_mask, segment_ids, positions, each [B, T]) and checkpoint their position with
`get_state()` (a JSON-able dict) / `set_state()`.
"""

from __future__ import annotations

import dataclasses

from ..data.corpus_read import corpus_splits
from ..data.pipeline import make_train_iterator
from ..data.synthetic import SyntheticIterator
from ..errors import ConfigError
from .config import CORPUS_KEY, DataSection


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
        synthetic = SyntheticIterator(cfg, vocab_size, process_index, process_count, split)
        return [next(synthetic) for _ in range(n)]

    corpus = cfg.corpus_config()
    have = corpus_splits(corpus.corpus_dir)
    if split not in have:
        raise ConfigError(
            f"train.eval_split: corpus {corpus.corpus_dir} has no split {split!r}; it has {have}"
        )
    held_out = dataclasses.replace(corpus, split=split, num_epochs=1, shuffle=False, worker_count=0)
    it = make_train_iterator(held_out, process_index, process_count, key=CORPUS_KEY)
    return [b for _, b in zip(range(n), it)]
