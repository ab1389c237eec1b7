"""Paired-bootstrap intervals (eval/bootstrap.py): against an independent numpy computation, the
demo's results table on fixed outcomes (the digits the demo printed before its bootstrap moved
into the library), and `tinywave eval --compare`'s intervals against the demo's on the same
per-pair outcomes."""

import numpy as np
import pytest

# Fixed per-item outcomes (a seeded legacy RandomState: the same arrays on every numpy): four
# models, three pairwise tasks with ties, and per-story NLL / unit counts for perplexity.
N = {"ssc": 60, "tsc": 60, "swuggy": 40}
P_RIGHT = {"teacher": 0.8, "student": 0.72, "baseline": 0.6, "student_q8_0": 0.71}


def fixed_raw() -> dict:
    rs = np.random.RandomState(7)
    tokens = rs.randint(20, 80, 12).astype(np.float64)
    raw = {}
    for name, p in P_RIGHT.items():
        raw[name] = {
            t: np.where(rs.random_sample(n) < 0.05, 0.5, (rs.random_sample(n) < p).astype(float))
            for t, n in N.items()
        }
        raw[name]["ppl"] = (tokens * (2.0 + 0.3 * rs.random_sample(12) - p), tokens)
    return raw


def demo_doc(raw: dict, draws: int = 300, seed: int = 3) -> dict:
    """results.json's rows, differences and targets as `demo.results.write_results` assembles
    them from raw scores (no models, no llama.cpp)."""
    from tinywave_jax.demo.evaluate import difference, summarize
    from tinywave_jax.demo.results import Q8, targets

    rows = {}
    for name, layers, params in (
        ("teacher", 4, 2_400_000),
        ("baseline", 2, 1_300_000),
        ("student", 2, 1_300_000),
        (Q8, 2, 1_300_000),
    ):
        rows[name] = summarize(raw[name], draws, seed)
        rows[name].update(layers=layers, params=params)
        if name in ("baseline", "student"):
            rows[name].update(lr=3e-3, lr_sweep={})
    rows[Q8].update(gguf_bytes=1_456_789, outcome_agreement=97.5)
    diff = difference(raw["student"], raw["baseline"], draws, seed)
    q8_diff = difference(raw[Q8], raw["student"], draws, seed)
    return {
        **rows,
        "student_minus_baseline": diff,
        "q8_0_minus_student": q8_diff,
        "targets": targets(rows, diff, q8_diff),
    }


# What the demo printed and saved for these outcomes before its bootstrap code moved into the
# library (demo/evaluate.py's own summarize/difference at commit ccd0074): recorded, not derived.
TABLE_BEFORE = """\
| model | params | lr | sSC | tSC | words | PPL |
|---|---|---|---|---|---|---|
| Teacher (4 layers, pretrained, LoRA-corrected) | 2.40M | - | 78.3 [66.2, 89.2] | 72.5 [59.6, 83.8] | 77.5 [65.6, 88.8] | 3.81 [3.60, 4.01] |
| Baseline (2 layers, random init, CE only) | 1.30M | 0.003 | 55.0 [42.1, 67.5] | 62.5 [52.5, 75.4] | 53.8 [40.0, 68.2] | 4.57 [4.36, 4.87] |
| **Distilled student** (2 layers, full recipe) | 1.30M | 0.003 | 66.7 [53.3, 78.8] | 79.2 [68.7, 88.8] | 75.0 [62.5, 86.2] | 4.09 [3.89, 4.33] |
| Distilled student, q8_0 GGUF in llama.cpp (1.46 MB) | 1.30M | - | 75.0 [64.2, 85.4] | 65.0 [52.5, 77.1] | 70.0 [55.0, 83.8] | 4.02 [3.84, 4.29] |
| student / teacher | 0.54x | | 85% | 109% | 97% | |
| student - baseline | | | +11.7 [-7.1, +30.0] | +16.7 [+2.1, +30.8] | +21.2 [+3.1, +37.5] | -0.48 [-0.87, -0.10] |
"""  # noqa: E501 (the table as printed)
Q8_NOTE_BEFORE = (
    "q8_0 - student: sSC +8.3 [-7.1, +25.0], tSC -14.2 [-29.2, -0.8], words -5.0 [-25.1, +14.4], "
    "PPL -0.07 [-0.27, +0.13]"
)
STUDENT_BEFORE = {
    "ppl": 4.088,
    "ppl_ci": [3.89, 4.33],
    "ppl_tokens": 576,
    "ssc": 66.67,
    "ssc_ci": [53.33, 78.77],
    "words": 75.0,
    "words_ci": [62.5, 86.25],
    "tsc": 79.17,
    "tsc_ci": [68.73, 88.77],
    "pairs": {"ssc": 60, "swuggy": 40, "tsc": 60},
}
DIFF_BEFORE = {
    "ppl": {"diff": -0.485, "ci": [-0.87, -0.1]},
    "ssc": {"diff": 11.67, "ci": [-7.1, 30.0]},
    "words": {"diff": 21.25, "ci": [3.09, 37.5]},
    "tsc": {"diff": 16.67, "ci": [2.06, 30.83]},
}


