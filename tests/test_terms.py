"""Declared loss terms: a user's term registered from Python is selected by the config, computed
in the train step and weighed into the loss; what the step runs derives from the active terms;
top-k logit KD against a numpy reference."""

import jax.numpy as jnp
import numpy as np
import pytest
from train_fixtures import distill_config, one_step

from tinywave_jax.config import from_dict
from tinywave_jax.distill.losses import chunked_topk_losses, teacher_topk
from tinywave_jax.distill.objective import DistillLossConfig, loss_terms, normalisers
from tinywave_jax.distill.terms import (
    Features,
    Metric,
    Term,
    TermInputs,
    TermSum,
    register_term,
    unregister_term,
)
from tinywave_jax.errors import ConfigError
from tinywave_jax.train.metrics import step_flops
from tinywave_jax.train.recipes import prepare


def _final_mse(x):
    """A user's term: squared distance of the final hidden states, over valid tokens."""
    s = x.need("student", "final_hidden", "final_mse").astype(jnp.float32)
    t = x.need("teacher", "final_hidden", "final_mse").astype(jnp.float32)
    valid = (x.batch["segment_ids"] != 0).astype(jnp.float32)
    per_token = jnp.sum((s - t) ** 2, axis=-1)
    return {"final_mse": (jnp.sum(per_token * valid), jnp.sum(valid))}


@pytest.fixture
def final_mse():
    register_term(
        Term(
            "final_mse",
            _final_mse,
            {"final_mse": Metric("valid_tokens", "final_mse")},
            needs_student=frozenset({"output"}),
            needs_teacher=frozenset({"output"}),
        )
    )
    yield
    unregister_term("final_mse")


def test_user_term_is_selected_computed_and_weighted(final_mse):
    rng = np.random.default_rng(0)
    b, t, d = 2, 6, 4
    seg = np.ones((b, t), np.int32)
    seg[1, 4:] = 0
    batch = {
        "targets": jnp.zeros((b, t), jnp.int32),
        "loss_mask": jnp.ones((b, t), jnp.float32),
        "segment_ids": jnp.asarray(seg),
    }
    s, te = rng.normal(size=(b, t, d)), rng.normal(size=(b, t, d))
    cfg = from_dict(
        DistillLossConfig,
        {
            "weights": {"ce": 0, "logit_kl": 0, "hidden": 0, "attention": 0},
            "terms": {"final_mse": 1},
        },
    )
    assert cfg.active_terms() == ("final_mse",)
    terms = loss_terms(cfg, batch, {"final_hidden": s}, {"final_hidden": te})
    assert set(terms) == {"final_mse"}  # nothing else computed: no head kernels were given
    assert isinstance(terms["final_mse"], TermSum)  # the user's plain pair, typed at the seam
    total, count = terms["final_mse"]
    typed = loss_terms(cfg, batch, Features(final_hidden=s), Features(final_hidden=te))
    assert float(typed["final_mse"].total) == float(total)
    assert float(typed["final_mse"].tokens) == float(count)
    ref = ((s - te) ** 2).sum(-1)[seg != 0]
    np.testing.assert_allclose(float(total), ref.sum(), rtol=1e-6)
    assert float(count) == float(normalisers(batch)["valid_tokens"]) == (seg != 0).sum()

    # in the train step: reported, and in the loss with its weight
    cfg = distill_config(distill={"terms": {"final_mse": 0.5}})
    assert prepare(cfg).spec.teacher_head  # it needs the teacher's final hidden state
    _, m, _ = one_step(cfg)
    assert m["final_mse"] > 0
    parts = m["ce"] + m["logit_kl"] + m["hidden"] + m["attention_kl"] + 0.5 * m["final_mse"]
    assert m["loss"] == pytest.approx(parts, rel=1e-5)


def test_unknown_or_negative_terms_are_refused_naming_the_key(final_mse):
    with pytest.raises(ConfigError, match=r"distill\.terms\.nope: no loss term.*final_mse"):
        distill_config(distill={"terms": {"nope": 1.0}})
    with pytest.raises(ConfigError, match=r"distill\.terms\.final_mse: weight must be"):
        distill_config(distill={"terms": {"final_mse": -1.0}})
    with pytest.raises(ConfigError, match=r"distill\.terms\.hidden: set distill\.weights\.hidden"):
        distill_config(distill={"terms": {"hidden": 1.0}})
    with pytest.raises(ValueError, match="registered already"):
        register_term(Term("final_mse", _final_mse, {"x": Metric("loss_tokens", "final_mse")}))


def test_features_are_typed_and_a_misnamed_one_is_named(final_mse):
    """The features a term reads are `Features` fields: a mapping with a misspelt key fails
    naming it and the fields, a term asking for a feature that does not exist names it, and a
    needed feature left out names the model, the feature and the term."""
    batch = {
        "targets": jnp.zeros((1, 3), jnp.int32),
        "loss_mask": jnp.ones((1, 3), jnp.float32),
        "segment_ids": jnp.ones((1, 3), jnp.int32),
    }
    cfg = from_dict(
        DistillLossConfig,
        {
            "weights": {"ce": 0, "logit_kl": 0, "hidden": 0, "attention": 0},
            "terms": {"final_mse": 1},
        },
    )
    x = jnp.ones((1, 3, 2))
    with pytest.raises(KeyError, match=r"unknown features \['final_hiden'\]; features are"):
        loss_terms(cfg, batch, {"final_hiden": x}, {"final_hidden": x})
    with pytest.raises(KeyError, match="student features lack 'final_hidden', needed by the final"):
        loss_terms(cfg, batch, Features(), Features(final_hidden=x))
    inputs = TermInputs(cfg, batch, Features(final_hidden=x), Features())
    with pytest.raises(KeyError, match="my_term: no feature named 'logits'"):
        inputs.need("student", "logits", "my_term")


