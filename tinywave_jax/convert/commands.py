"""`tinywave import-hf`, `tinywave export-hf` and `tinywave export-gguf` sub-commands."""

from __future__ import annotations

import argparse
import sys
import time

from ..flags import add_dtype, add_no_verify


class ProgressPrinter:
    """Prints 'tensors done/total, GB done/total' to stderr, at most every `every_s` seconds."""

    def __init__(self, label: str, every_s: float = 2.0):
        self.label, self.every_s, self.last = label, every_s, 0.0

    def __call__(self, done: int, total: int, done_bytes: int, total_bytes: int) -> None:
        now = time.monotonic()
        if done == total or now - self.last >= self.every_s:
            self.last = now
            print(
                f"{self.label}: {done}/{total} tensors, "
                f"{done_bytes / 1e9:.2f}/{total_bytes / 1e9:.2f} GB",
                file=sys.stderr,
                flush=True,
            )


def _import_hf(args: argparse.Namespace) -> int:
    from .hf_import import import_hf

    out = import_hf(
        args.hf_dir,
        args.out_dir,
        dtype=args.dtype,
        overwrite=args.overwrite,
        progress=ProgressPrinter("import-hf"),
    )
    print(f"wrote tinywave checkpoint {out}")
    return 0


def _export_hf(args: argparse.Namespace) -> int:
    from .hf_export import export_hf

    out = export_hf(
        args.ckpt_dir,
        args.out_dir,
        dtype=args.dtype,
        overwrite=args.overwrite,
        max_shard_size=args.max_shard_size,
        progress=ProgressPrinter("export-hf"),
        verify=not args.no_verify,
    )
    print(f"wrote Hugging Face model folder {out}")
    return 0


def _export_gguf(args: argparse.Namespace) -> int:
    from .gguf_export import export_gguf

    result = export_gguf(
        args.ckpt_dir,
        args.out,
        gguf_type=args.type,
        overwrite=args.overwrite,
        layout=args.layout,
        progress=ProgressPrinter("export-gguf"),
        verify=not args.no_verify,
    )
    for note in result.notes:
        print(f"export-gguf: note: {note}", file=sys.stderr)
    print(f"wrote GGUF file {result.path} ({result.type}, {result.bytes / 1e6:.1f} MB)")
    return 0


def register(subparsers) -> None:

    p = subparsers.add_parser(
        "import-hf",
        help="convert a Hugging Face Llama folder into a tinywave checkpoint",
        description="Reads config.json and the weights (model.safetensors, sharded safetensors "
        "with index, or pytorch_model*.bin) of HF_DIR tensor by tensor and writes a "
        "tinywave model checkpoint (config.json, tinywave.json, params/, tokenizer/).",
    )
    p.add_argument("hf_dir", metavar="HF_DIR")
    p.add_argument("out_dir", metavar="OUT_DIR")
    add_dtype(p, "parameter dtype of the checkpoint (default float32)", default="float32")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a non-empty OUT_DIR (only once the new checkpoint is complete; "
        "never HF_DIR itself, nor a folder holding it or inside it)",
    )
    p.set_defaults(func=_import_hf)

    p = subparsers.add_parser(
        "export-hf",
        help="write a tinywave checkpoint as a Hugging Face Llama folder",
        description="Writes config.json, generation_config.json, safetensors shards (+ index) "
        "and tokenizer files that transformers' AutoModelForCausalLM loads.",
    )
    p.add_argument("ckpt_dir", metavar="CKPT_DIR")
    p.add_argument("out_dir", metavar="OUT_DIR")
    add_dtype(p, "tensor dtype (default: the checkpoint's)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a non-empty OUT_DIR (only once the new folder is complete; "
        "never CKPT_DIR itself, nor a folder holding it or inside it)",
    )
    p.add_argument(
        "--max-shard-size",
        default="5GB",
        help="largest safetensors file, e.g. 5GB, 500MB (default 5GB)",
    )
    add_no_verify(p)
    p.set_defaults(func=_export_hf)

    p = subparsers.add_parser(
        "export-gguf",
        help="write a tinywave checkpoint as one GGUF file for llama.cpp",
        description="Writes OUT.gguf (llama architecture: metadata, the vocabulary with every "
        "token string, tensors under llama.cpp's names with its q/k layout) that llama.cpp and "
        "llama-cpp-python run. 1-D tensors stay f32; with q4_0 the output projection is q8_0. "
        "The file is written to a temporary sibling and renamed once complete. CKPT_DIR and "
        "OUT.gguf may be gs:// paths (the checkpoint is read from a local mirror; OUT is "
        "written locally, then uploaded as one object).",
    )
    p.add_argument("ckpt_dir", metavar="CKPT_DIR")
    p.add_argument("out", metavar="OUT.gguf")
    p.add_argument(
        "--type",
        default="f16",
        metavar="TYPE",
        # the list is gguf_export.GGUF_TYPES (not imported here: `tinywave --help` stays light)
        help="type of the matrices: f32, f16, bf16, q8_0 or q4_0 (default f16; 1-D tensors "
        "stay f32)",
    )
    p.add_argument(
        "--layout",
        default=None,
        help="token layout naming the speech ids ([Hu12], [Pi3], [St7], [Text], [Speech]): a "
        "preset or a layout JSON file (default: the SpiritLM preset of a SpiritLM vocabulary "
        "size; otherwise ids without a tokenizer token are named [Tok<id>])",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing OUT.gguf (only once the new file is complete; never a file "
        "inside CKPT_DIR)",
    )
    add_no_verify(p)
    p.set_defaults(func=_export_gguf, param_dests={"gguf_type": "type"})
