"""`tinywave demo-teacher --quick`: the command that made the shipped teacher, at toy size.

Checks the package it writes against independent readers (transformers loads the folder and
scores like our model; sha256 recomputed with hashlib), the data regime it records (held-out
stories in no pretraining manifest), and the shipped package's own provenance.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tinywave_jax.demo.settings import DemoSettings
from tinywave_jax.demo.speech import Cast
from tinywave_jax.demo.teacher import PACKAGE_DIR, TeacherError, verify_teacher

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def quick_teacher(tmp_path_factory):
    root = tmp_path_factory.mktemp("teacher")
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tinywave_jax.cli",
            "demo-teacher",
            "--quick",
            "--out",
            str(root / "pkg"),
            "--workdir",
            str(root / "work"),
            "--set",
            "text_steps=3",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root / "pkg", root / "work"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_package_records_every_file_and_its_origin(quick_teacher):
    pkg, work = quick_teacher
    prov = json.loads((pkg / "provenance.json").read_text())
    files = {str(p.relative_to(pkg)) for p in pkg.rglob("*") if p.is_file()} - {"provenance.json"}
    assert set(prov["files"]) == files
    assert all(prov["files"][f] == _sha(pkg / f) for f in files)
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "layout.json",
        "units/units.json",
    } <= files
    assert (
        prov["command"].startswith("tinywave demo-teacher --out ") and "--quick" in prov["command"]
    )
    assert prov["settings"]["world"] == {
        "test": 6,
        "validation": 4,
        "train": 24,
        "seed": 0,
        "kind": "scene",
    }
    assert prov["settings"]["synthesis"] == "natural"
    for name, digest in prov["data"]["sha256"].items():
        local = work / name if name.startswith("speech/") else None
        if local is not None:
            assert _sha(local) == digest, name
    for split in ("validation", "test"):
        q = prov["quality"][split]
        for k in ("ssc", "tsc", "ppl"):
            assert q[f"{k}_ci"][0] <= q[k] <= q[f"{k}_ci"][1]
    assert verify_teacher(pkg) == prov


def test_text_steps_pretrain_on_text_alone_then_continue_from_that_model(quick_teacher):
    """`text_steps`: a text-only run first, then the mixture's run starting from its final
    model (SpiritLM continues a text LLM), each with its own schedule."""
    import yaml

    pkg, work = quick_teacher
    text = yaml.safe_load((work / "pretrain_text" / "config.yaml").read_text())
    main = yaml.safe_load((work / "pretrain" / "config.yaml").read_text())
    assert text["data"]["corpus"]["mixture"] == {"text": 1.0} and text["train"]["steps"] == 3
    assert text["model"]["shape"] is not None and text["model"]["path"] is None
    assert main["model"]["path"] == str(work / "pretrain_text" / "final")
    assert main["data"]["corpus"]["mixture"] == {"speech": 1.0}
    prov = verify_teacher(pkg)
    assert prov["settings"]["text_steps"] == 3


def test_units_remove_the_speakers_mean_yet_a_cloze_pair_shares_its_context_units(quick_teacher):
    """The natural teacher's units subtract the mean of the first `cmn_seconds` (the setting was
    once ignored: twelve voices' units then differed by each voice's spectral tilt), measured
    inside the context, so both endings of an sSC pair still get the same context units."""
    from tinywave_jax.audio.extractor import load_extractor, read_units_config
    from tinywave_jax.audio.io import read_audio

    _, work = quick_teacher
    units = work / "tokens" / "units"
    spectral = read_units_config(units).phonetic.spectral
    assert spectral.cmn and spectral.cmn_seconds == 3.0
    extractor = load_extractor(units)
    bench = work / "speech" / "bench"
    pairs = json.loads((bench / "items.json").read_text())["ssc"]
    for item in pairs[:6]:
        a, b = (
            extractor.extract(read_audio(bench / "ssc" / f))["hubert"][0] for f in item["files"]
        )
        context = int(item["ending_start"] * extractor.frame_rates["hubert"]) - 1
        assert context > 50
        assert np.array_equal(a[:context], b[:context]), item["story"]


def test_held_out_stories_are_not_in_the_pretraining_corpus(quick_teacher):
    _, work = quick_teacher
    pre = [json.loads(x) for x in (work / "speech" / "pretrain.jsonl").read_text().splitlines()]
    held = [json.loads(x) for x in (work / "speech" / "heldout.jsonl").read_text().splitlines()]
    assert {x["split"] for x in pre} == {"train"}
    assert not {x["transcript"] for x in pre} & {x["transcript"] for x in held}
    cast = Cast(natural=True)  # every training voice; no unseen one
    assert {x["speaker"] for x in pre} == {v.name for v in (*cast.distill, *cast.pretrain)}
    assert {x["speaker"] for x in held} == {v.name for v in cast.distill}
    bench = json.loads((work / "speech" / "bench_unseen" / "items.json").read_text())
    assert {x["speaker"] for x in bench["ssc"]} == {v.name for v in cast.unseen}


def test_transformers_loads_the_package_and_agrees(quick_teacher):
    """The package is a plain Hugging Face folder: transformers' log-probabilities of a corpus
    sequence equal our model's after `tinywave import-hf`."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    from tinywave_jax.checkpoint import load_model
    from tinywave_jax.convert.hf_import import import_hf
    from tinywave_jax.scoring import score_sequences

    pkg, work = quick_teacher
    hf = LlamaForCausalLM.from_pretrained(str(pkg), dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(pkg))
    assert tok.convert_ids_to_tokens(tok("bakery bread")["input_ids"])[-2:] == ["bakery", "bread"]
    ckpt = import_hf(pkg, work / "imported")
    params, config, _ = load_model(ckpt)
    ids = [1, 5, 40, 61, 70, 61, 99, 200, 201]
    ours = np.asarray(score_sequences(params, config, [ids])[0])
    with torch.no_grad():
        logp = torch.log_softmax(hf(torch.tensor([ids])).logits[0, :-1].double(), -1)
    theirs = logp.gather(1, torch.tensor(ids[1:])[:, None])[:, 0].numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_verify_names_the_altered_file(quick_teacher, tmp_path):
    import shutil

    pkg, _ = quick_teacher
    copy = tmp_path / "pkg"
    shutil.copytree(pkg, copy)
    (copy / "layout.json").write_text((copy / "layout.json").read_text() + " ")
    with pytest.raises(TeacherError, match=r"layout\.json: altered"):
        verify_teacher(copy)
    (copy / "provenance.json").unlink()
    with pytest.raises(TeacherError, match=r"provenance\.json: missing"):
        verify_teacher(copy)


