"""Token layout: which id means which text piece, marker or speech unit, and the rules that
turn per-frame unit streams into token ids (SpiritLM's layout, plus custom small layouts).

Ids, in order (SpiritLM's code, see docs/reference §3):
    [0, text_vocab_size)          text tokens of the Hugging Face tokenizer (Llama-2 SentencePiece)
    text_vocab_size               [Text]
    text_vocab_size + 1           [Speech]
    then num_units HuBERT units   [Hu0]..   (deduplicated: consecutive repeats collapsed)
    then num_pitch pitch codes    [Pi0]..   (deduplicated)
    then num_style style codes    [St0]..   (NOT deduplicated)
    up to vocab_size              unused padding ids, rendered as [Unused<id>]

Every sequence starts with bos (id 1 for Llama-2; SpiritLM's tokenizer has add_bos_token=True and
no eos). A modality marker precedes each span whose modality differs from the previous one; the
first span gets one too when `leading_marker` (SpiritLM prompts start with `[Speech]`/`[Text]`).
Expressive speech merges style, pitch and HuBERT tokens by start time, at equal times in that
order. Times are compared at microsecond resolution so that 25 Hz and 12.5 Hz frame times that
are equal in exact arithmetic compare equal in floating point.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
from pathlib import Path
from typing import Optional

import numpy as np

from ..config import from_dict
from ..errors import ConfigError, InputError, MissingInputError

STREAMS = ("hubert", "pitch", "style")  # merge order at equal times: style, pitch, hubert
STREAM_PREFIX = {"hubert": "Hu", "pitch": "Pi", "style": "St"}
MERGE_ORDER = {"style": 0, "pitch": 1, "hubert": 2}
DEDUP_STREAMS = frozenset({"hubert", "pitch"})
TEXT, SPEECH = "text", "speech"


@dataclasses.dataclass(frozen=True)
class TokenLayout:
    """Id ranges of one vocabulary; see the module docstring for the order."""

    text_vocab_size: int
    num_units: int
    num_pitch: int = 0
    num_style: int = 0
    vocab_size: int = 0  # padded total; must be >= used_size
    bos_id: int = 1
    name: str = "custom"

    def __post_init__(self):
        for f in ("text_vocab_size", "num_units", "num_pitch", "num_style", "bos_id"):
            if getattr(self, f) < 0:
                raise ConfigError(f"layout {self.name}: {f} must be >= 0, got {getattr(self, f)}")
        if self.bos_id >= self.text_vocab_size:
            raise ConfigError(
                f"layout {self.name}: bos_id {self.bos_id} must be a text id "
                f"(< text_vocab_size {self.text_vocab_size})"
            )
        if self.vocab_size < self.used_size:
            raise ConfigError(
                f"layout {self.name}: vocab_size {self.vocab_size} < {self.used_size} ids in use"
            )

    @property
    def text_marker_id(self) -> int:
        return self.text_vocab_size

    @property
    def speech_marker_id(self) -> int:
        return self.text_vocab_size + 1

    def offset(self, stream: str) -> int:
        """First id of `stream` ('hubert', 'pitch' or 'style')."""
        start = self.text_vocab_size + 2
        for s in STREAMS:
            if s == stream:
                return start
            start += self.stream_size(s)
        raise KeyError(f"unknown unit stream {stream!r}; expected one of {STREAMS}")

    def stream_size(self, stream: str) -> int:
        return {"hubert": self.num_units, "pitch": self.num_pitch, "style": self.num_style}[stream]

    @property
    def used_size(self) -> int:
        return self.text_vocab_size + 2 + self.num_units + self.num_pitch + self.num_style

    @property
    def is_expressive(self) -> bool:
        return self.num_pitch > 0 and self.num_style > 0

    def unit_ids(self, stream: str, units, where: str = "") -> np.ndarray:
        """Raw unit codes of `stream` -> token ids; a code outside the layout is an error."""
        units = np.asarray(units)
        n = self.stream_size(stream)
        if units.size and (units.min() < 0 or units.max() >= n):
            bad = int(units[(units < 0) | (units >= n)][0])
            raise InputError(
                f"{where + ': ' if where else ''}{stream} unit {bad} is outside "
                f"layout {self.name} ({n} {stream} tokens)"
            )
        return (units.astype(np.int64) + self.offset(stream)).astype(np.int32)

    def modality(self, token_id: int) -> str | None:
        """'text' for text ids, 'speech' for unit ids, None for markers and padding."""
        if 0 <= token_id < self.text_vocab_size:
            return TEXT
        if self.text_vocab_size + 2 <= token_id < self.used_size:
            return SPEECH
        return None

    def id_to_str(self, token_id: int) -> str:
        """Name of a non-text id: [Text], [Speech], [Hu12], [Pi3], [St7] or [Unused<id>]."""
        if token_id == self.text_marker_id:
            return "[Text]"
        if token_id == self.speech_marker_id:
            return "[Speech]"
        for s in STREAMS:
            k = token_id - self.offset(s)
            if 0 <= k < self.stream_size(s):
                return f"[{STREAM_PREFIX[s]}{k}]"
        if self.used_size <= token_id < self.vocab_size:
            return f"[Unused{token_id}]"
        raise InputError(
            f"token id {token_id} is not a marker or unit id of layout {self.name} "
            f"(vocab_size {self.vocab_size})"
        )

    def str_to_id(self, token: str) -> int:
        """Inverse of `id_to_str`: exactly the strings it writes (`[Hu12]`, not `[HU12]` or
        `[Hu012]`); anything else is an InputError naming the nearest valid form."""
        if token == "[Text]":
            return self.text_marker_id
        if token == "[Speech]":
            return self.speech_marker_id
        m = _TOKEN_RE.fullmatch(token)
        if m is None:
            raise InputError(
                f"{token} is not a token of layout {self.name}; nearest: "
                f"{self.nearest_token(token)}; tokens are {', '.join(self.token_kinds())}"
            )
        prefix, k = m.group(1), int(m.group(2))
        if prefix == "Unused":
            if not self.used_size <= k < self.vocab_size:
                raise InputError(f"{token}: not an unused id of layout {self.name}")
            return k
        stream = {v: s for s, v in STREAM_PREFIX.items()}[prefix]
        return int(self.unit_ids(stream, [k], where=token)[0])

    def token_kinds(self) -> list[str]:
        """The token forms of this layout: [Text], [Speech], then [HuN], [PiN], [StN] and
        [UnusedN] where the layout has such ids."""
        kinds = ["[Text]", "[Speech]"]
        kinds += [f"[{STREAM_PREFIX[s]}N]" for s in STREAMS if self.stream_size(s)]
        return kinds + (["[UnusedN]"] if self.vocab_size > self.used_size else [])

    def _number_range(self, prefix: str) -> tuple[int, int]:
        if prefix == "Unused":
            return self.used_size, self.vocab_size - 1
        stream = {v: s for s, v in STREAM_PREFIX.items()}[prefix]
        return 0, self.stream_size(stream) - 1

    def nearest_token(self, token: str) -> str:
        """The valid form closest to a malformed bracketed `token` (difflib over the token kinds,
        ignoring case and digits): `[HU12]` -> `[Hu12]`, `[Hux]` -> `[HuN] (N in 0..499)`."""
        inner = token.strip()[1:-1].strip()
        number = re.search(r"[-+]?\d+", inner)
        shape = re.sub(r"[-+]?\d+", "N", inner).lower()
        best = max(
            self.token_kinds(),
            key=lambda k: difflib.SequenceMatcher(None, shape, k[1:-1].lower()).ratio(),
        )
        if not best.endswith("N]"):
            return best
        prefix = best[1:-2]
        lo, hi = self._number_range(prefix)
        if number is not None and lo <= int(number.group()) <= hi:
            return f"[{prefix}{int(number.group())}]"
        return f"{best} (N in {lo}..{hi})"


_TOKEN_RE = re.compile(r"\[(Hu|Pi|St|Unused)(0|[1-9]\d*)\]")
# Anything in square brackets looks like a token, so it must be one (no silent text fallback).
_SPLIT_RE = re.compile(r"(\[[^\[\]]*\])")

PRESETS = {
    "spiritlm_base": dict(
        text_vocab_size=32000, num_units=501, num_pitch=0, num_style=0, vocab_size=32512
    ),
    "spiritlm_expressive": dict(
        text_vocab_size=32000, num_units=501, num_pitch=64, num_style=100, vocab_size=32768
    ),
}


def preset_layout(name: str) -> TokenLayout:
    if name not in PRESETS:
        raise ConfigError(f"layout.preset: {name!r} is not one of {sorted(PRESETS)}")
    return TokenLayout(name=name, **PRESETS[name])


@dataclasses.dataclass
class LayoutConfig:
    """Either a preset name, or (preset: null) the custom fields; vocab_size defaults to the ids in
    use rounded up to `pad_to_multiple`."""

    preset: Optional[str] = "spiritlm_expressive"
    text_vocab_size: Optional[int] = None
    num_units: Optional[int] = None
    num_pitch: int = 0
    num_style: int = 0
    vocab_size: Optional[int] = None
    pad_to_multiple: int = 256
    bos_id: int = 1

    def validate(self, key: str = "layout"):
        """`key`: where this config sits in its file (`data.corpus.layout` in a run config)."""
        custom = (self.text_vocab_size, self.num_units, self.vocab_size)
        if self.preset is not None:
            if any(v is not None for v in custom) or self.num_pitch or self.num_style:
                raise ConfigError(
                    f"{key}: give either `preset` or the custom fields "
                    "(set preset: null for a custom layout)"
                )
            if self.preset not in PRESETS:
                raise ConfigError(f"{key}.preset: {self.preset!r} is not one of {sorted(PRESETS)}")
        elif self.text_vocab_size is None or self.num_units is None:
            raise ConfigError(
                f"{key}: a custom layout (preset: null) needs text_vocab_size and num_units"
            )
        if self.pad_to_multiple < 1:
            raise ConfigError(f"{key}.pad_to_multiple: must be >= 1")
        try:
            self.build()
        except ValueError as e:
            raise ConfigError(f"{key}: {e}") from None

    def build(self) -> TokenLayout:
        if self.preset is not None:
            return preset_layout(self.preset)
        used = self.text_vocab_size + 2 + self.num_units + self.num_pitch + self.num_style
        m = self.pad_to_multiple
        vocab = self.vocab_size if self.vocab_size is not None else -(-used // m) * m
        return TokenLayout(
            self.text_vocab_size,
            self.num_units,
            self.num_pitch,
            self.num_style,
            vocab,
            self.bos_id,
            name="custom",
        )


# ---------------------------------------------------------------- unit streams -> token ids


def dedup(units, times=None):
    """Collapses consecutive repeats, keeping the first frame's time. Returns (units, times)."""
    units = np.asarray(units)
    keep = np.ones(len(units), bool)
    if len(units) > 1:
        keep[1:] = units[1:] != units[:-1]
    return units[keep], (None if times is None else np.asarray(times)[keep])


