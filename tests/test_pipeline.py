"""Grain pipelines: interleaving at word boundaries, pattern frequencies, packing against a naive
packer, host sharding, iterator state, bad records, and the corpus -> batches path."""

import json

import grain
import numpy as np
import pytest
from data_fixtures import as_source_record, make_tokenizer, synthetic_utterance
from scipy.stats import chisquare

from tinywave_jax.config import load_config
from tinywave_jax.data import (
    BadRecord,
    CorpusError,
    DataConfig,
    LayoutConfig,
    make_train_iterator,
    pack_sequences,
    preset_layout,
)
from tinywave_jax.data.layout import load_tokenizer
from tinywave_jax.data.pipeline import sequence_dataset
from tinywave_jax.data.streams import PATTERNS, interleave, speech_sequence
from tinywave_jax.errors import ConfigError

LAYOUT = preset_layout("spiritlm_expressive")
TEXT, SPEECH, BOS = LAYOUT.text_marker_id, LAYOUT.speech_marker_id, LAYOUT.bos_id


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def records():
    rng = np.random.default_rng(0)
    return [as_source_record(synthetic_utterance(rng, k)) for k in range(40)]


def _cfg(tok_dir, **kw):
    base = dict(
        mixture={"speech": 1.0}, seq_len=64, batch_size=4, seed=3, tokenizer=tok_dir, read_threads=2
    )
    return DataConfig(**{**base, **kw})


# ---------------------------------------------------------------- interleaving


def _word_coded_record():
    """Word k spans [0.5k + 0.1, 0.5k + 0.4); its HuBERT frames are unit 10k + j; the pauses
    between words hold unit 499. So a unit tells which word (or pause) it came from."""
    hubert, words = [], []
    for f in range(int(12 * 0.5 * 25)):
        t = f * 0.04
        k, off = divmod(t, 0.5)
        hubert.append(10 * int(k) + f % 3 if 0.1 - 1e-9 <= off < 0.4 - 1e-9 else 499)
    for k in range(12):
        words.append((f"w{k}", round(0.5 * k + 0.1, 3), round(0.5 * k + 0.4, 3)))
    return {
        "id": "coded",
        "speaker": "s",
        "transcript": "",
        "duration": 6.0,
        "where": "mem:0",
        "words": words,
        "streams": {"hubert": (np.array(hubert), np.arange(len(hubert)) * 0.04)},
    }


def _spans(ids):
    """Token ids -> [(modality, [ids])] split at markers; asserts bos first, a marker right after
    it, and never two markers in a row or a repeated marker."""
    assert ids[0] == BOS and ids[1] in (TEXT, SPEECH)
    spans = []
    for i in ids[1:]:
        if i in (TEXT, SPEECH):
            assert not spans or (spans[-1][1] and spans[-1][0] != i), "empty span or same marker"
            spans.append((i, []))
        else:
            spans[-1][1].append(int(i))
    return spans


