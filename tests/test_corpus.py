"""`corpus build`: units manifest and audio -> TFDS ArrayRecord corpus; restart, bad input."""

import json
import shutil

import numpy as np
import pytest
import soundfile as sf
from data_fixtures import as_source_record, synthetic_utterance, write_units_manifest

from tinywave_jax.data import DataConfig, make_train_iterator, preset_layout
from tinywave_jax.data.corpus_build import build_corpus
from tinywave_jax.data.corpus_format import CorpusError
from tinywave_jax.data.corpus_read import CorpusSource, version_dir
from tinywave_jax.data.streams import speech_sequence

N = 30


def _manifest_records():
    rng = np.random.default_rng(1)
    recs = [synthetic_utterance(rng, k) for k in range(N)]
    for k, r in enumerate(recs):
        r["split"] = ["train", "train", "validation", "test"][k % 4]
    del recs[5]["words"], recs[5]["transcript"]  # no alignment: still valid
    recs[7]["units"]["hubert"][3] = 501  # beyond the layout
    recs[11]["times"] = {"pitch": [0.0]}  # wrong number of times
    recs[12]["units"]["style"] = " ".join(map(str, recs[12]["units"]["style"]))  # SpiritLM form
    recs[13]["times"] = {"hubert": (np.arange(len(recs[13]["units"]["hubert"])) * 0.04).tolist()}
    return recs


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    recs = _manifest_records()
    manifest = write_units_manifest(root / "units.jsonl", recs)
    logs = []
    summary = build_corpus(root / "out", manifest=manifest, shard_size=8, log=logs.append)
    return root, recs, manifest, summary, logs


def test_summary_counts_and_names_skipped_lines(built):
    root, recs, manifest, summary, logs = built
    good = [r for k, r in enumerate(recs) if k not in (7, 11)]
    assert summary["skipped"]["count"] == 2
    ex = summary["skipped"]["examples"]
    assert any(f"{manifest}:8: hubert unit 501 is outside" in e for e in ex)
    assert any(f"{manifest}:12: pitch has" in e for e in ex)
    for split in ("train", "validation", "test"):
        want = [r for r in good if r["split"] == split]
        assert summary["splits"][split]["utterances"] == len(want)
        assert summary["splits"][split]["speakers"] == len({r["speaker"] for r in want})
    assert summary["frames"]["hubert"] == sum(len(r["units"]["hubert"]) for r in good)
    dedup = sum(1 + int(np.sum(np.diff(r["units"]["hubert"]) != 0)) for r in good)
    assert summary["tokens_dedup"]["hubert"] == dedup
    hours = sum(len(r["units"]["hubert"]) / 25 for r in good if r["split"] == "train") / 3600
    assert summary["splits"]["train"]["hours"] == pytest.approx(hours, rel=1e-6)
    assert json.loads((root / "out" / "summary.json").read_text()) == summary


def test_records_readable_with_tfds_and_equal_to_the_manifest(built):
    import tensorflow_datasets as tfds

    root, recs, _, _, _ = built
    by_id = {r["id"]: r for r in recs}
    ds = tfds.data_source("tinywave_corpus", data_dir=str(root / "out"))
    ro = tfds.builder_from_directory(str(version_dir(root / "out"))).as_data_source("test")
    assert len(ro) == len(ds["test"]) > 0
    src = CorpusSource(root / "out", "train")
    assert (
        len(src)
        == len(ds["train"])
        == sum(r["split"] == "train" for k, r in enumerate(recs) if k not in (7, 11))
    )
    for i in range(len(src)):
        rec, raw = src[i], ds["train"][i]
        want = by_id[rec["id"]]
        assert raw["id"].decode() == rec["id"] and rec["speaker"] == want["speaker"]
        for s, units in want["units"].items():
            units = [int(u) for u in units.split()] if isinstance(units, str) else units
            got_units, got_times = rec["streams"][s]
            assert got_units.tolist() == units
            rate = {"hubert": 25, "pitch": 12.5, "style": 1}[s]
            np.testing.assert_allclose(got_times, np.arange(len(units)) / rate, atol=1e-6)
        if "words" in want:
            assert [w for w, _, _ in rec["words"]] == [w for w, _, _ in want["words"]]
            np.testing.assert_allclose(
                [w[1:] for w in rec["words"]], [w[1:] for w in want["words"]], atol=1e-6
            )
            assert rec["transcript"] == want["transcript"]
        else:
            assert rec["words"] is None
        assert "tinywave_corpus-train.array_record" in rec["where"]


def test_training_batches_from_the_built_corpus(built):
    root, recs, _, _, _ = built
    cfg = DataConfig(
        corpus_dir=str(root / "out"),
        seq_len=32,
        batch_size=2,
        num_epochs=1,
        shuffle=False,
        read_threads=1,
    )
    batches = list(make_train_iterator(cfg, 0, 1))
    stream = [
        t
        for b in batches
        for row, seg in zip(b["input_ids"], b["segment_ids"])
        for t, s in zip(row.tolist(), seg.tolist())
        if s
    ]
    src = CorpusSource(root / "out", "train")
    layout = preset_layout("spiritlm_expressive")
    by_id = {r["id"]: r for r in recs}
    want = [
        speech_sequence(as_source_record(by_id[src[i]["id"]]), layout).tolist()
        for i in range(len(src))
    ]
    assert stream == [t for seq in want for t in seq]


