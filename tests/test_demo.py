"""The built-in demo: `tinywave demo --quick --ablation` end to end on the shipped teacher,
checked against independent references.

One quick run (a subprocess, one CPU device, as a user runs it) feeds most tests here: the data
regime (no held-out story in a training corpus, no benchmark waveform from a training synthesis),
the benchmark files against what they must contain, results.json against numbers recomputed from
the saved scores and from the exported student in transformers, the export against a naive
no-cache greedy loop in torch, the cache, and the notebook. Accuracy targets are NOT asserted:
at toy sizes they are noise; the full demo reports them. The teacher package's own command runs
at its --quick size in test_demo_teacher.py.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import soundfile as sf

from tinywave_jax.demo import world as world_text
from tinywave_jax.demo.synth import (
    RATE,
    TARGET_VOICE,
    VOICES,
    WORD_ALIGN,
    render,
    synthesize_words,
    utterance_voice,
)
from tinywave_jax.demo.teacher import PACKAGE_DIR, teacher_world

pytestmark = pytest.mark.slow
STRANGER = world_text.WorldSplits(kind="stranger")  # the shipped teacher's world
ROWS = ("teacher", "baseline", "init_ce", "logit", "topk_cached", "hidden", "student")


def _env() -> dict:
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)  # one CPU device, as `tinywave demo` runs for a user
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _demo(workdir: Path, *extra) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "tinywave_jax.cli",
            "demo",
            "--quick",
            "--workdir",
            str(workdir),
            *extra,
        ],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("demo") / "quick"
    proc = _demo(workdir, "--ablation")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return workdir, proc.stdout


# ---------------------------------------------------------------- the world and its audio


def test_world_splits_are_disjoint_and_wrong_endings_change_only_who():
    """The shipped teacher's name-swap world: held-out stories are in no training split; an sSC
    wrong ending is the right one with its first person replaced by a name the story never
    mentions, and nothing else changed. (Binding worlds: tests/test_demo_speech.py.)"""
    world = world_text.make_world(STRANGER)
    texts = {k: {s.text for s in v} for k, v in world.items()}
    assert sum(map(len, texts.values())) == sum(map(len, world.values()))  # all distinct
    assert not texts["train"] & (texts["test"] | texts["validation"])
    assert world == world_text.make_world(STRANGER)  # reproducible
    names = set(world_text.NAMES)
    for s in world["test"] + world["validation"] + world["train"][:300]:
        right, wrong = world_text.words_of(s.ending), world_text.words_of(s.wrong)
        assert len(right) == len(wrong)
        changed = {(r, w) for r, w in zip(right, wrong) if r != w}
        assert len(changed) == 1, s.id
        ((r, w),) = changed
        assert r.capitalize() in s.people and w.capitalize() == s.decoy
        assert s.decoy in names and s.decoy.lower() not in world_text.words_of(s.text)
    # the stranger is drawn uniformly: no name is much more often the wrong one
    from collections import Counter

    counts = Counter(s.decoy for s in world["train"])
    assert max(counts.values()) < 2 * min(counts.values())
    vocab = {w for s in world["train"] for w in world_text.words_of(s.text)}
    for word, nonword in world_text.word_pairs():
        assert word in vocab and nonword not in vocab, (word, nonword)
    assert set(world_text.vocabulary()) >= vocab


def test_settings_fail_naming_the_key():
    from tinywave_jax.demo.settings import demo_settings, teacher_settings
    from tinywave_jax.errors import ConfigError

    assert demo_settings(quick=True, overrides=["distill_steps=7"]).distill_steps == 7
    with pytest.raises(ConfigError, match="demo.nonsense"):
        demo_settings(overrides=["nonsense=1"])
    with pytest.raises(ConfigError, match="lr_sweep"):
        demo_settings(overrides=["lr_sweep=[]"])
    with pytest.raises(ConfigError, match=r"demo.lr_sweep\[1\]"):
        demo_settings(overrides=["lr_sweep=[0.001, fast]"])
    with pytest.raises(ConfigError, match="bootstrap"):
        demo_settings(overrides=["bootstrap=0"])
    with pytest.raises(ConfigError, match="demo-teacher.shape.hidden_size"):
        teacher_settings(overrides=["shape.hidden_size=big"])
    with pytest.raises(ConfigError, match="world"):
        teacher_settings(overrides=["world.test=1"])


def test_run_configs_fail_naming_the_key_as_they_are_built():
    """The demo's run configs are typed TrainConfig / DistillConfig from the start: a bad key in
    a section fails where the config is made, naming the run and the key."""
    from tinywave_jax.demo import demo_settings
    from tinywave_jax.demo.training import correction_config
    from tinywave_jax.errors import ConfigError
    from tinywave_jax.train.config import TrainConfig

    s = demo_settings(quick=True)
    data = {"seq_len": 32, "batch_size": 2}
    assert isinstance(correction_config(s, Path("ck"), data, Path("r")), TrainConfig)
    with pytest.raises(ConfigError, match=r"teacher/correct\.data\.bogus"):
        correction_config(s, Path("ck"), {**data, "bogus": 1}, Path("r"))


def test_stages_need_their_predecessors(tmp_path):
    from tinywave_jax.demo import Demo, demo_settings
    from tinywave_jax.errors import ConfigError

    demo = Demo(tmp_path / "w", demo_settings(quick=True))
    with pytest.raises(ConfigError, match=r"stage bench needs stage\(s\) \['speech', 'tokens'"):
        demo.run(("bench",))
    assert not (tmp_path / "w" / "stages").exists()


def test_word_timings_are_exact():
    """Every word interval holds exactly that word's waveform; pauses between words are silent."""
    sentences = [["the", "red", "kite"], ["tom", "ran"]]
    bank = synthesize_words([w for s in sentences for w in s], VOICES[1])
    wav, words = render(sentences, bank)
    assert [w for w, _, _ in words] == ["the", "red", "kite", "tom", "ran"]
    covered = np.zeros(len(wav), bool)
    for w, start, end in words:
        a, b = round(start * RATE), round(end * RATE)
        np.testing.assert_array_equal(wav[a:b], bank[w])
        assert np.abs(bank[w]).max() > 0.05  # real speech, not silence
        covered[a:b] = True
    assert np.all(wav[~covered] == 0)
    assert all(e1 < s2 for (_, _, e1), (_, s2, _) in zip(words, words[1:]))
    # every word starts on the unit-frame grid, so repeated words get the same frames
    assert all(round(start * RATE) % WORD_ALIGN == 0 for _, start, _ in words)


