"""The built-in demo: `tinywave demo --quick` end to end, checked against independent references.

One quick run (a subprocess, one CPU device, as a user runs it) feeds every test here: its word
timings against the synthesised audio, the benchmark files against what they must contain, the
results table against a perplexity recomputed with transformers from the exported student, the
export against a naive no-cache greedy loop in torch, the cache (a rerun does nothing), and the
notebook (executed with nbclient on the same work folder). Accuracy targets are NOT asserted: at
toy sizes they are noise; the full demo reports them.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tinywave_jax.demo import stories as story_data
from tinywave_jax.demo.corpus import demo_stories
from tinywave_jax.demo.settings import demo_settings
from tinywave_jax.demo.synth import RATE, TARGET_VOICE, VOICES, WORD_ALIGN, render, synthesize_words

pytestmark = pytest.mark.slow


def _env() -> dict:
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)            # one CPU device, as `tinywave demo` runs for a user
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _demo(workdir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tinywave_jax.cli", "demo", "--quick",
                           "--workdir", str(workdir)], env=_env(), capture_output=True, text=True,
                          timeout=900)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("demo") / "quick"
    proc = _demo(workdir)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return workdir, proc.stdout


def test_stories_are_well_formed():
    all_stories = story_data.stories()
    assert 30 <= len(all_stories) <= 60
    assert len({s.id for s in all_stories}) == len(all_stories)
    for s in all_stories:
        assert 4 <= len(s.sentences) <= 6, s.id
        assert s.wrong != s.ending and s.wrong.endswith(".") and s.ending.endswith(".")
    vocab = {w for s in all_stories for x in s.sentences for w in story_data.words_of(x)}
    for word, nonword in story_data.word_pairs():
        assert word in vocab, word
        assert nonword not in vocab and nonword != word


def test_generated_stories_differ_only_in_who_and_what():
    """Template stories: distinct, reproducible, and the wrong ending is the right one's sentence
    with every person, object, colour and place replaced by one the story never mentions."""
    gen = story_data.generated_stories(200, seed=3)
    assert [s.id for s in gen] == [f"gen{i:03d}" for i in range(200)]
    assert len({s.sentences for s in gen}) == 200
    assert gen == story_data.generated_stories(200, seed=3) != story_data.generated_stories(200, seed=4)
    entity_words = {w.lower() for group in (story_data.NAMES, story_data.OBJECTS,
                                            story_data.COLOURS, story_data.PLACES) for w in group}
    for s in gen:
        right, wrong = story_data.words_of(s.ending), story_data.words_of(s.wrong)
        context = {w for c in s.context for w in story_data.words_of(c)}
        assert len(right) == len(wrong)
        for r, w in zip(right, wrong):
            if r in entity_words:
                assert w in entity_words and w not in context and r in context, (s.id, r, w)
            else:
                assert r == w, s.id


def test_settings_fail_naming_the_key():
    from tinywave_jax.config import ConfigError
    from tinywave_jax.demo.settings import demo_settings
    assert demo_settings(quick=True, overrides=["distill_steps=7"]).distill_steps == 7
    with pytest.raises(ConfigError, match="student_layers"):
        demo_settings(overrides=["student_layers=6"])      # not fewer layers than the teacher
    with pytest.raises(ConfigError, match="demo.nonsense"):
        demo_settings(overrides=["nonsense=1"])
    with pytest.raises(ConfigError, match="teacher.hidden_size"):
        demo_settings(overrides=["teacher.hidden_size=big"])
    with pytest.raises(ConfigError, match="generated_stories"):
        demo_settings(overrides=["generated_stories=-1"])
    with pytest.raises(ConfigError, match="units_fit_hours"):
        demo_settings(overrides=["units_fit_hours=0"])


def test_stages_need_their_predecessors(tmp_path):
    from tinywave_jax.demo import Demo, demo_settings
    demo = Demo(tmp_path / "w", demo_settings(quick=True))
    with pytest.raises(ValueError, match=r"stage bench needs stage\(s\) \['speech', 'tokens'"):
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
        assert np.abs(bank[w]).max() > 0.05           # real speech, not silence
        covered[a:b] = True
    assert np.all(wav[~covered] == 0)
    assert all(e1 < s2 for (_, _, e1), (_, s2, _) in zip(words, words[1:]))
    # every word starts on the unit-frame grid, so repeated words get the same frames
    assert all(round(start * RATE) % WORD_ALIGN == 0 for _, start, _ in words)


def test_quick_demo_runs_every_stage(quick_run):
    workdir, stdout = quick_run
    for k, stage in enumerate(("speech", "tokens", "teacher", "student", "bench", "export"), 1):
        assert f"[{k}/6] {stage}: done" in stdout
        assert (workdir / "stages" / f"{stage}.json").is_file()
    for name in ("results.md", "results.json", "loss_curves.png", "attention.png",
                 "generation.json", "student_hf/config.json", "student_hf/model.safetensors"):
        assert (workdir / name).is_file(), name


def test_corpus_matches_the_manifests(quick_run):
    """The tokenized corpus holds the synthesised utterances with their word timings, split by
    story: no story is in two splits, and the target voice is not in the pretraining corpus."""
    from tinywave_jax.data.corpus import CorpusSource
    workdir, _ = quick_run
    lines = [json.loads(x) for x in (workdir / "speech" / "target.jsonl").read_text().splitlines()]
    by_id = {x["id"]: x for x in lines}
    split_of = {}
    for split in ("train", "validation", "test"):
        src = CorpusSource(workdir / "tokens" / "corpus" / "target", split)
        for i in range(len(src)):
            rec = src[i]
            want = by_id[rec["id"]]
            assert want["split"] == split and rec["speaker"] == TARGET_VOICE.name
            assert [w for w, _, _ in rec["words"]] == [w for w, _, _ in want["words"]]
            np.testing.assert_allclose([s for _, s, _ in rec["words"]],
                                       [s for _, s, _ in want["words"]], atol=1e-5)
            units, times = rec["streams"]["hubert"]
            assert len(units) > 0 and times[-1] < rec["duration"]
            split_of.setdefault(rec["id"].split("/")[1], set()).add(split)
    assert all(len(s) == 1 for s in split_of.values())
    pre = [json.loads(x) for x in (workdir / "speech" / "pretrain.jsonl").read_text().splitlines()]
    assert TARGET_VOICE.name not in {x["speaker"] for x in pre}
    assert {x["id"].split("/")[1] for x in pre} & {k for k, v in split_of.items() if "test" in v} == set()


def test_story_cloze_pairs_share_their_context(quick_run):
    """sSC / tSC: positive and negative audio are sample-identical up to the ending and differ
    right after it; sSC negatives are the written wrong endings, tSC negatives another test
    story's ending."""
    workdir, _ = quick_run
    items = json.loads((workdir / "speech" / "bench" / "items.json").read_text())
    story_by_id = {s.id: s for s in demo_stories(demo_settings(quick=True))}
    assert any(i.startswith("gen") for i in story_by_id) and any(i.startswith("story") for i in story_by_id)
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
            assert start > 0.4 * len(pos)                  # several context sentences first
            np.testing.assert_array_equal(pos[:start], neg[:start])
            assert not np.array_equal(pos[start:], neg[start:])


