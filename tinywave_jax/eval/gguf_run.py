"""Running an exported GGUF file in llama.cpp (through `llama-cpp-python`, the `gguf` extra):
per-token log-probabilities, greedy continuation, pairwise accuracy and perplexity (`run_task`'s
counterpart), and `compare_gguf` / `export_gguf_and_compare`: one check that a GGUF export scores
and continues like the JAX model it came from (the demo's q8_0 row and continuation use it too).

Token ids go in directly (no llama.cpp tokenizer in between), as the audio tokenizer in front
of a speech LM produces them. Log-probabilities follow `scoring.score_sequences`:
lp[t - 1] = log p(ids[t] | ids[:t]) for t >= 1, computed in float64 from llama.cpp's logits.
"""

from __future__ import annotations

import ctypes
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from ..errors import InputError, TinywaveError
from . import bootstrap
from .bootstrap import PPL

if TYPE_CHECKING:
    from .harness import TaskInputs

# The JAX side (checkpoint, decode, scoring, harness) is imported where a comparison needs it:
# a process that only runs llama.cpp (bench/gguf.py's engines, `speak` on a GGUF file) then
# never loads JAX, whose import alone is ~290 MB of RSS.


class _Feature(ctypes.Structure):  # ggml-backend.h: struct ggml_backend_feature
    _fields_ = [("name", ctypes.c_char_p), ("value", ctypes.c_char_p)]


def llama_cpp_cpu_backend() -> dict:
    """Loads llama.cpp's CPU backend if none is loaded yet and says which one runs:
    {"library": path of the ggml-cpu library mapped into this process, "variant": its
    instruction-set level ("haswell", "zen4", ...; None for a one-level build), "features":
    {name: value} as ggml reports them}.

    The Makefile's build ships one ggml-cpu library per level in llama_cpp/lib (GGML_BACKEND_DL);
    ggml itself looks for them only beside the executable and in the working directory, so they
    are loaded from the package here, ggml scoring each against this CPU's cpuid."""
    import llama_cpp  # llama-cpp-python: the llamacpp extra

    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    ggml = ctypes.CDLL(str(_loaded_ggml(lib_dir)))
    ggml.ggml_backend_reg_by_name.restype = ctypes.c_void_p
    ggml.ggml_backend_reg_by_name.argtypes = [ctypes.c_char_p]
    ggml.ggml_backend_load_all_from_path.argtypes = [ctypes.c_char_p]
    ggml.ggml_backend_reg_get_proc_address.restype = ctypes.c_void_p
    ggml.ggml_backend_reg_get_proc_address.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    if not ggml.ggml_backend_reg_by_name(b"CPU"):
        log = logging.getLogger("llama-cpp-python")  # quiet, as Llama(verbose=False) sets it
        if log.level == logging.NOTSET:
            log.setLevel(logging.ERROR)
        ggml.ggml_backend_load_all_from_path(str(lib_dir).encode())
    reg = ggml.ggml_backend_reg_by_name(b"CPU")
    if not reg:
        raise TinywaveError(
            f"llama.cpp found no CPU backend this CPU can run in {lib_dir}: reinstall "
            "llama-cpp-python with `make venv` (its build flags are in the Makefile)"
        )
    features = {}
    get = ggml.ggml_backend_reg_get_proc_address(reg, b"ggml_backend_get_features")
    if get:
        feats = ctypes.CFUNCTYPE(ctypes.POINTER(_Feature), ctypes.c_void_p)(get)(reg)
        i = 0
        while feats[i].name is not None:
            features[feats[i].name.decode()] = feats[i].value.decode()
            i += 1
    maps = Path("/proc/self/maps")  # Linux: which ggml-cpu file the loader mapped
    libs = sorted(
        {ln.split()[-1] for ln in maps.read_text().splitlines() if "/libggml-cpu" in ln}
        if maps.exists()
        else ()
    )
    stem = Path(libs[0]).name.split(".so")[0] if libs else ""
    return {
        "library": libs[0] if libs else None,
        "variant": stem.removeprefix("libggml-cpu").lstrip("-") or None,
        "features": features,
    }


def _loaded_ggml(lib_dir: Path) -> Path:
    """The libggml file llama_cpp's libllama loaded (its soname, libggml.so.0, found through
    its $ORIGIN runpath). A wheel stores libggml.so, .so.0 and .so.0.25.3 as three copies, not
    links: opening another of them would load a second ggml whose backend registry libllama
    never sees ("no backends are loaded")."""
    maps = Path("/proc/self/maps")
    if maps.exists():
        for line in maps.read_text().splitlines():
            path = Path(line.split()[-1])
            if path.parent == lib_dir and path.name.startswith("libggml.so"):
                return path
    return lib_dir / "libggml.so.0"


