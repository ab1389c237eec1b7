"""Demo stages 5 and 6: benchmarks for teacher, student and baseline; HF export check.

Scoring follows the reference scorers (`tinywave eval`): a pair counts 1 when the positive's mean
per-token log-likelihood over its speech units is higher, 0.5 on a tie; perplexity pools the NLL
over all units of the target voice's test stories.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

MODELS = ("teacher", "student", "baseline")
TASKS = ("ssc", "tsc", "swuggy")
RESULT_KEYS = {"ssc": "ssc", "tsc": "tsc", "swuggy": "words"}


def evaluate_models(models: dict[str, Path], bench_dir: Path, tokens_dir: Path, log=print) -> dict:
    """{model: {"ssc", "tsc", "words", "ppl", "params", "layers"}} (accuracies in %)."""
    from ..checkpoint import load_model
    from ..eval.harness import prepare_inputs, run_task

    layout = str(tokens_dir / "layout.json")
    results: dict = {}
    inputs = {}
    for name, ckpt in models.items():
        params, config, _ = load_model(ckpt)
        if not inputs:
            for task in TASKS:
                inputs[task] = prepare_inputs(task, bench_dir / task, config.vocab_size,
                                              extractor=str(tokens_dir / "units"), layout=layout,
                                              log=lambda m: log("  " + m))
            inputs["ppl"] = prepare_inputs("ppl", tokens_dir / "corpus" / "target",
                                           config.vocab_size, layout=layout, split="test")
        row = {"layers": config.num_hidden_layers, "params": config.num_params()}
        for task in TASKS:
            r = run_task(params, config, inputs[task], scoring="mean")
            row[RESULT_KEYS[task]] = round(100 * r["accuracy"], 2)
            row[f"{RESULT_KEYS[task]}_pairs"] = r["n_pairs"]
        ppl = run_task(params, config, inputs["ppl"])
        row["ppl"] = round(ppl["ppl"], 3)
        row["ppl_tokens"] = ppl["scored_tokens"]
        results[name] = row
        log(f"  {name}: sSC {row['ssc']:.1f}  tSC {row['tsc']:.1f}  words {row['words']:.1f}  "
            f"ppl {row['ppl']:.2f}")
    return results


def acceptance(results: dict) -> dict:
    """The issue's targets, checked on the table (reported, never tuned for)."""
    t, s, b = (results[m] for m in MODELS)
    checks = {}
    for k in ("ssc", "tsc"):
        checks[f"{k}_student_ge_90pct_teacher"] = s[k] >= 0.9 * t[k]
        checks[f"{k}_student_above_baseline"] = s[k] > b[k]
    checks["ppl_student_closer_to_teacher"] = (abs(math.log(s["ppl"] / t["ppl"]))
                                               < abs(math.log(b["ppl"] / t["ppl"])))
    return checks


def results_markdown(results: dict, settings, checks: dict) -> str:
    t = results["teacher"]
    layers = lambda m: f"{results[m]['layers']} layer{'s' if results[m]['layers'] > 1 else ''}"  # noqa: E731
    names = {"teacher": f"Teacher ({layers('teacher')}, LoRA-corrected)",
             "student": f"TinyWave-style student ({layers('student')}, distilled)",
             "baseline": f"Same size without distillation ({layers('baseline')})"}
    lines = ["| model | params | sSC | tSC | words | PPL |", "|---|---|---|---|---|---|"]
    for m in MODELS:
        r = results[m]
        lines.append(f"| {names[m]} | {r['params'] / 1e6:.2f}M | {r['ssc']:.1f} | {r['tsc']:.1f} | "
                     f"{r['words']:.1f} | {r['ppl']:.2f} |")
    s = results["student"]
    lines.append(f"| student / teacher | {s['params'] / t['params']:.2f}x | "
                 f"{100 * s['ssc'] / max(t['ssc'], 1e-9):.0f}% | "
                 f"{100 * s['tsc'] / max(t['tsc'], 1e-9):.0f}% | "
                 f"{100 * s['words'] / max(t['words'], 1e-9):.0f}% | |")
    n = {k: t[f"{k}_pairs"] for k in ("ssc", "tsc", "words")}
    lines += ["", f"Accuracy in % (pairwise, mean log-likelihood per unit); sSC {n['ssc']}, "
              f"tSC {n['tsc']}, words {n['words']} pairs; PPL per unit on {t['ppl_tokens']} test "
              "units, all in the held-out target voice.",
              "", "Targets: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in checks.items())]
    return "\n".join(lines) + "\n"


def write_results(out_dir: Path, results: dict, settings) -> str:
    checks = acceptance(results)
    table = results_markdown(results, settings, checks)
    (out_dir / "results.md").write_text(table)
    doc = {m: {k: results[m][k] for k in ("ssc", "tsc", "words", "ppl")} for m in MODELS}
    doc["details"] = results
    doc["acceptance"] = checks
    (out_dir / "results.json").write_text(json.dumps(doc, indent=1))
    return table


# ---------------------------------------------------------------- stage 6

def export_and_compare(student_ckpt: Path, out_dir: Path, tokens_dir: Path, prompt_tokens: int,
                       new_tokens: int, log=print) -> dict:
    """Exports the student to HF, continues a test utterance greedily with JAX (KV-cached
    `decode.generate`) and with `transformers`, and asserts the continuations are equal."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch
    from transformers import LlamaForCausalLM

    from ..checkpoint import load_model
    from ..convert.hf_export import export_hf
    from ..eval.perplexity import corpus_seqs
    from ..eval.sequences import resolve_layout
    from ..models import decode

    hf_dir = out_dir / "student_hf"
    export_hf(student_ckpt, hf_dir, overwrite=True)
    params, config, _ = load_model(student_ckpt)
    layout = resolve_layout(str(tokens_dir / "layout.json"), config.vocab_size)
    prompt = corpus_seqs(tokens_dir / "corpus" / "target", "test", layout, limit=1)[0].ids
    prompt = [int(i) for i in prompt[:prompt_tokens]]

    ids, mask = decode.left_pad([prompt])
    jax_out = np.asarray(decode.generate(params, config, jnp.asarray(ids), jnp.asarray(mask),
                                         jax.random.key(0), max_new_tokens=new_tokens,
                                         greedy=True))[0].tolist()
    model = LlamaForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        hf = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt),
                                                                              dtype=torch.long),
                            max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                            num_beams=1, pad_token_id=0)
    hf_out = hf[0, len(prompt):].tolist()
    show = lambda xs: " ".join(layout.id_to_str(i) if i >= layout.text_vocab_size else str(i)  # noqa: E731
                               for i in xs)
    log(f"  prompt ({len(prompt)} tokens): {show(prompt[2:])}")
    log(f"  JAX greedy:          {show(jax_out)}")
    log(f"  transformers greedy: {show(hf_out)}")
    if jax_out != hf_out:
        raise AssertionError(f"exported student continues differently in transformers: "
                             f"JAX {jax_out} vs HF {hf_out}")
    log("  equal: the exported checkpoint continues speech exactly as the JAX model does")
    doc = {"hf_dir": str(hf_dir), "prompt": prompt, "jax": jax_out, "transformers": hf_out,
           "equal": True}
    (out_dir / "generation.json").write_text(json.dumps(doc, indent=1))
    return doc
