"""`tinywave score` and `tinywave generate`: the command lines of scoring.py and generation.py.

Library modules are imported inside each command's function, so `tinywave --help` stays fast.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from .data.layout import MODALITIES
from .errors import ConfigError, InputError
from .flags import add_dtype, add_mesh_flags, add_no_verify
from .jsonl import iter_jsonl


def register(subparsers) -> None:
    _register_score(subparsers)
    _register_generate(subparsers)


def _register_score(subparsers) -> None:
    p = subparsers.add_parser(
        "score",
        help="per-token log-likelihoods of token sequences (jsonl in, jsonl out)",
        description='Each input line is {"ids": [...], ...}; each output line adds "logprobs" '
        '(log p(ids[t] | ids[:t]) for t >= 1), "sum_logprob" and "mean_logprob". '
        "Other keys pass through.",
    )
    p.add_argument(
        "ckpt_dir", help="tinywave model checkpoint (from import-hf, init-student, distill)"
    )
    p.add_argument("input", help="input .jsonl")
    p.add_argument(
        "output",
        help="output .jsonl (written atomically; by process 0 of a multi-process run); never "
        "the input file or a path inside the checkpoint",
    )
    add_mesh_flags(p)
    add_dtype(p)
    add_no_verify(p)
    p.set_defaults(func=_score)


def _score(a) -> int:
    from .parallel.distributed import maybe_initialize
    from .scoring import score_file

    maybe_initialize()  # multi-process runs: before any jax device is touched
    score_file(
        a.ckpt_dir,
        a.input,
        a.output,
        a.batch_size,
        a.dtype,
        verify=not a.no_verify,
        fsdp=a.fsdp,
    )
    return 0


def _prompts_from_args(args, layout):
    prompts, names = [], []
    for s in args.prompt or []:
        prompts.append(s), names.append(s)
    if args.prompts:
        for where, rec in iter_jsonl(args.prompts, "prompts file"):
            if isinstance(rec.get("prompt"), str):
                prompts.append(rec["prompt"])
            elif isinstance(rec.get("ids"), list):
                prompts.append(rec["ids"])
            else:
                raise InputError(f'{where}: expected {{"prompt": "..."}} or {{"ids": [...]}}')
            names.append(str(rec.get("name", where)))
    if args.prompt_audio:
        if not args.extractor:
            raise ConfigError("--prompt-audio needs --extractor (a units folder)")
        from .eval.sequences import AudioTokenizer

        expressive = {"expressive": True, "speech": False}.get(args.modality)  # else the layout's
        tokenize = AudioTokenizer(args.extractor, layout, expressive=expressive)
        for f in args.prompt_audio:
            prompts.append(tokenize(f).ids.tolist()), names.append(str(f))
    if not prompts:
        raise ConfigError("give at least one --prompt, --prompts FILE.jsonl or --prompt-audio FILE")
    return prompts, names


def _parse_stop(values, layout, tokenizer):
    from .generation import parse_prompt

    if values is None:
        return None
    ids = []
    for v in values:
        if v.lstrip("-").isdigit():
            ids.append(int(v))
        else:
            # only the ids the user wrote: a prepended bos would become a stop id and lift
            # the modality ban on it
            ids.extend(parse_prompt(v, layout, tokenizer, "--stop", add_bos=False).tolist())
    return ids


def _generate(args) -> int:
    from .data.layout import load_tokenizer, resolve_layout
    from .generation import generate_tokens, load_model_arrays

    if args.out:
        from .outputs import check_output_files

        inputs = [args.ckpt, args.prompts, args.tokenizer, args.extractor]
        inputs += list(args.prompt_audio or ())
        check_output_files([args.out], inputs, "--out")
    params, config = load_model_arrays(args.ckpt, args.dtype, verify=not args.no_verify)
    layout = resolve_layout(args.layout, config.vocab_size)
    tok_dir = args.tokenizer or (Path(args.ckpt) / "tokenizer")
    tokenizer = None
    if args.tokenizer or any(Path(tok_dir).glob("tokenizer*")):
        tokenizer = load_tokenizer(str(tok_dir), layout)
    prompts, names = _prompts_from_args(args, layout)
    stop = [] if args.no_stop else _parse_stop(args.stop, layout, tokenizer)
    outputs = generate_tokens(
        (params, config),
        prompts,
        layout=layout,
        modality=args.modality,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        seed=args.seed,
        greedy=args.greedy,
        stop_ids=stop,
        tokenizer=tokenizer,
        batch_size=args.batch_size,
        prompt_names=names,
    )
    doc = {
        "checkpoint": str(args.ckpt),
        "layout": layout.name,
        "modality": args.modality,
        "settings": {
            "max_new_tokens": args.max_new_tokens,
            "greedy": args.greedy,
            "temperature": args.temperature,
            "top_p": args.top_p,
            "top_k": args.top_k,
            "seed": args.seed,
        },
        "outputs": outputs,
    }
    text = json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    if args.out:
        from . import storage

        if storage.is_remote(args.out):  # one object write: whole or not at all
            storage.path(args.out).write_text(text)
        else:  # a temporary sibling renamed into place: a kill never leaves half a file
            tmp = Path(args.out).with_name(f".{Path(args.out).name}.tmp-{os.getpid()}")
            try:
                tmp.write_text(text)
                os.replace(tmp, args.out)
            finally:
                tmp.unlink(missing_ok=True)
        print(f"generate: wrote {len(outputs)} continuations to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _register_generate(subparsers) -> None:
    p = subparsers.add_parser(
        "generate",
        help="continue speech/text token prompts (KV-cached sampling)",
        description="Continues prompts and prints JSON with the new token strings and ids. "
        "Prompts: --prompt '[Speech][Hu12][Hu5]' (repeatable; bos is prepended), "
        '--prompts FILE.jsonl ({"prompt": str} or {"ids": [...]} per line), or '
        "--prompt-audio FILE.wav with --extractor DIR (bos [Speech] units).",
    )
    p.add_argument("ckpt", help="tinywave model checkpoint")
    p.add_argument("--prompt", action="append", help="token-string prompt (repeatable)")
    p.add_argument("--prompts", help="jsonl file of prompts")
    p.add_argument("--prompt-audio", action="append", help="audio prompt (repeatable)")
    p.add_argument("--extractor", help="units folder for --prompt-audio")
    p.add_argument(
        "--modality",
        choices=MODALITIES,
        default="any",
        help="output modality; the other modality's tokens are banned (default any)",
    )
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.9)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--top-k", type=int, default=0, help="0: no top-k filtering")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--greedy", action="store_true", help="argmax decoding (ignores sampling flags)")
    p.add_argument(
        "--stop",
        action="append",
        help="stop token: an id or a token string like [Text] (repeatable; default eos)",
    )
    p.add_argument("--no-stop", action="store_true", help="no stop token: always max-new-tokens")
    p.add_argument("--layout", help="layout preset or JSON file (default: from the vocab size)")
    p.add_argument("--tokenizer", help="tokenizer folder (default: the checkpoint's tokenizer/)")
    p.add_argument("--batch-size", type=int, default=8)
    add_dtype(p)
    add_no_verify(p)
    p.add_argument("--out", help="write the JSON here instead of stdout")
    p.set_defaults(func=_generate, param_dests={"stop_ids": "stop", "expressive": "modality"})
