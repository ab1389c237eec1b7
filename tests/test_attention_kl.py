"""Blockwise attention KL vs dense references: numpy float64 for values, dense jnp for gradients."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tinywave_jax.distill.attention_kl import attention_kl, head_groups

B, T, HD = 2, 13, 8
# row 0: two packed documents then padding (the 5/6 boundary falls inside a block of 4);
# row 1: left padding then one document.
SEG = np.array([[1] * 5 + [2] * 6 + [0] * 2, [0] * 3 + [7] * 10], np.int32)


def _visible(seg):
    pos = np.arange(seg.shape[1])
    return (
        (seg[:, :, None] == seg[:, None, :])
        & (seg[:, :, None] != 0)
        & (pos[None, None, :] <= pos[None, :, None])
    )  # [B, Tq, Tk]


def numpy_attention_kl(sq, sk, tq, tk, seg, groups):
    """Dense float64 reference: mean over valid rows and head groups of KL(pbar_t || pbar_s)."""
    mask = _visible(seg)[:, None]

    def probs(q, k):
        q, k = np.asarray(q, np.float64), np.asarray(k, np.float64)
        h, kv = q.shape[2], k.shape[2]
        k = np.repeat(k, h // kv, axis=2)  # query head h <- kv head h // (h/kv)
        s = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
        s = np.where(mask, s, -np.inf)
        s = s - s.max(-1, keepdims=True)
        p = np.where(mask, np.exp(s), 0.0)
        p = p / p.sum(-1, keepdims=True)
        return p.reshape(p.shape[0], groups, h // groups, *p.shape[2:]).mean(2)

    with np.errstate(invalid="ignore", divide="ignore"):
        ps, pt = probs(sq, sk), probs(tq, tk)
        kl = np.where(mask & (pt > 0), pt * (np.log(pt) - np.log(ps)), 0.0).sum(-1).mean(1)
    valid = seg != 0
    return kl[valid].sum() / valid.sum()


def dense_jnp_attention_kl(sq, sk, tq, tk, seg, groups):
    """Dense [B, H, T, T] jnp version, differentiated by jax for the gradient reference."""
    mask = jnp.asarray(_visible(seg))[:, None]

    def probs(q, k):
        h, kv = q.shape[2], k.shape[2]
        s = jnp.einsum("bqhd,bkhd->bhqk", q, jnp.repeat(k, h // kv, axis=2)) * q.shape[-1] ** -0.5
        p = jax.nn.softmax(jnp.where(mask, s, -1e30), axis=-1) * mask
        return p.reshape(p.shape[0], groups, h // groups, *p.shape[2:]).mean(2)

    ps, pt = probs(sq, sk), probs(tq, tk)
    safe = mask & (pt > 0)
    kl = (
        jnp.where(
            safe, pt * (jnp.log(jnp.where(safe, pt, 1.0)) - jnp.log(jnp.where(safe, ps, 1.0))), 0.0
        )
        .sum(-1)
        .mean(1)
    )
    valid = jnp.asarray(seg != 0)
    return jnp.sum(kl * valid) / jnp.sum(valid)


def _inputs(rng, hs, kvs, ht, kvt, t=T):
    def arr(*shape):
        return jnp.asarray(rng.normal(size=shape), jnp.float32)

    return arr(B, t, hs, HD), arr(B, t, kvs, HD), arr(B, t, ht, HD), arr(B, t, kvt, HD)


@functools.partial(jax.jit, static_argnums=(5, 6))
def _blockwise(sq, sk, tq, tk, seg, block, heads="grouped"):
    return attention_kl(sq, sk, tq, tk, seg, block_size=block, heads=heads)


def _blockwise_mean(sq, sk, tq, tk, seg, block, heads="grouped"):
    out = attention_kl(sq, sk, tq, tk, seg, block_size=block, heads=heads)
    return out["sum"] / out["count"]


_blockwise_grad = jax.jit(jax.value_and_grad(_blockwise_mean, (0, 1)), static_argnums=(5, 6))
_dense_grad = jax.jit(jax.grad(dense_jnp_attention_kl, (0, 1)), static_argnums=(5,))


@pytest.mark.parametrize(
    "hs,kvs,ht,kvt,heads,block",
    [
        (4, 4, 4, 4, "grouped", 4),  # MHA, ragged last block (13 = 3 * 4 + 1)
        (4, 2, 4, 1, "grouped", 5),  # one-to-one heads (the one-pass forward), both GQA
        (4, 2, 8, 4, "grouped", 5),  # both GQA; teacher has 2x the heads: its pairs are averaged
        (8, 4, 2, 1, "grouped", 16),  # student has 4x the heads (its groups averaged); block > T
        (3, 3, 2, 2, "mean", 6),  # counts that do not divide: all heads averaged
    ],
)
def test_blockwise_matches_dense_value_and_grad(hs, kvs, ht, kvt, heads, block):
    rng = np.random.default_rng(hs * 100 + ht * 10 + block)
    sq, sk, tq, tk = _inputs(rng, hs, kvs, ht, kvt)
    groups = head_groups(hs, ht, heads)
    seg = jnp.asarray(SEG)
    value, (gq, gk) = _blockwise_grad(sq, sk, tq, tk, seg, block, heads)
    ref = numpy_attention_kl(sq, sk, tq, tk, SEG, groups)
    assert ref > 0.05  # random maps differ: the comparison is not trivially 0 == 0
    np.testing.assert_allclose(value, ref, rtol=1e-5, atol=1e-6)
    ref_gq, ref_gk = _dense_grad(sq, sk, tq, tk, SEG, groups)
    np.testing.assert_allclose(gq, ref_gq, atol=1e-5 * float(jnp.abs(ref_gq).max()) + 1e-8)
    np.testing.assert_allclose(gk, ref_gk, atol=1e-5 * float(jnp.abs(ref_gk).max()) + 1e-8)
    assert float(jnp.abs(ref_gq).max()) > 1e-4
    # padding positions get no gradient
    assert float(jnp.abs(gq[0, -2:]).max()) == 0.0 and float(jnp.abs(gk[1, :3]).max()) == 0.0


def test_one_pass_forward_follows_a_moving_maximum():
    """One-to-one heads take the one-pass forward, whose E_p_t[t - s] is rescaled whenever a
    row's running maximum moves: scores that grow along the keys move it at every block, and
    large ones (scale 4: scores up to ~100) make a missed rescale visible."""
    rng = np.random.default_rng(6)
    sq, sk, tq, tk = _inputs(rng, 2, 2, 2, 2)
    ramp = jnp.linspace(0.5, 4.0, T)[None, :, None, None]
    sk, tk = sk * ramp, tk * ramp  # both models' keys grow along T
    sq, tq = 4 * sq, 4 * tq
    seg = jnp.asarray(SEG)
    for block in (2, 3):
        value, (gq, gk) = _blockwise_grad(sq, sk, tq, tk, seg, block, "grouped")
        ref = numpy_attention_kl(sq, sk, tq, tk, SEG, 2)
        assert ref > 0.5
        np.testing.assert_allclose(value, ref, rtol=2e-5)
        ref_gq, ref_gk = _dense_grad(sq, sk, tq, tk, SEG, 2)
        np.testing.assert_allclose(gq, ref_gq, atol=1e-5 * float(jnp.abs(ref_gq).max()))
        np.testing.assert_allclose(gk, ref_gk, atol=1e-5 * float(jnp.abs(ref_gk).max()))


def test_block_size_that_divides_t():
    rng = np.random.default_rng(1)
    sq, sk, tq, tk = _inputs(rng, 4, 2, 8, 8, t=24)
    seg_np = np.array([[1] * 9 + [2] * 15, [5] * 20 + [0] * 4], np.int32)
    value, (gq, gk) = _blockwise_grad(sq, sk, tq, tk, jnp.asarray(seg_np), 8, "grouped")
    np.testing.assert_allclose(value, numpy_attention_kl(sq, sk, tq, tk, seg_np, 4), rtol=1e-5)
    ref_gq, ref_gk = _dense_grad(sq, sk, tq, tk, seg_np, 4)
    np.testing.assert_allclose(gq, ref_gq, atol=1e-5 * float(jnp.abs(ref_gq).max()))
    np.testing.assert_allclose(gk, ref_gk, atol=1e-5 * float(jnp.abs(ref_gk).max()))


def test_padding_and_other_documents_do_not_matter():
    """Changing q/k at padding positions, and at other packed documents, leaves a row's KL alone."""
    rng = np.random.default_rng(2)
    sq, sk, tq, tk = _inputs(rng, 4, 4, 4, 4)
    seg = jnp.asarray(SEG)
    base = _blockwise(sq, sk, tq, tk, seg, 4)
    junk = 1e3 * jnp.asarray(rng.normal(size=sq.shape), jnp.float32)
    pad = jnp.asarray(SEG == 0)[:, :, None, None]
    moved = _blockwise(
        jnp.where(pad, junk, sq),
        jnp.where(pad, junk, sk),
        jnp.where(pad, junk, tq),
        jnp.where(pad, junk, tk),
        seg,
        4,
    )
    np.testing.assert_allclose(moved["sum"], base["sum"], rtol=1e-6)
    assert float(base["count"]) == float((SEG != 0).sum())
    # document 2 of row 0 replaced: document 1's rows are unchanged
    doc2 = jnp.asarray(SEG == 2)[:, :, None, None]

    def doc1_sum(q, k):
        return _blockwise(q, k, tq, tk, jnp.where(jnp.asarray(SEG) == 1, 1, 0), 4)["sum"]

    np.testing.assert_allclose(
        doc1_sum(jnp.where(doc2, junk, sq), jnp.where(doc2, junk, sk)), doc1_sum(sq, sk), rtol=1e-6
    )