def test_demo_table_prints_the_same_digits():
    """The demo's results table, rows and differences on fixed outcomes are what they were
    before the bootstrap moved into the library, to the digit."""
    from tinywave_jax.demo.results import table_of

    doc = demo_doc(fixed_raw())
    table = table_of(doc)
    assert table.startswith(TABLE_BEFORE)
    assert Q8_NOTE_BEFORE in table
    student = {k: v for k, v in doc["student"].items() if k in STUDENT_BEFORE}
    assert student == STUDENT_BEFORE
    assert doc["student_minus_baseline"] == DIFF_BEFORE


def numpy_intervals(raw: dict, draws: int, seed: int) -> dict:
    """The paired percentile bootstrap written out directly: task k (sorted) resamples its items
    with numpy's Generator seeded seed + k; accuracy in %, perplexity pooled."""
    out = {}
    for k, task in enumerate(sorted(raw)):
        rng = np.random.default_rng(seed + k)
        if task == "ppl":
            nll, tok = raw[task]
            idx = rng.integers(0, len(nll), size=(draws, len(nll)))
            stats = [np.exp(nll[i].sum() / tok[i].sum()) for i in idx]
            value = np.exp(nll.sum() / tok.sum())
        else:
            o = raw[task]
            idx = rng.integers(0, len(o), size=(draws, len(o)))
            stats = [100 * o[i].mean() for i in idx]
            value = 100 * o.mean()
        out[task] = (value, np.percentile(stats, 2.5), np.percentile(stats, 97.5), idx)
    return out


def test_intervals_equal_an_independent_numpy_computation():
    from tinywave_jax.eval import bootstrap

    raw = fixed_raw()
    student, baseline = raw["student"], raw["baseline"]
    ref = numpy_intervals(student, 500, 11)
    got = bootstrap.summarize(student, 500, 11)
    assert sorted(got) == sorted(ref)
    for task, (value, lo, hi, _) in ref.items():
        assert got[task]["value"] == round(value, 3 if task == "ppl" else 2)
        assert got[task]["ci"] == [round(lo, 2), round(hi, 2)]
        assert got[task]["n"] == (12 if task == "ppl" else N[task])
    diff = bootstrap.difference(student, baseline, 500, 11)
    for task, (_, _, _, idx) in ref.items():  # the difference on the same resamples
        if task == "ppl":
            (na, ta), (nb, tb) = student[task], baseline[task]
            stats = [
                np.exp(na[i].sum() / ta[i].sum()) - np.exp(nb[i].sum() / tb[i].sum()) for i in idx
            ]
            value = np.exp(na.sum() / ta.sum()) - np.exp(nb.sum() / tb.sum())
        else:
            a, b = student[task], baseline[task]
            stats = [100 * a[i].mean() - 100 * b[i].mean() for i in idx]
            value = 100 * (a.mean() - b.mean())
        lo, hi = np.percentile(stats, [2.5, 97.5])
        assert diff[task]["diff"] == round(value, 3 if task == "ppl" else 2)
        assert diff[task]["ci"] == [round(lo, 2), round(hi, 2)]


def test_a_difference_needs_the_same_items():
    from tinywave_jax.eval import bootstrap

    a = {"ssc": np.ones(5)}
    with pytest.raises(ValueError, match="ssc: 5 vs 4 items"):
        bootstrap.difference(a, {"ssc": np.ones(4)}, 10)


def test_the_demos_q8_0_agreement_pools_the_pairs_as_before(monkeypatch):
    """demo.evaluate.score_llama_cpp takes llama.cpp's scores from eval.gguf_run.compare_gguf
    and pools the pairs decided alike over the pairwise tasks: the share the demo computed
    itself before (np.mean over the concatenated outcomes), to the printed digit."""
    from tinywave_jax.demo import evaluate as demo_eval
    from tinywave_jax.eval import gguf_run

    raw = fixed_raw()
    student, q8 = raw["student"], raw["student_q8_0"]

    def fake_compare(model, *, inputs, jax_scores):  # compare_gguf's "tasks" on fixed scores
        assert model == "m.gguf" and jax_scores is student and set(inputs) == set(q8)
        tasks = {}
        for t, s in q8.items():
            tasks[t] = {"scores": s}
            if t != "ppl":
                agree = int(np.sum(student[t] == s))
                tasks[t].update(n_pairs=len(s), agreeing_pairs=agree)
        return {"tasks": tasks}

    monkeypatch.setattr(gguf_run, "compare_gguf", fake_compare)
    got, agreement = demo_eval.score_llama_cpp("m.gguf", dict.fromkeys(q8), student)
    before = np.mean(np.concatenate([q8[t] == student[t] for t in q8 if t != "ppl"]))
    assert agreement == round(100 * float(before), 2)
    assert got.keys() == q8.keys() and all(got[t] is q8[t] for t in q8)
