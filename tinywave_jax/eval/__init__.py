"""Evaluation: pairwise-likelihood benchmarks (sSC, tSC, SALMon, sWUGGY, sBLIMP, token pairs),
perplexity, and teacher-vs-student reports (`tinywave eval`).

    benchmarks   benchmark folders -> (positive, negative) file pairs, as the reference loaders
    sequences    Seq (ids + first scored token), benchmark audio -> tokens
    pairwise     mean / sum scoring and 1 / 0.5 / 0 pair accuracy, overall and per group
    perplexity   per-token and per-second perplexity of a corpus split or jsonl
    report       teacher vs student table (markdown + JSON)
    harness      evaluate(): inputs -> scores for one model or a teacher/student pair
    gguf_run     an exported GGUF file in llama.cpp: log-probs, greedy, pairwise, perplexity,
                 and the export-and-compare check against the JAX model

Names are imported lazily so that `tinywave --help` stays fast.
"""

from .._lazy import lazy_exports

_NAMES = {
    "harness": ["evaluate", "prepare_inputs", "run_task"],
    "benchmarks": ["TASKS", "BenchmarkError", "FilePair", "benchmark_pairs", "salmon_pairs"],
    "pairwise": [
        "PairItem",
        "pair_outcome",
        "pairwise_accuracy",
        "read_pairs_jsonl",
        "sequence_score",
    ],
    "perplexity": ["perplexity", "read_ppl_jsonl"],
    "sequences": ["AudioTokenizer", "Seq"],
}
__getattr__, __all__ = lazy_exports(__name__, _NAMES)
