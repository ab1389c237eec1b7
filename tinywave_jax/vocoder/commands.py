"""`tinywave import-vocoder`, `tinywave speak`, `tinywave vocoder train` and `vocoder eval`."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path


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


def _speak(args: argparse.Namespace) -> int:
    from .speak import speak

    r = speak(
        args.prompt,
        args.out,
        model=args.model,
        units_dir=args.units,
        vocoder_dir=args.vocoder,
        seconds=args.seconds,
        greedy=args.greedy,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        layout=args.layout,
        threads=args.threads,
        speaker=args.speaker,
        style=args.style,
        overwrite=args.overwrite,
    )
    stages = ", ".join(f"{k} {v:.2f} s" for k, v in r.times.items())
    print(
        f"speak: wrote {r.out}: prompt {r.prompt_seconds:.2f} s ({r.prompt_units} frames) + "
        f"continuation {r.new_seconds:.2f} s ({r.new_units} units); {stages} (first calls "
        f"include compilation); real-time factor {r.rtf:.3f}"
    )
    return 0


def _train_command(args) -> str:
    """The command line that reproduces this run (recorded in the provenance), from the parsed
    arguments: sys.argv is another program's when `cli.main` is called from Python."""
    parts = ["tinywave", "vocoder", "train", args.config, args.audio, "--units", args.units]
    parts += ["--run", args.run, "--out", args.out]
    parts += ["--train-config", args.train_config] * bool(args.train_config)
    parts += [x for o in args.set or [] for x in ("--set", o)]
    parts += ["--resume"] * args.resume + ["--overwrite"] * args.overwrite
    return shlex.join(parts)


def _vocoder_train(args: argparse.Namespace) -> int:

    from ..config import load_config
    from .corpus import read_items
    from .train import VocoderTrainConfig, train_vocoder

    cfg = load_config(VocoderTrainConfig, args.train_config, args.set or [])
    out = train_vocoder(
        args.config,
        read_items(args.audio),
        args.units,
        args.run,
        args.out,
        cfg,
        resume=args.resume,
        overwrite=args.overwrite,
        command=_train_command(args),
        log=lambda msg: print(msg, flush=True),
    )
    print(f"wrote tinywave vocoder {out}")
    return 0


