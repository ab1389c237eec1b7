"""`tinywave generate`: continue token prompts (or audio prompts) with KV-cached sampling.

Prompts are token strings in the layout's notation (`[Speech][Hu12][Hu5]`, text between tokens
needs a tokenizer), id lists, or audio files tokenised as bos [Speech] units. A string prompt
gets bos prepended; an id list is used as given. All prompts are left-padded to one width (a
power of two) and run in batches of `batch_size` under one compiled `models.decode.generate`.

Modality constraints, as SpiritLM generates with one output modality: every id outside the
allowed set gets probability 0 before temperature / top-k / top-p.
    speech      HuBERT units
    expressive  HuBERT, pitch and style units
    text        text ids [0, text_vocab_size)
    any         every id the layout uses (not the padding ids above it)
The stop ids (default: the model's eos) are always allowed; a row stops at its first stop id,
which is reported but not included in the output ids. Defaults are SpiritLM's: temperature 0.9,
top-p 0.95, no top-k.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import ConfigError, InputError, TinywaveError
from .jsonl import iter_jsonl

MODALITIES = ("speech", "expressive", "text", "any")


def allowed_ids(layout, vocab_size: int, modality: str, stop_ids: Sequence[int] = ()) -> np.ndarray:
    """bool [vocab_size]: ids that may be generated under `modality`."""
    allowed = np.zeros(vocab_size, bool)
    if modality == "any":
        allowed[: layout.used_size] = True
    elif modality == "text":
        allowed[: layout.text_vocab_size] = True
    elif modality in ("speech", "expressive"):
        streams = ("hubert",) if modality == "speech" else ("hubert", "pitch", "style")
        if modality == "expressive" and not layout.is_expressive:
            raise ConfigError(
                f"modality expressive: layout {layout.name} has no pitch/style tokens",
                param="modality",
            )
        for s in streams:
            allowed[layout.offset(s) : layout.offset(s) + layout.stream_size(s)] = True
    else:
        raise ValueError(f"modality {modality!r} is not one of {MODALITIES}")
    for i in stop_ids:
        if not 0 <= i < vocab_size:
            raise ConfigError(
                f"stop_ids: {i} is outside the vocabulary [0, {vocab_size})", param="stop_ids"
            )
        allowed[i] = True
    return allowed


def token_string(i: int, layout, tokenizer=None) -> str:
    if i >= layout.text_vocab_size:
        return layout.id_to_str(i)
    if tokenizer is not None:
        return tokenizer.convert_ids_to_tokens(int(i))
    return f"<{i}>"


def parse_prompt(
    prompt, layout, tokenizer=None, where: str = "prompt", add_bos: bool = True
) -> np.ndarray:
    """A token string (bos prepended unless `add_bos=False`) or an id list (as given) -> ids."""
    from .data.layout import parse_token_string

    if isinstance(prompt, str):
        try:
            ids = parse_token_string(prompt, layout, tokenizer, add_bos=add_bos)
        except TinywaveError as e:  # keep the class: a missing tokenizer is a ConfigError
            msg = str(e).replace("(data.tokenizer)", "(--tokenizer)")
            raise type(e)(f"{where} {prompt[:60]!r}: {msg}") from None
    else:
        if not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in prompt):
            raise InputError(f"{where}: ids must be integers")
        ids = np.asarray(prompt, np.int64)
    if ids.size == 0:
        raise InputError(f"{where}: empty prompt")
    return ids


def _load_model(model, dtype=None, verify=True):
    if isinstance(model, (str, Path)):
        from .checkpoint import load_model

        params, config, _ = load_model(model, dtype=dtype, verify=verify)
        if dtype:
            config = config.replace(dtype=dtype, param_dtype=dtype)
        return params, config
    return model


def generate_tokens(
    model,
    prompts: Sequence,
    *,
    layout=None,
    modality: str = "any",
    max_new_tokens: int = 64,
    temperature: float = 0.9,
    top_p: float = 0.95,
    top_k: int = 0,
    seed: int = 0,
    greedy: bool = False,
    stop_ids: Sequence[int] | None = None,
    tokenizer=None,
    batch_size: int = 8,
    prompt_names: Sequence[str] | None = None,
) -> list[dict]:
    """Continues each prompt. `model`: checkpoint folder or (params, config); `layout`: a
    TokenLayout, preset name, layout JSON path or None (inferred from the vocabulary);
    `stop_ids` None: the model's eos. Returns per prompt {"prompt", "prompt_ids", "ids",
    "tokens", "text", "stopped", "stop_id"}; "text" is None when text ids need a tokenizer."""
    import jax
    import jax.numpy as jnp

    from .data.layout import TokenLayout, ids_to_string, resolve_layout
    from .models import decode
    from .scoring import bucket_length

    if max_new_tokens < 1:
        raise ConfigError(
            f"max_new_tokens: must be >= 1, got {max_new_tokens}", param="max_new_tokens"
        )
    if not greedy and not temperature > 0:
        raise ConfigError(
            f"temperature: must be > 0 for sampling (or greedy), got {temperature}",
            param="temperature",
        )
    if not 0 < top_p <= 1:
        raise ConfigError(f"top_p: must be in (0, 1], got {top_p}", param="top_p")
    if not prompts:
        raise ValueError("no prompts given")
    params, config = _load_model(model)
    if not isinstance(layout, TokenLayout):
        layout = resolve_layout(layout, config.vocab_size)
    if stop_ids is None:
        stop_ids = () if config.eos_token_id is None else (int(config.eos_token_id),)
    stop_ids = tuple(int(i) for i in stop_ids)
    banned = ~allowed_ids(layout, config.vocab_size, modality, stop_ids)
    if top_k < 0 or top_k > config.vocab_size:
        raise ConfigError(f"top_k: must be in [0, {config.vocab_size}], got {top_k}", param="top_k")
    names = list(
        prompt_names or [p if isinstance(p, str) else f"prompt {k}" for k, p in enumerate(prompts)]
    )
    ids = [parse_prompt(p, layout, tokenizer, f"prompt {k}") for k, p in enumerate(prompts)]
    for k, p in enumerate(ids):
        bad = p[(p < 0) | (p >= config.vocab_size)]
        if bad.size:
            label = (
                names[k]
                if not isinstance(prompts[k], str) or len(names[k]) <= 60
                else names[k][:57] + "..."
            )
            raise InputError(
                f"prompt {k} ({label}): ids outside the vocabulary "
                f"[0, {config.vocab_size}): {sorted(set(bad.tolist()))[:10]}"
            )
    width = bucket_length(max(len(p) for p in ids), 1 << 62)
    if width + max_new_tokens > config.max_position_embeddings:
        width = max(len(p) for p in ids)
        if width + max_new_tokens > config.max_position_embeddings:
            raise ConfigError(
                f"max_new_tokens: {max_new_tokens} + the longest prompt ({width} tokens) "
                f"exceeds the model's max_position_embeddings ({config.max_position_embeddings})",
                param="max_new_tokens",
            )
    rows = min(batch_size, len(ids))
    key = jax.random.key(seed)
    banned_j = jnp.asarray(banned)  # always an array: one compiled program for every modality
    if greedy:  # sampling settings do not matter; canonical values share one compilation
        temperature, top_k, top_p = 1.0, 0, 1.0
    outputs = []
    for chunk, lo in enumerate(range(0, len(ids), rows)):
        batch = ids[lo : lo + rows]
        batch = batch + [batch[0]] * (rows - len(batch))  # keep one batch shape
        p_ids, p_mask = decode.left_pad([b.tolist() for b in batch])
        pad = width - p_ids.shape[1]
        p_ids = np.pad(p_ids, ((0, 0), (pad, 0)))
        p_mask = np.pad(p_mask, ((0, 0), (pad, 0)))
        new = np.asarray(
            decode.generate(
                params,
                config,
                jnp.asarray(p_ids),
                jnp.asarray(p_mask),
                jax.random.fold_in(key, chunk),
                max_new_tokens=max_new_tokens,
                greedy=greedy,
                temperature=float(temperature),
                top_k=int(top_k),
                top_p=float(top_p),
                banned=banned_j,
                stop_ids=stop_ids,
            )
        )
        for r in range(min(rows, len(ids) - lo)):
            k = lo + r
            row = new[r].tolist()
            stop_at = next((t for t, i in enumerate(row) if i in stop_ids), None)
            gen = row if stop_at is None else row[:stop_at]
            has_text = any(i < layout.text_vocab_size for i in gen)
            outputs.append(
                {
                    "prompt": names[k],
                    "prompt_ids": ids[k].tolist(),
                    "ids": gen,
                    "tokens": [token_string(i, layout, tokenizer) for i in gen],
                    "text": ids_to_string(gen, layout, tokenizer, strip_bos=False)
                    if tokenizer is not None or not has_text
                    else None,
                    "stopped": stop_at is not None,
                    "stop_id": None if stop_at is None else row[stop_at],
                }
            )
    return outputs


# ---------------------------------------------------------------- command line


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


def _run(args) -> int:
    from .data.layout import load_tokenizer, resolve_layout

    if args.out:
        from .outputs import check_output_files

        inputs = [args.ckpt, args.prompts, args.tokenizer, args.extractor]
        inputs += list(args.prompt_audio or ())
        check_output_files([args.out], inputs, "--out")
    params, config = _load_model(args.ckpt, args.dtype, verify=not args.no_verify)
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


def register(subparsers) -> None:
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
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default=None)
    from .checkpoint import add_no_verify

    add_no_verify(p)
    p.add_argument("--out", help="write the JSON here instead of stdout")
    p.set_defaults(func=_run)