def test_held_out_audio_is_a_separate_synthesis():
    """Every utterance has its own voice variant; held-out ones use speeds no training utterance
    of that voice uses, so their word waveforms differ from every training rendering."""
    train = [utterance_voice(TARGET_VOICE, f"train{i:04d}", False) for i in range(300)]
    held = [utterance_voice(TARGET_VOICE, f"test{i:04d}", True) for i in range(300)]
    assert utterance_voice(TARGET_VOICE, "train0001", False) == train[1]  # reproducible
    assert len({(v.speed, v.pitch) for v in train}) > 100  # many renderings
    assert {v.speed for v in train}.isdisjoint({v.speed for v in held})
    assert all(abs(v.speed - TARGET_VOICE.speed) <= 14 for v in train + held)
    words = ["bakery", "bread", "anna", "the"]
    test = synthesize_words(words, held[0])
    for variant in train[:4]:
        other = synthesize_words(words, variant)
        for w in words:
            assert not (len(other[w]) == len(test[w]) and np.array_equal(other[w], test[w])), w


# ---------------------------------------------------------------- the quick run


def test_quick_demo_runs_every_stage(quick_run):
    workdir, stdout = quick_run
    stages = ("speech", "tokens", "teacher", "student", "ablation", "bench", "export")
    for k, stage in enumerate(stages, 1):
        assert f"[{k}/7] {stage}: done" in stdout
        assert (workdir / "stages" / f"{stage}.json").is_file()
    for name in (
        "results.md",
        "results.json",
        "loss_curves.png",
        "attention.png",
        "generation.json",
        "student_hf/config.json",
        "student_hf/model.safetensors",
    ):
        assert (workdir / name).is_file(), name