def _vocoder_eval(args: argparse.Namespace) -> int:
    import json

    from ..errors import OutputExistsError
    from ..outputs import write_file_atomic
    from .corpus import read_items
    from .quality import evaluate_vocoder, report

    if args.json and Path(args.json).exists() and not args.overwrite:
        raise OutputExistsError(f"{args.json} exists (pass --overwrite to replace it)")
    result = evaluate_vocoder(
        args.vocoder,
        read_items(args.audio),
        args.units,
        speaker=args.speaker,
        limit=args.limit,
        draws=args.draws,
        seed=args.seed,
        log=(lambda m: print(m, flush=True)) if args.verbose else (lambda m: None),
    )
    print(report(result["summary"]))
    if args.json:
        write_file_atomic(args.json, json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.json}")
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

    p = subparsers.add_parser(
        "speak",
        help="speech in, speech out: continue an audio prompt with a speech LM and a vocoder",
        description="PROMPT.wav -> units (--units folder) -> a HuBERT-unit continuation by "
        "--model (a tinywave checkpoint run in JAX, or a .gguf file run in llama.cpp) -> "
        "--vocoder -> OUT.wav (the prompt resynthesised, then the continuation). Prints the "
        "time of each stage and the real-time factor (all stages / seconds written).",
    )
    p.add_argument("prompt", metavar="PROMPT.wav")
    p.add_argument("out", metavar="OUT.wav")
    p.add_argument("--model", required=True, metavar="CKPT_OR_GGUF")
    p.add_argument("--units", required=True, metavar="UNITS_DIR", help="units extractor folder")
    p.add_argument("--vocoder", required=True, metavar="VOC", help="tinywave vocoder folder")
    p.add_argument(
        "--seconds",
        type=float,
        default=5.0,
        help="continuation length: this many seconds at the prompt's rate of distinct units "
        "(default 5; the LM's eos may end it sooner)",
    )
    how = p.add_mutually_exclusive_group()
    how.add_argument("--greedy", action="store_true", help="argmax decoding")
    how.add_argument("--temperature", type=float, default=0.9, help="sampling (default 0.9)")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling (default 0.95)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layout", help="token layout (default: inferred from the vocabulary)")
    p.add_argument("--speaker", type=int, help="speaker id (vocoders with multispkr; default 0)")
    p.add_argument("--style", type=int, help="style id (vocoders with multistyle; default 0)")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="llama.cpp threads for a GGUF model (default 1: small speech LMs decode fastest on "
        "one; more only pay for large models on an idle machine)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT.wav")
    p.set_defaults(func=_speak)

    p = subparsers.add_parser(
        "vocoder", help="vocoder training and quality (`vocoder train`, `vocoder eval`)"
    )
    sub = p.add_subparsers(dest="vocoder_command", metavar="COMMAND", required=True)
    p = sub.add_parser(
        "train",
        help="train a unit HiFi-GAN (generator + multi-period / multi-scale discriminators)",
        description="Trains the generator of CONFIG.json (speech-resynthesis keys) on AUDIO (a "
        "folder of audio files, speaker = parent folder; a manifest; or a .jsonl manifest with "
        '"path" and "speaker" per line) with units from '
        "--units, HiFi-GAN's losses (mel, feature matching, adversarial) plus the duration "
        "predictor's; progress with ETA; RUN keeps resumable state (--resume); the generator "
        "is written to OUT as a vocoder folder with provenance. Settings: --train-config "
        "YAML and --set key=value (steps, batch_size, segment_frames, learning_rate, adam_b1, "
        "adam_b2, weight_decay, lr_decay, decay_every, lambda_mel, lambda_fm, lambda_dur, seed, "
        "log_every, save_every, discriminator_width, mel.n_fft / hop / n_mels / fmin / fmax).",
    )
    p.add_argument("config", metavar="CONFIG.json")
    p.add_argument("audio", metavar="AUDIO")
    p.add_argument("--units", required=True, metavar="UNITS_DIR")
    p.add_argument("--run", required=True, metavar="RUN_DIR", help="resumable training state")
    p.add_argument("--out", required=True, metavar="OUT_DIR", help="the trained vocoder")
    p.add_argument("--train-config", metavar="YAML", help="training settings file")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a setting")
    p.add_argument("--resume", action="store_true", help="continue the run in RUN_DIR")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT_DIR")
    p.set_defaults(func=_vocoder_train)

    p = sub.add_parser(
        "eval",
        help="resynthesis quality on held-out speech: ASR WER, STOI, unit agreement",
        description='Resynthesises each utterance of AUDIO (a .jsonl manifest with "path", '
        '"transcript" and optional "speaker" per line, as the demo\'s; or a folder / '
        "manifest whose wavs have sibling .txt transcripts) from its units (--units, one per "
        "frame) with VOC, and prints with 95 %% bootstrap intervals over utterances: "
        "pocketsphinx's WER of the resynthesis next to its WER of the original audio (and the "
        "gap), STOI against the original, and unit agreement (the resynthesis re-tokenised by "
        "the same extractor vs the input units), and whether the targets (gap <= 15 points, "
        "agreement >= 80 %%) are met. Use utterances the vocoder was not trained on. Needs the "
        "vocoder extra (pocketsphinx, jiwer, pystoi).",
    )
    p.add_argument("vocoder", metavar="VOC", help="tinywave vocoder folder")
    p.add_argument("audio", metavar="AUDIO")
    p.add_argument("--units", required=True, metavar="UNITS_DIR", help="units extractor folder")
    p.add_argument(
        "--speaker",
        type=int,
        help="speaker id for every utterance (default: each utterance's speaker among the "
        "vocoder's training speakers; needed for an imported multi-speaker vocoder)",
    )
    p.add_argument("--limit", type=int, help="evaluate only the first N utterances")
    p.add_argument("--draws", type=int, default=2000, help="bootstrap resamples (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument(
        "--json", metavar="OUT.json", help="also write the summary and per-utterance scores"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    p.add_argument("-v", "--verbose", action="store_true", help="one line per utterance")
    p.set_defaults(func=_vocoder_eval)
