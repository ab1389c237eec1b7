"""Validation during training (train.eval_every): the logged val_loss equals `score` on the same
held-out sequences, turning it on leaves the training numerics unchanged, it reaches TensorBoard,
and its settings fail at start-up naming the key (a split the corpus lacks names the ones it has).
"""

import json
import math
import struct

import numpy as np
import pytest
from train_fixtures import distill_config, train_config

from tinywave_jax.checkpoint import load_model
from tinywave_jax.errors import ConfigError
from tinywave_jax.scoring import score_sequences
from tinywave_jax.train.data import held_out_batches
from tinywave_jax.train.loop import run

TIMING_KEYS = {"tokens_per_s", "mfu", "model_flops_per_step"}
VAL_KEYS = {"val_loss", "val_ppl", "val_tokens"}


def _rows(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _documents(batches: list[dict]) -> list[np.ndarray]:
    """Every packed segment of the contract batches as its own token sequence."""
    docs = []
    for b in batches:
        for ids, seg in zip(b["input_ids"], b["segment_ids"]):
            docs += [ids[seg == s] for s in np.unique(seg[seg > 0])]
    return docs


def _scored_loss(run_dir, cfg) -> tuple[float, float]:
    """(mean NLL, tokens) of final/ on the held-out sequences, by `tinywave score`'s code: each
    document scored alone (no packing, no loss mask), on one device."""
    params, config, _ = load_model(run_dir / "final")
    batches = held_out_batches(
        cfg.data, cfg.train.eval_split, cfg.train.eval_batches, config.vocab_size
    )
    lps = score_sequences(params, config, [d.tolist() for d in _documents(batches)], 16)
    tokens = sum(len(lp) for lp in lps)
    return -math.fsum(float(x) for lp in lps for x in lp) / tokens, tokens


def _tensorboard(run_dir, tag: str) -> dict[int, float]:
    """step -> value of scalar `tag` in run_dir/tb's event files (TFRecords, parsed here)."""
    from tensorboardX.proto import event_pb2

    out = {}
    for path in (run_dir / "tb").glob("events.out.tfevents.*"):
        data, i = path.read_bytes(), 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i : i + 8])
            event = event_pb2.Event.FromString(data[i + 12 : i + 12 + n])
            for v in event.summary.value:
                if v.tag == tag:
                    out[event.step] = v.simple_value
            i += 12 + n + 4
    return out


def test_distill_validation_equals_score_and_leaves_training_unchanged(tmp_path):
    evaluated = {"eval_every": 2, "eval_batches": 2, "log_every": 3, "tensorboard": True}
    on = distill_config(run_dir=str(tmp_path / "on"), train={"steps": 4, **evaluated})
    off = distill_config(run_dir=str(tmp_path / "off"), train={"steps": 4, "log_every": 3})
    assert run(on, echo=False)["final_dir"] and run(off, echo=False)["final_dir"]

    rows = _rows(tmp_path / "on")
    # step 2: evaluated only (a row of its own); 3: logged only; 4: both, in one row
    assert [(r["step"], VAL_KEYS <= set(r), "loss" in r) for r in rows] == [
        (2, True, False),
        (3, False, True),
        (4, True, True),
    ]
    assert set(rows[0]) == {"step"} | VAL_KEYS
    trained = [{k: v for k, v in r.items() if k not in TIMING_KEYS | VAL_KEYS} for r in rows[1:]]
    assert trained == [
        {k: v for k, v in r.items() if k not in TIMING_KEYS} for r in _rows(tmp_path / "off")
    ]
    a, b = load_model(tmp_path / "on" / "final")[0], load_model(tmp_path / "off" / "final")[0]
    for x, y in zip(jax_leaves(a), jax_leaves(b)):
        np.testing.assert_array_equal(x, y)

    loss, tokens = _scored_loss(tmp_path / "on", on)
    last = rows[-1]
    assert last["val_tokens"] == tokens
    assert last["val_loss"] == pytest.approx(loss, rel=2e-6)
    assert last["val_ppl"] == pytest.approx(math.exp(loss), rel=2e-6)
    assert rows[0]["val_loss"] != last["val_loss"]  # the model changed in between
    assert _tensorboard(tmp_path / "on", "val_loss") == pytest.approx(
        {2: rows[0]["val_loss"], 4: last["val_loss"]}, rel=1e-6
    )


