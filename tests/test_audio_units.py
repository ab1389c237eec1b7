"""`units fit` on real espeak-ng speech, the fitted extractor, and bad-input errors."""

import json

import numpy as np
import pytest
import soundfile as sf
from speech_fixtures import SENTENCES, VOICES, speech_corpus, synthesize

from tinywave_jax import cli
from tinywave_jax.audio import SAMPLE_RATE, UnitExtractor, list_audio, load_extractor, read_audio
from tinywave_jax.audio.extractor import CONFIG_FILE
from tinywave_jax.audio.features import SpectralConfig, phonetic_features
from tinywave_jax.audio.pitch import UNVOICED_BIN
from tinywave_jax.errors import ConfigError, InputError

FIT_ARGS = ["--units", "24", "--pitch-bins", "16", "--style-classes", "6", "--seed", "3"]


def main(argv):
    """`tinywave` with only the units sub-command registered (other areas' modules not needed)."""
    assert "tinywave_jax.audio.commands" in cli.COMMAND_MODULES
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cli, "COMMAND_MODULES", ["tinywave_jax.audio.commands"])
        return cli.main(argv)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("speech")
    speech_corpus(root / "audio", sentences=SENTENCES[:3], voices=VOICES)
    assert main(["units", "fit", str(root / "audio"), str(root / "units"), *FIT_ARGS]) == 0
    return root


def test_fit_writes_a_loadable_units_folder(corpus, capsys):
    cfg = json.loads((corpus / "units" / CONFIG_FILE).read_text())
    assert cfg["phonetic"]["kind"] == "spectral" and cfg["pitch"]["bins"] == 16
    ext = load_extractor(corpus / "units")
    assert isinstance(ext, UnitExtractor)
    assert ext.vocab_sizes == {"hubert": 24, "pitch": 16, "style": 6}
    assert ext.frame_rates == {"hubert": 25.0, "pitch": 12.5, "style": 1.0}
    assert np.load(corpus / "units" / "phonetic_centroids.npy").shape == (24, 26)
    edges = np.load(corpus / "units" / "pitch_edges.npy")
    assert edges.shape == (14,) and np.all(np.diff(edges) >= 0)


def test_units_in_range_with_frame_counts_matching_durations(corpus):
    ext = load_extractor(corpus / "units")
    used = {name: np.zeros(v, bool) for name, v in ext.vocab_sizes.items()}
    for path in list_audio(corpus / "audio"):
        wav = read_audio(path)
        n = len(wav)
        assert abs(n / SAMPLE_RATE - sf.info(str(path)).duration) < 1e-3
        streams = ext.extract(wav)
        assert set(streams) == {"hubert", "pitch", "style"}
        expected = {"hubert": n // 640, "pitch": n // 1280, "style": max(1, round(n / SAMPLE_RATE))}
        for name, (ids, times) in streams.items():
            assert ids.dtype == np.int32 and times.dtype == np.float64
            assert len(ids) == len(times) == expected[name], name
            assert ids.min() >= 0 and ids.max() < ext.vocab_sizes[name]
            np.testing.assert_allclose(times, np.arange(len(ids)) / ext.frame_rates[name])
            used[name][ids] = True
        pitch = streams["pitch"][0]
        assert 0 < (pitch == UNVOICED_BIN).sum() < len(pitch)  # speech has voiced and silent parts
    # the fitted units are actually used, not collapsed onto a few
    assert used["hubert"].sum() >= 20 and used["pitch"].sum() >= 12 and used["style"].sum() >= 4


def test_fit_is_deterministic_for_a_seed(corpus, tmp_path):
    again = tmp_path / "again"
    other = tmp_path / "other"
    assert main(["units", "fit", str(corpus / "audio"), str(again), *FIT_ARGS]) == 0
    seed_args = [a if a != "3" else "4" for a in FIT_ARGS]
    assert main(["units", "fit", str(corpus / "audio"), str(other), *seed_args]) == 0
    for name in (
        "phonetic_centroids.npy",
        "pitch_edges.npy",
        "style_centroids.npy",
        "style_norm.npy",
    ):
        np.testing.assert_array_equal(np.load(corpus / "units" / name), np.load(again / name))
    assert not np.array_equal(
        np.load(corpus / "units" / "phonetic_centroids.npy"),
        np.load(other / "phonetic_centroids.npy"),
    )
    wav = read_audio(corpus / "audio" / "voice1" / "utt0.wav")
    a, b = load_extractor(corpus / "units").extract(wav), load_extractor(again).extract(wav)
    for name in a:
        np.testing.assert_array_equal(a[name][0], b[name][0])


def test_speaker_mean_shifts_pitch_bins(corpus):
    ext = load_extractor(corpus / "units")
    wav = read_audio(corpus / "audio" / "voice1" / "utt1.wav")
    own = ext.extract(wav)["pitch"][0]
    voiced = own != UNVOICED_BIN
    # a speaker mean far below this utterance's own F0 puts every voiced frame in the top bins
    low = ext.extract(wav, f0_mean=float(np.log(60.0)))["pitch"][0]
    np.testing.assert_array_equal(low == UNVOICED_BIN, ~voiced)
    assert low[voiced].min() >= 14 and own[voiced].mean() < low[voiced].mean()
    with pytest.raises(ValueError, match="not F0 in Hz"):
        ext.extract(wav, f0_mean=220.0)


def test_small_audio_clamps_style_classes_with_a_warning(tmp_path):
    synthesize(tmp_path / "a" / "one.wav", "Hello there.", voice="en+f3")
    with pytest.warns(UserWarning, match="style classes"):
        assert (
            main(
                [
                    "units",
                    "fit",
                    str(tmp_path / "a"),
                    str(tmp_path / "u"),
                    "--units",
                    "8",
                    "--pitch-bins",
                    "8",
                ]
            )
            == 0
        )
    ext = load_extractor(tmp_path / "u")
    assert 1 <= ext.vocab_sizes["style"] <= 2 and ext.vocab_sizes["hubert"] == 8


def test_manifest_input_and_stream_selection(corpus, tmp_path):
    files = list_audio(corpus / "audio")[:2]
    manifest = tmp_path / "train.txt"
    manifest.write_text("# two files\n" + "".join(f"{p}\t123\n" for p in files))
    assert list_audio(manifest) == files
    out = tmp_path / "u"
    assert (
        main(
            [
                "units",
                "fit",
                str(manifest),
                str(out),
                "--units",
                "10",
                "--features",
                "logmel",
                "--pitch-bins",
                "0",
                "--style-classes",
                "0",
            ]
        )
        == 0
    )
    ext = load_extractor(out)
    assert ext.vocab_sizes == {"hubert": 10}
    streams = ext.extract(read_audio(files[0]))
    assert set(streams) == {"hubert"}
    assert main(["units", "fit", str(manifest), str(out), "--units", "10"]) == 2  # exists


def _bad_files(tmp_path):
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(8000, np.int16), 16000, subtype="PCM_16")
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, np.int16), 16000, subtype="PCM_16")
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4000))
    return {"silent": silent, "empty": empty, "corrupt": corrupt, "not found": tmp_path / "no.wav"}


