"""`tinywave demo --variant expressive|interleaved`: TinyWave's other two students end to end.

One quick interleaved run (a subprocess, one CPU device, on the shipped expressive teacher) runs
the expressive variant first in WORKDIR/expressive, as a user's run does, so it feeds the tests of
both variants. Checked against independent references: the speaker-consistency pairs with a
naive autocorrelation pitch estimate in numpy, the cross-modal columns with `tinywave eval`, the
starting points with the expressive run's records. Accuracy targets are not asserted at toy
sizes; the full runs report them (README).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from tinywave_jax.demo.pipeline import Demo
from tinywave_jax.demo.settings import demo_settings, teacher_settings
from tinywave_jax.demo.teacher import PACKAGE_DIR, PACKAGE_DIRS, TeacherError, verify_teacher
from tinywave_jax.errors import ConfigError

CROSS = ("ss", "st", "ts", "tt")


# ---------------------------------------------------------------- bad input (fast)


def test_unknown_variant_lists_the_valid_ones():
    with pytest.raises(ConfigError, match=r"'nope'.*base.*expressive.*interleaved"):
        demo_settings(variant="nope")
    with pytest.raises(ConfigError, match=r"'interleaved'.*base.*expressive"):
        teacher_settings(variant="interleaved")  # no interleaved teacher: it is corrected
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-m", "tinywave_jax.cli", "demo", "--variant", "nope", "--workdir", "x"],
        capture_output=True,
        text=True,
        env=env,
        cwd="/tmp",
    )
    assert proc.returncode == 2 and "base" in proc.stderr and "interleaved" in proc.stderr


def test_variant_settings_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="expressive_workdir: only for --variant interleaved"):
        demo_settings(overrides=["expressive_workdir=x"], variant="expressive")
    with pytest.raises(ConfigError, match="pitch_bins, style_classes"):
        teacher_settings(overrides=["pitch_bins=0"], variant="expressive")
    with pytest.raises(ConfigError, match=r"mixture\.speach: unknown stream kind"):
        teacher_settings(overrides=["mixture={speach: 1.0}"], variant="expressive")
    demo = Demo(tmp_path / "e", demo_settings(True, [], "expressive"), log=lambda m: None)
    with pytest.raises(ConfigError, match="--ablation: only for the base variant"):
        demo.run(ablation=True)


def test_training_length_is_the_teachers_unless_set(tmp_path):
    for variant, teacher in (
        ("base", "base"),
        ("expressive", "expressive"),
        ("interleaved", "expressive"),
    ):
        demo = Demo(tmp_path / variant, demo_settings(False, [], variant), log=lambda m: None)
        prov = json.loads((PACKAGE_DIRS[teacher] / "provenance.json").read_text())
        assert demo.seq_len == prov["settings"]["seq_len"] == (256 if teacher == "base" else 384)
    assert Demo(tmp_path / "s", demo_settings(False, ["seq_len=96"]), log=print).seq_len == 96
    with pytest.raises(ConfigError, match="seq_len: must be >= 1, or 0"):
        demo_settings(overrides=["seq_len=-1"])


def test_a_teacher_of_the_other_variant_is_refused(tmp_path):
    demo = Demo(
        tmp_path / "e",
        demo_settings(True, [f"teacher_dir={PACKAGE_DIR}"], "expressive"),
        log=lambda m: None,
    )
    with pytest.raises(TeacherError, match=r"a base teacher; the expressive variant needs an"):
        demo.run()
    assert not (tmp_path / "e" / "stages").exists()  # refused before any stage ran


def test_interleaved_refuses_an_expressive_workdir_without_a_student(tmp_path):
    demo = Demo(
        tmp_path / "i",
        demo_settings(True, [f"expressive_workdir={tmp_path / 'none'}"], "interleaved"),
        log=lambda m: None,
    )
    with pytest.raises(ConfigError, match=r"none has no finished expressive student"):
        demo.stage_expressive()


# ---------------------------------------------------------------- the shipped expressive teacher


def test_shipped_expressive_teacher_is_intact_and_expressive():
    pkg = PACKAGE_DIRS["expressive"]
    prov = verify_teacher(pkg)
    s = prov["settings"]
    assert s["variant"] == "expressive" and s["pitch_bins"] > 0 and s["style_classes"] > 0
    assert set(s["mixture"]) == {"expressive", "interleaved", "text"}
    layout = json.loads((pkg / "layout.json").read_text())
    assert (layout["num_pitch"], layout["num_style"]) == (s["pitch_bins"], s["style_classes"])
    units = json.loads((pkg / "units" / "units.json").read_text())
    assert "pitch" in json.dumps(units) and "style" in json.dumps(units)
    assert "--variant expressive" in prov["command"]
    assert sum(p.stat().st_size for p in pkg.rglob("*") if p.is_file()) <= 50e6
    test = prov["quality"]["test"]
    for k in ("ssc", "tsc", "voice", "ss", "st", "ts", "tt", "ppl"):
        assert test[f"{k}_ci"][0] <= test[k] <= test[f"{k}_ci"][1], k


# ---------------------------------------------------------------- one quick run of both variants


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("variants") / "interleaved"
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tinywave_jax.cli",
            "demo",
            "--quick",
            "--variant",
            "interleaved",
            "--workdir",
            str(workdir),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {"interleaved": workdir, "expressive": workdir / "expressive", "log": proc.stdout}


def _results(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())


def _run_yaml(folder: Path, row: str) -> dict:
    (run,) = (folder / "runs" / row).glob("lr*")
    return yaml.safe_load((run / "run.yaml").read_text())


@pytest.mark.slow
def test_each_variant_writes_its_table_with_the_extra_columns(runs):
    for variant in ("expressive", "interleaved"):
        doc = _results(runs[variant])
        assert doc["settings"]["variant"] == variant
        for row in ("teacher", "student", "baseline"):
            r = doc[row]
            for k in ("ssc", "tsc", "words", "voice", *CROSS, "ppl"):
                assert r[f"{k}_ci"][0] <= r[k] <= r[f"{k}_ci"][1], (variant, row, k)
        header = (runs[variant] / "results.md").read_text().splitlines()[0]
        assert "| voice | S→S | S→T | T→S | T→T | PPL |" in header
        assert "ts_student_interval_above_50" in doc["targets"]
        assert (runs[variant] / "student_hf" / "config.json").is_file()
    base_rows = set(_results(runs["interleaved"])["rows"])
    assert base_rows == {"student", "baseline"}


@pytest.mark.slow
def test_interleaved_rows_start_from_the_expressive_ones_and_train_on_interleaved_data(runs):
    expr = _results(runs["expressive"])
    student = _run_yaml(runs["interleaved"], "student")
    baseline = _run_yaml(runs["interleaved"], "baseline")
    chosen = json.loads((runs["expressive"] / "stages" / "student.json").read_text())["rows"]
    assert student["student"]["path"] == chosen["student"]["model"]
    assert baseline["model"]["path"] == chosen["baseline"]["model"]
    assert Path(chosen["student"]["model"]).parent.name == f"lr{expr['student']['lr']:g}"
    for cfg in (student, baseline):
        corpus = cfg["data"]["corpus"]
        assert corpus["mixture"] == {"interleaved": 1.0}
        assert corpus["interleaved_speech"] == "expressive"
    correction = yaml.safe_load(
        (runs["interleaved"] / "runs" / "teacher" / "correct" / "run.yaml").read_text()
    )
    assert correction["data"]["corpus"]["mixture"] == {"interleaved": 1.0}
    e_student = _run_yaml(runs["expressive"], "student")
    assert e_student["data"]["corpus"]["mixture"] == {"expressive": 1.0}
    # cut from the teacher, as in TinyWave
    assert e_student["student"]["num_layers"] == 2 and e_student["student"]["path"] is None


def _f0(wav: np.ndarray, rate: int) -> float:
    """Median F0 (Hz) of the voiced 40 ms frames, by plain autocorrelation (a naive reference)."""
    n, out = int(0.04 * rate), []
    lo, hi = rate // 400, rate // 60
    for a in range(0, len(wav) - n, n):
        x = wav[a : a + n] - wav[a : a + n].mean()
        if np.sqrt((x**2).mean()) < 0.02:
            continue
        r = np.correlate(x, x, "full")[n - 1 :]
        lag = lo + int(np.argmax(r[lo:hi]))
        if r[lag] > 0.5 * r[0]:
            out.append(rate / lag)
    return float(np.median(out))


@pytest.mark.slow
def test_speaker_consistency_pairs_change_only_the_endings_pitch(runs):
    bench = runs["expressive"] / "speech" / "bench"
    items = json.loads((bench / "items.json").read_text())
    assert len(items["voice"]) == len(items["ssc"])
    shifts = []
    for k, ssc in enumerate(items["ssc"]):
        pos, rate = sf.read(bench / "salmon" / "speaker_consistency" / f"sample_{k}_0.wav")
        neg, _ = sf.read(bench / "salmon" / "speaker_consistency" / f"sample_{k}_1.wav")
        cut = int(ssc["ending_start"] * rate)
        np.testing.assert_array_equal(pos[:cut], neg[:cut])  # the same context, sample for sample
        assert not np.array_equal(pos[cut:], neg[cut:])
        shifts.append(abs(np.log(_f0(neg[cut:], rate) / _f0(pos[cut:], rate))))
    # 30 espeak pitch steps: the ending moves out of the story's pitch range
    assert np.median(shifts) > np.log(1.15), shifts


@pytest.mark.slow
def test_cross_modal_columns_equal_tinywave_eval(runs):
    from tinywave_jax.eval import evaluate

    folder = runs["interleaved"]
    doc = _results(folder)
    for key in CROSS:
        result = evaluate(
            doc_model(folder),
            f"cloze_{key}",
            folder / "speech" / "bench" / "crossmodal.jsonl",
            extractor=folder / "tokens" / "units",
            layout=str(folder / "tokens" / "layout.json"),
            tokenizer=str(folder / "tokens" / "teacher" / "tokenizer"),
            log=lambda m: None,
        )["result"]
        assert 100 * result["accuracy"] == pytest.approx(doc["student"][key], abs=0.01), key


def doc_model(folder: Path) -> str:
    rows = json.loads((folder / "stages" / "student.json").read_text())["rows"]
    return rows["student"]["model"]