def stream_tokens(layout: TokenLayout, stream: str, units, times, where: str = ""):
    """One stream's (deduplicated where the rules say so) token ids and start times."""
    units, times = np.asarray(units), np.asarray(times, np.float64)
    if len(units) != len(times):
        raise InputError(f"{where}: {stream} has {len(units)} units but {len(times)} times")
    if stream in DEDUP_STREAMS:
        units, times = dedup(units, times)
    return layout.unit_ids(stream, units, where), times


def time_key(times) -> np.ndarray:
    """Start times (s) as integer microseconds, so equal frame times compare equal."""
    return np.round(np.asarray(times, np.float64) * 1e6).astype(np.int64)


def merge_streams(layout: TokenLayout, streams: dict, where: str = ""):
    """{stream: (units, times)} -> (token ids, times) merged by time; at equal times style, pitch,
    HuBERT. HuBERT and pitch are deduplicated first, style is not."""
    ids, times, order = [], [], []
    for s, (u, t) in streams.items():
        i, tt = stream_tokens(layout, s, u, t, where)
        ids.append(i), times.append(tt), order.append(np.full(len(i), MERGE_ORDER[s]))
    if not ids:
        return np.zeros(0, np.int32), np.zeros(0)
    ids, times, order = np.concatenate(ids), np.concatenate(times), np.concatenate(order)
    perm = np.lexsort((np.arange(len(ids)), order, time_key(times)))
    return ids[perm], times[perm]


