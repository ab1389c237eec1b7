"""The demo's results: every model scored on the test stories, `results.md` and `results.json`.

results.json: per model (`teacher`, `student`, `baseline`, and the ablation rows when trained)
`ssc`, `tsc`, `words` (accuracy in %), `ppl` (and, for the expressive and interleaved variants,
`voice`: speaker consistency, and `ss`, `st`, `ts`, `tt`: cross-modal topic cloze), each with
`<metric>_ci` ([lo, hi], 95 % paired bootstrap), `pairs` ({task: n}), `params`, `layers`, `lr`,
`lr_sweep` (validation perplexity per learning rate tried) and `train_seconds` (per learning rate:
the run's wall and CPU seconds; the cached top-k row also `teacher_cache`, its cache's build
summary with `wall_seconds`); `student_q8_0`: the same student
exported to a q8_0 GGUF file and scored by llama.cpp (with `gguf`, `gguf_bytes` and
`outcome_agreement`: the share of pairs it decides as the float32 student does); top level
`student_minus_baseline` and `q8_0_minus_student` ({metric: {diff, ci}}), `targets` (the issues'
targets, checked, never tuned for), `settings` and `environment` (package versions and the CPU,
environment.py: a moved number can then be told from a moved environment).
"""

from __future__ import annotations

import json

from ..environment import environment
from .evaluate import CLOZE, UNSEEN_BENCH
from .speech import Cast
from .training import ROWS

# natural-speech demos: reference rows first, what the benchmark gives away without learning
# (eval.references): the parameter-free copy rule, and the teacher scoring the endings alone
REFERENCES = {
    "copy_rule": "Copy rule (no model: ending n-grams found in the story)",
    "ending_alone": "Teacher on the endings alone (no story)",
}
ORDER = (
    *REFERENCES,
    "teacher",
    "baseline",
    "init_ce",
    "logit",
    "topk_cached",
    "hidden",
    "student",
    "student_q8_0",
)
# the student's q8_0 GGUF export, scored in llama.cpp (not a trained row: no lr of its own)
Q8 = "student_q8_0"
# every metric a table can show, in column order, with its header
HEADERS = {
    "ssc": "sSC",
    "tsc": "tSC",
    "words": "words",
    "voice": "voice",
    "ss": "S→S",
    "st": "S→T",
    "ts": "T→S",
    "tt": "T→T",
    "ppl": "PPL",
    # natural speech: the test stories again, in voices no model heard
    "ssc_unseen": "sSC unseen voice",
    "tsc_unseen": "tSC unseen voice",
    "words_unseen": "words unseen voice",
}


def metrics_of(row: dict) -> list[str]:
    return [k for k in HEADERS if k in row]


def score_all(demo, log=print) -> tuple[dict, dict]:
    """(rows, raw scores) for the corrected teacher and every trained row, on the test inputs."""
    from ..checkpoint import load_model
    from .evaluate import reference_scores, save_raw, score_model, summarize

    s = demo.settings
    models = {"teacher": {"model": str(demo.runs_dir / "teacher/correct/final")}}
    models.update(demo.rows())
    layout = demo.tokens_dir / "layout.json"
    inputs, rows, raw = None, {}, {}
    for name in (m for m in ORDER if m in models):
        params, config, _ = load_model(models[name]["model"])
        if inputs is None:
            inputs = _test_inputs(demo, layout, config.vocab_size, log)
        if name == "teacher" and (demo.speech_dir / UNSEEN_BENCH).is_dir():
            (demo.dir / "scores").mkdir(exist_ok=True)
            refs = reference_scores(inputs, params, config)
            for ref, scores in refs.items():
                raw[ref] = scores
                save_raw(demo.dir / "scores" / f"{ref}.json", scores)
                rows[ref] = summarize(scores, s.bootstrap, s.seed)
                log(
                    f"  {ref}: "
                    + "  ".join(f"{k} {rows[ref][k]:.1f}" for k in metrics_of(rows[ref]))
                )
        raw[name] = score_model(params, config, inputs)
        (demo.dir / "scores").mkdir(exist_ok=True)
        save_raw(demo.dir / "scores" / f"{name}.json", raw[name])
        row = summarize(raw[name], s.bootstrap, s.seed)
        row.update(layers=config.num_hidden_layers, params=config.num_params())
        if name != "teacher":
            row.update(
                lr=models[name]["chosen_lr"],
                lr_sweep={lr: v["valid_ppl"] for lr, v in models[name]["sweep"].items()},
                # training time per learning rate (and the cached row's cache build)
                **{
                    k: models[name][k]
                    for k in ("train_seconds", "teacher_cache")
                    if k in models[name]
                },
            )
        rows[name] = row
        log(f"  {name}: " + "  ".join(f"{k} {row[k]:.1f}" for k in metrics_of(row)))
    rows[Q8], raw[Q8] = _score_q8_0(demo, rows["student"], raw["student"], inputs, log)
    return rows, raw