def test_held_out_stories_and_waveforms_are_in_no_training_corpus(quick_run):
    """The distillation corpus holds training stories only; no benchmark or held-out file equals
    any training file, and the distillation corpus is the teacher's own target-voice subset."""
    from tinywave_jax.data.corpus_read import CorpusSource

    workdir, _ = quick_run
    speech = workdir / "speech"
    distill = [json.loads(x) for x in (speech / "distill.jsonl").read_text().splitlines()]
    heldout = [json.loads(x) for x in (speech / "heldout.jsonl").read_text().splitlines()]
    train_stories = {x["transcript"] for x in distill}
    assert all(x["split"] == "train" and x["speaker"] == TARGET_VOICE.name for x in distill)
    assert not train_stories & {x["transcript"] for x in heldout}
    src = CorpusSource(workdir / "tokens" / "corpus" / "distill", "train")
    assert len(src) == len(distill) and {src[i]["id"] for i in range(len(src))} == {
        x["id"] for x in distill
    }
    train_hashes = {sf.read(speech / x["path"])[0].tobytes() for x in distill}
    bench = sorted((speech / "bench").rglob("*.wav"))
    assert len(bench) > 20
    for path in bench + [speech / x["path"] for x in heldout]:
        assert sf.read(path)[0].tobytes() not in train_hashes, path
    # the teacher's world: the distillation stories are its first training stories
    world = world_text.make_world(
        world_text.WorldSplits(
            **teacher_world(json.loads((PACKAGE_DIR / "provenance.json").read_text()))
        )
    )
    assert [x["transcript"] for x in distill] == [s.text for s in world["train"][: len(distill)]]


def test_story_cloze_pairs_share_their_context(quick_run):
    """sSC / tSC: positive and negative audio are sample-identical up to the ending and differ
    right after it; sSC negatives are the wrong endings, tSC negatives another test story's."""
    workdir, _ = quick_run
    items = json.loads((workdir / "speech" / "bench" / "items.json").read_text())
    story_by_id = {s.id: s for s in world_text.make_world(STRANGER)["test"]}
    test_endings = {story_by_id[it["story"]].ending for it in items["tsc"]}
    for task in ("ssc", "tsc"):
        assert items[task]
        for it in items[task]:
            story = story_by_id[it["story"]]
            assert it["positive"] == story.ending
            if task == "ssc":
                assert it["negative"] == story.wrong
            else:
                assert it["negative"] in test_endings - {story.ending}
            pos, rate = sf.read(workdir / "speech" / "bench" / task / it["files"][0])
            neg, _ = sf.read(workdir / "speech" / "bench" / task / it["files"][1])
            start = round(it["ending_start"] * rate)
            assert start > 0.4 * len(pos)  # two context sentences first
            np.testing.assert_array_equal(pos[:start], neg[:start])
            assert not np.array_equal(pos[start:], neg[start:])


def test_cloze_pairs_get_the_same_context_units(quick_run):
    """The teacher's units extractor turns a pair's shared context audio into the same units in
    both files (no utterance-level normalisation), and a word repeated within an utterance into
    the same units each time (frame-aligned words)."""
    from tinywave_jax.audio.extractor import load_extractor
    from tinywave_jax.audio.io import read_audio

    workdir, _ = quick_run
    extractor = load_extractor(workdir / "tokens" / "units")
    items = json.loads((workdir / "speech" / "bench" / "items.json").read_text())
    for it in items["ssc"]:
        pos, neg = (
            extractor.extract(read_audio(workdir / "speech" / "bench" / "ssc" / f))["hubert"][0]
            for f in it["files"]
        )
        shared = int(it["ending_start"] * 25) - 3  # frames whose +-2 delta window is context
        assert shared > 20
        np.testing.assert_array_equal(pos[:shared], neg[:shared])
    manifest = [
        json.loads(x) for x in (workdir / "speech" / "distill.jsonl").read_text().splitlines()
    ]
    repeats = 0
    for rec in manifest:
        units = extractor.extract(read_audio(workdir / "speech" / rec["path"]))["hubert"][0]
        seen = {}
        for word, start, end in rec["words"]:
            a, b = round(start * 25) + 2, round(end * 25) - 2  # frames inside the word
            if b - a >= 2:
                if word in seen:
                    np.testing.assert_array_equal(
                        units[a:b], seen[word], err_msg=f"{rec['id']} {word}"
                    )
                    repeats += 1
                seen[word] = units[a:b]
    assert repeats > 10