def join_spans(layout: TokenLayout, spans, leading_marker: bool = True, bos: bool = True):
    """[(modality, ids), ...] -> one id array: bos, then each span preceded by a marker wherever
    the modality changes (and before the first span when `leading_marker`)."""
    out = [[layout.bos_id]] if bos else []
    prev = None if leading_marker else (spans[0][0] if spans else None)
    for modality, ids in spans:
        if modality not in (TEXT, SPEECH):
            raise ValueError(f"unknown modality {modality!r}")
        if modality != prev:
            out.append([layout.text_marker_id if modality == TEXT else layout.speech_marker_id])
            prev = modality
        out.append(np.asarray(ids, np.int32))
    return np.concatenate(out).astype(np.int32) if out else np.zeros(0, np.int32)


# ---------------------------------------------------------------- text and token strings


# the output modalities generation can be held to (generation.allowed_ids): HuBERT units; HuBERT,
# pitch and style units; text ids; every id the layout uses
MODALITIES = ("speech", "expressive", "text", "any")


# the SpiritLM presets by vocabulary size, for a model that names no layout
VOCAB_PRESETS = {32512: "spiritlm_base", 32768: "spiritlm_expressive"}


def resolve_layout(layout: str | None, vocab_size: int) -> TokenLayout:
    """The token layout of a model: a preset name, a JSON file of LayoutConfig fields (e.g.
    {"preset": null, "text_vocab_size": 100, "num_units": 50, "vocab_size": 211}), or None to
    infer a SpiritLM preset from the vocabulary size (32512: base, 32768: expressive)."""
    spec = layout
    if spec is None:
        if vocab_size not in VOCAB_PRESETS:
            raise ConfigError(
                f"layout: cannot infer the token layout of a model with vocab "
                f"{vocab_size}; give a preset ({', '.join(VOCAB_PRESETS.values())}) "
                "or a layout JSON file",
                param="layout",
            )
        layout = preset_layout(VOCAB_PRESETS[vocab_size])
    elif Path(spec).suffix == ".json" or Path(spec).is_file():
        path = Path(spec)
        if not path.is_file():
            raise MissingInputError(f"layout file not found: {path}")
        try:
            data = json.loads(path.read_text())
        except ValueError as e:
            raise ConfigError(f"{path}: not valid JSON ({e})") from None
        try:
            layout = from_dict(LayoutConfig, data).build()
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
    else:
        layout = preset_layout(spec)
    if layout.used_size > vocab_size:
        raise ConfigError(
            f"layout {layout.name} uses {layout.used_size} ids but the model's "
            f"vocabulary has {vocab_size}"
        )
    return layout


