"""Vocal tract length normalisation (audio/vtln.py): the warp, its choice and `units fit --vtln`."""

import json

import numpy as np
import pytest
from scipy.signal import lfilter

from tinywave_jax.audio import SAMPLE_RATE, list_audio, load_extractor, read_audio, vtln
from tinywave_jax.audio.extractor import CONFIG_FILE
from tinywave_jax.audio.features import (
    SpectralConfig,
    mel_filterbank,
    phonetic_features,
    warp_frequencies,
)
from tinywave_jax.audio.kmeans import fit_kmeans
from tinywave_jax.cli import main
from tinywave_jax.errors import ConfigError, InputError

VOWELS = [(300, 2300, 3000), (700, 1200, 2600), (350, 800, 2400), (550, 1800, 2500)]


def _vowels(scale: float, seconds_each: float = 0.4, seed: int = 0) -> np.ndarray:
    """A 120 Hz pulse train through two-pole formant resonators, four vowels in turn, every
    formant `scale` times the reference's (a vocal tract 1 / scale as long)."""
    rng = np.random.default_rng(seed)
    n = int(seconds_each * SAMPLE_RATE)
    out = []
    for formants in VOWELS * 2:
        x = np.zeros(n)
        x[:: SAMPLE_RATE // 120] = 1.0
        x += 0.01 * rng.standard_normal(n)
        for f in formants:
            r = np.exp(-np.pi * 80.0 / SAMPLE_RATE)
            theta = 2 * np.pi * f * scale / SAMPLE_RATE
            x = lfilter([1.0 - r], [1.0, -2 * r * np.cos(theta), r * r], x)
        out.append(x / np.abs(x).max())
    return (0.3 * np.concatenate(out)).astype(np.float32)


def test_warp_is_linear_below_the_knee_and_keeps_every_filter_below_fmax():
    f = np.linspace(0, 7600, 400)
    for w in vtln.WARPS:
        g = warp_frequencies(f, w, 7600.0)
        assert np.all(np.diff(g) > 0) and g[-1] == pytest.approx(7600.0)
        knee = 0.85 * 7600 / max(w, 1.0)
        np.testing.assert_allclose(g[f <= knee], w * f[f <= knee])
        bank = mel_filterbank(40, 512, 20.0, 7600.0, warp=w)
        assert np.isfinite(bank).all() and (bank.max(axis=1) > 0.5).all()  # no filter lost
    np.testing.assert_array_equal(
        mel_filterbank(40, 512, 20.0, 7600.0, warp=1.0), mel_filterbank(40, 512, 20.0, 7600.0)
    )
    assert 1.0 in vtln.WARPS and min(vtln.WARPS) == 0.8 and max(vtln.WARPS) == 1.2


@pytest.mark.parametrize("scale", [0.88, 1.12])
def test_the_warp_chosen_undoes_a_formant_shift(scale):
    """A codebook of the reference voice's unwarped frames; the same vowels with every formant
    `scale` times higher choose (within one grid step) the warp `scale`, whose filters follow
    the formants, and the reference itself chooses 1.0."""
    cfg = SpectralConfig(frame_rate=50.0, window_seconds=0.025, vtln_seconds=0.0)
    reference = _vowels(1.0)
    codebook = fit_kmeans(phonetic_features(reference, cfg), 16, seed=0)
    assert vtln.WARPS[vtln.choose(vtln.candidates(_vowels(1.0, seed=1), cfg), codebook, cfg)] == 1.0
    got = vtln.WARPS[vtln.choose(vtln.candidates(_vowels(scale, seed=1), cfg), codebook, cfg)]
    assert abs(got - scale) <= 0.041, got


def test_candidates_are_the_features_at_each_warp_and_choose_is_the_nearest_codebook_fit():
    """`candidates` equals `phonetic_features` at each warp (one FFT shared, same numbers), and
    `choose` is the argmin over warps of the head frames' mean squared nearest-code distance,
    computed here by brute force."""
    cfg = SpectralConfig(frame_rate=50.0, window_seconds=0.025, cmn_running=True, vtln_seconds=1.0)
    wav = _vowels(1.05, seed=2)
    cands = vtln.candidates(wav, cfg)
    assert cands.shape[0] == len(vtln.WARPS)
    for i in (0, 5, 10):
        np.testing.assert_allclose(cands[i], phonetic_features(wav, cfg, vtln.WARPS[i]), atol=1e-5)
    codebook = np.random.default_rng(0).standard_normal((8, cands.shape[-1])).astype(np.float32)
    cost = [
        np.mean([min(((x - c) ** 2).sum() for c in codebook) for x in cands[i][:50]])
        for i in range(len(vtln.WARPS))
    ]
    assert vtln.choose(cands, codebook, cfg) == int(np.argmin(cost))


def test_two_files_sharing_their_first_seconds_share_warp_and_context_features():
    """A cloze pair's two files share their context: with the warp chosen on the first
    vtln_seconds (and the running mean's head no longer), the context frames are identical."""
    cfg = SpectralConfig(
        frame_rate=50.0, window_seconds=0.025, cmn_seconds=1.0, cmn_running=True, vtln_seconds=1.0
    )
    context = _vowels(1.1, seconds_each=0.2)  # 1.6 s
    a = np.concatenate([context, _vowels(0.85, seconds_each=0.3, seed=3)])
    b = np.concatenate([context, 0.01 * np.random.default_rng(5).standard_normal(20000)])
    codebook = np.random.default_rng(1).standard_normal((16, 26)).astype(np.float32)
    fa, fb = vtln.features(a, cfg, codebook), vtln.features(b, cfg, codebook)
    n = int(1.5 * 50)
    np.testing.assert_allclose(fa[:n], fb[:n], rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def two_vtl_corpus(tmp_path_factory):
    """Wavs of the same vowels from two vocal tract lengths."""
    root = tmp_path_factory.mktemp("vtln") / "audio"
    root.mkdir()
    import soundfile as sf

    for i, scale in enumerate([1.0, 1.0, 1.15, 1.15, 0.9, 0.9]):
        sf.write(root / f"u{i}.wav", _vowels(scale, seed=i), SAMPLE_RATE)
    return root


def test_units_fit_vtln_records_the_codebook_and_the_extractor_applies_it(
    two_vtl_corpus, tmp_path, capsys
):
    """`units fit --vtln` stores the codebook and the setting; the loaded extractor's units are
    the nearest centroids of the features at the warp the codebook chooses, computed here from
    `phonetic_features` with an explicit warp."""
    out = tmp_path / "units"
    argv = ["units", "fit", str(two_vtl_corpus), str(out), "--units", "8", "--frame-rate", "50"]
    argv += ["--window-seconds", "0.025", "--vtln", "--vtln-seconds", "0", "--cmn-running"]
    assert main([*argv, "--cmn-seconds", "1", "--pitch-bins", "0", "--style-classes", "0"]) == 0
    assert "VTLN warps chosen" in capsys.readouterr().out
    ph = json.loads((out / CONFIG_FILE).read_text())["phonetic"]
    assert ph["spectral"]["vtln"] is True and ph["spectral"]["vtln_seconds"] == 0.0
    codebook = np.load(out / ph["warp_codebook"])
    assert codebook.shape == (vtln.CODEBOOK_SIZE, 26)
    spec = SpectralConfig(**ph["spectral"])
    centroids = np.load(out / "phonetic_centroids.npy")
    extractor = load_extractor(out)
    for path in list_audio(two_vtl_corpus):
        wav = read_audio(path)
        per_warp = [phonetic_features(wav, spec, w) for w in vtln.WARPS]
        cost = [((f[:, None] - codebook[None]) ** 2).sum(-1).min(-1).mean() for f in per_warp]
        best = per_warp[int(np.argmin(cost))]
        expect = ((best[:, None] - centroids[None]) ** 2).sum(-1).argmin(-1)
        got = extractor.extract(wav)["hubert"][0]
        assert np.mean(got == expect) > 0.99  # float32 vs float64 ties at most


def test_vtln_bad_settings_and_a_missing_codebook_are_named(two_vtl_corpus, tmp_path):
    with pytest.raises(ConfigError, match="vtln_seconds"):
        SpectralConfig(vtln=True, vtln_seconds=-1.0).validate()
    base = ["units", "fit", str(two_vtl_corpus), str(tmp_path / "u"), "--units", "4"]
    base += ["--pitch-bins", "0", "--style-classes", "0", "--vtln"]
    assert main(base) == 0
    cfg_path = tmp_path / "u" / CONFIG_FILE
    cfg = json.loads(cfg_path.read_text())
    np.save(tmp_path / "u" / cfg["phonetic"]["warp_codebook"], np.zeros((4, 7), np.float32))
    with pytest.raises(InputError, match=r"phonetic_warp_codebook\.npy: expected .* \[k, 26\]"):
        load_extractor(tmp_path / "u")
    cfg["phonetic"]["warp_codebook"] = None
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(InputError, match="vtln is set but phonetic.warp_codebook names no file"):
        load_extractor(tmp_path / "u")