def test_results_json_holds_every_row_with_intervals(quick_run):
    """Every row has the four metrics, their intervals and pair counts; point estimates equal the
    saved per-pair outcomes; the sweep's choice is the lowest validation perplexity; the
    student-minus-baseline difference matches the two rows."""
    workdir, _ = quick_run
    res = json.loads((workdir / "results.json").read_text())
    table = (workdir / "results.md").read_text()
    for model in ROWS:
        row = res[model]
        raw = json.loads((workdir / "scores" / f"{model}.json").read_text())
        assert row["pairs"] == {t: len(raw[t]) for t in ("ssc", "swuggy", "tsc")}
        assert row["pairs"]["ssc"] == 6
        for k, task in (("ssc", "ssc"), ("tsc", "tsc"), ("words", "swuggy")):
            assert row[k] == pytest.approx(100 * np.mean(raw[task]), abs=0.01)
            lo, hi = row[f"{k}_ci"]
            assert 0 <= lo <= row[k] <= hi <= 100
        nll, tok = raw["ppl"]
        assert row["ppl"] == pytest.approx(math.exp(sum(nll) / sum(tok)), rel=1e-3)
        assert row["ppl_ci"][0] <= row["ppl"] <= row["ppl_ci"][1]
        assert f"{row['ssc']:.1f} [{row['ssc_ci'][0]:.1f}, {row['ssc_ci'][1]:.1f}]" in table
        if model != "teacher":
            assert row["lr"] == float(min(row["lr_sweep"], key=row["lr_sweep"].get))
    diff = res["student_minus_baseline"]
    for k in ("ssc", "tsc"):
        assert diff[k]["diff"] == pytest.approx(res["student"][k] - res["baseline"][k], abs=0.02)
        assert diff[k]["ci"][0] <= diff[k]["diff"] <= diff[k]["ci"][1]
    assert res["environment"]["packages"]["jax"] == jax.__version__  # what computed the table
    assert set(res["targets"]) >= {
        "teacher_ssc_ge_75",
        "ssc_student_above_baseline",
        "student_minus_baseline_interval_above_0",
        "ppl_student_below_baseline",
    }


