"""`tinywave eval` against independent references: log-likelihoods from the transformers torch
model loaded from our EXPORTED checkpoint, benchmark pairings written here from the reference
loaders' rules, and hand-computed accuracy / perplexity."""

import json
import math
import random

import numpy as np
import pytest
import torch
import transformers
from hf_reference import make_hf_model
from speech_fixtures import synthesize

from tinywave_jax import cli
from tinywave_jax.convert import export_hf, import_hf
from tinywave_jax.eval import BenchmarkError, benchmark_pairs, evaluate

VOCAB = 300
# custom layout: 100 text ids, [Text]=100, [Speech]=101, 16 HuBERT units from 102
LAYOUT = {"preset": None, "text_vocab_size": 100, "num_units": 16, "vocab_size": VOCAB}
SPEECH, HU0 = 101, 102


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Student and teacher checkpoints, and the student/teacher torch models re-loaded from
    our export (so the reference sees exactly what `export_hf` wrote)."""
    root = tmp_path_factory.mktemp("eval")
    out = {"root": root}
    for name, seed in (("student", 21), ("teacher", 22)):
        make_hf_model(seed=seed, vocab_size=VOCAB, num_key_value_heads=2).save_pretrained(
            root / f"{name}_hf"
        )
        import_hf(root / f"{name}_hf", root / name)
        export_hf(root / name, root / f"{name}_export")
        out[name] = transformers.AutoModelForCausalLM.from_pretrained(
            root / f"{name}_export", dtype=torch.float32
        ).eval()
    (root / "layout.json").write_text(json.dumps(LAYOUT))
    return out


def torch_logprobs(model, ids):
    with torch.no_grad():
        logits = model(torch.tensor([list(ids)])).logits[0].double()
    return (
        torch.log_softmax(logits, -1)[:-1].gather(1, torch.tensor(ids[1:])[:, None])[:, 0].numpy()
    )


def ref_score(model, ids, score_from, scoring):
    lp = torch_logprobs(model, ids)[score_from - 1 :]
    return lp.mean() if scoring == "mean" else lp.sum()


def ref_outcome(p, n):
    return 1.0 if p > n else 0.5 if p == n else 0.0


def write_pairs(path, rs):
    recs = []
    for k in range(7):
        a, b = rs.randint(1, 60), rs.randint(1, 60)
        rec = {
            "positive": rs.randint(0, VOCAB, a).tolist() + [5],
            "negative": rs.randint(0, VOCAB, b).tolist() + [5],
            "group": "ab"[k % 2],
        }
        if k == 3:
            rec["score_from"] = 1 + min(a, b) // 2
        recs.append(rec)
    same = rs.randint(0, VOCAB, 30).tolist()
    recs.append({"positive": same, "negative": same, "group": "tie"})  # exact tie counts 0.5
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return recs


@pytest.mark.parametrize("scoring", ["mean", "sum"])
def test_pairs_match_exported_hf_model(models, scoring):
    root = models["root"]
    recs = write_pairs(root / f"pairs_{scoring}.jsonl", np.random.RandomState(3))
    out = root / f"out_pairs_{scoring}"
    assert (
        cli.main(
            [
                "eval",
                str(root / "student"),
                "--task",
                "pairs",
                "--data",
                str(root / f"pairs_{scoring}.jsonl"),
                "--scoring",
                scoring,
                "--out",
                str(out),
            ]
        )
        == 0
    )
    got = [json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines()]
    results = json.loads((out / "results.json").read_text())["result"]
    outcomes, by_group = [], {}
    for rec, g in zip(recs, got):
        start = rec.get("score_from", 1)
        p = ref_score(models["student"], rec["positive"], start, scoring)
        n = ref_score(models["student"], rec["negative"], start, scoring)
        tol = 1e-4 * (1 if scoring == "mean" else len(rec["positive"]))
        assert g["positive"] == pytest.approx(p, abs=tol)
        assert g["negative"] == pytest.approx(n, abs=tol)
        o = ref_outcome(p, n)
        assert g["outcome"] == o
        outcomes.append(o)
        by_group.setdefault(rec["group"], []).append(o)
    assert outcomes[-1] == 0.5
    assert results["accuracy"] == pytest.approx(np.mean(outcomes), abs=1e-12)
    assert results["n_pairs"] == len(recs)
    for grp, vals in by_group.items():
        assert results["groups"][grp]["accuracy"] == pytest.approx(np.mean(vals), abs=1e-12)


def test_compare_writes_teacher_student_report(models):
    root = models["root"]
    recs = write_pairs(root / "pairs_cmp.jsonl", np.random.RandomState(4))
    logged = []
    doc = evaluate(
        root / "student",
        "pairs",
        root / "pairs_cmp.jsonl",
        compare=root / "teacher",
        out=root / "cmp",
        log=logged.append,
        draws=400,
        seed=5,
    )
    acc = {}
    for who in ("student", "teacher"):
        acc[who] = 100 * np.mean(
            [
                ref_outcome(
                    ref_score(models[who], r["positive"], r.get("score_from", 1), "mean"),
                    ref_score(models[who], r["negative"], r.get("score_from", 1), "mean"),
                )
                for r in recs
            ]
        )
    report = json.loads((root / "cmp" / "report.json").read_text())
    overall = next(r for r in report["rows"] if r["group"] == "")
    assert overall["student"] == pytest.approx(acc["student"])
    assert overall["teacher"] == pytest.approx(acc["teacher"])
    assert overall["student_over_teacher"] == pytest.approx(100 * acc["student"] / acc["teacher"])
    assert doc["comparison"] == report["rows"]
    md = (root / "cmp" / "report.md").read_text()
    assert "| pairs | all | accuracy % |" in md and f"{acc['teacher']:.2f}" in md
    # 95 % paired-bootstrap intervals: the demo's on the same per-pair outcomes (its resamples
    # depend only on the task's position, n, draws and seed: one task, position 0 either way)
    from tinywave_jax.demo.evaluate import difference, summarize

    outcomes = {
        who: np.array([p["outcome"] for p in doc[key]["pairs"]])
        for who, key in (("student", "result"), ("teacher", "teacher_result"))
    }
    assert list(outcomes["student"]) == [
        json.loads(x)["outcome"] for x in open(root / "cmp" / "pairs.jsonl")
    ]
    iv = doc["intervals"]
    assert iv["draws"] == 400 and iv["seed"] == 5
    for who, key in (("student", "result"), ("teacher", "teacher_result")):
        row = summarize({"ssc": outcomes[who]}, 400, 5)
        assert iv[key] == {"value": row["ssc"], "ci": row["ssc_ci"], "n": len(recs)}
        assert iv[key]["value"] == pytest.approx(acc[who], abs=0.005)
    assert (
        iv["difference"]
        == difference({"ssc": outcomes["student"]}, {"ssc": outcomes["teacher"]}, 400, 5)["ssc"]
    )
    line = next(m for m in logged if "paired-bootstrap" in m)
    d = iv["difference"]
    assert f"student - teacher {d['diff']:+.2f} [{d['ci'][0]:+.2f}, {d['ci'][1]:+.2f}]" in line
    assert (
        f"teacher {iv['teacher_result']['value']:.2f} [{iv['teacher_result']['ci'][0]:.2f}," in line
    )
    assert line.split(": ", 1)[1] in md
    assert json.loads((root / "cmp" / "results.json").read_text())["intervals"] == iv


def test_ppl_per_token_and_per_second(models):
    root = models["root"]
    rs = np.random.RandomState(5)
    recs = [
        {"ids": rs.randint(0, VOCAB, n).tolist(), "seconds": float(n) / 10} for n in (12, 40, 3, 60)
    ]
    recs[1]["score_from"] = 5
    (root / "ppl.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    logged = []
    full = evaluate(root / "student", "ppl", root / "ppl.jsonl", log=logged.append, draws=300)
    doc = full["result"]
    per_seq = np.array(
        [
            -torch_logprobs(models["student"], r["ids"])[r.get("score_from", 1) - 1 :].sum()
            for r in recs
        ]
    )
    nll = per_seq.sum()
    tokens = sum(len(r["ids"]) - r.get("score_from", 1) for r in recs)
    seconds = sum(r["seconds"] for r in recs)
    assert doc["scored_tokens"] == tokens
    assert doc["ppl"] == pytest.approx(math.exp(nll / tokens), rel=1e-5)
    assert doc["nll_per_second"] == pytest.approx(nll / seconds, rel=1e-5)
    assert doc["ppl_per_second"] == pytest.approx(math.exp(nll / seconds), rel=1e-4)
    # its bootstrap interval: sequences resampled (numpy's Generator, seed 0), NLL pooled
    n_tok = np.array([len(r["ids"]) - r.get("score_from", 1) for r in recs], float)
    idx = np.random.default_rng(0).integers(0, 4, size=(300, 4))
    lo, hi = np.percentile(np.exp(per_seq[idx].sum(1) / n_tok[idx].sum(1)), [2.5, 97.5])
    iv = full["intervals"]["result"]
    assert iv["n"] == 4 and iv["value"] == pytest.approx(math.exp(nll / tokens), abs=6e-4)
    assert iv["ci"] == pytest.approx([lo, hi], abs=6e-3)  # rounded to 2 digits
    assert any(
        m.startswith("eval ppl: 95 % bootstrap interval (300 resamples of 4") for m in logged
    )


# ------------------------------------------------------------------ benchmark folder pairing


def touch(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        (folder / n).write_bytes(b"")


def rel(pairs, root):
    return [
        (p.positive.relative_to(root).as_posix(), p.negative.relative_to(root).as_posix(), p.group)
        for p in pairs
    ]


def test_salmon_pairing_follows_the_reference(tmp_path):
    rng = random.Random(0)
    expected = []
    for subset in ("speaker_consistency", "bg_alignment"):
        indices = rng.sample(range(0, 300), 12)  # not contiguous: 2 < 10 < 100 as integers
        names = [f"sample_{i}_{j}.wav" for i in indices for j in (0, 1)]
        rng.shuffle(names)
        touch(tmp_path / subset, names)
        # reference rule: group by the index field, j=0 is the positive, j=1 the negative
        expected += [
            (f"{subset}/sample_{i}_0.wav", f"{subset}/sample_{i}_1.wav", subset) for i in indices
        ]
    got = rel(benchmark_pairs("salmon", tmp_path), tmp_path)
    assert sorted(got) == sorted(expected)


@pytest.mark.parametrize(
    "task, sep", [("ssc", "_"), ("tsc", "_"), ("swuggy", "_"), ("sblimp", "+")]
)
def test_sorted_prefix_pairing_follows_the_reference(tmp_path, task, sep):
    rng = random.Random(1)
    keys = sorted(rng.sample(range(0, 5000), 16))  # integer order differs from string order
    names = [f"{k}{sep}{'good' if n % 2 == 0 else 'bad'}{sep}x.wav" for n, k in enumerate(keys)]
    shuffled = names[:]
    rng.shuffle(shuffled)
    touch(tmp_path / "flat", shuffled)
    # reference rule: sort by the integer before the separator; files 2i, 2i+1 are a pair
    expected = [(names[2 * i], names[2 * i + 1], "") for i in range(len(names) // 2)]
    assert rel(benchmark_pairs(task, tmp_path / "flat"), tmp_path / "flat") == expected
    assert all(a.split(sep)[1] == "good" and b.split(sep)[1] == "bad" for a, b, _ in expected)
    # sub-folder mode: each folder paired on its own, reported as a group
    touch(tmp_path / "nested" / "b", shuffled[:8])
    touch(tmp_path / "nested" / "a", shuffled[8:])
    got = rel(benchmark_pairs(task, tmp_path / "nested"), tmp_path / "nested")
    for grp, part in (("a", shuffled[8:]), ("b", shuffled[:8])):
        ordered = sorted(part, key=lambda n: int(n.split(sep)[0]))
        want = [
            (f"{grp}/{ordered[2 * i]}", f"{grp}/{ordered[2 * i + 1]}", grp)
            for i in range(len(ordered) // 2)
        ]
        assert [g for g in got if g[2] == grp] == want


@pytest.mark.parametrize(
    "task, names, needles",
    [
        ("ssc", ["0_a.wav", "1_b.wav", "2_c.wav"], ["odd number", "2_c.wav"]),
        ("swuggy", ["0_a.wav", "x_b.wav", "y_c.wav", "1_d.wav"], ["x_b.wav", "y_c.wav"]),
        ("sblimp", ["3+a.wav", "3+b.wav"], ["3+a.wav", "3+b.wav"]),
        ("sblimp", ["3_a.wav", "4_b.wav"], ["3_a.wav", "4_b.wav", "'+'"]),
        (
            "salmon",
            ["sample_0_0.wav", "sample_0_1.wav", "sample_1_0.wav", "sample_2_1.wav"],
            ["sample_1_0.wav", "sample_2_1.wav", "unpaired"],
        ),
        ("salmon", ["sample_0_0.wav", "sample_0_1.wav", "noise.wav"], ["noise.wav"]),
    ],
)
def test_bad_benchmark_folders_list_the_files(models, tmp_path, task, names, needles, capsys):
    folder = tmp_path / ("bg_alignment" if task == "salmon" else "data")
    touch(folder, names)
    with pytest.raises(BenchmarkError) as e:
        benchmark_pairs(task, folder)
    for needle in needles:
        assert needle in str(e.value)
    # the command fails with the same message, before any audio is read
    assert (
        cli.main(
            [
                "eval",
                str(models["root"] / "student"),
                "--task",
                task,
                "--data",
                str(folder),
                "--extractor",
                str(tmp_path),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert all(needle in err for needle in needles)


def test_bad_pairs_file_names_the_line(models, tmp_path, capsys):
    (tmp_path / "p.jsonl").write_text('{"positive": [1, 2, 3], "negative": [1, 2, 300]}\n')
    assert (
        cli.main(
            [
                "eval",
                str(models["root"] / "student"),
                "--task",
                "pairs",
                "--data",
                str(tmp_path / "p.jsonl"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "p.jsonl:1 negative" in err and "300" in err


# ------------------------------------------------------------------ audio benchmarks end to end


def test_salmon_audio_end_to_end(models, tmp_path):
    """espeak wavs in SALMon layout -> our extractor -> tokens -> accuracy; the reference builds
    the tokens itself (dedup, offsets, bos/[Speech]) and scores them with the torch model."""
    from tinywave_jax.audio import load_extractor, read_audio

    root = models["root"]
    sentences = ["the cat sat on the mat", "a dog ran in the park", "we went home early today"]
    for k, text in enumerate(sentences):
        synthesize(tmp_path / "fit" / f"{k}.wav", text)
    assert (
        cli.main(
            [
                "units",
                "fit",
                str(tmp_path / "fit"),
                str(tmp_path / "units"),
                "--units",
                "16",
                "--pitch-bins",
                "0",
                "--style-classes",
                "0",
            ]
        )
        == 0
    )
    bench = tmp_path / "salmon"
    for subset, voices in (
        ("gender_consistency", ("en+f3", "en+m3")),
        ("speaker_consistency", ("en+m1", "en+f2")),
    ):
        for i, text in enumerate(sentences[:2]):
            synthesize(bench / subset / f"sample_{i}_0.wav", text, voices[0])
            synthesize(bench / subset / f"sample_{i}_1.wav", text[::-1], voices[1])
    doc = evaluate(
        root / "student",
        "salmon",
        bench,
        extractor=tmp_path / "units",
        layout=str(root / "layout.json"),
        log=lambda m: None,
    )["result"]
    ext = load_extractor(tmp_path / "units")

    def ref_tokens(path):
        units = ext.extract(read_audio(path))["hubert"][0]
        units = units[np.r_[True, units[1:] != units[:-1]]]
        return [1, SPEECH] + (units + HU0).tolist()

    expected = {}
    for subset in ("gender_consistency", "speaker_consistency"):
        for i in range(2):
            p, n = (
                ref_score(
                    models["student"], ref_tokens(bench / subset / f"sample_{i}_{j}.wav"), 2, "mean"
                )
                for j in (0, 1)
            )
            pair = next(
                x
                for x in doc["pairs"]
                if x["group"] == subset and x["name"].startswith(f"sample_{i}_0.wav")
            )
            assert pair["positive"] == pytest.approx(p, abs=1e-4)
            assert pair["negative"] == pytest.approx(n, abs=1e-4)
            expected.setdefault(subset, []).append(ref_outcome(p, n))
    for subset, vals in expected.items():
        assert doc["groups"][subset] == {"accuracy": np.mean(vals), "n_pairs": 2}
    assert doc["accuracy"] == np.mean(sum(expected.values(), []))


def test_ppl_of_a_corpus_split(models, tmp_path):
    """A corpus built by `build_corpus` from a units manifest; the reference rebuilds each
    sequence from the manifest (dedup, offsets, bos/[Speech]) and scores the units with torch."""
    from tinywave_jax.data.corpus_build import build_corpus

    root = models["root"]
    rng = np.random.default_rng(0)
    recs = []
    for k in range(5):
        units = np.repeat(rng.integers(0, 16, 30), rng.integers(1, 3, 30))[:40]
        recs.append(
            {
                "id": f"u{k}",
                "split": "test" if k < 3 else "train",
                "units": {"hubert": units.tolist()},
                "duration": 1.0 + k / 4,
            }
        )
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    build_corpus(
        tmp_path / "corpus",
        manifest=tmp_path / "m.jsonl",
        vocab_sizes={"hubert": 16, "pitch": 1, "style": 1},
        log=lambda m: None,
    )
    doc = evaluate(
        root / "student",
        "ppl",
        tmp_path / "corpus",
        layout=str(root / "layout.json"),
        split="test",
        log=lambda m: None,
    )["result"]
    nll, tokens = 0.0, 0
    for r in recs[:3]:
        u = np.asarray(r["units"]["hubert"])
        u = u[np.r_[True, u[1:] != u[:-1]]]
        nll -= torch_logprobs(models["student"], [1, SPEECH] + (u + HU0).tolist())[1:].sum()
        tokens += len(u)
    assert doc["n_sequences"] == 3 and doc["scored_tokens"] == tokens
    assert doc["ppl"] == pytest.approx(math.exp(nll / tokens), rel=1e-5)
    assert doc["seconds"] == pytest.approx(sum(r["duration"] for r in recs[:3]))


# ------------------------------------------------------------------ misuse (issue 14)


def _short_context_copy(ckpt, dest, max_positions):
    import shutil

    shutil.copytree(ckpt, dest)
    cfg = json.loads((dest / "config.json").read_text())
    (dest / "config.json").write_text(json.dumps({**cfg, "max_position_embeddings": max_positions}))
    return dest


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--compare", "{tmp}/nope"], "--compare: {tmp}/nope: not a tinywave model checkpoint"),
        (["--compare", "{short}"], "--compare {short}: "),
        (["--extractor", "{tmp}/no_units"], "--extractor: units folder not found: {tmp}/no_units"),
        (["--layout", "spiritlm_expresive"], "layout.preset: 'spiritlm_expresive' is not one of"),
        (["--layout", "{tmp}/no_layout.json"], "layout file not found: {tmp}/no_layout.json"),
        (["--out", "{tmp}/a_file"], "--out {tmp}/a_file: exists and is not a folder"),
    ],
)
def test_bad_paths_fail_before_anything_is_scored(
    models, tmp_path, capsys, monkeypatch, extra, needle
):
    """A wrong --compare used to fail only after the student had been scored; --extractor and
    --layout were not looked at for pairs/ppl-jsonl tasks."""
    from tinywave_jax.eval import harness

    def no_scoring(*a, **k):
        raise AssertionError("scored before the arguments were checked")

    monkeypatch.setattr(harness, "run_task", no_scoring)
    root = models["root"]
    short = _short_context_copy(root / "teacher", tmp_path / "short", 16)
    (tmp_path / "a_file").write_text("")
    write_pairs(tmp_path / "pairs.jsonl", np.random.RandomState(8))  # sequences up to 61 tokens
    sub = {"{tmp}": str(tmp_path), "{short}": str(short)}

    def fill(s):
        for k, v in sub.items():
            s = s.replace(k, v)
        return s

    args = [
        "eval",
        str(root / "student"),
        "--task",
        "pairs",
        "--data",
        str(tmp_path / "pairs.jsonl"),
    ]
    assert cli.main(args + [fill(a) for a in extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and fill(needle) in err, err
    if "{short}" in extra:
        assert "longer than the model's max_position_embeddings (16)" in err


def test_reused_out_folder_keeps_no_stale_report(models, tmp_path):
    """A report.md of an earlier --compare run used to stay beside the new results."""
    root = models["root"]
    write_pairs(tmp_path / "pairs.jsonl", np.random.RandomState(9))
    out = tmp_path / "out"
    kw = dict(out=out, log=lambda m: None)
    evaluate(root / "student", "pairs", tmp_path / "pairs.jsonl", compare=root / "teacher", **kw)
    assert {"report.md", "report.json", "results.json", "pairs.jsonl"} <= {
        p.name for p in out.iterdir()
    }
    (out / "notes.txt").write_text("mine")
    rs = np.random.RandomState(10)
    (tmp_path / "ppl.jsonl").write_text(
        json.dumps({"ids": rs.randint(0, VOCAB, 9).tolist()}) + "\n"
    )
    evaluate(root / "teacher", "ppl", tmp_path / "ppl.jsonl", **kw)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "results.json"]
    results = json.loads((out / "results.json").read_text())
    assert results["task"] == "ppl" and "teacher_result" not in results


def test_misspelled_salmon_subset_is_named_on_stderr(tmp_path, capsys):
    """A misspelled subset folder used to be skipped without a word (exit 0)."""
    touch(tmp_path / "bg_alignment", ["sample_0_0.wav", "sample_0_1.wav"])
    touch(tmp_path / "speaker_consistancy", ["sample_0_0.wav", "sample_0_1.wav"])
    (tmp_path / ".cache").mkdir()
    pairs = benchmark_pairs("salmon", tmp_path)
    assert [p.group for p in pairs] == ["bg_alignment"]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert f"skipping {tmp_path / 'speaker_consistancy'}: not a SALMon subset folder" in err[0]
    assert "did you mean speaker_consistency?" in err[0]
    assert "known subsets: bg_alignment, bg_all_consistency" in err[0]
    # with only misspelled folders: the error, and the warning saying why
    only = tmp_path / "only"
    touch(only / "Bg_Alignment", ["sample_0_0.wav", "sample_0_1.wav"])
    with pytest.raises(BenchmarkError, match="holds none of the subset folders"):
        benchmark_pairs("salmon", only)
    assert "did you mean bg_alignment?" in capsys.readouterr().err


def _naive_copy(prefix, rest):
    """The copy rule spelled out with strings: mean over n = 1..4 of the share of `rest`'s
    n-grams that occur in `prefix`."""
    shares = []
    for n in range(1, 5):
        grams = [" ".join(map(str, rest[i : i + n])) for i in range(len(rest) - n + 1)]
        if grams:
            seen = {" ".join(map(str, prefix[i : i + n])) for i in range(len(prefix) - n + 1)}
            shares.append(sum(g in seen for g in grams) / len(grams))
    return sum(shares) / len(shares) if shares else 0.0


def _cloze_like_pairs(path, rs):
    """Pairs sharing a story prefix: the positive ending copies a span of the story, the
    negative is random; one pair whose endings are equally novel (a tie)."""
    recs = []
    for k in range(6):
        story = rs.randint(3, VOCAB, 30).tolist()
        copied = story[5:11]
        novel = rs.randint(3, VOCAB, 6).tolist()
        pos, neg = (copied, novel) if k % 3 else (novel, copied)
        recs.append({"positive": [1] + story + pos, "negative": [1] + story + neg})
    recs.append({"positive": [1, 7, 8, 9], "negative": [1, 7, 8, 10]})
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return recs


def test_reference_copy_rule_counts_ngrams_already_in_the_context(models):
    root = models["root"]
    recs = _cloze_like_pairs(root / "copy_pairs.jsonl", np.random.RandomState(9))
    doc = evaluate(
        root / "student", "pairs", root / "copy_pairs.jsonl", reference="copy", log=lambda m: None
    )
    expected = []
    for r in recs:
        p, n = r["positive"], r["negative"]
        start = next(i for i in range(len(p)) if p[i] != n[i])
        prefix = p[1:start]
        expected.append(ref_outcome(_naive_copy(prefix, p[start:]), _naive_copy(prefix, n[start:])))
    assert doc["reference"] == "copy"
    assert [x["outcome"] for x in doc["result"]["pairs"]] == expected
    assert doc["result"]["accuracy"] == pytest.approx(np.mean(expected))
    assert expected[:6] == [0.0, 1.0, 1.0, 0.0, 1.0, 1.0]  # the copying ending wins


def test_reference_ending_alone_scores_the_remainders_without_the_story(models):
    root = models["root"]
    recs = _cloze_like_pairs(root / "end_pairs.jsonl", np.random.RandomState(10))
    doc = evaluate(
        root / "student", "pairs", root / "end_pairs.jsonl", reference="ending", log=lambda m: None
    )
    for r, got in zip(recs, doc["result"]["pairs"]):
        p, n = r["positive"], r["negative"]
        start = next(i for i in range(len(p)) if p[i] != n[i])
        ref_p = ref_score(models["student"], [p[0]] + p[start:], 1, "mean")
        ref_n = ref_score(models["student"], [n[0]] + n[start:], 1, "mean")
        assert got["positive"] == pytest.approx(ref_p, abs=1e-5)
        assert got["negative"] == pytest.approx(ref_n, abs=1e-5)
        assert got["outcome"] == ref_outcome(ref_p, ref_n)


def test_reference_flags_are_checked(models, capsys):
    root = models["root"]
    write_pairs(root / "ref_pairs.jsonl", np.random.RandomState(11))
    for extra, needle in (
        (["--reference", "copy", "--compare", str(root / "teacher")], "drop --compare"),
        (["--reference", "nonsense"], "invalid choice"),
        (["--draws", "0"], "--draws: must be an integer >= 1, got 0"),
    ):
        try:  # argparse exits; a ConfigError is printed and returns 2
            code = cli.main(
                ["eval", str(root / "student"), "--task", "pairs"]
                + ["--data", str(root / "ref_pairs.jsonl")]
                + extra
            )
        except SystemExit as e:
            code = e.code
        assert code == 2 and needle in capsys.readouterr().err