def test_cloze_pairs_get_the_same_context_units(quick_run):
    """The demo's units extractor turns a pair's shared context audio into the same units in
    both files (no utterance-level normalisation), and a word repeated within an utterance into
    the same units each time (frame-aligned words)."""
    from tinywave_jax.audio.extractor import load_extractor
    from tinywave_jax.audio.io import read_audio
    workdir, _ = quick_run
    extractor = load_extractor(workdir / "tokens" / "units")
    items = json.loads((workdir / "speech" / "bench" / "items.json").read_text())
    for it in items["ssc"]:
        pos, neg = (extractor.extract(read_audio(workdir / "speech" / "bench" / "ssc" / f))["hubert"][0]
                    for f in it["files"])
        shared = int(it["ending_start"] * 25) - 3     # frames whose +-2 delta window is context
        assert shared > 20
        np.testing.assert_array_equal(pos[:shared], neg[:shared])
    manifest = [json.loads(x) for x in (workdir / "speech" / "target.jsonl").read_text().splitlines()]
    repeats = 0
    for rec in manifest:
        units = extractor.extract(read_audio(workdir / "speech" / rec["path"]))["hubert"][0]
        seen = {}
        for word, start, end in rec["words"]:
            a, b = round(start * 25) + 2, round(end * 25) - 2   # frames inside the word
            if b - a >= 2:
                if word in seen:
                    np.testing.assert_array_equal(units[a:b], seen[word], err_msg=f"{rec['id']} {word}")
                    repeats += 1
                seen[word] = units[a:b]
    assert repeats > 10