def test_bad_audio_raises_value_error_naming_the_file(tmp_path):
    for why, path in _bad_files(tmp_path).items():
        with pytest.raises(InputError, match=str(path)) as err:
            read_audio(path)
        assert why.split()[0] in str(err.value) or why == "corrupt", (why, err.value)


def test_fit_fails_on_a_bad_file_unless_skipped(corpus, tmp_path, capsys):
    audio = tmp_path / "audio"
    speech_corpus(audio, sentences=SENTENCES[:1], voices=VOICES[:2])
    (audio / "zz_corrupt.wav").write_bytes(np.random.default_rng(1).bytes(3000))
    assert main(["units", "fit", str(audio), str(tmp_path / "u"), "--units", "8"]) == 2
    assert "zz_corrupt.wav" in capsys.readouterr().err
    with pytest.warns(UserWarning, match="zz_corrupt.wav"):
        assert (
            main(
                [
                    "units",
                    "fit",
                    str(audio),
                    str(tmp_path / "u"),
                    "--units",
                    "8",
                    "--pitch-bins",
                    "8",
                    "--style-classes",
                    "2",
                    "--skip-bad",
                ]
            )
            == 0
        )
    assert "2 files (1 skipped)" in capsys.readouterr().out


def test_extract_rejects_silent_or_too_short_waveforms(corpus):
    ext = load_extractor(corpus / "units")
    with pytest.raises(InputError, match="silent"):
        ext.extract(np.zeros(16000, np.float32))
    with pytest.raises(InputError, match="too short"):
        ext.extract(np.full(100, 0.1, np.float32))


def test_centroid_file_of_wrong_dimension_names_file_and_dims(corpus, tmp_path):
    units = tmp_path / "units"
    units.mkdir()
    for f in (corpus / "units").iterdir():
        (units / f.name).write_bytes(f.read_bytes())
    bad = units / "phonetic_centroids.npy"
    np.save(bad, np.zeros((24, 13), np.float32))
    with pytest.raises(InputError, match=rf"{bad}.*13.*26"):
        load_extractor(units)
    with pytest.raises(InputError, match="not a units folder"):
        load_extractor(tmp_path)


def _edit_distance(a, b):
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[:], i
        for j, y in enumerate(b, 1):
            row[j] = min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (x != y))
    return row[-1] / max(len(a), len(b))


