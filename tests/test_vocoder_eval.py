"""`tinywave vocoder eval`: pocketsphinx WER of resynthesis and original, STOI, unit agreement,
with bootstrap intervals. Known answers: the pooled statistics and intervals on hand-made scores,
a resynthesis equal to the original (STOI 1, full agreement, no WER gap); the command on espeak
speech with a random vocoder against pystoi / the extractor / jiwer run here; bad input (an
unreadable wav, unit ids outside the vocoder's dictionary, an unknown speaker, no transcript)."""

import json

import jax
import numpy as np
import pytest
import soundfile as sf
from speech_fixtures import SENTENCES, VOICES, speech_corpus

from tinywave_jax import cli
from tinywave_jax.audio import load_extractor, read_audio
from tinywave_jax.errors import InputError
from tinywave_jax.vocoder.checkpoint import save_vocoder
from tinywave_jax.vocoder.config import VocoderConfig
from tinywave_jax.vocoder.corpus import read_items
from tinywave_jax.vocoder.model import init_params
from tinywave_jax.vocoder.quality import (
    Score,
    evaluate_vocoder,
    score_pair,
    summarize,
    word_errors,
)
from tinywave_jax.vocoder.synthesis import Vocoder

VOCODER = {
    "upsample_rates": [5, 4, 4, 4, 2],
    "upsample_kernel_sizes": [11, 8, 8, 8, 4],
    "upsample_initial_channel": 32,
    "resblock_kernel_sizes": [3],
    "resblock_dilation_sizes": [[1, 3]],
    "num_embeddings": 16,
    "embedding_dim": 8,
    "model_in_dim": 16,
    "multispkr": "from_input_file",
    "num_speakers": 2,
}