def test_results_table_matches_an_independent_perplexity(quick_run):
    """results.json is complete and consistent with results.md, and the student's perplexity
    equals one recomputed with transformers from the exported Hugging Face folder."""
    import torch
    from transformers import LlamaForCausalLM

    from tinywave_jax.eval.perplexity import corpus_seqs
    from tinywave_jax.eval.sequences import resolve_layout
    workdir, _ = quick_run
    res = json.loads((workdir / "results.json").read_text())
    table = (workdir / "results.md").read_text()
    for model in ("teacher", "student", "baseline"):
        row = res[model]
        assert set(row) == {"ssc", "tsc", "words", "ppl"}
        for k in ("ssc", "tsc", "words"):
            assert 0 <= row[k] <= 100
        assert row["ppl"] > 1
        line = next(x for x in table.splitlines() if x.startswith("| ") and
                    f"| {row['ssc']:.1f} | {row['tsc']:.1f} | {row['words']:.1f} | "
                    f"{row['ppl']:.2f} |" in x)
        assert line
    assert set(res["acceptance"]) >= {"ssc_student_above_baseline", "ppl_student_closer_to_teacher"}

    hf = LlamaForCausalLM.from_pretrained(str(workdir / "student_hf"), dtype=torch.float32).eval()
    layout = resolve_layout(str(workdir / "tokens" / "layout.json"), hf.config.vocab_size)
    nll, n = 0.0, 0
    for seq in corpus_seqs(workdir / "tokens" / "corpus" / "target", "test", layout):
        ids = torch.tensor(seq.ids[None])
        with torch.no_grad():
            logp = torch.log_softmax(hf(ids).logits[0, :-1].double(), -1)
        tok = logp.gather(1, ids[0, 1:, None])[:, 0]
        nll -= float(tok[seq.score_from - 1:].sum())
        n += len(seq.ids) - seq.score_from
    assert n == res["details"]["student"]["ppl_tokens"]
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
    assert ids[len(gen["prompt"]):] == gen["jax"]


def test_plots_are_images(quick_run):
    import matplotlib.image as mpimg
    workdir, _ = quick_run
    for name in ("loss_curves.png", "attention.png"):
        img = mpimg.imread(workdir / name)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
        assert img[..., :3].std() > 0.05          # not a blank canvas


def test_rerun_is_cached_and_other_settings_are_refused(quick_run):
    workdir, _ = quick_run
    before = {p: p.stat().st_mtime for p in (workdir / "stages").glob("*.json")}
    proc = _demo(workdir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count(": cached") == 6
    assert {p: p.stat().st_mtime for p in (workdir / "stages").glob("*.json")} == before
    other = subprocess.run([sys.executable, "-m", "tinywave_jax.cli", "demo", "--quick",
                            "--workdir", str(workdir), "--set", "distill_steps=3"],
                           env=_env(), capture_output=True, text=True, timeout=300)
    assert other.returncode == 2 and "distill_steps" in other.stderr


def test_notebook_runs_on_the_quick_workdir(quick_run):
    import nbformat
    from nbclient import NotebookClient
    workdir, _ = quick_run
    nb = nbformat.read(Path(__file__).parents[1] / "notebooks" / "demo.ipynb", as_version=4)
    os.environ["TINYWAVE_DEMO_WORKDIR"] = str(workdir)
    os.environ["TINYWAVE_DEMO_QUICK"] = "1"
    try:
        NotebookClient(nb, timeout=600, kernel_name="python3",
                       resources={"metadata": {"path": str(workdir)}}).execute()
    finally:
        del os.environ["TINYWAVE_DEMO_WORKDIR"], os.environ["TINYWAVE_DEMO_QUICK"]
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(str(o.get("text", "")) for o in outputs)
    assert "cached" in text and "continuation:" in text
