"""Demo benchmarks with intervals: story cloze, word test and perplexity for each model, 95 %
paired-bootstrap intervals, the results table, and the Hugging Face export check.

Scoring follows the reference scorers (`tinywave eval`): a pair counts 1 when the positive's mean
per-unit log-likelihood is higher, 0.5 on a tie; perplexity pools the NLL over all units of the
held-out stories. Intervals resample pairs (or utterances, for perplexity) with replacement,
the same resamples for every model, so a difference between two models gets its own interval.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..eval import bootstrap

CLOZE = ("ssc", "tsc")
GGUF_FILE = "student.q8_0.gguf"  # the quantized student the results table scores in llama.cpp
CROSS_MODAL = ("cloze_ss", "cloze_st", "cloze_ts", "cloze_tt")
# task -> the key it reports under (voice: SALMon-style speaker consistency; ss/st/ts/tt:
# cross-modal topic cloze, context -> ending modality, S = speech, T = text)
RESULT_KEYS = {
    "ssc": "ssc",
    "tsc": "tsc",
    "swuggy": "words",
    "salmon": "voice",
    **{t: t.split("_")[1] for t in CROSS_MODAL},
}
UNSEEN = "@unseen"  # task suffix: the same task in the voices no model heard
UNSEEN_BENCH = "bench_unseen"  # their benchmark folder (natural speech)


def result_key(task: str) -> str:
    """The key a task reports under; "ssc@unseen" -> "ssc_unseen"."""
    base, unseen, _ = task.partition(UNSEEN)
    return RESULT_KEYS.get(base, base) + ("_unseen" if unseen else "")


def bench_tasks(bench_dir: Path, words: bool = True) -> tuple[str, ...]:
    """The tasks a benchmark folder holds: sSC and tSC, the word test (`words`), and the
    expressive extras where they were written."""
    tasks = list(CLOZE)
    if words and (bench_dir / "swuggy").is_dir():
        tasks.append("swuggy")
    if (bench_dir / "salmon").is_dir():
        tasks.append("salmon")
    if (bench_dir / "crossmodal.jsonl").is_file():
        tasks += CROSS_MODAL
    return tuple(tasks)


def bench_inputs(
    bench_dir: Path,
    units_dir: Path,
    layout: Path,
    vocab_size: int,
    tasks,
    log=print,
    tokenizer: Path | None = None,
) -> dict:
    """{task: TaskInputs} for the pair folders (and crossmodal.jsonl) under `bench_dir`."""
    from ..eval.harness import prepare_inputs

    return {
        t: prepare_inputs(
            t,
            bench_dir / ("crossmodal.jsonl" if t in CROSS_MODAL else t),
            vocab_size,
            extractor=str(units_dir),
            layout=str(layout),
            tokenizer=None if tokenizer is None else str(tokenizer),
            log=lambda m: log("  " + m),
        )
        for t in tasks
    }


def reference_scores(inputs: dict, params, config) -> dict:
    """{"copy_rule": raw, "ending_alone": raw}: the copy rule and the model (the teacher) on the
    endings alone, on the story-cloze inputs (`eval.references`); raw as `score_model`'s."""
    from ..eval.harness import TaskInputs
    from ..eval.references import copy_rule_accuracy, ending_alone

    cloze = {t: inp for t, inp in inputs.items() if t.partition(UNSEEN)[0] in CLOZE}
    copy = {t: bootstrap.task_scores(t, copy_rule_accuracy(inp.pairs)) for t, inp in cloze.items()}
    alone = {t: TaskInputs(t, pairs=ending_alone(inp.pairs)) for t, inp in cloze.items()}
    return {"copy_rule": copy, "ending_alone": score_model(params, config, alone)}


def ppl_inputs(corpus_dir: Path, split: str, layout: Path, vocab_size: int, limit=None):
    from ..eval.harness import prepare_inputs

    return prepare_inputs(
        "ppl", corpus_dir, vocab_size, layout=str(layout), split=split, limit=limit
    )


def score_model(params, config, inputs: dict) -> dict:
    """Raw scores: {"ssc": outcomes [n], ..., "ppl": (nll [n], tokens [n])} for the given inputs."""
    from ..eval.harness import run_task

    out = {}
    for task, inp in inputs.items():
        out[task] = bootstrap.task_scores(task, run_task(params, config, inp, scoring="mean"))
    return out


def export_student_gguf(student_ckpt: Path, out_dir: Path, layout_path: Path, log=print) -> Path:
    """The student as `OUT_DIR/student.q8_0.gguf` (`tinywave export-gguf --type q8_0`, token
    strings from the demo's layout), the file a laptop would run."""
    from ..convert.gguf_export import export_gguf

    out = out_dir / GGUF_FILE
    result = export_gguf(student_ckpt, out, "q8_0", overwrite=True, layout=str(layout_path))
    log(f"  wrote {out} (q8_0, {result.bytes / 1e6:.2f} MB)")
    return out