def test_restart_skips_finished_shards(built, tmp_path):
    root, recs, manifest, summary, logs = built
    out = tmp_path / "out"
    shutil.copytree(root / "out", out)
    logs = []
    assert build_corpus(out, manifest=manifest, shard_size=8, log=logs.append) == summary
    assert "4 already staged, 0 to do" in logs[0]
    staging = out / "_staging"
    mtimes = {p.name: p.stat().st_mtime_ns for p in staging.glob("shard-*.npz")}
    (staging / "shard-00002.npz").unlink()  # as if killed while on shard 2
    logs = []
    again = build_corpus(out, manifest=manifest, shard_size=8, log=logs.append)
    assert "3 already staged, 1 to do" in logs[0] and again == summary
    for p in staging.glob("shard-*.npz"):
        if p.name != "shard-00002.npz":
            assert p.stat().st_mtime_ns == mtimes[p.name]
    a, b = CorpusSource(root / "out", "train"), CorpusSource(out, "train")
    assert [a[i]["id"] for i in range(len(a))] == [b[i]["id"] for i in range(len(b))]
    # other inputs into the same staging folder are refused
    changed = write_units_manifest(tmp_path / "other.jsonl", _manifest_records()[:-1])
    with pytest.raises(CorpusError, match="staged from different inputs"):
        build_corpus(out, manifest=changed, shard_size=8, log=logs.append)


def test_parallel_build_writes_the_same_records(built, tmp_path):
    root, _, manifest, summary, _ = built
    assert (
        build_corpus(
            tmp_path / "out", manifest=manifest, shard_size=8, workers=2, log=lambda m: None
        )
        == summary
    )
    a, b = CorpusSource(root / "out", "validation"), CorpusSource(tmp_path / "out", "validation")
    for i in range(len(a)):
        ra, rb = a[i], b[i]
        assert ra["id"] == rb["id"]
        for s in ra["streams"]:
            np.testing.assert_array_equal(ra["streams"][s][0], rb["streams"][s][0])


def test_strict_build_fails_naming_the_line(built, tmp_path):
    _, _, manifest, _, _ = built
    with pytest.raises(CorpusError, match=r"units.jsonl:8: hubert unit 501"):
        build_corpus(
            tmp_path / "out", manifest=manifest, shard_size=8, max_skipped=0, log=lambda m: None
        )
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"id": "a", "units": {"hubert": [1, 2]}}\n{"id": "a", "units": {"hubert": [3]}}\n'
    )
    with pytest.raises(CorpusError, match=r"duplicate utterance ids at .*bad.jsonl:1"):
        build_corpus(tmp_path / "out2", manifest=bad, log=lambda m: None)
    bad.write_text('{"id": "a", "units": {"hubert": [1, 2]}}\nnot json\n')
    with pytest.raises(CorpusError, match=r"bad.jsonl:2: not valid JSON"):
        build_corpus(tmp_path / "out3", manifest=bad, log=lambda m: None)


def test_corrupt_shard_names_file_and_record(built, tmp_path):
    root = built[0]
    shutil.copytree(root / "out", tmp_path / "out")
    f = next(version_dir(tmp_path / "out").glob("*-train.array_record-*"))
    data = bytearray(f.read_bytes())
    data[300:340] = bytes(40)
    f.write_bytes(bytes(data))
    src = CorpusSource(tmp_path / "out", "train")
    with pytest.raises(CorpusError, match=rf"{f.name} record 0: cannot read or decode"):
        src[0]


def test_build_from_espeak_audio_with_speaker_mean_f0(tmp_path):
    from speech_fixtures import SENTENCES, two_speakers_with_units

    from tinywave_jax.audio import load_extractor, read_audio
    from tinywave_jax.audio.pitch import mean_log_f0

    audio = two_speakers_with_units(tmp_path)
    paths = sorted(audio.glob("voice*/utt*.wav"))
    (audio / "voice0" / "utt0.txt").write_text(SENTENCES[0])
    (audio / "voice0" / "utt0.words.json").write_text(json.dumps([["The", 0.1, 0.3]]))
    (audio / "voice1" / "broken.wav").write_bytes(b"RIFF not really a wav")
    sf.write(audio / "voice1" / "empty.wav", np.zeros(0, np.int16), 16000)
    summary = build_corpus(
        tmp_path / "out",
        audio_dir=audio,
        extractor=tmp_path / "units",
        valid_fraction=0,
        test_fraction=0,
        workers=1,
        log=lambda m: None,
    )
    assert summary["skipped"]["count"] == 2
    broken, empty = sorted(summary["skipped"]["examples"])
    assert "broken.wav" in broken and "not readable" in broken
    assert "empty.wav" in empty and "empty" in empty.split("empty.wav")[-1]
    assert summary["splits"]["train"]["utterances"] == 4
    assert summary["splits"]["train"]["speakers"] == 2
    f0 = json.loads((tmp_path / "out" / "_staging" / "speaker_f0.json").read_text())
    ext = load_extractor(tmp_path / "units")
    for v in ("voice0", "voice1"):
        wavs = [read_audio(p) for p in paths if p.parent.name == v]
        assert f0[v] == pytest.approx(mean_log_f0(wavs, ext.cfg.pitch), rel=1e-9)
    src = CorpusSource(tmp_path / "out", "train")
    for i in range(len(src)):
        rec = src[i]
        path = audio / f"{rec['id']}.wav"
        want = ext.extract(read_audio(path), f0_mean=f0[rec["speaker"]])
        assert set(rec["streams"]) == {"hubert", "pitch", "style"}
        for s, (units, times) in want.items():
            np.testing.assert_array_equal(rec["streams"][s][0], units)
            np.testing.assert_allclose(rec["streams"][s][1], times, atol=1e-6)
        if rec["id"] == "voice0/utt0":
            assert rec["transcript"] == SENTENCES[0] and rec["words"][0][0] == "The"