def _test_inputs(demo, layout, vocab_size: int, log) -> dict:
    """{task: TaskInputs} on the test stories: bench/ (the training voices), the unseen voices'
    folder as "task@unseen" where the speech stage wrote one, and perplexity."""
    from .evaluate import UNSEEN, bench_inputs, bench_tasks, ppl_inputs

    inputs = {}
    for folder, suffix in (("bench", ""), (UNSEEN_BENCH, UNSEEN)):
        bench = demo.speech_dir / folder
        if bench.is_dir():
            got = bench_inputs(
                bench,
                demo.tokens_dir / "units",
                layout,
                vocab_size,
                bench_tasks(bench),
                log,
                demo.tokens()["tokenizer"],
            )
            inputs.update({t + suffix: inp for t, inp in got.items()})
    inputs["ppl"] = ppl_inputs(demo.tokens_dir / "corpus" / "heldout", "test", layout, vocab_size)
    return inputs


def _score_q8_0(demo, student_row: dict, student_raw: dict, inputs: dict, log) -> tuple:
    """The student's q8_0 GGUF export scored by llama.cpp on the same inputs: (row, raw)."""
    from .evaluate import export_student_gguf, save_raw, score_llama_cpp, summarize

    gguf = export_student_gguf(
        demo.rows()["student"]["model"], demo.dir, demo.tokens_dir / "layout.json", log
    )
    raw, agreement = score_llama_cpp(gguf, inputs, student_raw)
    save_raw(demo.dir / "scores" / f"{Q8}.json", raw)
    row = summarize(raw, demo.settings.bootstrap, demo.settings.seed)
    row.update(
        {k: student_row[k] for k in ("layers", "params")},
        gguf=str(gguf),
        gguf_bytes=gguf.stat().st_size,
        outcome_agreement=agreement,
    )
    log(
        f"  {Q8} (llama.cpp): "
        + "  ".join(f"{k} {row[k]:.1f}" for k in metrics_of(row))
        + f"  ({row['outcome_agreement']:.1f}% of pairs decided as by the float32 student)"
    )
    return row, raw


def targets(rows: dict, diff: dict, q8_diff: dict) -> dict:
    t, s, b = rows["teacher"], rows["student"], rows["baseline"]
    return {
        "teacher_ssc_ge_75": t["ssc"] >= 75,
        "teacher_tsc_ge_75": t["tsc"] >= 75,
        "ssc_student_ge_90pct_teacher": s["ssc"] >= 0.9 * t["ssc"],
        "tsc_student_ge_90pct_teacher": s["tsc"] >= 0.9 * t["tsc"],
        "ssc_student_above_baseline": s["ssc"] > b["ssc"],
        "tsc_student_above_baseline": s["tsc"] > b["tsc"],
        "student_minus_baseline_interval_above_0": any(
            diff[k]["ci"][0] > 0 for k in ("ssc", "tsc")
        ),
        "ppl_student_below_baseline": s["ppl"] < b["ppl"],
        # interleaved: cross-modal cloze above chance (its 95 % interval excludes 50 %)
        **{f"{k}_student_interval_above_50": s[f"{k}_ci"][0] > 50 for k in ("ts", "st") if k in s},
        # GGUF issue: the q8_0 file in llama.cpp within 1 point of the float32 student
        "q8_0_ssc_tsc_within_1pt_of_student": all(abs(q8_diff[k]["diff"]) <= 1 for k in CLOZE),
        # natural speech: the story test is not solved without the story
        **{f"{r}_ssc_le_60": rows[r]["ssc"] <= 60 for r in REFERENCES if r in rows},
    }


def _label(name: str, row: dict) -> str:
    if name in REFERENCES:
        return REFERENCES[name]
    layers = f"{row['layers']} layer{'s' if row['layers'] > 1 else ''}"
    if name == "teacher":
        return f"Teacher ({layers}, pretrained, LoRA-corrected)"
    if name == "student":
        return f"**Distilled student** ({layers}, full recipe)"
    if name == "baseline":
        return f"Baseline ({layers}, random init, CE only)"
    if name == Q8:
        return f"Distilled student, q8_0 GGUF in llama.cpp ({row['gguf_bytes'] / 1e6:.2f} MB)"
    return f"{ROWS[name][0]} ({layers})"


def _cell(value: float, ci, digits: int = 1, sign: str = "") -> str:
    """`value [lo, hi]`; sign "+" prints signs (differences)."""
    f = f"{sign}.{digits}f"
    return f"{value:{f}} [{ci[0]:{f}}, {ci[1]:{f}}]"