def score_llama_cpp(gguf_path: Path, inputs: dict, student_raw: dict) -> tuple[dict, float]:
    """(`score_model`'s raw scores from llama.cpp running a GGUF file, the share of pairs in %
    it decides as the float32 student did): `eval.gguf_run.compare_gguf` on the same inputs,
    the same scoring (mean log-likelihood per unit, pooled perplexity)."""
    from ..eval.gguf_run import compare_gguf

    tasks = compare_gguf(gguf_path, inputs=inputs, jax_scores=student_raw)["tasks"]
    pairs = [v for v in tasks.values() if "agreeing_pairs" in v]
    agree = sum(v["agreeing_pairs"] for v in pairs) / sum(v["n_pairs"] for v in pairs)
    return {task: v["scores"] for task, v in tasks.items()}, round(100 * agree, 2)


def ppl_of(nll: np.ndarray, tokens: np.ndarray) -> float:
    return bootstrap.statistic(bootstrap.PPL, (nll, tokens))


def summarize(raw: dict, draws: int, seed: int = 0) -> dict:
    """One model's row from raw scores (`eval.bootstrap.summarize`): accuracies in %,
    perplexity, each with `<key>_ci`, under the demo's keys, and `pairs`."""
    row, pairs = {}, {}
    for task, s in bootstrap.summarize(raw, draws, seed).items():
        key = result_key(task)
        row[key], row[f"{key}_ci"] = s["value"], s["ci"]
        if task == bootstrap.PPL:
            row["ppl_tokens"] = int(raw[task][1].sum())
        else:
            pairs[task] = s["n"]
    row["pairs"] = pairs
    return row


def difference(raw_a: dict, raw_b: dict, draws: int, seed: int = 0) -> dict:
    """{key: {"diff", "ci"}}: model a minus model b with its paired-bootstrap interval
    (`eval.bootstrap.difference`, on the resamples of `summarize`), under the demo's keys."""
    return {
        result_key(task): d for task, d in bootstrap.difference(raw_a, raw_b, draws, seed).items()
    }


def save_raw(path: Path, raw: dict) -> None:
    doc = {
        t: ([v[0].tolist(), v[1].tolist()] if t == "ppl" else v.tolist()) for t, v in raw.items()
    }
    path.write_text(json.dumps(doc))


# ---------------------------------------------------------------- stage 6


def export_and_compare(
    student_ckpt: Path,
    out_dir: Path,
    corpus_dir: Path,
    layout_path: Path,
    prompt_tokens: int,
    new_tokens: int,
    log=print,
    gguf: Path | None = None,
) -> dict:
    """Exports the student to HF, continues a test utterance greedily with JAX (KV-cached
    `decode.generate`) and with `transformers`, and asserts the continuations are equal. With
    `gguf` (the q8_0 file), llama.cpp's greedy continuation is shown beside them: reported, not
    asserted (8-bit weights may flip a near-tie)."""
    import torch
    from transformers import LlamaForCausalLM

    from ..checkpoint import load_model
    from ..convert.hf_export import export_hf
    from ..data.layout import resolve_layout
    from ..eval.perplexity import corpus_seqs
    from ..models import decode

    hf_dir = out_dir / "student_hf"
    export_hf(student_ckpt, hf_dir, overwrite=True)
    params, config, _ = load_model(student_ckpt)
    layout = resolve_layout(str(layout_path), config.vocab_size)
    prompt = corpus_seqs(corpus_dir, "test", layout, limit=1)[0].ids
    prompt = [int(i) for i in prompt[:prompt_tokens]]

    jax_out = decode.greedy(params, config, prompt, new_tokens)
    model = LlamaForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        hf = model.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=0,
        )
    hf_out = hf[0, len(prompt) :].tolist()

    def show(xs):
        return " ".join(layout.id_to_str(i) if i >= layout.text_vocab_size else str(i) for i in xs)

    log(f"  prompt ({len(prompt)} tokens): {show(prompt[2:])}")
    log(f"  JAX greedy:            {show(jax_out)}")
    log(f"  transformers greedy:   {show(hf_out)}")
    if jax_out != hf_out:
        raise AssertionError(
            f"exported student continues differently in transformers: JAX {jax_out} vs HF {hf_out}"
        )
    log("  equal: the exported checkpoint continues speech exactly as the JAX model does")
    doc = {
        "hf_dir": str(hf_dir),
        "prompt": prompt,
        "jax": jax_out,
        "transformers": hf_out,
        "equal": True,
    }
    if gguf is not None:
        from ..eval.gguf_run import compare_gguf, load_llama_cpp

        llm = load_llama_cpp(gguf, logits_all=False)  # greedy only: no logits kept
        cont = compare_gguf(llm, prompt=prompt, jax_continuation=jax_out, log=lambda m: None)
        cpp_out, same = cont["continuation"]["llama_cpp"], cont["continuation"]["common_prefix"]
        log(f"  llama.cpp q8_0 greedy: {show(cpp_out)}")
        log(f"  llama.cpp ({gguf.name}) equals JAX on the first {same}/{new_tokens} tokens")
        doc.update(gguf=str(gguf), llama_cpp_q8_0=cpp_out, llama_cpp_common_prefix=same)
    (out_dir / "generation.json").write_text(json.dumps(doc, indent=1))
    return doc
