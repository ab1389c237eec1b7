"""The batch contract every training and evaluation batch follows, without grain.

`{"input_ids", "targets", "loss_mask", "segment_ids", "positions"}`, each int32/float32 [B, T]:
segment 0 is padding, positions restart at 0 per packed document, targets[t] = input_ids[t+1]
within the same segment, loss_mask 0 at a document's last token and on padding.
"""

from __future__ import annotations

import numpy as np

# every batch's keys (the contract above)
BATCH_KEYS = ("input_ids", "targets", "loss_mask", "segment_ids", "positions")
# with `keys=True` (data/pipeline.py), each token's key for a teacher cache: its stream's index in
# the mixture, its record's index in that stream, its position in the record (all [B, T])
TOKEN_KEYS = ("stream_ids", "record_ids", "token_positions")
# a teacher cache's rows, joined to the batch by those keys (distill/teacher_cache.py): [B, T, k]
CACHE_KEYS = ("topk_ids", "topk_logprobs")


def contract_batch(input_ids, segment_ids) -> dict:
    """Rows of packed ids and their segment ids -> the full batch dict of the contract."""
    ids = np.asarray(input_ids, np.int32)
    seg = np.asarray(segment_ids, np.int32)
    ids = np.where(seg > 0, ids, 0).astype(np.int32)
    same_next = (seg[:, 1:] == seg[:, :-1]) & (seg[:, :-1] > 0)
    targets = np.zeros_like(ids)
    targets[:, :-1] = np.where(same_next, ids[:, 1:], 0)
    loss_mask = np.zeros(ids.shape, np.float32)
    loss_mask[:, :-1] = same_next
    # position = distance to the first token of the run of equal segment ids
    t = np.broadcast_to(np.arange(ids.shape[1]), ids.shape)
    starts = np.ones(ids.shape, bool)
    starts[:, 1:] = seg[:, 1:] != seg[:, :-1]
    first = np.maximum.accumulate(np.where(starts, t, 0), axis=1)
    positions = np.where(seg > 0, t - first, 0).astype(np.int32)
    return {
        "input_ids": ids,
        "targets": targets,
        "loss_mask": loss_mask,
        "segment_ids": seg,
        "positions": positions,
    }


def pack_sequences(sequences, seq_len: int, batch_size: int, pack: bool = True) -> list[dict]:
    """Token-id lists -> contract batches (for tests and evaluation), without grain.
    pack=True: concatenate and cut into rows like the training pipeline (a long sequence
    continues in the next row as a new segment). pack=False: one sequence per row (each must fit).
    The last batch is filled with padding rows."""
    rows, row, seg = [], [], []

    def flush():
        if row:
            rows.append((row + [0] * (seq_len - len(row)), seg + [0] * (seq_len - len(seg))))
            row.clear(), seg.clear()

    for n, s in enumerate(sequences):
        s = [int(x) for x in s]
        if not pack:
            if len(s) > seq_len:
                raise ValueError(f"sequence {n} has {len(s)} tokens > seq_len {seq_len}")
            row.extend(s), seg.extend([1] * len(s))
            flush()
            continue
        while s:
            take = s[: seq_len - len(row)]
            sid = (max(seg) if seg else 0) + 1
            row.extend(take), seg.extend([sid] * len(take))
            s = s[len(take) :]
            if len(row) == seq_len:
                flush()
    flush()
    while len(rows) % batch_size:
        rows.append(([0] * seq_len, [0] * seq_len))
    out = []
    for b in range(0, len(rows), batch_size):
        chunk = rows[b : b + batch_size]
        out.append(contract_batch([r for r, _ in chunk], [s for _, s in chunk]))
    return out