def load_tokenizer(path: str, layout: TokenLayout):
    """Hugging Face tokenizer from a directory; checks it fits the layout's text range."""
    from transformers import AutoTokenizer  # the torch extra (text spans only)

    tok = AutoTokenizer.from_pretrained(path)
    if len(tok) > layout.text_vocab_size:
        raise InputError(
            f"tokenizer {path} has {len(tok)} tokens but layout {layout.name} "
            f"reserves only {layout.text_vocab_size} text ids"
        )
    if tok.bos_token_id is not None and tok.bos_token_id != layout.bos_id:
        raise InputError(
            f"tokenizer {path} has bos id {tok.bos_token_id} but layout "
            f"{layout.name} uses bos_id {layout.bos_id}"
        )
    return tok


def encode_text(text: str, tokenizer, layout: TokenLayout, where: str = "") -> np.ndarray:
    """Text -> text ids without special tokens (bos is added once per sequence by join_spans)."""
    if tokenizer is None:
        raise ConfigError(f"{where + ': ' if where else ''}text needs a tokenizer (data.tokenizer)")
    ids = np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"], np.int32)
    if ids.size and ids.max() >= layout.text_vocab_size:
        raise InputError(f"{where}: tokenizer produced id {int(ids.max())} outside the text range")
    return ids


def parse_token_string(s: str, layout: TokenLayout, tokenizer=None, add_bos: bool = False):
    """'[Hu338][Text] and they[Speech][Hu431]' -> ids. Text between tokens is stripped of its
    surrounding whitespace and tokenised without special tokens. Anything in square brackets
    must be a token of the layout exactly (`[HU12]`, `[Speach]` are InputErrors naming the
    nearest valid form), never text that a tokenizer would turn into <unk>."""
    ids = [layout.bos_id] if add_bos else []
    for piece in _SPLIT_RE.split(s):
        if _SPLIT_RE.fullmatch(piece):
            ids.append(layout.str_to_id(piece))
        elif piece.strip():
            ids.extend(encode_text(piece.strip(), tokenizer, layout, where=repr(piece)).tolist())
    return np.asarray(ids, np.int32)


def ids_to_string(ids, layout: TokenLayout, tokenizer=None, strip_bos: bool = True) -> str:
    """Inverse of `parse_token_string`: a text run is decoded and written with one leading space
    unless it starts the string (SpiritLM's `[Text] and they` form)."""
    ids = [int(i) for i in np.asarray(ids).reshape(-1)]
    if strip_bos and ids and ids[0] == layout.bos_id:
        ids = ids[1:]
    parts, run = [], []

    def flush():
        if run:
            if tokenizer is None:
                raise ConfigError(f"text ids {run[:5]}... need a tokenizer to be shown")
            text = tokenizer.decode(
                run, skip_special_tokens=False, clean_up_tokenization_spaces=False
            ).strip()
            parts.append((" " if parts else "") + text)
            run.clear()

    for i in ids:
        if 0 <= i < layout.text_vocab_size:
            run.append(i)
        else:
            flush()
            parts.append(layout.id_to_str(i))
    flush()
    return "".join(parts)
