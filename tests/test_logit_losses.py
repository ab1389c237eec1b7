"""Chunked CE / logit KL vs unchunked and numpy references; hidden alignment; the combined objective."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tinywave_jax.config import from_dict
from tinywave_jax.distill import (
    DistillLossConfig,
    chunked_cross_entropy,
    chunked_logit_losses,
    distill_loss,
    hidden_alignment,
    init_hidden_projector,
)
from tinywave_jax.distill.objective import (
    METRICS,
    LossWeights,
    loss_terms,
    normalisers,
    weighted_loss,
)
from tinywave_jax.errors import ConfigError

B, T, DS, DT, V = 2, 10, 6, 8, 32
TEMP = 2.5


def _data(seed=0):
    rng = np.random.default_rng(seed)
    hs = rng.normal(size=(B, T, DS)).astype(np.float32)
    ws = rng.normal(size=(DS, V)).astype(np.float32)
    ht = rng.normal(size=(B, T, DT)).astype(np.float32)
    wt = rng.normal(size=(DT, V)).astype(np.float32)
    targets = rng.integers(0, V, size=(B, T)).astype(np.int32)
    targets[1, 7:] = -1  # padding targets may hold any id
    mask = np.ones((B, T), np.float32)
    mask[0, 4] = 0  # last token of packed document 1
    mask[1, 6:] = 0  # end of document + padding
    return hs, ws, ht, wt, targets, mask


def numpy_logit_losses(hs, ws, ht, wt, targets, mask, temp):
    def log_softmax(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    s = np.asarray(hs, np.float64) @ np.asarray(ws, np.float64)
    t = np.asarray(ht, np.float64) @ np.asarray(wt, np.float64)
    tgt = np.clip(targets, 0, V - 1)[..., None]

    def kl(temperature):
        lpt, lps = log_softmax(t / temperature), log_softmax(s / temperature)
        return (np.exp(lpt) * (lpt - lps)).sum(-1)

    return {
        "ce": (-np.take_along_axis(log_softmax(s), tgt, -1)[..., 0] * mask).sum(),
        "logit_kl": (kl(temp) * mask).sum() * temp**2,
        "kl_t1": (kl(1.0) * mask).sum(),
        "teacher_ce": (-np.take_along_axis(log_softmax(t), tgt, -1)[..., 0] * mask).sum(),
        "num_tokens": mask.sum(),
    }


@functools.partial(jax.jit, static_argnums=(6,))
def _losses_and_grads(hs, ws, ht, wt, targets, mask, chunk):
    def objective(hs, ws, ht, wt):
        out = chunked_logit_losses(hs, ws, ht, wt, targets, mask, TEMP, chunk)
        return out["ce"] + 0.7 * out["logit_kl"], out

    return jax.value_and_grad(objective, (0, 1, 2, 3), has_aux=True)(hs, ws, ht, wt)


@pytest.mark.parametrize("chunk", [4, 5])  # 10 = 2.5 * 4 (ragged last chunk), 2 * 5
def test_chunked_equals_unchunked_and_numpy(chunk):
    hs, ws, ht, wt, targets, mask = _data()
    (_, chunked), g_chunked = _losses_and_grads(hs, ws, ht, wt, targets, mask, chunk)
    (_, full), g_full = _losses_and_grads(hs, ws, ht, wt, targets, mask, None)
    ref = numpy_logit_losses(hs, ws, ht, wt, targets, mask, TEMP)
    n = ref["num_tokens"]
    for k in ref:
        assert chunked[k].dtype == jnp.float32
        np.testing.assert_allclose(chunked[k] / n, full[k] / n, rtol=1e-6, atol=1e-6, err_msg=k)
        np.testing.assert_allclose(chunked[k], ref[k], rtol=1e-5, err_msg=k)
    assert ref["logit_kl"] > 1.0 and ref["kl_t1"] > 1.0  # the models differ: not 0 == 0
    for a, b in zip(g_chunked[:2], g_full[:2]):  # student hidden and head kernel
        np.testing.assert_allclose(a, b, atol=1e-6 * max(1.0, float(jnp.abs(b).max())))
        assert float(jnp.abs(b).max()) > 1e-3
    for g in g_chunked[2:]:  # teacher is a constant
        assert float(jnp.abs(g).max()) == 0.0
    # masked positions get no gradient
    assert float(jnp.abs(g_chunked[0][1, 6:]).max()) == 0.0


def test_gradient_matches_finite_differences_of_numpy_reference():
    hs, ws, ht, wt, targets, mask = _data(1)
    _, (g_hs, _, _, _) = _losses_and_grads(hs, ws, ht, wt, targets, mask, 3)
    eps = 1e-3
    for idx in [(0, 0, 0), (0, 3, 5), (1, 5, 2)]:
        up, down = hs.copy(), hs.copy()
        up[idx] += eps
        down[idx] -= eps
        f = [numpy_logit_losses(h, ws, ht, wt, targets, mask, TEMP) for h in (up, down)]
        fd = sum(
            (a - b) * w
            for (a, b, w) in [
                (f[0]["ce"], f[1]["ce"], 1.0),
                (f[0]["logit_kl"], f[1]["logit_kl"], 0.7),
            ]
        ) / (2 * eps)
        np.testing.assert_allclose(g_hs[idx], fd, rtol=1e-3, atol=1e-4)


def test_identical_models_give_zero_kl_and_equal_ce():
    hs, ws, _, _, targets, mask = _data(2)
    out = jax.jit(lambda *a: chunked_logit_losses(*a, TEMP, 4))(hs, ws, hs, ws, targets, mask)
    assert abs(float(out["logit_kl"])) < 1e-5 and abs(float(out["kl_t1"])) < 1e-5
    np.testing.assert_allclose(out["ce"], out["teacher_ce"], rtol=1e-6)


def test_ce_only_and_bf16_inputs():
    hs, ws, ht, wt, targets, mask = _data(3)
    ce = jax.jit(lambda *a: chunked_cross_entropy(*a, 3))(hs, ws, targets, mask)
    ref = numpy_logit_losses(hs, ws, ht, wt, targets, mask, TEMP)
    np.testing.assert_allclose(ce["ce"], ref["ce"], rtol=1e-5)
    np.testing.assert_allclose(ce["num_tokens"], ref["num_tokens"])
    bf = [jnp.asarray(x, jnp.bfloat16) for x in (hs, ws, ht, wt)]
    out = jax.jit(lambda *a: chunked_logit_losses(*a, TEMP, 4))(*bf, targets, mask)
    ref_bf = numpy_logit_losses(
        *[np.asarray(x.astype(jnp.float32)) for x in bf], targets, mask, TEMP
    )
    for k in ("ce", "logit_kl"):
        assert out[k].dtype == jnp.float32
        np.testing.assert_allclose(out[k], ref_bf[k], rtol=1e-4, err_msg=k)


def test_chunking_keeps_full_logits_out_of_memory():
    b, t, d, v = 2, 512, 32, 8192
    h = jax.ShapeDtypeStruct((b, t, d), jnp.float32)
    w = jax.ShapeDtypeStruct((d, v), jnp.float32)
    i = jax.ShapeDtypeStruct((b, t), jnp.int32)
    m = jax.ShapeDtypeStruct((b, t), jnp.float32)

    def temp_bytes(chunk):
        def loss(hs, ws, ht, wt, tg, mk):
            out = chunked_logit_losses(hs, ws, ht, wt, tg, mk, TEMP, chunk)
            return out["ce"] + out["logit_kl"]

        fn = jax.jit(jax.grad(loss, (0, 1)))
        return fn.lower(h, w, h, w, i, m).compile().memory_analysis().temp_size_in_bytes

    full_logits = b * t * v * 4  # one model's [B, T, V] float32 logits: 32 MiB
    chunked, unchunked = temp_bytes(32), temp_bytes(None)  # measured: 8.3 MiB vs 128 MiB
    assert chunked < full_logits / 3 and chunked < unchunked / 10, (chunked, unchunked)


# ------------------------------------------------------------------------- hidden alignment


def test_hidden_alignment_cosine_and_mse_match_numpy():
    rng = np.random.default_rng(4)
    s = rng.normal(size=(B, T, DT)).astype(np.float32)
    t = rng.normal(size=(B, T, DT)).astype(np.float32)
    valid = np.ones((B, T), bool)
    valid[1, 7:] = False
    s[1, 7:] = np.nan  # padding garbage must not leak in
    cos = (s * t).sum(-1) / (np.linalg.norm(s, axis=-1) * np.linalg.norm(t, axis=-1))
    out = hidden_alignment(s, t, valid, "cosine")
    np.testing.assert_allclose(out["sum"], (1 - cos)[valid].sum(), rtol=1e-5)
    assert float(out["count"]) == valid.sum()
    out = hidden_alignment(s, t, valid, "mse")
    np.testing.assert_allclose(out["sum"], ((s - t) ** 2).mean(-1)[valid].sum(), rtol=1e-5)
    s0 = np.where(valid[..., None], s, 0.0).astype(np.float32)
    for kind in ("cosine", "mse"):
        loss = jax.jit(
            jax.value_and_grad(lambda x, kind=kind: hidden_alignment(x, s0, valid, kind)["sum"])
        )
        same, g = loss(jnp.asarray(s0))
        assert abs(float(same)) < 1e-5, kind
        assert np.isfinite(np.asarray(g)).all()  # zero vectors at padding do not give NaN


def test_hidden_projector_maps_student_width():
    rng = np.random.default_rng(5)
    s = rng.normal(size=(B, T, DS)).astype(np.float32)
    t = rng.normal(size=(B, T, DT)).astype(np.float32)
    proj = init_hidden_projector(jax.random.key(0), 3, DS, DT)
    assert proj["kernel"].shape == (3, DS, DT)
    k = np.asarray(proj["kernel"][1])
    np.testing.assert_allclose(k @ k.T, np.eye(DS), atol=1e-5)  # semi-orthogonal
    valid = np.ones((B, T), bool)
    out = hidden_alignment(s, t, valid, "mse", proj["kernel"][1])
    np.testing.assert_allclose(out["sum"], ((s @ k - t) ** 2).mean(-1).sum(), rtol=1e-5)
    with pytest.raises(ValueError, match="widths differ"):
        hidden_alignment(s, t, valid, "cosine")
    eye = init_hidden_projector(jax.random.key(0), 2, DT, DT)["kernel"]
    np.testing.assert_array_equal(eye[1], np.eye(DT))


# ------------------------------------------------------------------------- the objective


def _features(seed, hidden_width, heads, pairs=2):
    rng = np.random.default_rng(seed)

    def arr(*shape):
        return jnp.asarray(rng.normal(size=shape), jnp.float32)

    return {
        "final_hidden": arr(B, T, hidden_width),
        "head_kernel": arr(hidden_width, V),
        "hidden": [arr(B, T, hidden_width) for _ in range(pairs)],
        "q": [arr(B, T, heads, 4) for _ in range(pairs)],
        "k": [arr(B, T, heads // 2, 4) for _ in range(pairs)],
    }


def test_distill_loss_is_the_weighted_sum_and_skips_zero_weights():
    _, _, _, _, targets, mask = _data()
    seg = np.ones((B, T), np.int32)
    seg[0, 5:] = 2
    seg[1, 8:] = 0
    batch = {"targets": targets, "loss_mask": mask, "segment_ids": jnp.asarray(seg)}
    student, teacher = _features(6, DS, 2), _features(7, DT, 4)
    proj = init_hidden_projector(jax.random.key(1), 2, DS, DT)
    cfg = from_dict(
        DistillLossConfig,
        {
            "weights": {"ce": 0.5, "logit_kl": 2.0, "hidden": 3.0, "attention": 0.25},
            "temperature": TEMP,
            "logit_chunk_size": 4,
            "attention_block_size": 4,
        },
    )
    total, m = jax.jit(functools.partial(distill_loss, cfg))(batch, student, teacher, proj)
    ref = numpy_logit_losses(
        student["final_hidden"],
        student["head_kernel"],
        teacher["final_hidden"],
        teacher["head_kernel"],
        targets,
        mask,
        TEMP,
    )
    np.testing.assert_allclose(m["ce"], ref["ce"] / ref["num_tokens"], rtol=1e-5)
    np.testing.assert_allclose(m["logit_kl"], ref["logit_kl"] / ref["num_tokens"], rtol=1e-5)
    np.testing.assert_allclose(m["hidden"], (m["hidden/0"] + m["hidden/1"]) / 2, rtol=1e-6)
    np.testing.assert_allclose(
        total,
        0.5 * m["ce"] + 2.0 * m["logit_kl"] + 3.0 * m["hidden"] + 0.25 * m["attention_kl"],
        rtol=1e-6,
    )
    assert float(m["attention_kl"]) > 0 and float(m["hidden"]) > 0

    # weight 0: the term is not computed, so its features may be absent altogether
    ce_only = from_dict(
        DistillLossConfig, {"weights": {"logit_kl": 0.0, "hidden": 0.0, "attention": 0.0}}
    )
    total, m2 = jax.jit(functools.partial(distill_loss, ce_only))(
        batch, {k: student[k] for k in ("final_hidden", "head_kernel")}, {}
    )
    assert set(m2) == {"ce", "num_tokens", "loss"}
    np.testing.assert_allclose(total, ref["ce"] / ref["num_tokens"], rtol=1e-5)
    hidden_only = from_dict(
        DistillLossConfig, {"weights": {"ce": 0.0, "logit_kl": 0.0, "attention": 0.0}}
    )
    stacked = {"hidden": jnp.stack(student["hidden"])}  # a leading pair axis works too
    total, m3 = jax.jit(functools.partial(distill_loss, hidden_only))(
        batch, stacked, {"hidden": teacher["hidden"]}, proj
    )
    assert "ce" not in m3 and "attention_kl" not in m3
    np.testing.assert_allclose(total, m["hidden"], rtol=1e-6)
    with pytest.raises(KeyError, match="teacher features lack 'hidden'"):
        distill_loss(
            cfg, batch, student, {k: teacher[k] for k in ("final_hidden", "head_kernel")}, proj
        )


def test_identical_student_and_teacher_give_zero_distillation_terms():
    _, _, _, _, targets, mask = _data()
    seg = np.ones((B, T), np.int32)
    seg[1, 8:] = 0
    feats = _features(8, DT, 4, pairs=1)
    cfg = from_dict(DistillLossConfig, {"weights": {"ce": 0.0}, "attention_block_size": 4})
    _, m = jax.jit(functools.partial(distill_loss, cfg))(
        {"targets": targets, "loss_mask": mask, "segment_ids": seg}, feats, feats
    )
    for k in ("logit_kl", "kl_t1", "hidden", "attention_kl"):
        assert abs(float(m[k])) < 1e-5, k


@pytest.mark.parametrize(
    "data,key",
    [
        ({"weights": {"ce": -1.0}}, "distill.weights.ce"),
        ({"temperature": 0.0}, "distill.temperature"),
        ({"attention_block_size": 0}, "distill.attention_block_size"),
        ({"logit_chunk_size": 0}, "distill.logit_chunk_size"),
        ({"hidden_loss": "l1"}, "hidden_loss"),
        ({"attention_heads": "first"}, "attention_heads"),
        ({"layer_map": [4, 3]}, "distill.layer_map"),
        ({"layer_map": "fancy"}, "distill.layer_map"),
        ({"init_layers": "copy"}, "distill.init_layers"),
        (
            {"weights": {"ce": 0.0, "logit_kl": 0.0, "hidden": 0.0, "attention": 0.0}},
            "distill.weights",
        ),
        ({"weight": {}}, "weight"),
    ],
)
def test_config_errors_name_the_key(data, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        from_dict(DistillLossConfig, data)


def test_every_term_is_declared_and_counted_over_its_declared_tokens():
    """The objective's contract: each term is (sum, count) over exactly the tokens METRICS says it
    averages, every LossWeights field weighs one declared metric, and an undeclared name fails."""
    _, _, _, _, targets, mask = _data()
    seg = np.ones((B, T), np.int32)
    seg[1, 8:] = 0
    batch = {"targets": targets, "loss_mask": mask, "segment_ids": jnp.asarray(seg)}
    student, teacher = _features(6, DS, 2), _features(7, DT, 4)
    proj = init_hidden_projector(jax.random.key(1), 2, DS, DT)
    cfg = from_dict(DistillLossConfig, {"logit_chunk_size": 4, "attention_block_size": 4})
    terms = loss_terms(cfg, batch, student, teacher, proj)
    assert set(terms) == set(METRICS)
    counts = normalisers(batch)
    assert float(counts["loss_tokens"]) == float(np.sum(mask))
    assert float(counts["valid_tokens"]) == float(np.sum(seg != 0))
    for name, (total, count) in terms.items():
        np.testing.assert_array_equal(
            np.broadcast_to(count, np.shape(total)), counts[METRICS[name].normaliser], err_msg=name
        )
    weights = [m.weight for m in METRICS.values() if m.weight is not None]
    assert sorted(weights) == sorted(f.name for f in dataclasses.fields(LossWeights))
    with pytest.raises(KeyError, match="'hiddn' is not declared"):
        weighted_loss(cfg, {"hiddn": jnp.ones(())})


@pytest.mark.parametrize("chunk", [None, 3, 7, 64])
def test_chunked_token_logprobs_equal_numpy_log_softmax(chunk):
    """The scoring engine's per-token log-probs (losses.chunked_token_logprobs) against numpy's
    log-softmax of the full float64 logits, for chunks that divide T, do not, or exceed it."""
    from tinywave_jax.distill.losses import chunked_token_logprobs

    rng = np.random.default_rng(3)
    hidden = rng.normal(size=(B, T, DS)).astype(np.float32)
    kernel = rng.normal(size=(DS, V)).astype(np.float32)
    targets = rng.integers(0, V, size=(B, T))
    got = np.asarray(chunked_token_logprobs(hidden, kernel, targets, chunk))
    logits = hidden.astype(np.float64) @ kernel.astype(np.float64)
    lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    want = np.take_along_axis(logits, targets[..., None], -1)[..., 0] - lse
    assert got.shape == (B, T) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