def load_llama_cpp(
    gguf_path: str | Path,
    n_ctx: int = 0,
    n_threads: int | None = None,
    logits_all: bool = True,
    f32_kv_cache: bool = False,
):
    """A `llama_cpp.Llama` over `gguf_path`. n_ctx 0: the model's context length; logits_all:
    keep the logits of every position (log-probs need them; greedy decoding does not);
    f32_kv_cache: keys and values cached in float32 instead of llama.cpp's default float16
    (which alone moves float32 log-probs by up to ~3e-3)."""
    import llama_cpp  # llama-cpp-python: the llamacpp extra

    llama_cpp_cpu_backend()
    threads = n_threads or max(1, len(os.sched_getaffinity(0)))
    return llama_cpp.Llama(
        model_path=str(gguf_path),
        n_ctx=n_ctx,
        n_batch=512,
        logits_all=logits_all,
        **(
            {"type_k": llama_cpp.GGML_TYPE_F32, "type_v": llama_cpp.GGML_TYPE_F32}
            if f32_kv_cache
            else {}
        ),
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
    )


def _model(model, n_ctx: int = 0):
    return model if not isinstance(model, (str, Path)) else load_llama_cpp(model, n_ctx)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _check(ids: Sequence[int], llm, where: str) -> list[int]:
    ids = [int(i) for i in ids]
    n_vocab, n_ctx = llm.n_vocab(), llm.n_ctx()
    bad = sorted({i for i in ids if not 0 <= i < n_vocab})
    if bad:
        raise InputError(f"{where}: ids outside the GGUF vocabulary [0, {n_vocab}): {bad[:10]}")
    if len(ids) > n_ctx:
        raise InputError(f"{where}: {len(ids)} tokens, longer than the context ({n_ctx})")
    return ids


def llama_cpp_logits(model, ids: Sequence[int]) -> np.ndarray:
    """llama.cpp's logits [len(ids), vocab] (float32) of one sequence, from an empty cache."""
    llm = _model(model)
    if not getattr(llm, "_logits_all", True):
        raise ValueError("llama_cpp_logits needs a model loaded with logits_all=True")
    ids = _check(ids, llm, "sequence")
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], np.float32)


def llama_cpp_logprobs(model, seqs: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """log p(ids[t] | ids[:t]) for t >= 1 per sequence (float64 [len - 1]), as
    `scoring.score_sequences` returns them. `model`: a GGUF path or a loaded `llama_cpp.Llama`."""
    llm = _model(model)
    out = []
    for ids in seqs:
        ids = [int(i) for i in ids]
        lp = _log_softmax(llama_cpp_logits(llm, ids)[:-1])
        out.append(lp[np.arange(len(ids) - 1), ids[1:]])
    return out


def llama_cpp_greedy(model, prompt: Sequence[int], max_new_tokens: int) -> list[int]:
    """The argmax continuation of `prompt` (max_new_tokens ids, no stop token), one llama.cpp
    KV-cached step per token."""
    llm = _model(model)
    prompt = _check(prompt, llm, "prompt")
    _check([0] * (len(prompt) + max_new_tokens - 1), llm, "prompt + new tokens")
    import llama_cpp  # llama-cpp-python: the llamacpp extra

    n_vocab = llm.n_vocab()
    llm.reset()
    llm.eval(prompt)
    out: list[int] = []
    while True:
        # the last evaluated position's logits, straight from the context: llm.scores is only
        # filled with logits_all=True
        last = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), (n_vocab,))
        token = int(np.argmax(last))
        out.append(token)
        if len(out) == max_new_tokens:
            return out
        llm.eval([token])


def llama_cpp_generate(
    model,
    prompt: Sequence[int],
    max_new_tokens: int,
    *,
    banned: np.ndarray | None = None,
    stop_ids: Sequence[int] = (),
    greedy: bool = True,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
) -> list[int]:
    """A continuation of `prompt` in llama.cpp with `generation`'s rules: ids where `banned`
    (bool [vocab]) is set never come, the first of `stop_ids` ends it (not included); greedy, or
    temperature + top-p sampling (numpy, seeded) on llama.cpp's last-position logits."""
    llm = _model(model)
    prompt = _check(prompt, llm, "prompt")
    _check([0] * (len(prompt) + max_new_tokens - 1), llm, "prompt + new tokens")
    import llama_cpp  # llama-cpp-python: the llamacpp extra

    n_vocab = llm.n_vocab()
    rng = np.random.default_rng(seed)
    stops = {int(i) for i in stop_ids}
    llm.reset()
    llm.eval(prompt)
    out: list[int] = []
    while len(out) < max_new_tokens:
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), (n_vocab,))
        logits = np.array(logits, np.float64)
        if banned is not None:
            logits[np.asarray(banned)[:n_vocab]] = -np.inf
        if greedy:
            token = int(np.argmax(logits))
        else:
            p = np.exp((logits - logits.max()) / temperature)
            p /= p.sum()
            order = np.argsort(-p)
            keep = np.cumsum(p[order]) - p[order] < top_p  # the nucleus, at least one id
            p_top = p[order[keep]] / p[order[keep]].sum()
            token = int(order[keep][rng.choice(len(p_top), p=p_top)])
        if token in stops:
            break
        out.append(token)
        if len(out) < max_new_tokens:
            llm.eval([token])
    return out