def _vocoder(path, num_embeddings=16, speakers=("voice0", "voice1")):
    config, _ = VocoderConfig.from_json_dict({**VOCODER, "num_embeddings": num_embeddings})
    # HiFi-GAN's N(0, 0.01) init gives near-silence (peak ~1e-12): scaled up, audible noise
    params = jax.tree.map(lambda x: 20 * x, init_params(config, 3))
    save_vocoder(path, config, params, {"speakers": list(speakers)})
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from tinywave_jax.audio.fit import fit_units

    root = tmp_path_factory.mktemp("voceval")
    paths = speech_corpus(root / "audio", sentences=SENTENCES[:2], voices=VOICES[:2])
    fit_units(paths, root / "units", units=16, pitch_bins=0, style_classes=0, log=lambda *a: None)
    rows = [
        {"path": str(p.relative_to(root)), "speaker": p.parent.name, "transcript": t}
        for p, t in zip(paths, SENTENCES[:2] * 2)
    ]
    (root / "heldout.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    _vocoder(root / "voc")
    return root, rows


def _score(words, err_o, err_r, stoi, frames, agree):
    return Score("x", words, err_o, err_r, stoi, frames, agree, "", "")


def test_summary_pools_over_utterances_and_resamples_them():
    # both utterances have 10 % original WER and 90 % agreement: every resample gives exactly that
    scores = [_score(10, 1, 5, 0.5, 100, 90), _score(30, 3, 3, 0.7, 300, 270)]
    s = summarize(scores, draws=500)
    assert s["wer_original"] == 10.0 and s["wer_original_ci"] == [10.0, 10.0]
    assert s["unit_agreement"] == 90.0 and s["unit_agreement_ci"] == [90.0, 90.0]
    assert s["wer_resynth"] == 20.0  # (5 + 3) / 40 pooled, not the mean of 50 % and 10 %
    assert s["wer_gap"] == 10.0 and s["wer_gap_ci"][0] == 0.0 and s["wer_gap_ci"][1] == 40.0
    assert s["stoi"] == 0.6 and s["stoi_ci"][0] >= 0.5 and s["stoi_ci"][1] <= 0.7
    assert s["targets"] == {"wer_gap_at_most_15": True, "unit_agreement_at_least_80": True}
    bad = summarize([_score(10, 0, 5, 0.5, 10, 7)], draws=10)["targets"]
    assert bad == {"wer_gap_at_most_15": False, "unit_agreement_at_least_80": False}


def test_word_errors_count_substitutions_deletions_insertions():
    ref = "The quick brown fox, jumps!"
    assert word_errors(ref, "the quick brown fox jumps") == 0
    assert word_errors(ref, "the(2) quick brown box jumps over") == 2  # 1 sub + 1 ins
    assert word_errors(ref, "quick brown") == 3
    assert word_errors(ref, "") == 5


def test_a_resynthesis_equal_to_the_original_scores_perfectly(setup):
    root, rows = setup
    ex = load_extractor(root / "units")
    wav = read_audio(root / rows[0]["path"])
    units = ex.extract(wav)["hubert"][0]
    same = wav[: units.size * 640]
    heard = []
    s = score_pair(
        "u", wav, same, units, rows[0]["transcript"], ex, lambda w: heard.append(w) or "the"
    )
    assert len(heard) == 2 and heard[1] is same
    assert s.stoi > 0.999 and s.agree == s.frames == units.size
    assert s.errors_original == s.errors_resynth == s.words - 1 and s.words == 9
    noise = np.random.default_rng(0).normal(0, 0.1, same.size).astype(np.float32)
    s = score_pair("u", wav, noise, units, rows[0]["transcript"], ex, lambda w: "")
    assert s.stoi < 0.5 and s.agree < 0.5 * s.frames


def test_vocoder_eval_command(setup, tmp_path, capsys):
    from pystoi import stoi

    from tinywave_jax.vocoder.checkpoint import load_vocoder

    root, rows = setup
    out = tmp_path / "q.json"
    args = ["vocoder", "eval", str(root / "voc"), str(root / "heldout.jsonl")]
    args += ["--units", str(root / "units"), "--draws", "200", "--json", str(out)]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    for needle in ("WER, original audio", "WER, resynthesis", "STOI", "unit agreement", "targets"):
        assert needle in printed
    result = json.loads(out.read_text())
    summary, utts = result["summary"], result["utterances"]
    assert summary["utterances"] == len(utts) == 4
    # each number against pystoi / the extractor / jiwer run here on the vocoder's own synthesis
    config, params, _ = load_vocoder(root / "voc")
    voc, ex = Vocoder(config, params), load_extractor(root / "units")
    for row, u in zip(rows, utts):
        wav = read_audio(root / row["path"])
        units = ex.extract(wav)["hubert"][0]
        speaker = 0 if row["speaker"] == "voice0" else 1
        resynth = voc.synthesize(voc.prepare(units, speaker=speaker))
        n = resynth.size
        assert u["stoi"] == pytest.approx(stoi(wav[:n], resynth, 16000), abs=1e-6)
        again = ex.extract(resynth)["hubert"][0][: units.size]
        assert u["agree"] == int(np.sum(again == units[: again.size])) and u["frames"] == units.size
        assert u["errors_resynth"] == word_errors(row["transcript"], u["hyp_resynth"])
    words = sum(u["words"] for u in utts)
    want = 100 * sum(u["errors_original"] for u in utts) / words
    assert summary["wer_original"] == pytest.approx(want, abs=0.01)
    lo, hi = summary["unit_agreement_ci"]
    assert lo <= summary["unit_agreement"] <= hi
    assert cli.main(args) != 0 and "exists" in capsys.readouterr().err  # --json kept


def test_bad_input_is_named(setup, tmp_path, capsys):
    root, rows = setup
    broken = tmp_path / "voice0" / "broken.wav"
    broken.parent.mkdir()
    broken.write_bytes(b"RIFF....not audio")
    (tmp_path / "bad.jsonl").write_text(
        json.dumps({"path": str(broken), "transcript": "hello"}) + "\n"
    )
    args = ["vocoder", "eval", str(root / "voc"), str(tmp_path / "bad.jsonl")]
    assert cli.main(args + ["--units", str(root / "units")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "broken.wav" in err and "not readable audio" in err

    # the extractor's 16 units, a vocoder of 4: the first unit id >= 4 is named with its position
    small = _vocoder(tmp_path / "voc4", num_embeddings=4)
    items = read_items(root / "heldout.jsonl")
    units = load_extractor(root / "units").extract(read_audio(items[0].path))["hubert"][0]
    first = int(np.flatnonzero(units >= 4)[0])
    with pytest.raises(InputError, match=f"unit id {units[first]} at position {first} is outside"):
        evaluate_vocoder(small, items[:1], root / "units")

    with pytest.raises(InputError, match="speaker 'voice1' is not one the vocoder was trained on"):
        evaluate_vocoder(
            _vocoder(tmp_path / "voc1", speakers=["voice0"]), items[2:], root / "units"
        )
    (tmp_path / "plain" / "voice0").mkdir(parents=True)
    sf.write(tmp_path / "plain" / "voice0" / "a.wav", read_audio(items[0].path), 16000)
    with pytest.raises(InputError, match="a.wav: no transcript"):
        evaluate_vocoder(root / "voc", read_items(tmp_path / "plain"), root / "units")
