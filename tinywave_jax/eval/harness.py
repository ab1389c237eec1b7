"""`evaluate`: benchmark inputs -> token sequences (once) -> scores from one model, or from a
student and its teacher with a comparison report.

Tasks:
    ssc, tsc, swuggy, sblimp, salmon   audio benchmark folders (see benchmarks.py), tokenised
                                       with a units extractor (see sequences.py)
    cloze_ss, cloze_st, cloze_ts,      cross-modal story cloze: jsonl of context / ending text and
    cloze_tt                           audio (see crossmodal.py)
    pairs                              jsonl of pre-tokenised (positive, negative) pairs
    ppl                                corpus folder + split, or a jsonl of {"ids", "seconds"?}
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
from jax.experimental import multihost_utils

from .. import storage
from ..checkpoint import load_model, load_model_config, load_model_info
from ..data.layout import SPEECH, TEXT, load_tokenizer, resolve_layout
from ..errors import (
    ConfigError,
    InputError,
    MissingInputError,
    OutputExistsError,
    TinywaveError,
    naming,
)
from ..outputs import check_output_files, is_primary_process
from ..scoring import param_shardings, rows_per_step, scoring_mesh
from . import bootstrap, report
from .benchmarks import CROSS_MODAL_TASKS, TASKS, benchmark_pairs
from .crossmodal import cloze_pairs, read_cloze_jsonl
from .pairwise import SCORINGS, PairItem, check_vocab, pairwise_accuracy, read_pairs_jsonl
from .perplexity import corpus_seqs, perplexity, read_ppl_jsonl
from .references import check_reference, copy_rule_accuracy, ending_alone
from .sequences import AudioTokenizer, Seq

# what `evaluate` writes into --out; all of them are removed before a run writes its own, so no
# report.md of an earlier --compare run sits beside new results (other files are left alone)
OUT_FILES = ("results.json", "pairs.jsonl", "report.md", "report.json")


@dataclasses.dataclass
class TaskInputs:
    task: str
    pairs: list[PairItem] | None = None  # pairwise tasks
    seqs: list[Seq] | None = None  # ppl


def prepare_inputs(
    task: str,
    data: str | Path,
    vocab_size: int,
    *,
    extractor=None,
    layout: str | None = None,
    tokenizer: str | None = None,
    split: str = "test",
    limit: int | None = None,
    log=print,
) -> TaskInputs:
    """Reads and tokenises a task's data; `limit` keeps the first pairs / sequences.
    `tokenizer`: a Hugging Face tokenizer folder, for the text spans of cross-modal cloze."""
    if task not in TASKS:
        raise ConfigError(f"task: unknown task {task!r}; expected one of {TASKS}", param="task")
    # jsonl inputs (pairs, ppl, cloze files) may be gs://; benchmark audio folders and corpora
    # are read locally
    data = storage.path(data)
    if task == "pairs":
        return TaskInputs(task, pairs=read_pairs_jsonl(data)[:limit])
    if task == "ppl":
        if data.is_file():
            return TaskInputs(task, seqs=read_ppl_jsonl(data)[:limit])
        return TaskInputs(
            task, seqs=corpus_seqs(data, split, resolve_layout(layout, vocab_size), limit)
        )
    if task in CROSS_MODAL_TASKS:
        return _cross_modal_inputs(task, data, vocab_size, extractor, layout, tokenizer, limit, log)
    files = benchmark_pairs(task, data)[:limit]
    if extractor is None:
        raise ConfigError(
            f"extractor: audio benchmarks ({task}) need a units folder", param="extractor"
        )
    tokenize = AudioTokenizer(extractor, resolve_layout(layout, vocab_size))
    log(f"eval {task}: tokenising {2 * len(files)} files of {len(files)} pairs")
    return TaskInputs(
        task,
        pairs=[
            PairItem(
                tokenize(f.positive),
                tokenize(f.negative),
                f.group,
                f"{f.positive.name} | {f.negative.name}",
            )
            for f in files
        ],
    )


def _cross_modal_inputs(task, data, vocab_size, extractor, layout, tokenizer, limit, log):

    items = read_cloze_jsonl(data, task)[:limit]  # every field and audio file checked first
    token_layout = resolve_layout(layout, vocab_size)
    modalities = CROSS_MODAL_TASKS[task]
    # cloze_pairs names a missing --extractor / --tokenizer
    audio = AudioTokenizer(extractor, token_layout) if SPEECH in modalities and extractor else None
    tok = load_tokenizer(tokenizer, token_layout) if TEXT in modalities and tokenizer else None
    log(f"eval {task}: tokenising {len(items)} pairs")
    return TaskInputs(task, pairs=cloze_pairs(items, task, token_layout, tok, audio))


def run_task(
    params,
    config,
    inputs: TaskInputs,
    scoring: str = "mean",
    batch_size: int = 8,
    progress: bool = False,
    mesh=None,
) -> dict:
    """One model's result on prepared inputs; mesh: None (one device) or a mesh whose devices
    share every batch's sequences (`scoring.scoring_mesh`; `batch_size` is then global)."""
    if inputs.task == "ppl":
        return perplexity(params, config, inputs.seqs, batch_size, progress, mesh)
    return pairwise_accuracy(params, config, inputs.pairs, scoring, batch_size, progress, mesh)