def test_identical_inputs_give_zero_kl_and_zero_grad():
    rng = np.random.default_rng(3)
    sq, sk, _, _ = _inputs(rng, 4, 2, 4, 2)
    seg = jnp.asarray(SEG)
    value, (gq, gk) = _blockwise_grad(sq, sk, sq, sk, seg, 4, "grouped")
    assert abs(float(value)) < 1e-6
    assert float(jnp.abs(gq).max()) < 1e-6 and float(jnp.abs(gk).max()) < 1e-6


def test_teacher_gets_no_gradient_and_bf16_inputs_are_accumulated_in_f32():
    rng = np.random.default_rng(4)
    sq, sk, tq, tk = _inputs(rng, 4, 4, 4, 4)
    seg = jnp.asarray(SEG)
    bf = [x.astype(jnp.bfloat16) for x in (sq, sk, tq, tk)]
    value, grads = jax.jit(jax.value_and_grad(_blockwise_mean, (0, 1, 2, 3)), static_argnums=(5,))(
        *bf, seg, 4
    )
    assert value.dtype == jnp.float32
    ref = numpy_attention_kl(*[np.asarray(x.astype(jnp.float32)) for x in bf], SEG, 4)
    np.testing.assert_allclose(value, ref, rtol=1e-5)
    assert grads[0].dtype == jnp.bfloat16 and float(jnp.abs(grads[0]).max()) > 0
    assert all(float(jnp.abs(g).max()) == 0.0 for g in grads[2:])  # teacher is a constant


