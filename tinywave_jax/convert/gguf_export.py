"""tinywave model checkpoint -> one GGUF file that llama.cpp runs (`tinywave export-gguf`).

Written with the `gguf` package (no PyTorch), as llama.cpp's own `convert_hf_to_gguf.py` writes
a Llama:

- metadata: architecture "llama", context length, width, layers, FFN width, heads / kv heads,
  head size, RMSNorm eps, RoPE theta and scaling (linear: `rope.scaling.*`; llama3: a
  `rope_freqs.weight` tensor of per-frequency divisors, computed from our own RoPE code), bos /
  eos / unk / pad ids, and the file type;
- the vocabulary, one string per id (`tokenizer.ggml.*`, SentencePiece-style "llama" model): text
  ids from the checkpoint's `tokenizer/tokenizer.json` (whose text is also stored whole as
  `tokenizer.huggingface.json`), SpiritLM layout ids as `[Text]`, `[Speech]`, `[Hu12]`, `[Pi3]`,
  `[St7]`, `[Unused<id>]` (data/layout.py; user-defined tokens, so llama.cpp also parses them in
  a prompt). Without a tokenizer, text ids are named `[Tok<id>]` (bos / eos `<s>` / `</s>`);
  without a layout, every id past the tokenizer's is; `GgufExport.notes` says which;
- the tensors under llama.cpp's names (gguf's own tensor-name map). Our RoPE is HF's
  `rotate_half` layout; llama.cpp's "llama" graph rotates interleaved pairs, so q and k
  projection rows (and biases) are permuted exactly as `LlamaModel.permute` in
  convert_hf_to_gguf.py does: within each head, row order (0, h, 1, h+1, ...) for half-size h.

Tensor types per --type: 1-D tensors (norms, biases, rope_freqs) stay f32 in every file, as
llama.cpp's converter keeps them; matrices become f32 / f16 / bf16 / q8_0 / q4_0. With q4_0 the
output projection (the token embedding when tied) is q8_0, as llama.cpp's q4_0 keeps it at a
higher precision. A matrix whose row length is not a multiple of the 32-value quantization block
is written f16 (named in `notes`).

The file is written to a temporary sibling and renamed into place once complete: an existing
OUT.gguf is replaced only with overwrite=True, and never by a half-written file. A config that
llama.cpp's "llama" graph cannot express fails naming the field before anything is written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import socket
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

import gguf
import numpy as np

from .. import storage
from ..checkpoint import load_model, load_model_config
from ..data.layout import VOCAB_PRESETS, TokenLayout, resolve_layout
from ..errors import ConfigError, ConversionError, MissingInputError, OutputExistsError
from ..models.config import LlamaConfig
from ..models.llama import rope_inv_freq
from ..models.param_layout import TensorMap, check_params, flatten, tensor_maps
from ..outputs import check_not_an_input

GGUF_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0")
DEFAULT_TYPE = "f16"
QUANT_BLOCK = 32  # values per q8_0 / q4_0 block (gguf.GGML_QUANT_SIZES)

# (done tensors, total tensors, done bytes, total bytes), like export-hf's progress
Progress = Callable[[int, int, int, int], None]


@dataclasses.dataclass(frozen=True)
class GgufExport:
    """What `write_gguf` wrote: the file, its --type, its size, and notes for the user (generic
    token names, tensors kept at another type)."""

    path: Path
    type: str
    bytes: int
    tensor_types: dict[str, str]
    notes: tuple[str, ...] = ()


def check_type(gguf_type: str) -> str:
    if gguf_type not in GGUF_TYPES:
        raise ConfigError(
            f"gguf_type {gguf_type!r} is not one of {', '.join(GGUF_TYPES)}", param="gguf_type"
        )
    return gguf_type


def check_llama_cpp_expressible(config: LlamaConfig) -> None:
    """Raises ConversionError naming the first config field that llama.cpp's "llama"
    architecture has no equivalent for (checked before any file is written). Attention and MLP
    biases, tied embeddings, any head size and linear / llama3 RoPE scaling all run in llama.cpp
    (tests/test_gguf.py checks each against JAX); other RoPE types do not."""
    rs = config.rope_scaling
    if rs is not None and rs.rope_type not in ("default", "linear", "llama3"):
        raise ConversionError(
            f"config rope_scaling.rope_type {rs.rope_type!r}: llama.cpp's llama architecture "
            "takes default, linear or llama3 RoPE; this checkpoint cannot be exported to GGUF"
        )


# ---- q/k layout ---------------------------------------------------------------------------------
def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF rotate_half rows -> llama.cpp's interleaved-pair rows, per head (rows = heads x head
    size; trailing axes kept): llama.cpp's `LlamaModel.permute(w, n_head, n_head)`."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


# ---- vocabulary ---------------------------------------------------------------------------------
@dataclasses.dataclass
class Vocab:
    tokens: list[str]
    scores: list[float]
    types: list[int]  # gguf.TokenType values
    unk_id: int | None
    hf_json: str | None
    notes: list[str]


def _tokenizer_entries(path: Path) -> tuple[dict[int, tuple[str, float, str]], str | None, str]:
    """{id: (string, score, kind)} of a Hugging Face tokenizer.json, its unk string, its text.
    kind: "normal", "byte", "special" or "added". Scores: a Unigram model's own; otherwise -id
    (a BPE vocabulary lists pieces in merge order, which SentencePiece's Llama scores encode)."""
    text = path.read_text(encoding="utf-8")
    try:
        doc = json.loads(text)
        model = doc["model"]
        kind = model.get("type")
        vocab = model["vocab"]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ConversionError(f"{path}: not a Hugging Face tokenizer.json ({e})") from None
    out: dict[int, tuple[str, float, str]] = {}
    if kind == "Unigram":
        for i, (piece, score) in enumerate(vocab):
            out[i] = (str(piece), float(score), "normal")
        unk_id = model.get("unk_id")
        unk = vocab[unk_id][0] if isinstance(unk_id, int) and unk_id < len(vocab) else None
    elif isinstance(vocab, dict):
        for piece, i in vocab.items():
            out[int(i)] = (str(piece), -float(i), "normal")
        unk = model.get("unk_token")
    else:
        raise ConversionError(f"{path}: tokenizer model type {kind!r} is not understood")
    for i, (piece, score, _) in list(out.items()):
        if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            out[i] = (piece, score, "byte")
    for added in doc.get("added_tokens") or []:
        i = int(added["id"])
        out[i] = (str(added["content"]), 0.0, "special" if added.get("special") else "added")
    return out, unk, text


def build_vocab(config: LlamaConfig, tokenizer_dir: str | Path | None, layout) -> Vocab:
    """One string, score and type per id of `config.vocab_size` (see the module docstring).
    `layout`: a data.layout.TokenLayout or None."""

    T = gguf.TokenType
    n = config.vocab_size
    text_end = layout.text_vocab_size if layout is not None else n
    tokens: list[str | None] = [None] * n
    scores = [0.0] * n
    types = [int(T.NORMAL)] * n
    notes: list[str] = []
    unk_id, hf_json = None, None
    path = Path(tokenizer_dir) / "tokenizer.json" if tokenizer_dir is not None else None
    if path is not None and path.is_file():
        entries, unk, hf_json = _tokenizer_entries(path)
        outside = sorted(i for i in entries if not 0 <= i < text_end)
        if outside:
            where = f"layout {layout.name}'s {text_end} text ids" if layout else f"vocab {n}"
            raise ConversionError(
                f"{path}: token id {outside[0]} ({entries[outside[0]][0]!r}) is outside "
                f"{where}; the tokenizer does not fit this model"
            )
        kinds = {"normal": T.NORMAL, "byte": T.BYTE, "special": T.CONTROL, "added": T.USER_DEFINED}
        for i, (piece, score, kind) in entries.items():
            tokens[i], scores[i], types[i] = piece, score, int(kinds[kind])
            if unk is not None and piece == unk:
                types[i], unk_id = int(T.UNKNOWN), i
    else:
        notes.append(
            "no tokenizer.json in the checkpoint: text ids are named [Tok<id>]"
            + ("" if layout is not None else " (and so is every id: no token layout either)")
        )
        for i, name in ((config.bos_token_id, "<s>"), (config.eos_token_id, "</s>")):
            if i is not None and 0 <= i < text_end:
                tokens[i], types[i] = name, int(T.CONTROL)
    for i in (config.bos_token_id, config.eos_token_id, config.pad_token_id):
        if i is not None and 0 <= i < n and tokens[i] is not None:
            types[i] = int(T.CONTROL)
    missing_text = [i for i in range(text_end) if tokens[i] is None]
    for i in missing_text:
        tokens[i], types[i] = f"[Tok{i}]", int(T.USER_DEFINED)
    if missing_text and hf_json is not None:
        notes.append(
            f"{len(missing_text)} ids have no token in tokenizer.json "
            + ("(text ids of the layout)" if layout is not None else "(no token layout given)")
            + ": named [Tok<id>]"
        )
    if layout is not None:
        for i in range(text_end, n):
            name = layout.id_to_str(i)
            unused = name.startswith("[Unused")
            tokens[i], types[i] = name, int(T.UNUSED if unused else T.USER_DEFINED)
            scores[i] = 0.0
    seen: dict[str, int] = {}
    for i, tok in enumerate(tokens):
        if tok in seen:
            raise ConversionError(
                f"token string {tok!r} names both id {seen[tok]} and id {i}; llama.cpp needs "
                "one string per id"
            )
        seen[tok] = i
    return Vocab([str(t) for t in tokens], scores, types, unk_id, hf_json, notes)


def resolve_gguf_layout(layout, vocab_size: int):
    """A TokenLayout from a TokenLayout, preset name or layout JSON path; None: the SpiritLM
    preset of a SpiritLM vocabulary size, else None (no layout)."""

    if isinstance(layout, TokenLayout):
        if layout.used_size > vocab_size:
            raise ConfigError(
                f"layout {layout.name} uses {layout.used_size} ids but the model's vocabulary "
                f"has {vocab_size}"
            )
        return layout
    if layout is None and vocab_size not in VOCAB_PRESETS:
        return None
    return resolve_layout(None if layout is None else str(layout), vocab_size)


# ---- tensors ------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Tensor:
    name: str  # GGUF name
    shape: tuple[int, ...]  # numpy (row-major) shape, as in HF
    qtype: object  # gguf.GGMLQuantizationType
    build: Callable[[], np.ndarray]  # float32 array in llama.cpp's layout


def _gguf_name(name_map, hf_name: str) -> str:
    out = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
    if out is None:
        raise ConversionError(f"tensor {hf_name} has no llama.cpp name")
    return out


def _qtype(gguf_type: str, name: str, shape: tuple[int, ...], config: LlamaConfig, notes: list):

    Q = gguf.GGMLQuantizationType
    if len(shape) == 1 or gguf_type == "f32":
        return Q.F32
    kind = {"f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0, "q4_0": Q.Q4_0}[gguf_type]
    head = "output.weight" if not config.tie_word_embeddings else "token_embd.weight"
    if kind == Q.Q4_0 and name == head:
        kind = Q.Q8_0
    if kind in (Q.Q8_0, Q.Q4_0) and shape[-1] % QUANT_BLOCK:
        notes.append(
            f"{name}: rows of {shape[-1]} values are not a multiple of {QUANT_BLOCK}; kept f16"
        )
        kind = Q.F16
    return kind


def rope_freq_factors(config: LlamaConfig) -> np.ndarray | None:
    """llama3 rope scaling as llama.cpp reads it: per-frequency divisors (plain inverse
    frequency / scaled inverse frequency), [head_dim / 2] float32; None for other rope types."""

    rs = config.rope_scaling
    if rs is None or rs.rope_type != "llama3":
        return None
    plain = rope_inv_freq(config.replace(rope_scaling=None))
    return (plain.astype(np.float64) / rope_inv_freq(config).astype(np.float64)).astype(np.float32)


def _plan_tensors(
    params: Mapping, config: LlamaConfig, gguf_type: str, notes: list
) -> list[_Tensor]:

    leaves = flatten(params)
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    heads = {"q_proj": config.num_attention_heads, "k_proj": config.num_key_value_heads}

    def builder(m: TensorMap) -> Callable[[], np.ndarray]:
        def build() -> np.ndarray:
            src = np.asarray(leaves[m.path])
            if m.layer is not None:
                src = src[m.layer]
            out = np.ascontiguousarray((src.T if m.transpose else src).astype(np.float32))
            proj = m.path[-2] if len(m.path) >= 2 else ""
            if proj in heads:
                out = np.ascontiguousarray(llama_cpp_permute(out, heads[proj]))
            return out

        return build

    planned = []
    for m in tensor_maps(config):
        name = _gguf_name(name_map, m.hf_name)
        planned.append(_Tensor(name, m.hf_shape, None, builder(m)))
    factors = rope_freq_factors(config)
    if factors is not None:
        name = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight"
        planned.append(_Tensor(name, factors.shape, None, lambda f=factors: f))
    return [
        dataclasses.replace(t, qtype=_qtype(gguf_type, t.name, t.shape, config, notes))
        for t in planned
    ]


def _nbytes(shape: tuple[int, ...], qtype) -> int:

    block, size = gguf.GGML_QUANT_SIZES[qtype]
    return math.prod(shape[:-1]) * (shape[-1] // block) * size


def _encode(array: np.ndarray, qtype) -> np.ndarray:

    Q = gguf.GGMLQuantizationType
    if qtype == Q.F32:
        return array.astype(np.float32)
    if qtype == Q.F16:
        return array.astype(np.float16)
    return gguf.quants.quantize(array, qtype)


# ---- the file -----------------------------------------------------------------------------------
def _file_type(gguf_type: str) -> int:

    F = gguf.LlamaFileType
    return int(
        {
            "f32": F.ALL_F32,
            "f16": F.MOSTLY_F16,
            "bf16": F.MOSTLY_BF16,
            "q8_0": F.MOSTLY_Q8_0,
            "q4_0": F.MOSTLY_Q4_0,
        }[gguf_type]
    )


def _write_metadata(w, config: LlamaConfig, vocab: Vocab, gguf_type: str, name: str) -> None:

    w.add_name(name)
    w.add_file_type(_file_type(gguf_type))
    if gguf_type in ("q8_0", "q4_0"):
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_vocab_size(config.vocab_size)
    w.add_context_length(config.max_position_embeddings)
    w.add_embedding_length(config.hidden_size)
    w.add_block_count(config.num_hidden_layers)
    w.add_feed_forward_length(config.intermediate_size)
    w.add_head_count(config.num_attention_heads)
    w.add_head_count_kv(config.num_key_value_heads)
    w.add_key_length(config.head_dim)
    w.add_value_length(config.head_dim)
    w.add_rope_dimension_count(config.head_dim)
    w.add_rope_freq_base(float(config.rope_theta))
    w.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    rs = config.rope_scaling
    if rs is not None and rs.rope_type == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(rs.factor))
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(vocab.tokens)
    w.add_token_scores(vocab.scores)
    w.add_token_types(vocab.types)
    if config.bos_token_id is not None:
        w.add_bos_token_id(int(config.bos_token_id))
        w.add_add_bos_token(True)
    if config.eos_token_id is not None:
        w.add_eos_token_id(int(config.eos_token_id))
    w.add_add_eos_token(False)
    if vocab.unk_id is not None:
        w.add_unk_token_id(int(vocab.unk_id))
    if config.pad_token_id is not None:
        w.add_pad_token_id(int(config.pad_token_id))
    if vocab.hf_json is not None:
        w.add_string(gguf.Keys.Tokenizer.HF_JSON, vocab.hf_json)


def _host() -> str:
    return "".join(c if c.isalnum() or c in "._" else "_" for c in socket.gethostname()) or "host"


def _remove_dead_leftovers(out: Path) -> None:
    """Removes `.OUT.tmp-HOST-PID-*` files that a killed export on this host left behind."""
    prefix = f".{out.name}.tmp-{_host()}-"
    with contextlib.suppress(OSError):
        for p in out.parent.iterdir():
            if not p.name.startswith(prefix) or not p.is_file():
                continue
            pid = p.name[len(prefix) :].split("-")[0]
            if not pid.isdigit() or int(pid) == os.getpid():
                continue
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                p.unlink(missing_ok=True)
            except OSError:
                pass


def check_output_file(
    out: str | Path, overwrite: bool = False, sources: Iterable[str | Path] = ()
) -> None:
    """Raises unless `out` is a new file or (overwrite) an existing file, apart from every input
    in `sources` (never inside a checkpoint folder it reads, even with overwrite)."""

    check_not_an_input(out, sources)
    out = Path(out)
    if out.is_dir():
        raise OutputExistsError(f"{out} is a folder; give a file name such as model.q8_0.gguf")
    if out.exists() and not overwrite:
        raise OutputExistsError(
            f"{out} exists (pass overwrite=True to replace it)", param=(None, "overwrite")
        )


@contextlib.contextmanager
def _atomic_file(out: Path, overwrite: bool, sources) -> Iterator[Path]:
    check_output_file(out, overwrite, sources)
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_leftovers(out)
    tmp = out.with_name(f".{out.name}.tmp-{_host()}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        check_output_file(out, overwrite, sources)  # someone may have written there meanwhile
        os.replace(tmp, out)
    except OSError as e:
        if e.filename is None:  # numpy's short write (a full disk) names no file: name it
            e.written_file = str(out)  # for cli.disk_full (e.filename would change str(e))
        raise
    finally:
        tmp.unlink(missing_ok=True)


def write_gguf(
    params: Mapping,
    config: LlamaConfig,
    out: str | Path,
    gguf_type: str = DEFAULT_TYPE,
    overwrite: bool = False,
    tokenizer_dir: str | Path | None = None,
    layout=None,
    name: str = "tinywave",
    progress: Progress | None = None,
    sources: Iterable[str | Path] = (),
) -> GgufExport:
    """Writes params (layout of models/param_layout.py, numpy or jax arrays) as one GGUF file
    (see the module docstring). `layout`: TokenLayout, preset name, layout JSON path or None
    (a SpiritLM vocabulary size implies its preset). `sources`: inputs `out` must be apart from."""

    check_type(gguf_type)
    check_llama_cpp_expressible(config)
    check_params(params, config, where="export-gguf")  # an extra entry (a projector) is named
    out = Path(os.path.abspath(out))
    check_output_file(out, overwrite, sources)
    layout = resolve_gguf_layout(layout, config.vocab_size)
    vocab = build_vocab(config, tokenizer_dir, layout)
    notes = list(vocab.notes)
    tensors = _plan_tensors(params, config, gguf_type, notes)
    sizes = [_nbytes(t.shape, t.qtype) for t in tensors]
    total = sum(sizes)
    Q = gguf.GGMLQuantizationType
    with _atomic_file(out, overwrite, sources) as tmp:
        w = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
        try:
            _write_metadata(w, config, vocab, gguf_type, name)
            for t, size in zip(tensors, sizes):
                plain = {Q.F32: np.float32, Q.F16: np.float16}.get(t.qtype)
                # a quantized tensor: its logical shape with any non-uint8 dtype, and its type
                dtype, raw = (plain, None) if plain is not None else (np.float32, t.qtype)
                w.add_tensor_info(t.name, t.shape, np.dtype(dtype), size, raw_dtype=raw)
            w.write_header_to_file(tmp)
            w.write_kv_data_to_file()
            w.write_ti_data_to_file()
            done = 0
            for k, (t, size) in enumerate(zip(tensors, sizes)):
                data = _encode(t.build(), t.qtype)
                if data.nbytes != size:
                    raise AssertionError(f"{t.name}: {data.nbytes} bytes encoded, {size} planned")
                w.write_tensor_data(data)
                done += size
                if progress is not None:
                    progress(k + 1, len(tensors), done, total)
            w.flush()
        finally:
            w.close()
    return GgufExport(
        path=out,
        type=gguf_type,
        bytes=out.stat().st_size,
        tensor_types={t.name: t.qtype.name.lower() for t in tensors},
        notes=tuple(notes),
    )


def export_gguf(
    ckpt_dir: str | Path,
    out: str | Path,
    gguf_type: str = DEFAULT_TYPE,
    overwrite: bool = False,
    layout=None,
    progress: Progress | None = None,
    verify: bool = True,
) -> GgufExport:
    """Writes the tinywave model checkpoint `ckpt_dir` as the GGUF file `out` (--type
    `gguf_type`). Input problems (unknown type, output in the way or inside the checkpoint, a
    config llama.cpp cannot express) fail before the checkpoint is loaded. verify: check the
    params files against their recorded sha256 (checkpoint.load_model)."""

    check_type(gguf_type)
    name = str(ckpt_dir).rstrip("/").rsplit("/", 1)[-1]
    if storage.is_remote(out):  # bucket and overwrite rules checked before any download
        check_not_an_input(out, [ckpt_dir])
        storage.check_gcs(out, write=True, what="GGUF output file")
        _check_remote_output(out, overwrite)
    given = ckpt_dir
    if storage.is_remote(ckpt_dir):  # read from a local mirror (one download per host)
        ckpt_dir = storage.local_mirror(ckpt_dir, what="tinywave checkpoint folder")
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        raise MissingInputError(f"tinywave checkpoint folder not found: {ckpt_dir}")
    if not storage.is_remote(out):
        check_output_file(out, overwrite, sources=[ckpt_dir])
        name = ckpt_dir.resolve().name
    with storage.reported_as(ckpt_dir, given):  # errors name the user's path, not the mirror
        config = load_model_config(ckpt_dir)
        check_llama_cpp_expressible(config)
        resolved = resolve_gguf_layout(layout, config.vocab_size)  # a bad --layout fails here
        params, config, _ = load_model(ckpt_dir, as_numpy=True, verify=verify)
    tokenizer_dir = ckpt_dir / "tokenizer"

    def write(to):
        return write_gguf(
            params,
            config,
            to,
            gguf_type=gguf_type,
            overwrite=overwrite,
            tokenizer_dir=tokenizer_dir if tokenizer_dir.is_dir() else None,
            layout=resolved,
            name=name,
            progress=progress,
            sources=[ckpt_dir],
        )

    if not storage.is_remote(out):
        return write(out)
    # a bucket: written locally, then one object upload, which GCS makes visible whole or not
    # at all (an existing object is replaced only by the complete new one)
    prefix = "tinywave-gguf-"  # a killed export's local file is removed by the next one
    storage.remove_dead_temps(Path(tempfile.gettempdir()), prefix)
    with tempfile.TemporaryDirectory(prefix=f"{prefix}{storage.temp_tag()}-") as tmp:
        result = write(Path(tmp) / _name_of(out))
        _check_remote_output(out, overwrite)  # someone may have written there meanwhile
        storage.fs(out).put_file(str(result.path), str(out))
    return dataclasses.replace(result, path=out)


def _name_of(out) -> str:
    return str(out).rstrip("/").rsplit("/", 1)[-1]


def _check_remote_output(out, overwrite: bool) -> None:

    p = storage.path(out)
    if p.is_dir():
        raise OutputExistsError(f"{out} is a folder; give a file name such as model.q8_0.gguf")
    if p.exists() and not overwrite:
        raise OutputExistsError(
            f"{out} exists (pass overwrite=True to replace it)", param=(None, "overwrite")
        )