def test_what_runs_derives_from_the_active_terms():
    off = {"ce": 1.0, "logit_kl": 0.0, "hidden": 0.0, "attention": 0.0}
    ce_only = prepare(distill_config(distill={"weights": off})).spec
    assert not ce_only.runs_teacher and not ce_only.tap_hidden and not ce_only.tap_qk
    topk = prepare(distill_config(distill={"weights": off, "terms": {"topk_kl": 1.0}})).spec
    assert topk.runs_teacher and topk.teacher_head and topk.teacher.num_hidden_layers == 4
    assert topk.teacher_taps == ()
    # FLOPs: the teacher (with its head) counts for top-k KD, not for CE alone
    t = ce_only.teacher
    assert not t.tie_word_embeddings  # matmul params: all but the embedding table and final norm
    teacher = (
        2 * (t.num_params() - t.vocab_size * t.hidden_size - t.hidden_size) + 4 * 4 * 4 * 8 * 32
    )
    assert step_flops(topk, 32, 8) - step_flops(ce_only, 32, 8) == pytest.approx(teacher * 8 * 32)


def _np_log_softmax(x, axis=-1):
    x = x - x.max(axis, keepdims=True)
    return x - np.log(np.exp(x).sum(axis, keepdims=True))


def test_topk_kd_matches_a_numpy_reference():
    rng = np.random.default_rng(3)
    b, t, d, v, k, temp = 2, 7, 5, 11, 4, 1.7
    hs, ht = rng.normal(size=(b, t, d)), rng.normal(size=(b, t, d))
    ks, kt = rng.normal(size=(d, v)), rng.normal(size=(d, v))
    targets = rng.integers(0, v, size=(b, t))
    mask = (rng.random((b, t)) > 0.3).astype(np.float32)
    ids, lp = teacher_topk(jnp.asarray(ht), jnp.asarray(kt), k, chunk_size=3)
    # naive reference: full logits, sort, renormalise both sides over the teacher's top k
    zt = ht @ kt
    logp_t = _np_log_softmax(zt)
    ref_ids = np.argsort(-logp_t, axis=-1)[..., :k]
    np.testing.assert_array_equal(np.asarray(ids), ref_ids)
    np.testing.assert_allclose(
        np.asarray(lp), np.take_along_axis(logp_t, ref_ids, -1), rtol=1e-5, atol=1e-5
    )
    zs = hs @ ks
    p = np.exp(_np_log_softmax(np.take_along_axis(logp_t, ref_ids, -1) / temp))
    log_q = _np_log_softmax(np.take_along_axis(zs, ref_ids, -1) / temp)
    kl = (p * (np.log(p) - log_q)).sum(-1)
    ce = -np.take_along_axis(_np_log_softmax(zs), targets[..., None], -1)[..., 0]
    for chunk in (None, 3):
        out = chunked_topk_losses(
            jnp.asarray(hs), jnp.asarray(ks), ids, lp, jnp.asarray(targets), mask, temp, chunk
        )
        np.testing.assert_allclose(float(out["topk_kl"]), temp**2 * (kl * mask).sum(), rtol=1e-5)
        np.testing.assert_allclose(float(out["ce"]), (ce * mask).sum(), rtol=1e-5)
        assert float(out["num_tokens"]) == mask.sum()
    # k = V with the teacher's full distribution: the top-k KL is the full logit KL
    ids, lp = teacher_topk(jnp.asarray(ht), jnp.asarray(kt), v, chunk_size=None)
    full = chunked_topk_losses(jnp.asarray(hs), jnp.asarray(ks), ids, lp, targets, mask, 1.0, 4)
    kl_full = (np.exp(logp_t) * (logp_t - _np_log_softmax(zs))).sum(-1)
    np.testing.assert_allclose(float(full["topk_kl"]), (kl_full * mask).sum(), rtol=1e-5)


def test_online_topk_step_trains_and_its_gradient_reaches_the_student():
    cfg = distill_config(
        distill={
            "weights": {"ce": 0.0, "logit_kl": 0.0, "hidden": 0.0, "attention": 0.0},
            "terms": {"topk_kl": 1.0},
            "top_k": 8,
        }
    )
    _, m, session = one_step(cfg)
    assert set(m) >= {"topk_kl", "ce", "loss"} and "logit_kl" not in m
    assert m["loss"] == pytest.approx(m["topk_kl"]) and m["grad_norm"] > 0
    assert "teacher" in session.frozen_abstract


def test_resuming_a_checkpoint_older_than_the_new_keys():
    """A run saved before distill.terms / top_k / teacher.cache existed resumes while they keep
    their defaults; a changed one is still a config change."""
    from tinywave_jax.config import to_dict
    from tinywave_jax.train.config import DistillConfig
    from tinywave_jax.train.resume import config_changes, config_defaults

    new = to_dict(distill_config())
    old = to_dict(distill_config())
    del old["distill"]["terms"], old["distill"]["top_k"], old["teacher"]["cache"]
    defaults = config_defaults(DistillConfig)
    assert config_changes(old, new, defaults=defaults) == []
    assert [k for k, _, _ in config_changes(old, new)] == ["distill.top_k", "teacher.cache"]
    # a shape key added since (teacher.shape.attention): the shape's default is None in
    # DistillConfig(), so LlamaConfig's defaults stand in for it
    del old["teacher"]["shape"]["attention"]
    assert config_changes(old, new, defaults=defaults) == []
    assert config_changes(old, new, defaults=to_dict(DistillConfig())) != []
    new["distill"]["top_k"] = 8
    assert config_changes(old, new, defaults=defaults) == [("distill.top_k", "(absent)", 8)]