def test_cli_build_show_and_strict_error(built, tmp_path, capsys, monkeypatch):
    from tinywave_jax import cli

    monkeypatch.setattr(cli, "COMMAND_MODULES", ["tinywave_jax.data.commands"])
    root, recs, manifest, summary, _ = built
    out = str(tmp_path / "out")
    assert (
        cli.main(
            ["corpus", "build", "--manifest", str(manifest), "--out", out, "--shard-size", "8"]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "skipped: 2" in printed and "units.jsonl:8: hubert unit 501" in printed
    assert cli.main(["corpus", "show", out, "--split", "test", "--index", "0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].startswith("[Speech][St") and "record 0" in lines[-2]
    assert (
        cli.main(
            [
                "corpus",
                "build",
                "--manifest",
                str(manifest),
                "--out",
                str(tmp_path / "strict"),
                "--max-skipped",
                "0",
            ]
        )
        == 2
    )
    assert "units.jsonl:8: hubert unit 501" in capsys.readouterr().err


def test_build_from_an_audio_manifest(tmp_path):
    from speech_fixtures import SENTENCES, synthesize

    from tinywave_jax.audio.fit import fit_units

    a = synthesize(tmp_path / "a.wav", SENTENCES[0], voice="en+m3")
    b = synthesize(tmp_path / "b.wav", SENTENCES[1], voice="en+m3")
    fit_units(
        [a, b],
        tmp_path / "units",
        units=8,
        pitch_bins=0,
        style_classes=0,
        seed=0,
        log=lambda *x: None,
    )
    manifest = tmp_path / "audio.jsonl"
    manifest.write_text(
        json.dumps(
            {
                "path": "a.wav",
                "speaker": "m3",
                "split": "validation",
                "transcript": SENTENCES[0],
                "words": [{"word": "The", "start": 0.1, "end": 0.3}],
            }
        )
        + "\n"
        + json.dumps({"path": "b.wav", "speaker": "m3", "split": "train"})
        + "\n"
    )
    summary = build_corpus(
        tmp_path / "out", manifest=manifest, extractor=tmp_path / "units", log=lambda m: None
    )
    assert summary["splits"]["validation"]["utterances"] == 1
    assert summary["splits"]["train"]["utterances"] == 1 and summary["skipped"]["count"] == 0
    rec = CorpusSource(tmp_path / "out", "validation")[0]
    assert rec["id"] == "a" and rec["words"] == [("The", pytest.approx(0.1), pytest.approx(0.3))]
    assert set(rec["streams"]) == {"hubert"} and rec["streams"]["hubert"][0].max() < 8
    assert not (tmp_path / "out" / "_staging" / "speaker_f0.json").exists()  # no pitch stream


def test_build_with_every_utterance_skipped_fails_and_writes_no_corpus(tmp_path, capsys):
    """Used to write an empty corpus and exit 0."""
    from tinywave_jax import cli

    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"id": "a", "units": {"hubert": [1, 900]}}\n'
        '{"id": "b", "units": {"hubert": [3, 4], "pitch": [1]}, "times": {"pitch": [0, 1]}}\n'
    )
    with pytest.raises(CorpusError, match=r"all 2 were skipped \(.*first: .*bad.jsonl:1: hubert"):
        build_corpus(tmp_path / "lib", manifest=bad, log=lambda m: None)
    out = tmp_path / "out"
    assert cli.main(["corpus", "build", "--manifest", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("tinywave corpus: error: no usable utterance: all 2 were skipped")
    assert f"no corpus was written to {out}" in err[-1]
    assert not (out / "tinywave_corpus").exists() and not (out / "summary.json").exists()


def test_an_audio_folder_without_extractor_names_the_parameter(tmp_path):
    from tinywave_jax.data.corpus_format import CorpusError

    (tmp_path / "audio").mkdir()
    sf.write(tmp_path / "audio" / "a.wav", np.zeros(1600, np.float32), 16000)
    with pytest.raises(CorpusError, match="^extractor: an audio folder needs a units folder") as e:
        build_corpus(tmp_path / "out", audio_dir=tmp_path / "audio")
    assert e.value.param == "extractor"