def _load(ckpt, dtype, verify=True, mesh=None):

    shardings = None
    if mesh is not None:  # straight onto the mesh (each process reads its own shards)
        shardings = param_shardings(mesh, load_model_config(ckpt))
    params, config, _ = load_model(ckpt, dtype=dtype, shardings=shardings, verify=verify)
    if dtype:
        config = config.replace(dtype=dtype, param_dtype=dtype)
    return params, config


def _model_config(ckpt, param: str | None = None):
    """The model config of checkpoint `ckpt` (its tinywave.json and config.json only, no
    params), so that a wrong path fails before anything is scored; errors name `param`."""

    try:
        load_model_info(ckpt)
        return load_model_config(ckpt)
    except TinywaveError as e:
        if param is None:
            raise
        raise type(e)(f"{param}: {e}", param=param) from None


def _check_inputs(inputs: TaskInputs, config, who: str | None = None, param=None) -> None:
    """Ids and lengths of every sequence against one model, before any model is scored; errors
    start with `who` (naming parameter `param`)."""
    seqs = inputs.seqs or [s for it in inputs.pairs or () for s in (it.positive, it.negative)]
    try:
        check_vocab(seqs, config.vocab_size, config.max_position_embeddings)
    except InputError as e:
        if who is None:
            raise
        raise InputError(f"{who}: {e}", param=param) from None


def _summary(task: str, result: dict) -> str:
    if task == "ppl":
        extra = (
            f", NLL {result['nll_per_second']:.3f} nats/s (ppl/s {result['ppl_per_second']:.4g})"
            if "nll_per_second" in result
            else ""
        )
        return f"ppl {result['ppl']:.4f} over {result['scored_tokens']} tokens{extra}"
    groups = "".join(
        f"\n  {g}: {100 * r['accuracy']:.2f}% ({r['n_pairs']} pairs)"
        for g, r in result["groups"].items()
    )
    return f"accuracy {100 * result['accuracy']:.2f}% over {result['n_pairs']} pairs{groups}"


