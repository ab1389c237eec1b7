"""The offline teacher cache: built on 8 devices it holds each record's top-k (checked against
full numpy logits of the teacher on that record alone), resumes shard by shard, joins packed and
shuffled batches by (record, position), and a distill run with it loads and runs no teacher;
bad caches are refused naming what differs, the shard and the record."""

import dataclasses
import json
import shutil

import jax
import numpy as np
import pytest
from data_fixtures import synthetic_utterance, write_units_manifest
from train_fixtures import distill_config

from tinywave_jax.data.batches import BATCH_KEYS
from tinywave_jax.data.corpus_build import build_corpus
from tinywave_jax.data.corpus_read import CorpusSource
from tinywave_jax.data.streams import speech_sequence
from tinywave_jax.distill.cache_build import build_teacher_cache
from tinywave_jax.distill.teacher_cache import CacheJoin, TeacherCacheError, open_for_run
from tinywave_jax.errors import ConfigError
from tinywave_jax.models import llama
from tinywave_jax.train.data import make_batches
from tinywave_jax.train.loop import run
from tinywave_jax.train.metrics import read_metrics
from tinywave_jax.train.recipes import load_or_init, prepare
from tinywave_jax.train.step import teacher_features

K = 8
VOCAB = 512  # the custom layout's ids: 8 text, 2 markers, 501 units, padded to 256
TEACHER = {
    "vocab_size": VOCAB,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
}
LAYOUT = {"preset": None, "text_vocab_size": 8, "num_units": 501, "pad_to_multiple": 256}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache_corpus")
    rng = np.random.default_rng(5)
    recs = [synthetic_utterance(rng, k) for k in range(14)]
    manifest = write_units_manifest(root / "units.jsonl", recs)
    build_corpus(root / "corpus", manifest=manifest, shard_size=8, log=lambda *_: None)
    return root / "corpus"


def _cfg(corpus, cache=None, **over):
    distill = {
        "weights": {"ce": 1.0, "logit_kl": 0.0, "hidden": 0.0, "attention": 0.0},
        "terms": {"topk_kl": 1.0},
        "top_k": K,
    }
    base = {
        "teacher": {"shape": dict(TEACHER), "seed": 3, "cache": cache},
        "student": {"shape": {**TEACHER, "num_hidden_layers": 1}, "seed": 4, "num_layers": None},
        "distill": distill,
        "data": {
            "source": "corpus",
            "seq_len": 32,
            "batch_size": 8,
            "corpus": {"corpus_dir": str(corpus), "layout": LAYOUT, "read_threads": 1},
        },
    }
    for k, v in over.items():
        base[k] = {**base.get(k, {}), **v}
    return distill_config(**base)


_TEACHER = {}


def _reference(corpus, record: int) -> tuple[np.ndarray, np.ndarray]:
    """The teacher's top-k on one record alone, from its full logits (numpy log-softmax)."""
    cfg = _cfg(corpus)
    if not _TEACHER:
        config = prepare(cfg).teacher_full
        _TEACHER.update(config=config, params=load_or_init(cfg.teacher, config, None))
    src = CorpusSource(corpus, "train")
    ids = speech_sequence(src[record], cfg.data.corpus_config().layout.build())
    out = []
    for a in range(0, len(ids), 32):  # the cache's windows (data.seq_len)
        w = jax.numpy.asarray(ids[a : a + 32][None])
        logits = np.asarray(llama.forward(_TEACHER["params"], _TEACHER["config"], w).logits)
        logits = logits.astype(np.float64)
        z = logits[0] - logits[0].max(-1, keepdims=True)
        out.append(z - np.log(np.exp(z).sum(-1, keepdims=True)))
    logp = np.concatenate(out)
    top = np.argsort(-logp, axis=-1)[:, :K]
    return top, np.take_along_axis(logp, top, -1)


