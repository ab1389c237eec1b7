"""Spectral features, the F0 tracker and k-means, each against an independent numpy reference."""

import numpy as np
import pytest
from speech_fixtures import synthesize

from tinywave_jax.audio import SAMPLE_RATE, estimate_f0, read_audio
from tinywave_jax.audio.features import SpectralConfig, log_mel, mfcc, phonetic_features
from tinywave_jax.audio.kmeans import fit_kmeans, nearest_centroid

SR = SAMPLE_RATE


def _reference_frame(wav, i, hop, window, n_mels, fmin, fmax):
    """Log-mel and MFCC of frame i written out term by term (loops, explicit formulas)."""
    centre = i * hop + hop // 2
    start = centre - window // 2
    seg = np.array([wav[j] if 0 <= j < len(wav) else 0.0 for j in range(start, start + window)])
    seg = seg * np.array([0.5 - 0.5 * np.cos(2 * np.pi * n / window) for n in range(window)])
    n_fft = 1
    while n_fft < window:
        n_fft *= 2
    power = np.array(
        [
            abs(sum(seg[n] * np.exp(-2j * np.pi * k * n / n_fft) for n in range(window))) ** 2
            for k in range(n_fft // 2 + 1)
        ]
    )
    mel = lambda f: 2595 * np.log10(1 + f / 700)  # noqa: E731
    inv = lambda m: 700 * (10 ** (m / 2595) - 1)  # noqa: E731
    pts = [inv(mel(fmin) + (mel(fmax) - mel(fmin)) * j / (n_mels + 1)) for j in range(n_mels + 2)]
    energies = []
    for m in range(n_mels):
        lo, c, hi = pts[m], pts[m + 1], pts[m + 2]
        total = 0.0
        for k in range(n_fft // 2 + 1):
            f = k * SR / n_fft
            w = (f - lo) / (c - lo) if lo <= f <= c else (hi - f) / (hi - c) if c < f <= hi else 0.0
            total += w * power[k]
        energies.append(np.log(max(total, 1e-10)))
    energies = np.array(energies)
    dct = np.array(
        [
            np.sqrt((1 if q == 0 else 2) / n_mels)
            * sum(
                energies[m] * np.cos(np.pi * q * (2 * m + 1) / (2 * n_mels)) for m in range(n_mels)
            )
            for q in range(n_mels)
        ]
    )
    return energies, dct


def test_logmel_and_mfcc_match_direct_computation_for_one_frame():
    rng = np.random.default_rng(0)
    t = np.arange(int(0.3 * SR)) / SR
    wav = (np.sin(2 * np.pi * 220 * t) + 0.3 * rng.standard_normal(t.size)).astype(np.float32)
    cfg = SpectralConfig(
        frame_rate=50.0,
        window_seconds=0.025,
        n_mels=20,
        n_mfcc=10,
        fmin=30.0,
        fmax=7000.0,
        deltas=False,
        cmn=False,
    )
    lm, mf = log_mel(wav, cfg), mfcc(wav, cfg)
    assert lm.shape == (len(wav) // 320, 20) and mf.shape == (len(wav) // 320, 10)
    for i in (0, 7):  # an edge frame (zero padded) and an inner one
        ref_lm, ref_dct = _reference_frame(wav.astype(np.float64), i, 320, 400, 20, 30.0, 7000.0)
        np.testing.assert_allclose(lm[i], ref_lm, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(mf[i], ref_dct[:10], rtol=1e-6, atol=1e-5)


def test_phonetic_features_frame_count_and_dims():
    wav = np.random.default_rng(1).standard_normal(SR + 700).astype(np.float32)
    for kind, dim in (("mfcc", 26), ("logmel", 80)):
        cfg = SpectralConfig(features=kind)
        feats = phonetic_features(wav, cfg)
        assert feats.shape == ((SR + 700) // 640, dim) == (len(wav) * 25 // SR, cfg.dim)
        assert feats.dtype == np.float32 and np.all(np.isfinite(feats))
        np.testing.assert_allclose(feats[:, : dim // 2].mean(axis=0), 0.0, atol=1e-4)  # CMN


@pytest.mark.parametrize("f0", [85.0, 131.0, 220.0, 347.0])
def test_f0_tracker_recovers_sine_and_harmonic_tones(f0):
    t = np.arange(SR) / SR
    tones = {
        "sine": np.sin(2 * np.pi * f0 * t),
        "harmonic": sum(np.sin(2 * np.pi * k * f0 * t + k) / k for k in range(1, 9)),
    }
    for name, wav in tones.items():
        est, voiced, times = estimate_f0(0.5 * wav.astype(np.float32))
        assert len(est) == len(times) == SR // 160
        np.testing.assert_allclose(times[:2], [0.005, 0.015])
        assert voiced[5:-5].all(), name  # away from the zero-padded edges
        assert np.max(np.abs(est[voiced] / f0 - 1)) < 0.02, (name, est[voiced])


def test_f0_tracker_marks_noise_and_silence_unvoiced():
    rng = np.random.default_rng(0)
    t = np.arange(SR) / SR
    wav = np.concatenate([np.sin(2 * np.pi * 150 * t), np.zeros(SR), rng.standard_normal(SR)])
    _, voiced, _ = estimate_f0(0.5 * wav)
    assert voiced[10:90].mean() > 0.95
    assert not voiced[110:190].any()
    assert voiced[210:290].mean() < 0.1


def test_f0_of_male_voice_is_below_female_voice(tmp_path):
    text = "Many hands make light work, and the weather is lovely today."
    male = read_audio(synthesize(tmp_path / "m.wav", text, voice="en+m3", pitch=40))
    female = read_audio(synthesize(tmp_path / "f.wav", text, voice="en+f3", pitch=60))
    medians = {}
    for name, wav in (("male", male), ("female", female)):
        f0, voiced, _ = estimate_f0(wav)
        assert voiced.mean() > 0.2, name
        medians[name] = np.median(f0[voiced])
    assert 60 < medians["male"] < 150 and 150 < medians["female"] < 350, medians
    assert medians["female"] > 1.5 * medians["male"], medians


def test_nearest_centroid_matches_brute_force():
    rng = np.random.default_rng(2)
    x, c = rng.standard_normal((1000, 12)), rng.standard_normal((37, 12))
    brute = np.argmin(((x[:, None, :] - c[None, :, :]) ** 2).sum(-1), axis=1)
    np.testing.assert_array_equal(nearest_centroid(x, c, chunk=128), brute)


@pytest.mark.parametrize("batch_size", [None, 256])
def test_kmeans_recovers_separated_clusters_and_is_seeded(batch_size):
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((6, 4)) * 20
    labels = rng.integers(6, size=3000)
    x = centres[labels] + rng.standard_normal((3000, 4))
    fitted = fit_kmeans(x, 6, seed=5, iters=20, batch_size=batch_size)
    assert fitted.shape == (6, 4) and fitted.dtype == np.float32
    # every true centre has a fitted centre within noise distance, and the fitted clustering
    # partitions the points exactly like the true labels
    dist = np.linalg.norm(centres[:, None] - fitted[None], axis=-1)
    assert dist.min(axis=1).max() < 0.5
    ids = nearest_centroid(x, fitted)
    assert len(set(zip(labels, ids))) == 6
    np.testing.assert_array_equal(fitted, fit_kmeans(x, 6, seed=5, iters=20, batch_size=batch_size))
    assert not np.array_equal(fitted, fit_kmeans(x, 6, seed=6, iters=20, batch_size=batch_size))


def test_blocked_analysis_equals_one_block(monkeypatch):
    """Long files are analysed in blocks of frames; the block size must not change any value."""
    from tinywave_jax.audio import features, pitch

    wav = np.random.default_rng(4).standard_normal(SR).astype(np.float32)
    cfg = SpectralConfig(frame_rate=100.0, window_seconds=0.025)
    whole, f0_whole = log_mel(wav, cfg), estimate_f0(wav)
    monkeypatch.setattr(features, "FRAMES_PER_BLOCK", 7)
    monkeypatch.setattr(pitch, "FRAMES_PER_BLOCK", 7)
    np.testing.assert_allclose(log_mel(wav, cfg), whole, rtol=1e-12, atol=1e-12)
    for a, b in zip(estimate_f0(wav), f0_whole):
        np.testing.assert_array_equal(a, b)


def test_head_mean_removal_ignores_later_audio_and_silence():
    """cmn_seconds: the mean is that of the first seconds' sounding frames, so two recordings
    that agree for those seconds get the same features there, whatever follows."""
    rs = np.random.default_rng(3)
    head = np.concatenate([np.zeros(8000), 0.3 * rs.standard_normal(SAMPLE_RATE * 3)])
    a = np.concatenate([head, 0.3 * rs.standard_normal(SAMPLE_RATE)])
    b = np.concatenate([head, 0.05 * rs.standard_normal(SAMPLE_RATE * 2)])
    cfg = SpectralConfig(cmn_seconds=2.0, deltas=False)
    fa, fb = phonetic_features(a, cfg), phonetic_features(b, cfg)
    n = int(3.5 * 25)
    np.testing.assert_allclose(fa[:n], fb[:n], rtol=1e-5, atol=1e-5)
    raw = mfcc(a, SpectralConfig(cmn=False))[:50]
    sounding = raw[raw[:, 0] >= raw[:, 0].max() - 7.0]
    assert len(sounding) < 50  # the leading silence is left out of the mean
    np.testing.assert_allclose(fa[:50], raw - sounding.mean(0), rtol=1e-4, atol=1e-4)
    with pytest.raises(Exception, match="cmn_seconds"):
        SpectralConfig(cmn_seconds=-1).validate()


def test_running_mean_removal_is_causal_after_its_head():
    """cmn_running: frame t subtracts the mean of every frame up to max(t, head), computed here
    naively frame by frame; two recordings that agree up to a point agree in features there."""
    rs = np.random.default_rng(4)
    shared = np.concatenate([np.zeros(4000), 0.3 * rs.standard_normal(SAMPLE_RATE * 2)])
    a = np.concatenate([shared, 0.3 * rs.standard_normal(SAMPLE_RATE)])
    b = np.concatenate([shared, 0.02 * rs.standard_normal(SAMPLE_RATE * 2)])
    cfg = SpectralConfig(cmn_seconds=1.0, cmn_running=True, deltas=False)
    fa, fb = phonetic_features(a, cfg), phonetic_features(b, cfg)
    raw = mfcc(a, SpectralConfig(cmn=False)).astype(np.float64)
    head = 25  # 1 s at 25 Hz
    naive = np.stack([raw[t] - raw[: max(t + 1, head)].mean(0) for t in range(len(raw))])
    np.testing.assert_allclose(fa, naive, rtol=1e-4, atol=1e-4)
    n = int(2.2 * 25)  # frames whose window lies inside the shared audio
    np.testing.assert_allclose(fa[:n], fb[:n], rtol=1e-5, atol=1e-5)
    assert not np.allclose(fa[-5:].mean(0), raw[-5:].mean(0) - raw[:head].mean(0), atol=1e-3)
    with pytest.raises(Exception, match="cmn_running"):
        SpectralConfig(cmn=False, cmn_running=True).validate()