def llama_cpp_pairwise_accuracy(model, items: list, scoring: str = "mean") -> dict:
    """`eval.pairwise.pairwise_accuracy` with llama.cpp's log-probabilities: {"accuracy",
    "n_pairs", "pairs": [{"name", "positive", "negative", "outcome"}]}."""

    from .pairwise import pair_outcome, sequence_score

    llm = _model(model)
    seqs = [s for it in items for s in (it.positive, it.negative)]
    lps = llama_cpp_logprobs(llm, [s.ids for s in seqs])
    scores = [sequence_score(lp, s.score_from, scoring) for lp, s in zip(lps, seqs)]
    pairs = [
        {
            "name": it.name or f"{it.positive.name} | {it.negative.name}",
            "positive": p,
            "negative": n,
            "outcome": pair_outcome(p, n),
        }
        for it, p, n in zip(items, scores[0::2], scores[1::2])
    ]
    return {
        "accuracy": float(np.mean([p["outcome"] for p in pairs])),
        "n_pairs": len(pairs),
        "pairs": pairs,
    }


def llama_cpp_perplexity(model, seqs: list) -> dict:
    """`eval.perplexity.perplexity` with llama.cpp's log-probabilities (eval.sequences.Seq
    inputs, tokens from `score_from` on): the pooled per-token perplexity with the per-sequence
    NLL and token counts that bootstrap intervals resample."""
    llm = _model(model)
    lps = llama_cpp_logprobs(llm, [s.ids for s in seqs])
    per_seq = [float(-lp[s.score_from - 1 :].sum()) for lp, s in zip(lps, seqs)]
    tokens = [s.num_scored for s in seqs]
    nll = float(sum(per_seq))
    return {
        "n_sequences": len(seqs),
        "scored_tokens": sum(tokens),
        "nll_sum": nll,
        "ppl": float(np.exp(nll / sum(tokens))),
        "sequence_nll": per_seq,
        "sequence_tokens": tokens,
    }


def run_task_llama_cpp(model, inputs: TaskInputs, scoring: str = "mean") -> dict:
    """`harness.run_task` in llama.cpp: the same result keys (pairs or per-sequence NLL)."""
    if inputs.task == PPL:
        return llama_cpp_perplexity(model, inputs.seqs or [])
    return llama_cpp_pairwise_accuracy(model, inputs.pairs or [], scoring)