def test_phonetic_units_follow_the_words_across_voices(corpus):
    """Same sentence by two voices gives closer (deduplicated) unit sequences than two sentences."""
    ext = load_extractor(corpus / "units")
    seqs = {}
    for path in list_audio(corpus / "audio"):
        ids = ext.extract(read_audio(path))["hubert"][0]
        seqs[(path.parent.name, path.stem)] = ids[np.r_[True, ids[1:] != ids[:-1]]].tolist()
    same, other = [], []
    for (v1, s1), a in seqs.items():
        for (v2, s2), b in seqs.items():
            if v1 < v2:
                (same if s1 == s2 else other).append(_edit_distance(a, b))
    assert np.mean(same) < np.mean(other) - 0.1, (np.mean(same), np.mean(other))


def test_read_audio_mixes_channels_and_resamples(tmp_path):
    t = np.arange(8000 * 2) / 8000
    left, right = 0.4 * np.sin(2 * np.pi * 300 * t), 0.2 * np.sin(2 * np.pi * 300 * t)
    sf.write(tmp_path / "st.flac", np.stack([left, right], axis=1), 8000)
    wav = read_audio(tmp_path / "st.flac")
    assert wav.dtype == np.float32 and wav.shape == (2 * SAMPLE_RATE,)
    ref = 0.3 * np.sin(2 * np.pi * 300 * np.arange(2 * SAMPLE_RATE) / SAMPLE_RATE)
    np.testing.assert_allclose(wav[1000:-1000], ref[1000:-1000], atol=2e-3)  # away from edges


def test_bad_units_config_names_the_file_and_key(corpus, tmp_path):
    cfg = json.loads((corpus / "units" / CONFIG_FILE).read_text())
    cfg["pitch"]["bins_typo"] = 3
    (tmp_path / CONFIG_FILE).write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=rf"{tmp_path / CONFIG_FILE}.*pitch\.bins_typo"):
        load_extractor(tmp_path)
    cfg["pitch"].pop("bins_typo")
    cfg["style"]["frame_rate"] = 0.3  # 53333.3 samples per window
    (tmp_path / CONFIG_FILE).write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=r"style\.frame_rate: 0\.3 Hz"):
        load_extractor(tmp_path)


def test_frame_rate_and_window_are_fitted_recorded_and_checked(corpus, tmp_path, capsys):
    out = tmp_path / "units50"
    args = ["--units", "24", "--pitch-bins", "0", "--style-classes", "0"]
    rate = ["--frame-rate", "50", "--window-seconds", "0.025"]
    assert main(["units", "fit", str(corpus / "audio"), str(out), *args, *rate]) == 0
    spectral = json.loads((out / CONFIG_FILE).read_text())["phonetic"]["spectral"]
    assert (spectral["frame_rate"], spectral["window_seconds"]) == (50.0, 0.025)
    wav = read_audio(corpus / "audio" / "voice1" / "utt0.wav")
    ids, times = load_extractor(out).extract(wav)["hubert"]
    assert len(ids) == len(wav) // 320  # one unit per 20 ms hop
    np.testing.assert_allclose(times, np.arange(len(ids)) / 50.0)
    assert len(load_extractor(corpus / "units").extract(wav)["hubert"][0]) == len(wav) // 640
    for bad, key in (
        ("--frame-rate=7", "--frame-rate: 7.0 Hz"),
        ("--window-seconds=0", "--window-seconds: must be > 0"),
        ("--context-frames=-1", "--context-frames: must be >= 0"),
    ):
        capsys.readouterr()
        assert main(["units", "fit", str(corpus / "audio"), str(tmp_path / "x"), *args, bad]) != 0
        assert key in capsys.readouterr().err
        assert not (tmp_path / "x").exists()  # refused before anything is written


def test_fit_help_states_spectral_configs_defaults(capsys):
    """`units fit --frame-rate/--window-seconds` default to SpectralConfig's (the parser leaves
    them unset so `tinywave --help` loads no scipy); its help states those numbers."""
    with pytest.raises(SystemExit):
        main(["units", "fit", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert f"default: SpectralConfig's, {SpectralConfig.frame_rate:g};" in help_text
    assert f"default: SpectralConfig's, {SpectralConfig.window_seconds:g} s" in help_text


def test_fit_cmn_running_is_recorded_and_used(corpus, tmp_path):
    """--cmn-running reaches units.json, and the loaded extractor's units are those of the
    running-mean features (nearest centroid computed here in numpy)."""
    out = tmp_path / "running"
    argv = ["units", "fit", str(corpus / "audio"), str(out), "--units", "8", "--cmn-seconds", "1"]
    assert main([*argv, "--cmn-running", "--pitch-bins", "0", "--style-classes", "0"]) == 0
    spectral = json.loads((out / CONFIG_FILE).read_text())["phonetic"]["spectral"]
    assert spectral["cmn_running"] is True and spectral["cmn_seconds"] == 1.0
    wav = read_audio(list_audio(corpus / "audio")[0])
    feats = phonetic_features(wav, SpectralConfig(**spectral))
    centroids = np.load(out / "phonetic_centroids.npy")
    expect = ((feats[:, None, :] - centroids[None]) ** 2).sum(-1).argmin(-1)
    np.testing.assert_array_equal(load_extractor(out).extract(wav)["hubert"][0], expect)