def test_head_counts_that_do_not_divide_fail_clearly():
    with pytest.raises(ValueError, match="student has 3 heads, teacher 2"):
        head_groups(3, 2)
    rng = np.random.default_rng(5)
    sq, sk, tq, tk = _inputs(rng, 4, 3, 4, 4)
    with pytest.raises(ValueError, match="student q .* multiple of the kv heads"):
        attention_kl(sq, sk, tq, tk, jnp.asarray(SEG))
    with pytest.raises(ValueError, match="teacher_k has shape"):
        attention_kl(sq, sq, tq, tk[:, :5], jnp.asarray(SEG))


def _compiled_temp_bytes(t, block, b=1, h=8, hd=64):
    spec = jax.ShapeDtypeStruct((b, t, h, hd), jnp.float32)
    seg = jax.ShapeDtypeStruct((b, t), jnp.int32)
    fn = jax.jit(
        jax.value_and_grad(
            lambda sq, sk, tq, tk, s: _blockwise_mean(sq, sk, tq, tk, s, block), (0, 1)
        )
    )
    return fn.lower(spec, spec, spec, spec, seg).compile().memory_analysis().temp_size_in_bytes


def test_memory_is_far_below_one_dense_map_and_does_not_grow_quadratically():
    dense_map = 1 * 8 * 1024 * 1024 * 4  # one [B, H, T, T] float32 map at T=1024: 32 MiB
    temp_1k = _compiled_temp_bytes(1024, 64)
    temp_2k = _compiled_temp_bytes(2048, 64)
    assert temp_1k < dense_map / 10, (temp_1k, dense_map)
    assert temp_2k < 1.5 * temp_1k, (temp_1k, temp_2k)  # a T^2 term would quadruple it