def test_interleaving_switches_only_at_word_boundaries(tok_dir):
    tok = load_tokenizer(tok_dir, LAYOUT)
    rec = _word_coded_record()
    seen = set()
    for seed in range(60):
        ids, pattern = interleave(rec, LAYOUT, tok, np.random.default_rng(seed))
        spans = _spans(ids)
        assert tuple("speech" if m == SPEECH else "text" for m, _ in spans) == PATTERNS[pattern]
        covered = []
        for marker, toks in spans:
            if marker == SPEECH:
                units = [t - LAYOUT.offset("hubert") for t in toks]
                assert all(0 <= u < 500 for u in units)
                span_words = sorted({u // 10 for u in units if u != 499})
                # a span is whole words: consecutive, pauses only between its own words
                assert span_words == list(range(span_words[0], span_words[-1] + 1))
                assert units[0] != 499 and units[-1] != 499
                assert units[-1] // 10 == span_words[-1]
                covered += span_words
            else:
                words = tok.decode(toks).split()
                covered += [int(w[1:]) for w in words]
        assert covered == list(range(12)), (pattern, covered)
        seen.add(pattern)
    assert seen == set(PATTERNS)


def test_interleaved_pattern_frequencies_match_config(tok_dir, records):
    probs = {
        "speech": 0.1,
        "text": 0.15,
        "speech_text": 0.3,
        "text_speech": 0.25,
        "speech_text_speech": 0.2,
    }
    cfg = _cfg(tok_dir, mixture={"interleaved": 1.0}, interleave_patterns=probs)
    layout = cfg.layout.build()
    tok = load_tokenizer(tok_dir, layout)
    ds = sequence_dataset(
        "interleaved", 0, records, grain.MapDataset.range(len(records)), cfg, layout, tok
    )
    counts = dict.fromkeys(PATTERNS, 0)
    for i in range(10_000):
        mods = tuple("speech" if m == SPEECH else "text" for m, _ in _spans(ds[i]["input_ids"]))
        counts[{v: k for k, v in PATTERNS.items()}[mods]] += 1
    observed = np.array([counts[k] for k in PATTERNS])
    expected = 10_000 * np.array([probs[k] for k in PATTERNS])
    assert chisquare(observed, expected).pvalue > 1e-3, counts
    # deterministic per (seed, index); another seed gives other samples
    again = sequence_dataset(
        "interleaved", 0, records, grain.MapDataset.range(len(records)), cfg, layout, tok
    )
    assert all(np.array_equal(ds[i]["input_ids"], again[i]["input_ids"]) for i in range(50))
    other = sequence_dataset(
        "interleaved",
        0,
        records,
        grain.MapDataset.range(len(records)),
        _cfg(tok_dir, mixture={"interleaved": 1.0}, seed=4),
        layout,
        tok,
    )
    assert sum(np.array_equal(ds[i]["input_ids"], other[i]["input_ids"]) for i in range(50)) < 25


def _batches(cfg, records, n):
    it = make_train_iterator(cfg, 0, 1, source=records)
    return [next(it) for _ in range(n)]


def test_missing_alignment_is_named_or_counted(tok_dir, records):
    recs = list(records[:10])
    recs[4] = {**recs[4], "words": None}
    with pytest.raises(BadRecord, match=r"mem:utt0004.*needs a word alignment"):
        _batches(_cfg(tok_dir, mixture={"interleaved": 1.0}), recs, 20)
    it = make_train_iterator(
        _cfg(tok_dir, mixture={"interleaved": 1.0}, max_bad_records=1000), 0, 1, source=recs
    )
    assert all(next(it)["loss_mask"].sum() > 0 for _ in range(20))


def test_unit_beyond_layout_fails_naming_the_record(tok_dir, records):
    recs = list(records[:8])
    h, t = recs[2]["streams"]["hubert"]
    recs[2] = {**recs[2], "streams": {**recs[2]["streams"], "hubert": (h + 600, t)}}
    with pytest.raises(BadRecord, match=r"mem:utt0002.*hubert unit \d+ is outside"):
        _batches(_cfg(tok_dir), recs, 10)


# ---------------------------------------------------------------- packing and the contract


def _naive_pack(sequences, T):
    """Concatenate, cut into rows of T; segment ids count pieces per row; then the contract
    fields by plain loops."""
    rows = []
    ids, seg = [], []
    for s in sequences:
        s = list(s)
        while s:
            if len(ids) == T:
                rows.append((ids, seg))
                ids, seg = [], []
            take = s[: T - len(ids)]
            sid = (seg[-1] if seg else 0) + 1
            ids += take
            seg += [sid] * len(take)
            s = s[len(take) :]
    if ids:
        rows.append((ids + [0] * (T - len(ids)), seg + [0] * (T - len(seg))))
    out = []
    for ids, seg in rows:
        tgt, mask, pos = [0] * T, [0.0] * T, [0] * T
        for t in range(T):
            if seg[t] and t > 0 and seg[t - 1] == seg[t]:
                pos[t] = pos[t - 1] + 1
            if seg[t] and t + 1 < T and seg[t + 1] == seg[t]:
                tgt[t], mask[t] = ids[t + 1], 1.0
        out.append(
            {
                "input_ids": ids,
                "segment_ids": seg,
                "positions": pos,
                "targets": tgt,
                "loss_mask": mask,
            }
        )
    return out


def _rows(batches):
    for b in batches:
        for r in range(b["input_ids"].shape[0]):
            yield {k: v[r].tolist() for k, v in b.items()}


def test_packed_batches_match_a_naive_packer(tok_dir, records):
    cfg = _cfg(tok_dir, mixture={"expressive": 1.0}, num_epochs=1, seq_len=48, batch_size=3)
    layout = cfg.layout.build()
    seqs = sequence_dataset(
        "expressive", 0, records, grain.MapDataset.range(len(records)), cfg, layout, None
    )
    expected = _naive_pack([seqs[i]["input_ids"] for i in range(len(records))], 48)
    batches = list(make_train_iterator(cfg, 0, 1, source=records))
    for b in batches:
        assert {k: (v.dtype.name, v.shape) for k, v in b.items()} == {
            "input_ids": ("int32", (3, 48)),
            "targets": ("int32", (3, 48)),
            "loss_mask": ("float32", (3, 48)),
            "segment_ids": ("int32", (3, 48)),
            "positions": ("int32", (3, 48)),
        }
    got = list(_rows(batches))
    pad_rows = got[len(expected) :]
    assert got[: len(expected)] == expected
    assert all(sum(r["segment_ids"]) == 0 and sum(r["loss_mask"]) == 0 for r in pad_rows)
    assert len(pad_rows) < 3
    # the grain-free helper packs the same way
    helper = pack_sequences([seqs[i]["input_ids"] for i in range(len(records))], 48, 3)
    assert list(_rows(helper))[: len(expected)] == expected


def test_pack_sequences_one_per_row():
    (b,) = pack_sequences([[1, 5, 6], [1, 7]], seq_len=4, batch_size=3, pack=False)
    assert b["input_ids"].tolist() == [[1, 5, 6, 0], [1, 7, 0, 0], [0, 0, 0, 0]]
    assert b["targets"].tolist() == [[5, 6, 0, 0], [7, 0, 0, 0], [0, 0, 0, 0]]
    assert b["loss_mask"].tolist() == [[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    with pytest.raises(ValueError, match="sequence 0 has 5 tokens"):
        pack_sequences([[1, 2, 3, 4, 5]], seq_len=4, batch_size=1, pack=False)


# ---------------------------------------------------------------- hosts and iterator state


def test_two_hosts_see_disjoint_data_covering_the_corpus(tok_dir, records):
    want = {tuple(speech_sequence(r, LAYOUT).tolist()): r["id"] for r in records}
    assert len(want) == len(records)
    seen = []
    for host in range(2):
        cfg = _cfg(tok_dir, num_epochs=1, batch_size=4)
        stream = [
            t
            for row in _rows(make_train_iterator(cfg, host, 2, source=records))
            for t, s in zip(row["input_ids"], row["segment_ids"])
            if s
        ]
        docs = [[BOS] + d for d in _split_at_bos(stream)]
        assert all(tuple(d) in want for d in docs)
        seen.append([want[tuple(d)] for d in docs])
        assert len(seen[-1]) == len(set(seen[-1]))
    assert not set(seen[0]) & set(seen[1])
    assert set(seen[0]) | set(seen[1]) == {r["id"] for r in records}


def _split_at_bos(stream):
    docs = []
    for t in stream:
        if t == BOS:
            docs.append([])
        else:
            docs[-1].append(t)
    return docs


def test_restored_iterator_reproduces_the_next_100_batches(tok_dir, records):
    cfg = _cfg(
        tok_dir,
        mixture={"speech": 1.0, "expressive": 2.0, "interleaved": 1.0, "text": 0.5},
        seq_len=64,
        batch_size=4,
    )
    it = make_train_iterator(cfg, 1, 2, source=records)
    for _ in range(13):  # mid-epoch (20 records per host)
        next(it)
    state = json.loads(json.dumps(it.get_state()))  # what a checkpoint stores
    expected = [next(it) for _ in range(100)]
    fresh = make_train_iterator(cfg, 1, 2, source=records)
    fresh.set_state(state)
    for a, b in zip(expected, (next(fresh) for _ in range(100))):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    with pytest.raises(ValueError, match="process_count=2 but this run has 4"):
        make_train_iterator(cfg, 1, 4, source=records).set_state(state)
    with pytest.raises(ValueError, match="seq_len saved 64 now 32"):
        make_train_iterator(
            _cfg(tok_dir, mixture=cfg.mixture, seq_len=32), 1, 2, source=records
        ).set_state(state)


def test_data_config_from_yaml_and_overrides(tmp_path, tok_dir):
    path = tmp_path / "data.yaml"
    path.write_text(
        f"corpus_dir: /x\nmixture: {{speech: 1, interleaved: 0.5}}\n"
        f"tokenizer: {tok_dir}\nlayout: {{preset: spiritlm_base}}\n"
    )
    cfg = load_config(DataConfig, path, ["seq_len=256", "interleave_patterns.text=0.5"])
    assert cfg.seq_len == 256 and cfg.layout == LayoutConfig(preset="spiritlm_base")
    assert cfg.interleave_patterns["text"] == 0.5 and cfg.mixture["interleaved"] == 0.5
    with pytest.raises(ConfigError, match="mixture.audio"):
        load_config(DataConfig, path, ["mixture.audio=1"])
    with pytest.raises(ConfigError, match="interleave_patterns.bogus"):
        load_config(DataConfig, path, ["interleave_patterns.bogus=1"])
    with pytest.raises(ConfigError, match="^tokenizer: the text and interleaved"):
        load_config(DataConfig, None, ["mixture={text: 1}"])
    with pytest.raises(ConfigError, match="seq_lenn"):
        load_config(DataConfig, path, ["seq_lenn=3"])


def test_batch_size_must_split_over_hosts(tok_dir, records):
    with pytest.raises(ConfigError, match="not divisible by 3"):
        make_train_iterator(_cfg(tok_dir, batch_size=4), 0, 3, source=records)


def test_corrupt_record_is_named_or_counted(tok_dir, records):
    class Flaky:
        def __len__(self):
            return len(records)

        def __getitem__(self, i):
            if i == 5:
                raise CorpusError("shard-x.array_record record 5: chunk data hash mismatch")
            return records[i]

    cfg = _cfg(tok_dir, num_epochs=1)
    with pytest.raises(CorpusError, match="hash mismatch .*data.corpus.max_bad_records=0"):
        list(make_train_iterator(cfg, 0, 1, source=Flaky(), key="data.corpus"))
    batches = list(
        make_train_iterator(_cfg(tok_dir, num_epochs=1, max_bad_records=1), 0, 1, source=Flaky())
    )
    n_docs = sum(int((b["input_ids"] == BOS).sum()) for b in batches)
    assert n_docs == len(records) - 1


@pytest.mark.parametrize("n", [50, 70_000])
def test_epoch_shuffle_permutes_each_epoch_differently(n):
    from tinywave_jax.data.pipeline import EpochShuffle

    ds = EpochShuffle(grain.MapDataset.range(n).repeat(2), n, seed=5)
    k = min(n, 1000)  # the large case uses grain's keyed bijection: check a prefix
    first, second = [ds[i] for i in range(k)], [ds[i] for i in range(n, n + k)]
    assert len(set(first)) == len(set(second)) == k
    assert all(0 <= i < n for i in first + second)
    if k == n:
        assert sorted(first) == list(range(n))
    assert first != second and first != list(range(k))
    again = EpochShuffle(grain.MapDataset.range(n).repeat(2), n, seed=5)
    assert first == [again[i] for i in range(k)]


def test_expressive_interleaving_takes_contiguous_merged_spans(tok_dir, records):
    from tinywave_jax.data.layout import merge_streams

    tok = load_tokenizer(tok_dir, LAYOUT)
    rec = records[0]
    full = merge_streams(LAYOUT, rec["streams"])[0]
    has_pitch = False
    for seed in range(20):
        ids, pattern = interleave(rec, LAYOUT, tok, np.random.default_rng(seed), expressive=True)
        pos = 0
        for marker, toks in _spans(ids):
            if marker == SPEECH:  # a contiguous piece of the merged stream, in order
                win = np.lib.stride_tricks.sliding_window_view(full, len(toks))
                at = np.nonzero((win == np.array(toks)).all(axis=1))[0]
                assert at[at >= pos].size, pattern
                pos = int(at[at >= pos][0]) + len(toks)
                has_pitch |= any(LAYOUT.offset("pitch") <= t < LAYOUT.offset("style") for t in toks)
    assert has_pitch


@pytest.mark.slow
def test_worker_processes_restore_exactly(tok_dir, records):
    cfg = _cfg(tok_dir, mixture={"speech": 1.0, "interleaved": 1.0}, worker_count=1)
    it = make_train_iterator(cfg, 0, 1, source=records)
    for _ in range(3):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(5)]
    fresh = make_train_iterator(cfg, 0, 1, source=records)
    fresh.set_state(state)
    for a, b in zip(expected, (next(fresh) for _ in range(5))):
        np.testing.assert_array_equal(a["input_ids"], b["input_ids"])