def evaluate(
    ckpt: str | Path,
    task: str,
    data: str | Path,
    *,
    scoring: str = "mean",
    extractor: str | Path | None = None,
    layout: str | None = None,
    tokenizer: str | None = None,
    compare: str | Path | None = None,
    out: str | Path | None = None,
    batch_size: int = 8,
    dtype: str | None = None,
    split: str = "test",
    limit: int | None = None,
    progress: bool = False,
    log=print,
    verify: bool = True,
    fsdp: int = 1,
    mesh=None,
    reference: str | None = None,
    draws: int = 2000,
    seed: int = 0,
) -> dict:
    """Evaluates checkpoint `ckpt` (and teacher checkpoint `compare`) on one task.
    reference: "copy" or "ending" (see references.py): the copy rule instead of the model (the
    checkpoint then only names the vocabulary and layout), or the model on the endings alone.
    verify: check each checkpoint's files against their recorded sha256.
    mesh: the devices that share the sequences; default `scoring.scoring_mesh(fsdp)`, every
    device of every process (`batch_size` is the global rows per step, rounded up to a
    multiple of the device count). With several processes each computes every result and only
    process 0 writes `out`.

    draws, seed: the 95 % paired-bootstrap intervals (`bootstrap.py`): `draws` resamples of
    the pairs (sequences for ppl), seeded by `seed`, the same for both models.

    Returns {"task", "scoring", "data", "checkpoint", "result", "intervals"} plus, with
    `compare`, {"teacher_checkpoint", "teacher_result", "comparison": rows}. Accuracies are
    fractions, except in "intervals" ({"draws", "seed", "result": {"value", "ci", "n"}, with
    `compare` "teacher_result" and "difference": {"diff", "ci"}, student minus teacher}), which
    holds them in % as printed.
    With `out`, writes results.json, pairs.jsonl (per-pair scores; pairwise tasks) and, with
    `compare`, report.md / report.json.
    """

    if scoring not in SCORINGS:
        raise ConfigError(f"scoring {scoring!r} is not one of {SCORINGS}", param="scoring")
    check_reference(reference, task, compare)
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
        raise ConfigError(f"draws: must be an integer >= 1, got {draws!r}", param="draws")
    mesh = scoring_mesh(fsdp) if mesh is None else mesh
    rows_per_step(batch_size, mesh)  # a bad --batch-size fails before anything is read
    # every named path and setting is checked before the (long) tokenising and scoring
    config = _model_config(ckpt)
    teacher_config = _model_config(compare, "compare") if compare else None
    if extractor is not None and not Path(extractor).is_dir():
        raise MissingInputError(
            f"extractor: units folder not found: {extractor}", param="extractor"
        )
    if layout is not None:
        resolve_layout(layout, config.vocab_size)
    if out is not None:
        with naming("out"):
            check_output_files(
                [storage.path(out) / name for name in OUT_FILES],
                [
                    ckpt,
                    compare,
                    data,
                    extractor,
                    tokenizer,
                    layout if layout and Path(layout).exists() else None,
                ],
                "out file",
            )
    with naming("out"):
        storage.check_gcs(out, write=True, what="out")
    if out is not None and storage.path(out).exists() and not storage.path(out).is_dir():
        raise OutputExistsError(f"out {out}: exists and is not a folder", param="out")
    inputs = prepare_inputs(
        task,
        data,
        config.vocab_size,
        extractor=extractor,
        layout=layout,
        tokenizer=tokenizer,
        split=split,
        limit=limit,
        log=log,
    )
    if reference == "ending":
        inputs = TaskInputs(task, pairs=ending_alone(inputs.pairs))
    _check_inputs(inputs, config)
    if teacher_config is not None:
        _check_inputs(inputs, teacher_config, f"compare {compare}", "compare")
    out_doc = {
        "task": task,
        "scoring": scoring if task != "ppl" else None,
        "data": str(data),
        "checkpoint": str(ckpt),
    } | ({"reference": reference} if reference else {})
    models = [("result", ckpt)] + ([("teacher_result", compare)] if compare else [])
    if reference == "copy":
        out_doc["result"] = copy_rule_accuracy(inputs.pairs)
        log(f"eval {task} copy rule: {_summary(task, out_doc['result'])}")
        models = []
    for key, path in models:
        params, cfg = _load(path, dtype, verify, mesh)
        out_doc[key] = run_task(params, cfg, inputs, scoring, batch_size, progress, mesh)
        del params
        log(f"eval {task} {path}: {_summary(task, out_doc[key])}")
    if compare:
        out_doc["teacher_checkpoint"] = str(compare)
        out_doc["comparison"] = report.compare_rows(
            task, out_doc["teacher_result"], out_doc["result"]
        )
    out_doc["intervals"] = intervals(task, out_doc, draws, seed)
    log(report.interval_line(task, out_doc["intervals"]))
    if out is not None:
        if is_primary_process():  # every process has every result; one writes them
            _write(storage.path(out), out_doc, str(ckpt), str(compare) if compare else None, log)
        _barrier("tinywave eval written")  # no process returns before the files are there
    return out_doc


def intervals(task: str, doc: dict, draws: int, seed: int) -> dict:
    """`evaluate`'s "intervals": the model's (and with a teacher, the teacher's and the
    student-minus-teacher difference's) 95 % paired-bootstrap intervals, from the per-item
    scores in its results, on the same resamples (`bootstrap.summarize` / `difference`)."""
    raw = {task: bootstrap.task_scores(task, doc["result"])}
    out = {"draws": draws, "seed": seed, "result": bootstrap.summarize(raw, draws, seed)[task]}
    if "teacher_result" in doc:
        teacher = {task: bootstrap.task_scores(task, doc["teacher_result"])}
        out["teacher_result"] = bootstrap.summarize(teacher, draws, seed)[task]
        out["difference"] = bootstrap.difference(raw, teacher, draws, seed)[task]
    return out


def _barrier(name: str) -> None:

    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def _write(out: Path, doc: dict, student: str, teacher: str | None, log) -> None:

    if not storage.is_remote(out):  # object storage has no folders to make
        out.mkdir(parents=True, exist_ok=True)
    for name in OUT_FILES:  # an earlier run's files must not pass for this run's
        (out / name).unlink(missing_ok=True)
    slim = json.loads(json.dumps(doc))
    for key in ("result", "teacher_result"):
        if key in slim:
            slim[key].pop("pairs", None)
    (out / "results.json").write_text(json.dumps(slim, indent=2) + "\n")
    if "pairs" in doc["result"]:
        with (out / "pairs.jsonl").open("w") as f:
            teacher_pairs = doc.get("teacher_result", {}).get("pairs")
            for i, p in enumerate(doc["result"]["pairs"]):
                rec = dict(p)
                if teacher_pairs:
                    t = teacher_pairs[i]
                    rec.update(
                        teacher_positive=t["positive"],
                        teacher_negative=t["negative"],
                        teacher_outcome=t["outcome"],
                    )
                f.write(json.dumps(rec) + "\n")
    if teacher is not None:
        md, _ = report.write_report(out, doc["comparison"], teacher, student, slim)
        log(md.read_text())
    log(f"eval: wrote {out}")
