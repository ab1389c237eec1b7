"""`tinywave eval`: benchmark accuracy / perplexity of a checkpoint, optionally vs its teacher."""

from __future__ import annotations

from ..errors import log_stderr
from ..flags import add_dtype, add_mesh_flags, add_no_verify

TASK_HELP = (
    "ssc/tsc: StoryCloze folder; swuggy/sblimp: folder of wavs; salmon: folder of the "
    "eight subset folders; cloze_ss/cloze_st/cloze_ts/cloze_tt (context -> ending in speech "
    "or text): jsonl of {context, positive, negative: {text, audio}} (docs/evaluation.md); "
    "pairs: jsonl of {positive, negative, group}; ppl: corpus "
    "folder (with --split) or jsonl of {ids, seconds}"
)


def register(subparsers) -> None:
    from .benchmarks import TASKS

    p = subparsers.add_parser(
        "eval",
        help="pairwise-likelihood benchmarks and perplexity (teacher vs student)",
        description="Scores a checkpoint on a benchmark. Pairwise tasks count a pair 1 when the "
        "positive scores higher, 0.5 on a tie, 0 otherwise. Each result comes with a 95 %% "
        "bootstrap interval; with --compare, the teacher's and the student-minus-teacher "
        "difference's too, on the same resamples (paired). " + TASK_HELP,
    )
    p.add_argument("ckpt", help="tinywave model checkpoint (the student, when --compare is given)")
    p.add_argument("--task", required=True, choices=TASKS)
    p.add_argument("--data", required=True, help="benchmark folder, pairs/ppl jsonl or corpus")
    p.add_argument(
        "--scoring",
        choices=["mean", "sum"],
        default="mean",
        help="mean (default, as the reference scorers) or summed log-likelihood over "
        "the scored tokens",
    )
    p.add_argument("--extractor", help="units folder that tokenises benchmark audio")
    p.add_argument(
        "--tokenizer",
        help="Hugging Face tokenizer folder for the text spans of cross-modal cloze (cloze_st, "
        "cloze_ts, cloze_tt)",
    )
    p.add_argument(
        "--layout",
        help="token layout preset (spiritlm_base, spiritlm_expressive) "
        "or JSON file; default: inferred from the vocabulary size",
    )
    p.add_argument(
        "--compare",
        metavar="TEACHER_CKPT",
        help="also score this teacher and write a teacher-vs-student report",
    )
    p.add_argument(
        "--out",
        help="folder for results.json, pairs.jsonl and report.md/json; a reused folder has "
        "these four files replaced (a report from an earlier --compare run is removed), other "
        "files are kept",
    )
    p.add_argument(
        "--reference",
        choices=["copy", "ending"],
        help="what the benchmark gives away: copy = the parameter-free copy rule (the share of "
        "each ending's unit n-grams, n = 1..4, already in the context; CKPT only names the "
        "vocabulary), ending = CKPT scores the endings without the story",
    )
    p.add_argument(
        "--draws",
        type=int,
        default=2000,
        help="bootstrap resamples of the pairs (sequences for ppl) for the 95 %% intervals "
        "printed and saved with every result, paired between student and teacher (default 2000)",
    )
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--split", default="test", help="corpus split for --task ppl (default test)")
    p.add_argument("--limit", type=int, help="only the first N pairs / sequences")

    add_mesh_flags(p)
    add_dtype(p)

    add_no_verify(p)
    p.set_defaults(func=_run)


def _run(args) -> int:
    from ..parallel.distributed import maybe_initialize
    from .harness import evaluate

    maybe_initialize()  # multi-process runs: before any jax device is touched
    evaluate(
        args.ckpt,
        args.task,
        args.data,
        scoring=args.scoring,
        extractor=args.extractor,
        layout=args.layout,
        tokenizer=args.tokenizer,
        compare=args.compare,
        out=args.out,
        batch_size=args.batch_size,
        dtype=args.dtype,
        split=args.split,
        limit=args.limit,
        progress=True,
        log=log_stderr,
        verify=not args.no_verify,
        fsdp=args.fsdp,
        reference=args.reference,
        draws=args.draws,
        seed=args.seed,
    )
    return 0
