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

from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .checkpoint import load_model
from .data.layout import MODALITIES, TokenLayout, ids_to_string, parse_token_string, resolve_layout
from .errors import ConfigError, InputError, TinywaveError
from .models import decode
from .scoring import bucket_length


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

    if isinstance(prompt, str):
        try:
            ids = parse_token_string(prompt, layout, tokenizer, add_bos=add_bos)
        except TinywaveError as e:  # keep the class: a missing tokenizer is a ConfigError
            # the layout names the run config's key; a caller here passed `tokenizer`
            msg = str(e).replace("a tokenizer (data.tokenizer)", "tokenizer")
            raise type(e)(f"{where} {prompt[:60]!r}: {msg}", param=(None, "tokenizer")) from None
    else:
        if not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in prompt):
            raise InputError(f"{where}: ids must be integers")
        ids = np.asarray(prompt, np.int64)
    if ids.size == 0:
        raise InputError(f"{where}: empty prompt")
    return ids


def load_model_arrays(model, dtype=None, verify=True):
    """(params, config) of `model`: a checkpoint folder (loaded at `dtype`), or the pair itself."""
    if isinstance(model, (str, Path)):
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

    if max_new_tokens < 1:
        raise ConfigError(
            f"max_new_tokens: must be >= 1, got {max_new_tokens}", param="max_new_tokens"
        )
    if not greedy and not temperature > 0:
        raise ConfigError(
            f"temperature: must be > 0 for sampling (or use greedy), got {temperature}",
            param=("temperature", "greedy"),
        )
    if not 0 < top_p <= 1:
        raise ConfigError(f"top_p: must be in (0, 1], got {top_p}", param="top_p")
    if not prompts:
        raise ValueError("no prompts given")
    params, config = load_model_arrays(model)
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
