"""The LDA projection of spectral frames (audio/lda.py) and `units fit --lda-dims`."""

import json

import numpy as np
import pytest
import scipy.linalg
from speech_fixtures import SENTENCES, VOICES, speech_corpus
from test_audio_units import main

from tinywave_jax.audio import list_audio, load_extractor, read_audio
from tinywave_jax.audio.extractor import CONFIG_FILE
from tinywave_jax.audio.features import SpectralConfig, phonetic_features, stack_context
from tinywave_jax.audio.lda import SILENCE, fit_lda, frame_labels, project
from tinywave_jax.errors import ConfigError, InputError


def _classes(rng, n_classes=12, per_class=200, dim=6):
    """Frames whose class sits on dims 0-1; a per-frame 'speaker' offset, as large, on dim 2."""
    labels = np.repeat(np.arange(n_classes), per_class)
    x = rng.normal(size=(len(labels), dim))
    x[:, :2] += 4 * rng.normal(size=(n_classes, 2))[labels]
    x[:, 2] += 6 * rng.choice([-1.0, 1.0], size=len(labels))
    return x, labels.astype(str)


def test_lda_spans_the_generalised_eigenvectors_and_whitens_within_class_scatter():
    """The subspace is that of scipy's generalised symmetric eigenproblem S_b v = l S_w v (another
    algorithm), and the projected within-class covariance is the identity."""
    x, y = _classes(np.random.default_rng(0))
    p = fit_lda(x, y, 2)
    assert p.shape == (7, 2)
    classes, idx = np.unique(y, return_inverse=True)
    means = np.stack([x[idx == c].mean(0) for c in range(len(classes))])
    within = x - means[idx]
    s_w = within.T @ within / len(x)
    s_b = sum(
        (idx == c).sum() * np.outer(m - x.mean(0), m - x.mean(0)) for c, m in enumerate(means)
    )
    _, vecs = scipy.linalg.eigh(s_b / len(x), s_w)
    ref = vecs[:, -2:]
    angles = scipy.linalg.subspace_angles(p[:-1].astype(np.float64), ref)
    assert np.max(angles) < 1e-3, angles
    z = project(x, p)
    zw = z - np.stack([z[idx == c].mean(0) for c in range(len(classes))])[idx]
    np.testing.assert_allclose(zw.T @ zw / len(z), np.eye(2), atol=2e-3)
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-4)  # the bias row centres the frames
    assert np.abs(p[2, :]).max() < 0.05 * np.abs(p[:2, :]).max()  # the speaker axis is dropped


def test_lda_dims_beyond_classes_or_features_names_the_setting():
    x, y = _classes(np.random.default_rng(1), n_classes=3)
    with pytest.raises(InputError, match="lda_dims.*classes - 1 = 2.*got 3"):
        fit_lda(x, y, 3)


def test_frame_labels_mark_word_parts_and_silence():
    labels = frame_labels(10, 50.0, [("hi", 0.04, 0.12), ("yo", 0.12, 0.16)], bins=2)
    # frames start at 0, .02, .04, ...: "hi" spans frames 2-5 (halves 2-3, 4-5), "yo" 6-7
    expect = [SILENCE] * 2 + ["hi|0"] * 2 + ["hi|1"] * 2 + ["yo|0", "yo|1"] + [SILENCE] * 2
    assert labels.tolist() == expect


def test_stack_context_is_neighbouring_frames_with_edges_repeated():
    x = np.arange(12.0).reshape(6, 2)
    s = stack_context(x, 2)
    for t in range(6):
        naive = np.concatenate([x[min(max(t + k, 0), 5)] for k in range(-2, 3)])
        np.testing.assert_array_equal(s[t], naive)
    assert SpectralConfig(context_frames=2).dim == 26 * 5
    with pytest.raises(ConfigError, match="context_frames"):
        SpectralConfig(context_frames=-1).validate()


@pytest.fixture(scope="module")
def timed(tmp_path_factory):
    """A speech manifest whose `words` split each sentence into four timed parts, the same
    labels in every voice (what an aligner would give, coarsely)."""
    root = tmp_path_factory.mktemp("lda")
    paths = speech_corpus(root / "audio", sentences=SENTENCES[:3], voices=VOICES)
    with open(root / "manifest.jsonl", "w") as f:
        for path in paths:
            seconds = len(read_audio(path)) / 16000
            parts = [(f"{path.stem}w{i}", i * seconds / 4, (i + 1) * seconds / 4) for i in range(4)]
            f.write(json.dumps({"path": str(path.relative_to(root)), "words": parts}) + "\n")
    return root


def test_fit_lda_units_are_the_projected_features_nearest_centroid(timed, tmp_path, capsys):
    out = tmp_path / "units"
    argv = ["units", "fit", str(timed / "manifest.jsonl"), str(out), "--units", "8"]
    extra = ["--lda-dims", "5", "--lda-bins", "2", "--context-frames", "1"]
    assert main([*argv, *extra, "--pitch-bins", "0", "--style-classes", "0"]) == 0
    assert "LDA to 5 dims" in capsys.readouterr().out
    cfg = json.loads((out / CONFIG_FILE).read_text())["phonetic"]
    assert cfg["projection"] == "phonetic_projection.npy" and cfg["spectral"]["context_frames"] == 1
    p = np.load(out / cfg["projection"])
    assert p.shape == (26 * 3 + 1, 5) and np.load(out / cfg["centroids"]).shape == (8, 5)
    wav = read_audio(list_audio(timed / "audio")[0])
    plain = phonetic_features(wav, SpectralConfig(cmn=True))  # the fit's defaults, no context
    stacked = np.concatenate(
        [plain[np.clip(np.arange(len(plain)) + k, 0, len(plain) - 1)] for k in (-1, 0, 1)], axis=1
    )
    z = stacked @ p[:-1] + p[-1]
    centroids = np.load(out / "phonetic_centroids.npy")
    expect = ((z[:, None, :] - centroids[None]) ** 2).sum(-1).argmin(-1)
    got = load_extractor(out).extract(wav)["hubert"][0]
    assert np.mean(got == expect) > 0.99  # float32 vs float64 ties at most


def test_lda_needs_word_times_and_a_projection_that_fits(timed, tmp_path, capsys):
    bad = tmp_path / "no_words.jsonl"
    bad.write_text(json.dumps({"path": str(list_audio(timed / "audio")[0])}) + "\n")
    argv = ["--units", "4", "--lda-dims", "3", "--pitch-bins", "0", "--style-classes", "0"]
    assert main(["units", "fit", str(bad), str(tmp_path / "u"), *argv]) != 0
    assert f"{bad}:1: needs `path` and `words`" in capsys.readouterr().err
    assert not (tmp_path / "u").exists()
    out = tmp_path / "ok"
    assert main(["units", "fit", str(timed / "manifest.jsonl"), str(out), *argv]) == 0
    np.save(out / "phonetic_projection.npy", np.zeros((10, 3), np.float32))
    with pytest.raises(InputError, match=r"phonetic_projection\.npy: expected .* \[27, out\]"):
        load_extractor(out)