def jax_leaves(tree):
    import jax

    return jax.tree.leaves(tree)


def test_lora_train_validation_with_microbatches_equals_score(tmp_path):
    """tinywave train with LoRA (student = frozen base + adapters) and 2 microbatches: the
    validation loss at the last step equals `score` of the merged final/ model."""
    cfg = train_config(
        run_dir=str(tmp_path / "lora"),
        lora={"enabled": True, "rank": 4, "targets": ["q_proj", "v_proj"]},
        train={"steps": 3, "microbatches": 2, "eval_every": 5, "eval_batches": 1},
        data={"seed": 7, "batch_size": 16},
    )
    run(cfg, echo=False)
    rows = _rows(tmp_path / "lora")
    assert [r["step"] for r in rows if "val_loss" in r] == [3]  # the last step, though not 5's
    loss, tokens = _scored_loss(tmp_path / "lora", cfg)
    assert rows[-1]["val_tokens"] == tokens
    assert rows[-1]["val_loss"] == pytest.approx(loss, rel=2e-6)


def test_held_out_synthetic_data_is_not_the_training_data():
    cfg = distill_config().data
    train = held_out_batches(cfg, "train", 2, 128)
    valid = held_out_batches(cfg, "validation", 2, 128)
    test = held_out_batches(cfg, "test", 2, 128)
    assert not np.array_equal(train[0]["input_ids"], valid[0]["input_ids"])
    assert not np.array_equal(valid[0]["input_ids"], test[0]["input_ids"])
    # the held-out walks come from the training table: the same successor sets
    from tinywave_jax.data.synthetic import SyntheticIterator

    succ = SyntheticIterator(cfg, 128).successors
    ids, seg = valid[0]["input_ids"], valid[0]["segment_ids"]
    same = (seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] > 0)
    prev, nxt = ids[:, :-1][same], ids[:, 1:][same]
    first = cfg.synthetic.first_id
    assert all(n in succ[p - first] for p, n in zip(prev, nxt))


@pytest.mark.parametrize(
    "train, message",
    [
        ({"eval_every": -1}, "train.eval_every: must be >= 0"),
        ({"eval_batches": 0}, "train.eval_batches: must be >= 1"),
        (
            {"eval_split": "valid"},
            "train.eval_split: 'valid' is not a held-out split; expected one of "
            "['validation', 'test']",
        ),
        ({"eval_split": "train"}, "train.eval_split: 'train' is not a held-out split"),
    ],
)
def test_bad_validation_settings_name_the_key(train, message):
    with pytest.raises(ConfigError) as e:
        distill_config(train=train)
    assert str(e.value).startswith(message), str(e.value)


def test_eval_split_may_not_be_the_corpus_split_trained_on():
    with pytest.raises(ConfigError, match="^train.eval_split: 'test' is the split the run trains"):
        train_config(
            train={"eval_every": 1, "eval_split": "test"},
            data={"source": "corpus", "corpus": {"split": "test"}},
        )


def test_a_split_the_corpus_lacks_names_the_splits_it_has(tmp_path):
    from data_fixtures import synthetic_utterance, write_units_manifest

    from tinywave_jax.data.corpus_build import build_corpus

    rng = np.random.default_rng(1)
    manifest = write_units_manifest(
        tmp_path / "units.jsonl", [synthetic_utterance(rng, k) for k in range(12)]
    )
    build_corpus(
        tmp_path / "corpus",
        manifest=manifest,
        valid_fraction=0.25,
        test_fraction=0.0,
        log=lambda *a: None,
    )
    corpus = {"corpus_dir": str(tmp_path / "corpus"), "read_threads": 1}
    cfg = train_config(data={"source": "corpus", "seq_len": 32, "batch_size": 2, "corpus": corpus})
    with pytest.raises(ConfigError) as e:
        held_out_batches(cfg.data, "test", 4, 32768)
    assert str(e.value).startswith("train.eval_split: corpus ") and str(e.value).endswith(
        "has no split 'test'; it has ['train', 'validation']"
    )
    # the validation split, read once in order: a second read gives the same batches
    first, again = (held_out_batches(cfg.data, "validation", 100, 32768) for _ in range(2))
    assert 0 < len(first) < 100  # one pass over the split, not repeated
    for x, y in zip(first, again):
        np.testing.assert_array_equal(x["input_ids"], y["input_ids"])