def compare_gguf(
    model,
    params=None,
    config=None,
    *,
    inputs: Mapping[str, TaskInputs] | None = None,
    jax_scores: Mapping[str, bootstrap.Scores] | None = None,
    prompt: Sequence[int] | None = None,
    new_tokens: int = 24,
    jax_continuation: Sequence[int] | None = None,
    scoring: str = "mean",
    log=print,
) -> dict:
    """llama.cpp running a GGUF file (`model`: its path or a loaded `llama_cpp.Llama`) against
    the JAX model it was exported from (`params`, `config`; not needed for what is given).

    inputs: {task: TaskInputs}, each scored in llama.cpp and in JAX (`jax_scores`: the JAX
    model's per-item scores, `bootstrap.task_scores`, where scored already): "tasks": {task:
    {"result": llama.cpp's result, "scores": its per-item scores, "jax_accuracy" and
    "llama_cpp_accuracy" (fractions), "n_pairs", "agreeing_pairs" and "outcome_agreement"
    (pairs decided alike, a fraction); for perplexity "jax_ppl" and "llama_cpp_ppl"}}.
    prompt: greedy continuation of `new_tokens` in both (`jax_continuation`: JAX's, where
    decoded already): "continuation": {"prompt", "jax", "llama_cpp", "common_prefix"}.
    Nothing is asserted (a quantized file may differ a little)."""
    from ..models import decode
    from .harness import run_task

    llm = _model(model)
    doc: dict = {}
    if inputs:
        doc["tasks"] = {}
        for task, inp in inputs.items():
            jax = (jax_scores or {}).get(task)
            if jax is None:
                jax = bootstrap.task_scores(task, run_task(params, config, inp, scoring))
            result = run_task_llama_cpp(llm, inp, scoring)
            cpp = bootstrap.task_scores(task, result)
            entry: dict = {"result": result, "scores": cpp}
            if task == PPL:
                entry.update(jax_ppl=bootstrap.statistic(task, jax), llama_cpp_ppl=result["ppl"])
            else:
                agree = int(np.sum(np.asarray(jax) == np.asarray(cpp)))
                entry.update(
                    jax_accuracy=float(np.mean(jax)),
                    llama_cpp_accuracy=result["accuracy"],
                    n_pairs=len(cpp),
                    agreeing_pairs=agree,
                    outcome_agreement=agree / len(cpp),
                )
            doc["tasks"][task] = entry
    if prompt is not None:
        prompt = [int(i) for i in prompt]
        jax_out = (
            decode.greedy(params, config, prompt, new_tokens)
            if jax_continuation is None
            else [int(i) for i in jax_continuation]
        )
        cpp_out = llama_cpp_greedy(llm, prompt, len(jax_out))
        same = decode.common_prefix(jax_out, cpp_out)
        doc["continuation"] = {
            "prompt": prompt,
            "jax": jax_out,
            "llama_cpp": cpp_out,
            "common_prefix": same,
        }
        log(
            f"  greedy continuation: llama.cpp equals JAX on the first {same}/{len(jax_out)} tokens"
        )
    return doc


def export_gguf_and_compare(
    ckpt_dir: str | Path,
    out: str | Path,
    gguf_type: str = "q8_0",
    *,
    items: list | None = None,
    prompt: Sequence[int] | None = None,
    new_tokens: int = 24,
    layout=None,
    overwrite: bool = True,
    scoring: str = "mean",
    log=print,
) -> dict:
    """Exports `ckpt_dir` to the GGUF file `out` and compares llama.cpp on it with the JAX model
    (`compare_gguf`): pairwise accuracy of `items` (eval.pairwise.PairItem) in both, with the
    share of pairs whose outcome agrees and the per-token log-prob gap (mean, max |JAX -
    llama.cpp|); the greedy continuation of `prompt` (ids) in both and the length of their
    common prefix. Returns a JSON-able dict; nothing is asserted."""
    from ..checkpoint import load_model
    from ..convert.gguf_export import export_gguf
    from ..scoring import score_sequences
    from .harness import TaskInputs

    result = export_gguf(ckpt_dir, out, gguf_type, overwrite=overwrite, layout=layout)
    for note in result.notes:
        log(f"  note: {note}")
    doc: dict = {"gguf": str(result.path), "type": result.type, "bytes": result.bytes}
    log(f"  wrote {result.path} ({result.type}, {result.bytes / 1e6:.2f} MB)")
    params, config, _ = load_model(ckpt_dir)
    llm = load_llama_cpp(result.path)
    inputs = {"pairs": TaskInputs("pairs", pairs=items)} if items else None
    compared = compare_gguf(
        llm,
        params,
        config,
        inputs=inputs,
        prompt=prompt,
        new_tokens=new_tokens,
        scoring=scoring,
        log=log,
    )
    if items:
        t = compared["tasks"]["pairs"]
        seqs = [s.ids.tolist() for it in items for s in (it.positive, it.negative)]
        gaps = np.concatenate(
            [
                np.abs(np.asarray(a, np.float64) - b)
                for a, b in zip(
                    score_sequences(params, config, seqs), llama_cpp_logprobs(llm, seqs)
                )
            ]
        )
        doc["pairwise"] = {
            "n_pairs": len(items),
            "jax_accuracy": t["jax_accuracy"],
            "llama_cpp_accuracy": t["llama_cpp_accuracy"],
            "outcome_agreement": t["outcome_agreement"],
            "logprob_gap_mean": float(gaps.mean()),
            "logprob_gap_max": float(gaps.max()),
        }
        log(
            f"  pairwise accuracy: JAX {100 * t['jax_accuracy']:.1f}, llama.cpp "
            f"{100 * t['llama_cpp_accuracy']:.1f} "
            f"({100 * t['outcome_agreement']:.1f}% of pairs agree; per-token "
            f"log-prob gap mean {gaps.mean():.4f}, max {gaps.max():.4f})"
        )
    if "continuation" in compared:
        doc["continuation"] = compared["continuation"]
    return doc