def test_cached_row_trains_from_the_teacher_cache_alone(quick_run, tmp_path):
    """The ablation's cached top-k row: built once (k = 64, the corrected teacher over the
    distillation corpus), every run of its sweep reads that cache with the logit row's data,
    steps and learning rates, starts from the teacher's mapped layers cut beforehand and loads no
    teacher weights (its config trains with the teacher's params/ deleted); results.json holds
    each row's training time and the cache's build."""
    import jax
    import yaml

    from tinywave_jax.checkpoint import load_model
    from tinywave_jax.config import from_dict
    from tinywave_jax.distill.layer_map import resolve_layer_map
    from tinywave_jax.distill.teacher_cache import teacher_identity
    from tinywave_jax.train.config import DistillConfig, TeacherConfig
    from tinywave_jax.train.metrics import read_metrics
    from tinywave_jax.train.recipes import prepare

    workdir, _ = quick_run
    res = json.loads((workdir / "results.json").read_text())
    settings = json.loads((workdir / "settings.json").read_text())
    teacher = workdir / "runs" / "teacher" / "correct" / "final"
    assert "| cached top-k logit KD (k=64) (2 layers) | " in (workdir / "results.md").read_text()
    rec = json.loads((workdir / "teacher_cache.json").read_text())
    info = json.loads((workdir / "teacher_cache" / "cache.json").read_text())
    n = len((workdir / "speech" / "distill.jsonl").read_text().splitlines())
    assert info["top_k"] == 64 and info["corpus"]["split"] == "train"
    assert info["corpus"]["records"] == n and info["kinds"] == ["speech"]
    assert info["teacher"] == teacher_identity(TeacherConfig(path=str(teacher), dtype="float32"))
    build = res["topk_cached"]["teacher_cache"]
    assert build == rec["build"] and build["wall_seconds"] > 0 and build["skipped"] == 0
    # 64 uint16 ids + 64 float16 log-probs per token, plus each .npy file's header
    assert 0 < build["bytes"] - 256 * build["tokens"] <= 2 * 256 * build["shards"]
    # the cut student: the teacher's mapped layers, as a distill run cuts them
    t_params, t_cfg, _ = load_model(teacher, as_numpy=True)
    s_params, _, s_info = load_model(rec["start"], as_numpy=True)
    layers = resolve_layer_map(
        tuple(settings["layer_map"]), t_cfg.num_hidden_layers, settings["student_layers"]
    ).init_teacher_layers
    assert s_info["provenance"]["teacher_layers"] == list(layers)
    for a, b in zip(jax.tree.leaves(s_params["layers"]), jax.tree.leaves(t_params["layers"])):
        np.testing.assert_array_equal(a, b[list(layers)])
    for lr in settings["lr_sweep"]:
        run = workdir / "runs" / "topk_cached" / f"lr{lr:g}"
        cfg = yaml.safe_load((run / "run.yaml").read_text())
        logit = yaml.safe_load((workdir / "runs" / "logit" / f"lr{lr:g}" / "run.yaml").read_text())
        assert cfg["teacher"]["cache"] == rec["cache"] == str(workdir / "teacher_cache")
        assert cfg["student"]["path"] == rec["start"] and cfg["student"]["num_layers"] is None
        assert cfg["distill"]["terms"] == {"topk_kl": 1.0} and cfg["distill"]["top_k"] == 64
        assert cfg["distill"]["weights"] == {"ce": 1.0, "logit_kl": 0, "hidden": 0, "attention": 0}
        for key in ("data", "train"):
            assert cfg[key] == logit[key], key
        assert cfg["optimizer"] == logit["optimizer"] and cfg["optimizer"]["learning_rate"] == lr
        assert not prepare(from_dict(DistillConfig, cfg)).spec.runs_teacher
        assert json.loads((run / "final" / "tinywave.json").read_text())["provenance"][
            "teacher_cache"
        ] == str(workdir / "teacher_cache")
        metrics = read_metrics(run)
        assert metrics[-1]["topk_kl"] > 0 and "logit_kl" not in metrics[-1]
        for row in ("topk_cached", "logit"):
            timing = res[row]["train_seconds"][f"{lr:g}"]
            assert timing["wall_seconds"] > 0 and timing["cpu_seconds"] > 0, row
    # no teacher weights read: the same config trains with the teacher's params/ deleted
    stripped = tmp_path / "teacher"
    shutil.copytree(teacher, stripped, ignore=shutil.ignore_patterns("params"))
    assert not (stripped / "params").exists() and (teacher / "params").is_dir()
    run = workdir / "runs" / "topk_cached" / f"lr{settings['lr_sweep'][0]:g}"
    proc = subprocess.run(
        [sys.executable, "-m", "tinywave_jax.cli", "distill", str(run / "run.yaml")]
        + [f"teacher.path={stripped}", f"run_dir={tmp_path / 'run'}", "train.steps=2"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert read_metrics(tmp_path / "run")[-1]["topk_kl"] > 0


def test_q8_0_row_is_the_gguf_export_scored_in_llama_cpp(quick_run):
    """The table's q8_0 row: student.q8_0.gguf (q8_0 tensors) scored by llama.cpp on the same
    pairs and units, its point estimates equal to its saved outcomes, its difference to the
    float32 student consistent with both rows, close to that student (8-bit weights), and its
    greedy continuation reported beside JAX's and transformers'."""
    import gguf

    from tinywave_jax.demo.results import table_of

    workdir, _ = quick_run
    res = json.loads((workdir / "results.json").read_text())
    row, student = res["student_q8_0"], res["student"]
    path = workdir / "student.q8_0.gguf"
    assert row["gguf"] == str(path) and row["gguf_bytes"] == path.stat().st_size
    types = {t.tensor_type.name for t in gguf.GGUFReader(path).tensors}
    assert "Q8_0" in types and "F32" in types  # matrices quantized, norms kept in float32
    raw = json.loads((workdir / "scores" / "student_q8_0.json").read_text())
    f32 = json.loads((workdir / "scores" / "student.json").read_text())
    agree = []
    for k, task in (("ssc", "ssc"), ("tsc", "tsc"), ("words", "swuggy")):
        assert row[k] == pytest.approx(100 * np.mean(raw[task]), abs=0.01)
        assert row[f"{k}_ci"][0] <= row[k] <= row[f"{k}_ci"][1]
        d = res["q8_0_minus_student"][k]
        assert d["diff"] == pytest.approx(row[k] - student[k], abs=0.02)
        agree += [a == b for a, b in zip(raw[task], f32[task])]
    assert row["outcome_agreement"] == pytest.approx(100 * np.mean(agree), abs=0.01)
    assert row["outcome_agreement"] >= 80
    assert row["ppl"] == pytest.approx(student["ppl"], rel=0.02) and row["ppl"] != student["ppl"]
    assert "q8_0_ssc_tsc_within_1pt_of_student" in res["targets"]
    table = (workdir / "results.md").read_text()
    assert "| Distilled student, q8_0 GGUF in llama.cpp (" in table and "q8_0 - student:" in table
    assert table_of(res) == table  # results.md re-renders from results.json alone
    gen = json.loads((workdir / "generation.json").read_text())
    assert gen["gguf"] == str(path) and len(gen["llama_cpp_q8_0"]) == len(gen["jax"])
    same = next(
        (i for i, (a, b) in enumerate(zip(gen["jax"], gen["llama_cpp_q8_0"])) if a != b),
        len(gen["jax"]),
    )
    assert gen["llama_cpp_common_prefix"] == same


def test_bootstrap_intervals_match_the_normal_approximation():
    """For many Bernoulli outcomes the 95 % paired-bootstrap interval is the textbook
    p +- 1.96 sqrt(p (1 - p) / n); identical models give a zero-width difference interval."""
    from tinywave_jax.demo.evaluate import difference, summarize

    rng = np.random.default_rng(0)
    a = (rng.random(900) < 0.7).astype(float)
    b = (rng.random(900) < 0.6).astype(float)
    row = summarize({"ssc": a}, draws=4000)
    half = 100 * 1.96 * math.sqrt(a.mean() * (1 - a.mean()) / len(a))
    assert row["ssc_ci"][0] == pytest.approx(row["ssc"] - half, abs=0.6)
    assert row["ssc_ci"][1] == pytest.approx(row["ssc"] + half, abs=0.6)
    d = difference({"ssc": a}, {"ssc": b}, draws=4000)["ssc"]
    sd = 100 * math.sqrt((a - b).var() / len(a))
    assert d["ci"][0] == pytest.approx(d["diff"] - 1.96 * sd, abs=0.8)
    assert difference({"ssc": a}, {"ssc": a}, draws=500)["ssc"] == {"diff": 0.0, "ci": [0.0, 0.0]}


def test_student_perplexity_matches_transformers(quick_run):
    """The student's test perplexity in results.json equals one recomputed with transformers from
    the exported Hugging Face folder."""
    import torch
    from transformers import LlamaForCausalLM

    from tinywave_jax.data.layout import resolve_layout
    from tinywave_jax.eval.perplexity import corpus_seqs

    workdir, _ = quick_run
    res = json.loads((workdir / "results.json").read_text())
    hf = LlamaForCausalLM.from_pretrained(str(workdir / "student_hf"), dtype=torch.float32).eval()
    layout = resolve_layout(str(workdir / "tokens" / "layout.json"), hf.config.vocab_size)
    nll, n = 0.0, 0
    for seq in corpus_seqs(workdir / "tokens" / "corpus" / "heldout", "test", layout):
        ids = torch.tensor(seq.ids[None])
        with torch.no_grad():
            logp = torch.log_softmax(hf(ids).logits[0, :-1].double(), -1)
        tok = logp.gather(1, ids[0, 1:, None])[:, 0]
        nll -= float(tok[seq.score_from - 1 :].sum())
        n += len(seq.ids) - seq.score_from
    assert n == res["student"]["ppl_tokens"]
    assert math.exp(nll / n) == pytest.approx(res["student"]["ppl"], rel=2e-3)


def test_export_continues_like_a_naive_greedy_loop(quick_run):
    """generation.json's JAX continuation equals argmax decoding with full recomputation (no KV
    cache) by the exported transformers model."""
    import torch
    from transformers import LlamaForCausalLM

    workdir, _ = quick_run
    gen = json.loads((workdir / "generation.json").read_text())
    assert gen["equal"] and gen["jax"] == gen["transformers"] and len(gen["jax"]) == 8
    hf = LlamaForCausalLM.from_pretrained(str(workdir / "student_hf"), dtype=torch.float32).eval()
    ids = list(gen["prompt"])
    for _ in range(len(gen["jax"])):
        with torch.no_grad():
            ids.append(int(hf(torch.tensor([ids])).logits[0, -1].argmax()))
    assert ids[len(gen["prompt"]) :] == gen["jax"]


def test_plots_are_images(quick_run):
    import matplotlib.image as mpimg

    workdir, _ = quick_run
    for name in ("loss_curves.png", "attention.png"):
        img = mpimg.imread(workdir / name)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
        assert img[..., :3].std() > 0.05  # not a blank canvas


def test_a_second_run_prints_the_same_table(quick_run, tmp_path):
    """Reproducible: a fresh work folder gives the identical results.md."""
    workdir, _ = quick_run
    proc = _demo(tmp_path / "again", "--ablation")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "again" / "results.md").read_text() == (workdir / "results.md").read_text()


def test_a_workdir_from_before_a_setting_existed_resumes_at_its_default(tmp_path):
    """settings.json written before `variant` existed: the run stands for variant=base (the
    default), so base resumes it and expressive is refused, naming the setting."""
    from tinywave_jax.demo.settings import DemoSettings, settings_dict
    from tinywave_jax.demo.stages import StagedRun
    from tinywave_jax.errors import OutputExistsError

    old = settings_dict(DemoSettings())
    del old["variant"], old["expressive_workdir"]
    (tmp_path / "settings.json").write_text(json.dumps(old))
    StagedRun(tmp_path, DemoSettings())
    with pytest.raises(OutputExistsError, match=r"\(variant\)"):
        StagedRun(tmp_path, DemoSettings(variant="expressive"))


def test_rerun_is_cached_and_other_settings_are_refused(quick_run):
    workdir, _ = quick_run
    before = {p: p.stat().st_mtime for p in (workdir / "stages").glob("*.json")}
    proc = _demo(workdir, "--ablation")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count(": cached") == 7
    assert {p: p.stat().st_mtime for p in (workdir / "stages").glob("*.json")} == before
    other = _demo(workdir, "--set", "distill_steps=3")
    assert other.returncode == 2 and "distill_steps" in other.stderr


@pytest.mark.parametrize("damage", ["flip", "delete"])
def test_an_altered_teacher_fails_naming_the_file_before_any_work(tmp_path, damage):
    teacher = tmp_path / "teacher"
    shutil.copytree(PACKAGE_DIR, teacher)
    if damage == "flip":
        target = teacher / "model.safetensors"
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0xFF
        target.write_bytes(bytes(data))
    else:
        target = teacher / "units" / "units.json"
        target.unlink()
    proc = _demo(tmp_path / "w", "--set", f"teacher_dir={teacher}")
    assert proc.returncode == 2
    assert str(target) in proc.stderr and ("altered" in proc.stderr or "missing" in proc.stderr)
    assert not (tmp_path / "w" / "speech").exists()
    # nor pins the workdir's settings: the same folder takes a corrected run
    assert not (tmp_path / "w" / "settings.json").exists()
    missing = _demo(tmp_path / "w2", "--set", f"teacher_dir={tmp_path / 'nowhere'}")
    assert missing.returncode == 2 and "nowhere" in missing.stderr


def test_notebook_runs_on_the_quick_workdir(quick_run):
    import nbformat
    from nbclient import NotebookClient

    workdir, _ = quick_run
    nb = nbformat.read(Path(__file__).parents[1] / "notebooks" / "demo.ipynb", as_version=4)
    os.environ["TINYWAVE_DEMO_WORKDIR"] = str(workdir)
    os.environ["TINYWAVE_DEMO_QUICK"] = "1"
    try:
        NotebookClient(
            nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}
        ).execute()
    finally:
        del os.environ["TINYWAVE_DEMO_WORKDIR"], os.environ["TINYWAVE_DEMO_QUICK"]
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(str(o.get("text", "")) for o in outputs)
    assert "cached" in text and "continuation:" in text