def test_shipped_teacher_is_intact_and_worth_distilling():
    """The package in the repository verifies, is at most 50 MB, and its recorded held-out
    quality (measured by the command that made it) clears the demo's bar of 75 %."""
    prov = verify_teacher(PACKAGE_DIR)
    size = sum(p.stat().st_size for p in PACKAGE_DIR.rglob("*") if p.is_file())
    assert size <= 50e6
    test = prov["quality"]["test"]
    assert test["ssc"] >= 75 and test["tsc"] >= 75, test
    # >= 5x the distillation stories
    assert prov["settings"]["world"]["train"] >= 5 * DemoSettings().distill_stories


def test_demo_on_a_natural_speech_teacher_reports_unseen_voices_and_references(
    quick_teacher, tmp_path
):
    """`tinywave demo --quick` on the quick natural-speech package: the distillation corpus in
    the cast's distillation voices, test pairs in its unseen voice too, and the reference rows
    (copy rule, teacher on the endings alone) recomputed here from the saved pair scores."""
    pkg, _ = quick_teacher
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    work = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "tinywave_jax.cli", "demo", "--quick", "--workdir", str(work)]
        + ["--set", f"teacher_dir={pkg}", "--set", "layer_map=[0, 2]"]
        + ["--stages", "speech,tokens,teacher,student,bench"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    cast = Cast(natural=True)
    distill = [
        json.loads(x) for x in (work / "speech" / "distill.jsonl").read_text().split("\n") if x
    ]
    assert {x["speaker"] for x in distill} == {v.name for v in cast.distill}
    unseen = json.loads((work / "speech" / "bench_unseen" / "items.json").read_text())
    assert {x["speaker"] for x in unseen["ssc"]} == {v.name for v in cast.unseen}
    doc = json.loads((work / "results.json").read_text())
    for row in ("copy_rule", "ending_alone", "teacher", "student", "baseline"):
        assert {"ssc", "tsc", "ssc_unseen", "tsc_unseen"} <= set(doc[row]), row
    for ref in ("copy_rule", "ending_alone"):
        saved = json.loads((work / "scores" / f"{ref}.json").read_text())
        assert doc[ref]["ssc"] == pytest.approx(100 * np.mean(saved["ssc"]), abs=0.01)
        assert doc[ref]["tsc_unseen"] == pytest.approx(100 * np.mean(saved["tsc@unseen"]), abs=0.01)
        assert f"{ref}_ssc_le_60" in doc["targets"]
    md = (work / "results.md").read_text()
    assert "sSC unseen voice" in md and "Copy rule" in md and "endings alone" in md