def markdown(rows: dict, diff: dict, q8_diff: dict, checks: dict) -> str:
    t, s = rows["teacher"], rows["student"]
    metrics = metrics_of(t)
    lines = [
        "| model | params | lr | " + " | ".join(HEADERS[k] for k in metrics) + " |",
        "|---|---|---|" + "---|" * len(metrics),
    ]
    for name in (m for m in ORDER if m in rows):
        r = rows[name]
        lr = f"{r['lr']:g}" if "lr" in r else "-"
        cells = " | ".join(
            _cell(r[k], r[f"{k}_ci"], 2 if k == "ppl" else 1) if k in r else "-" for k in metrics
        )
        params = f"{r['params'] / 1e6:.2f}M" if "params" in r else "-"
        lines.append(f"| {_label(name, r)} | {params} | {lr} | {cells} |")
    ratios = ["" if k == "ppl" else f"{100 * s[k] / max(t[k], 1e-9):.0f}%" for k in metrics]
    cells = ["student / teacher", f"{s['params'] / t['params']:.2f}x", "", *ratios]
    lines.append(("| " + " | ".join(cells) + " |").replace("|  |", "| |"))  # empty cells: "| |"
    cells = " | ".join(
        _cell(diff[k]["diff"], diff[k]["ci"], 2 if k == "ppl" else 1, "+") for k in metrics
    )
    lines.append(f"| student - baseline | | | {cells} |")
    n = t["pairs"]
    lines += [
        "",
        f"Accuracy in % (pairwise, mean log-likelihood per unit) with 95 % paired-bootstrap "
        f"intervals; sSC {n['ssc']}, tSC {n['tsc']}, words {n['swuggy']} pairs; PPL per unit "
        f"on {t['ppl_tokens']} units of the test stories, "
        + (
            f"in the {len(Cast(natural=True).distill)} distillation voices; the unseen-voice "
            "columns: the same stories in a voice no model heard in training. "
            if "ssc_unseen" in metrics
            else "all in the target voice. "
        )
        + "Each row's "
        "learning rate was chosen on validation perplexity from the same sweep." + _extras_note(n),
        "",
        _q8_note(rows[Q8], q8_diff, metrics),
        "",
        "Targets: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in checks.items()),
    ]
    return "\n".join(lines) + "\n"


def _q8_note(row: dict, q8_diff: dict, metrics: list[str]) -> str:
    """The q8_0 row's cost against the float32 student it was exported from."""
    cells = ", ".join(
        f"{HEADERS[k]} {_cell(q8_diff[k]['diff'], q8_diff[k]['ci'], 2 if k == 'ppl' else 1, '+')}"
        for k in metrics
    )
    return (
        "q8_0 row: the distilled student exported with `tinywave export-gguf --type q8_0` and "
        f"scored by llama.cpp (llama-cpp-python), the same pairs and units. q8_0 - student: {cells};"
        f" {row['outcome_agreement']:.1f}% of pairs decided as by the float32 student."
    )


def _extras_note(n: dict) -> str:
    """What the expressive and interleaved variants' extra columns are ("" for the base demo)."""
    out = ""
    if "salmon" in n:
        out += (
            f" voice: {n['salmon']} SALMon-style speaker-consistency pairs (the ending in the "
            "story's voice vs. the same words in another pitch range and rate)."
        )
    if "cloze_ts" in n:
        out += (
            f" S→S, S→T, T→S, T→T: cross-modal topic cloze, {n['cloze_ts']} pairs each (context "
            "in speech or text, the two endings in speech or text, scored on the ending's tokens)."
        )
    if out:
        out += " Units here are all speech tokens (units, pitch and style) or text tokens."
    return out


def write_results(demo, log=print) -> dict:
    from ..config import to_dict
    from .evaluate import difference

    rows, raw = score_all(demo, log)
    draws, seed = demo.settings.bootstrap, demo.settings.seed
    diff = difference(raw["student"], raw["baseline"], draws, seed)
    q8_diff = difference(raw[Q8], raw["student"], draws, seed)
    doc = {
        **rows,
        "student_minus_baseline": diff,
        "q8_0_minus_student": q8_diff,
        "targets": targets(rows, diff, q8_diff),
        "settings": to_dict(demo.settings),
        "environment": environment(),
        "rows": {k: ROWS[k][0] for k in rows if k in ROWS},
    }
    (demo.dir / "results.json").write_text(json.dumps(doc, indent=1))
    table = table_of(doc)
    (demo.dir / "results.md").write_text(table)
    log("\n" + table)
    return {"rows": list(rows)}


def table_of(doc: dict) -> str:
    """results.md from results.json's contents (what write_results writes; re-rendering a saved
    results.json gives its results.md)."""
    rows = {k: doc[k] for k in ORDER if k in doc}
    return markdown(rows, doc["student_minus_baseline"], doc["q8_0_minus_student"], doc["targets"])