@pytest.fixture(scope="module")
def cache(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("cache") / "c"
    summary = build_teacher_cache(_cfg(corpus), out, top_k=K, records_per_shard=4)
    return out, summary


def test_the_cache_holds_each_records_top_k_built_on_8_devices(corpus, cache):
    out, summary = cache
    assert jax.device_count() == 8
    n = len(CorpusSource(corpus, "train"))
    assert summary["shards"] == -(-n // 4) and summary["built"] == summary["shards"]
    info = json.loads((out / "cache.json").read_text())
    assert info["top_k"] == K and info["corpus"]["records"] == n and info["kinds"] == ["speech"]
    c = open_for_run(_cfg(corpus, cache=str(out)))
    for record in (0, n - 1):
        want_ids, want_lp = _reference(corpus, record)
        pos = np.arange(len(want_ids))
        ids, lp = c.lookup(np.zeros_like(pos), np.full_like(pos, record), pos, ["speech"])
        np.testing.assert_array_equal(ids, want_ids)
        np.testing.assert_allclose(lp.astype(np.float64), want_lp, atol=2e-2, rtol=2e-3)
    # 16-bit ids and log-probs: 4 k bytes per token, plus the .npy headers
    tokens = summary["tokens"]
    assert 4 * K * tokens <= summary["bytes"] <= 4 * K * tokens + 256 * summary["shards"]


def test_a_stopped_build_resumes_at_its_unfinished_shards(corpus, cache, tmp_path):
    out, _ = cache
    copy = tmp_path / "c"
    shutil.copytree(out, copy)
    before = (copy / "shard-00001.ids.npy").read_bytes()
    (copy / "shard-00001.json").unlink()  # killed before shard 1's commit
    (copy / "shard-00002.lp.npy").write_bytes(b"x")  # and shard 2 damaged
    s = build_teacher_cache(_cfg(corpus), copy, top_k=K, records_per_shard=4)
    assert s["built"] == 2 and s["skipped"] == s["shards"] - 2
    assert (copy / "shard-00001.ids.npy").read_bytes() == before
    with pytest.raises(TeacherCacheError, match="top_k: cache 8, run 4"):
        build_teacher_cache(_cfg(corpus), copy, top_k=4, records_per_shard=4)


def test_packed_shuffled_batches_join_their_tokens_cached_rows(corpus, cache):
    out, _ = cache
    cfg = _cfg(corpus, cache=str(out), data={"seed": 7})
    batches = make_batches(cfg.data, VOCAB, keys=True)
    raw = next(make_batches(cfg.data, VOCAB, keys=True))
    joined = next(CacheJoin(batches, open_for_run(cfg), ["speech"]))
    assert set(joined) >= {"topk_ids", "topk_logprobs"} and "record_ids" not in joined
    np.testing.assert_array_equal(joined["input_ids"], raw["input_ids"])
    refs, checked = {}, 0
    for r, t in zip(*np.nonzero(raw["segment_ids"])):
        rec, pos = int(raw["record_ids"][r, t]), int(raw["token_positions"][r, t])
        if rec not in refs:
            refs[rec] = _reference(corpus, rec)[0]
        np.testing.assert_array_equal(joined["topk_ids"][r, t], refs[rec][pos])
        checked += 1
    assert checked > 100 and (raw["token_positions"][raw["segment_ids"] > 0] > 0).any()

    # the online step's teacher top-k on the packed batch agrees with the cache wherever the
    # teacher sees the same context: segments that start at their record's first token
    spec = prepare(_cfg(corpus)).spec
    teacher = load_or_init(cfg.teacher, spec.teacher, None)
    feats = teacher_features(spec, teacher, {k: jax.numpy.asarray(raw[k]) for k in BATCH_KEYS})
    seg, pos = raw["segment_ids"], raw["token_positions"]
    same = np.zeros(seg.shape, bool)
    for r in range(seg.shape[0]):
        for sid in set(seg[r].tolist()) - {0}:
            cols = np.nonzero(seg[r] == sid)[0]
            same[r, cols] = pos[r, cols[0]] == 0
    assert same.sum() > 50 and (~same & (seg > 0)).any()  # both kinds present
    np.testing.assert_array_equal(np.asarray(feats.topk_ids)[same], joined["topk_ids"][same])
    np.testing.assert_allclose(
        np.asarray(feats.topk_logprobs)[same],
        joined["topk_logprobs"][same].astype(np.float32),
        atol=2e-2,
        rtol=2e-3,
    )


def test_distill_with_a_cache_loads_and_runs_no_teacher(corpus, cache, tmp_path, monkeypatch):
    out, _ = cache
    loaded = []
    import tinywave_jax.train.recipes as recipes

    real = recipes.load_or_init
    monkeypatch.setattr(
        recipes, "load_or_init", lambda src, *a, **k: loaded.append(src) or real(src, *a, **k)
    )
    cfg = _cfg(corpus, cache=str(out), train={"steps": 2, "log_every": 1, "checkpoint_every": 100})
    cfg = dataclasses.replace(cfg, run_dir=str(tmp_path / "run"))
    recipe = prepare(cfg)
    assert not recipe.spec.runs_teacher and recipe.frozen() == {}
    result = run(cfg, echo=False)
    assert result["final_dir"] is not None
    assert all(src is cfg.student for src in loaded) and loaded
    rows = read_metrics(tmp_path / "run")
    assert rows[-1]["topk_kl"] > 0 and np.isfinite(rows[-1]["loss"])
    online = prepare(_cfg(corpus))
    assert online.spec.runs_teacher and online.spec.teacher_head
    assert rows[-1]["model_flops_per_step"] < _flops(online.spec)


def _flops(spec):
    from tinywave_jax.train.metrics import step_flops

    return step_flops(spec, 32, 8)


def test_bad_caches_and_configs_are_refused_naming_what(corpus, cache, tmp_path):
    out, _ = cache
    with pytest.raises(ConfigError, match=r"terms \['hidden'\] need the teacher's \['hidden'\]"):
        prepare(
            _cfg(
                corpus,
                cache=str(out),
                distill={"weights": {"ce": 1, "logit_kl": 0, "hidden": 1, "attention": 0}},
            )
        )
    with pytest.raises(TeacherCacheError, match=r"teacher\.sha256: cache '[0-9a-f]+', run"):
        open_for_run(_cfg(corpus, cache=str(out), teacher={"seed": 9}))
    with pytest.raises(TeacherCacheError, match="top_k: cache 8, run 4"):
        open_for_run(_cfg(corpus, cache=str(out), distill={"top_k": 4}))
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    data = (bad / "shard-00001.ids.npy").read_bytes()
    (bad / "shard-00001.ids.npy").write_bytes(data[: len(data) // 2])
    with pytest.raises(TeacherCacheError, match=r"shard-00001\.ids\.npy .* truncated, first lost"):
        open_for_run(_cfg(corpus, cache=str(bad)))
    (bad / "shard-00001.ids.npy").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    c = open_for_run(_cfg(corpus, cache=str(bad)))
    one = np.array([0])
    c.lookup(one * 0, one * 0, one * 0, ["speech"])  # shard 0 is intact
    with pytest.raises(TeacherCacheError, match=r"shard-00001\.ids\.npy differs from the sha256"):
        c.lookup(one * 0, one + 4, one * 0, ["speech"])
    (bad / "shard-00002.json").unlink()
    with pytest.raises(
        TeacherCacheError, match=r"missing 4 of its .* records: shards \['shard-00002'\]"
    ):
        open_for_run(_cfg(corpus, cache=str(bad)))


def test_plan_counts_the_teacher_only_online(corpus, cache):
    """`tinywave plan` of both modes: the cached step's model FLOPs are the student's alone, its
    batch holds the cache's top-k rows, and it has no teacher params."""
    from tinywave_jax.plan import Topology, make_plan
    from tinywave_jax.train.metrics import flops_per_token

    out, _ = cache
    online = make_plan(_cfg(corpus), Topology("test", 8, (), 1e12, 1e9))
    cached = make_plan(_cfg(corpus, cache=str(out)), Topology("test", 8, (), 1e12, 1e9))
    spec = prepare(_cfg(corpus)).spec
    per_step = 8 * 32
    assert cached["model_flops_per_step"] == flops_per_token(spec.student, 32) * per_step
    assert (
        online["model_flops_per_step"] == flops_per_token(spec.student, 32, spec.teacher) * per_step
    )
    assert (
        cached["memory_per_device_bytes"]["teacher_params"]
        == 0
        < online["memory_per_device_bytes"]["teacher_params"]
    )
    # top-k rows: 8 x 32 tokens x k x (2 + 2) bytes, over 8 devices
    extra = cached["memory_per_device_bytes"]["batch"] - online["memory_per_device_bytes"]["batch"]
    assert extra == 8 * 32 * K * 4 // 8


def test_the_cli_resumes_a_finished_cache_and_names_a_mismatch(corpus, cache, tmp_path, capsys):
    import yaml

    from tinywave_jax.cli import main
    from tinywave_jax.config import to_dict

    out, summary = cache
    copy = tmp_path / "c"
    shutil.copytree(out, copy)
    cfg_file = tmp_path / "distill.yaml"
    cfg_file.write_text(yaml.safe_dump(to_dict(_cfg(corpus))))
    argv = ["--out", str(copy), "--records-per-shard", "4"]
    assert main(["teacher-cache", "build", str(cfg_file), *argv, "--top-k", str(K)]) == 0
    assert f"0 shards built, {summary['shards']} kept" in capsys.readouterr().out
    over = [str(cfg_file), "data.seq_len=16"]  # overrides follow the config
    assert main(["teacher-cache", "build", *over, *argv, "--top-k", "4"]) == 2
    err = capsys.readouterr().err
    assert "holds a cache built otherwise" in err and "top_k: cache 8, run 4" in err
    assert err.strip().endswith("; use another --out")
    with pytest.raises(TeacherCacheError, match="top_k: cache 8, run 4.*; use another out$"):
        build_teacher_cache(_cfg(corpus), copy, top_k=4, records_per_shard=4)  # from Python
    assert "window: cache 32, run 16" in err


def test_a_cache_on_a_bucket(corpus, cache, tmp_path):
    """Built onto gs:// (the GCS emulator), resumed there, and read through a local mirror."""
    from gcs_fixtures import gcs_emulator, make_bucket

    out, summary = cache
    with gcs_emulator(tmp_path / "gcs.log"):
        remote = f"gs://{make_bucket()}/cache"
        s = build_teacher_cache(_cfg(corpus), remote, top_k=K, records_per_shard=4)
        assert s["built"] == summary["shards"] and s["bytes"] == summary["bytes"]
        again = build_teacher_cache(_cfg(corpus), remote, top_k=K, records_per_shard=4)
        assert again["built"] == 0 and again["skipped"] == summary["shards"]
        local = open_for_run(_cfg(corpus, cache=str(out)))
        there = open_for_run(_cfg(corpus, cache=remote))
        pos = np.arange(20)
        for rec in (1, 6):
            args = (np.zeros_like(pos), np.full_like(pos, rec), pos, ["speech"])
            np.testing.assert_array_equal(there.lookup(*args)[0], local.lookup(*args)[0])
            np.testing.assert_array_equal(there.lookup(*args)[1], local.lookup(*args)[1])


def test_records_per_shard_is_named_as_the_parameter(tmp_path, capsys):
    """From Python the error names `records_per_shard`; the CLI writes --records-per-shard."""
    from tinywave_jax import cli

    with pytest.raises(ConfigError, match="^records_per_shard: must be >= 1, got 0"):
        build_teacher_cache(None, tmp_path / "cache", records_per_shard=0)
    import yaml

    from tinywave_jax.config import to_dict

    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(to_dict(distill_config())))
    argv = [str(config), "--out", str(tmp_path / "c"), "--records-per-shard", "0"]
    code = cli.main(["teacher-cache", "build", *argv])
    assert code == 2
    assert "--records-per-shard: must be >= 1, got 0" in capsys.readouterr().err
