"""`tinywave import-vocoder` (and the other speech-out sub-commands)."""

from __future__ import annotations

import argparse


def _import_vocoder(args: argparse.Namespace) -> int:
    from .checkpoint import import_vocoder, num_params

    out, config, params = import_vocoder(
        args.generator,
        args.config,
        args.out_dir,
        overwrite=args.overwrite,
        allow_unknown_keys=args.allow_unknown_keys,
    )
    left, right = config.frame_context()
    print(
        f"wrote tinywave vocoder {out} ({num_params(params) / 1e6:.2f}M parameters, "
        f"{config.sampling_rate} Hz, {config.hop_length} samples per unit, receptive field "
        f"{left}+{right} frames)"
    )
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "import-vocoder",
        help="convert a PyTorch unit HiFi-GAN (SpiritLM / speech-resynthesis generator.pt) "
        "into a tinywave vocoder folder",
        description="Reads GENERATOR.pt with torch.load(weights_only=True) (its 'generator' "
        "state dict, or the file's state dict) and CONFIG.json (speech-resynthesis keys), folds "
        "weight norm into the kernels and writes OUT_DIR (config.json, tinywave.json with "
        "provenance and sha256 of the params, params/params.safetensors). Config fields the "
        "generator cannot express, and missing, extra or misshapen tensors, fail naming them "
        "before anything is written.",
    )
    p.add_argument("generator", metavar="GENERATOR.pt")
    p.add_argument("config", metavar="CONFIG.json")
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a non-empty OUT_DIR (only once the new folder is complete)",
    )
    p.add_argument(
        "--allow-unknown-keys",
        action="store_true",
        help="import even when CONFIG.json has keys tinywave does not know (they are recorded "
        "in tinywave.json's provenance); by default such a key is an error",
    )
    p.set_defaults(func=_import_vocoder)
