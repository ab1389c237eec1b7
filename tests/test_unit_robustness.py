"""bench/unit_robustness.py's core against hand-computed edit distances and neighbours."""

import numpy as np
import pytest
from bench_module import load_bench

from tinywave_jax.errors import InputError


def _bench():
    return load_bench("unit_robustness")


def test_normalised_edit_distance_divides_by_the_longer_sequence():
    d = _bench().normalised_distances([[1, 2, 3]], [[1, 2, 4], [4, 6], [3, 1, 2], [1, 2, 3]])
    # one substitution; three edits; insert 3 in front and drop the last 3; equal
    np.testing.assert_allclose(d, [[1 / 3, 1.0, 2 / 3, 0.0]], rtol=1e-6)


def test_word_identification_on_a_hand_computed_example():
    seqs = [[1, 2, 3], [4, 5], [1, 2, 4], [4, 6], [7, 8, 9]]
    words = ["cat", "dog", "cat", "dog", "cat"]
    voices = ["a", "a", "b", "b", "c"]
    # distances by hand: d(0,2) = 1/3, d(1,3) = 1/2, every other pair 1.0
    r = _bench().word_identification(seqs, words, voices)
    # 0-3 find their twin in the other voice; 4's nearest are all four tokens tied, 2 of them cats
    assert r["cross_acc"] == pytest.approx((4 + 0.5) / 5)
    # one other voice at a time: (a,b) 1, (a,c) 1/2, (b,a) 1, (b,c) 1/2, (c,a) 1/2, (c,b) 1/2
    assert r["pair_acc"] == pytest.approx(4 / 6)
    assert r["within_acc"] == 0.0  # each voice's only other token is the other word; c has none
    assert r["chance_cross"] == pytest.approx((2 / 3 + 1 / 3 + 2 / 3 + 1 / 3 + 1 / 2) / 5)
    assert r["chance_within"] == 0.0
    assert r["d_same"] == pytest.approx((1 / 3 + 1 + 1 + 1 / 2) / 4)
    assert r["d_diff"] == pytest.approx(1.0)
    assert r["per_voice"] == pytest.approx({"a": 1.0, "b": 1.0, "c": 0.5})


def test_words_are_cut_by_frame_time_deduplicated_and_short_ones_left_out():
    rows = [
        {"speaker": "a", "words": [["abcd", 0.0, 0.06], ["ab", 0.06, 0.08], ["efgh", 0.06, 0.2]]}
    ]
    ids = np.array([5, 5, 6, 6, 7, 1, 1])  # 50 Hz: frames start at 0, 0.02, ..., 0.12 s
    seqs, words, voices = _bench().word_tokens(rows, [ids], 50.0, min_letters=4)
    assert seqs == [[5, 6], [6, 7, 1]] and words == ["abcd", "efgh"] and voices == ["a", "a"]


def test_samples_are_per_voice_disjoint_and_a_short_voice_is_named():
    bench = _bench()
    rows = [{"speaker": v} for v in "aaaabbbb"]
    probe = bench.sample(rows, 2, np.random.default_rng(0), set())
    fit = bench.sample(rows, 2, np.random.default_rng(1), set(probe))
    assert sorted(rows[i]["speaker"] for i in probe) == ["a", "a", "b", "b"]
    assert sorted(probe + fit) == list(range(8))
    with pytest.raises(InputError, match="voice 'a': 2 utterances, fewer than 3"):
        bench.sample(rows, 3, np.random.default_rng(0), set(probe))


def test_main_fits_each_config_and_a_held_out_voice_is_left_out_of_the_fit(
    tmp_path, monkeypatch, capsys
):
    """End to end on three synthesised voices: one JSON line per config (the LDA config with
    its projection fitted on the fit utterances' word times; the VTLN config with its codebook
    fitted on the fit utterances), and --hold-out drops that voice's
    fit utterances (its per-voice figure is reported)."""
    import json

    import soundfile as sf
    from speech_fixtures import SENTENCES, VOICES, speech_corpus

    paths = speech_corpus(tmp_path / "audio", sentences=SENTENCES[:4], voices=VOICES)
    with open(tmp_path / "m.jsonl", "w") as f:
        for p in paths:
            seconds = sf.info(p).duration
            words = [[f"{p.stem}part{i}", i * seconds / 4, (i + 1) * seconds / 4] for i in range(4)]
            row = {"path": str(p.relative_to(tmp_path)), "speaker": p.parent.name, "words": words}
            f.write(json.dumps(row) + "\n")
    argv = ["unit_robustness.py", str(tmp_path / "m.jsonl"), "--per-voice", "2"]
    configs = ["--config", "current", "running_lda", "uvtln3s_running"]
    argv += ["--fit-per-voice", "2", *configs, "--hold-out", "voice0"]
    monkeypatch.setattr("sys.argv", argv)
    bench = _bench()
    fitted = []
    real_fit = bench.fit_word_lda
    monkeypatch.setattr(
        bench, "fit_word_lda", lambda x, *rest: fitted.append(len(x)) or real_fit(x, *rest)
    )
    bench.main()
    out = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    lines = [r for r in out if "config" in r]
    assert [r["config"] for r in lines] == ["current", "running_lda", "uvtln3s_running"]
    # the library's VTLN: the fit utterances' warps (all of vtln.WARPS counted), then its units
    (warps,) = [r["vtln_fit_warps"] for r in out if "vtln_fit_warps" in r]
    assert len(warps) == 11 and sum(warps.values()) == 2 * 2  # the two fitted voices' files
    assert lines[2]["vtln"] is True and lines[2]["fit_frames"] == lines[0]["fit_frames"]
    assert lines[1]["lda_dims"] == 20 and len(fitted) == 1
    assert lines[0]["fit_frames"] == lines[1]["fit_frames"] == fitted[0]
    for r in lines:
        assert r["held_out"] == "voice0" and set(r["per_voice"]) == {"voice0", "voice1", "voice2"}
        assert 0.0 <= r["pair_acc"] <= 1.0 and r["tokens"] == 3 * 2 * 4
    # without --hold-out the same seed fits on all three voices' utterances: a third more frames
    monkeypatch.setattr("sys.argv", argv[:-4])  # --config current
    bench.main()
    everyone = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert everyone[0]["fit_frames"] > lines[0]["fit_frames"] * 1.2
