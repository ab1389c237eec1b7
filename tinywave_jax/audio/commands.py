"""`tinywave units ...`: fit built-in units, write a HuBERT spec, extract units from audio files."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    units = subparsers.add_parser("units", help="speech units: fit, hubert-spec, extract")
    sub = units.add_subparsers(dest="units_command", metavar="ACTION", required=True)

    fit = sub.add_parser(
        "fit",
        help="fit phonetic units, pitch bins and style classes on audio",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    fit.add_argument("audio", help="audio folder (searched recursively) or manifest file")
    fit.add_argument("out_dir", help="units folder to write (units.json + .npy arrays)")
    fit.add_argument("--units", type=int, default=100, help="phonetic k-means units")
    fit.add_argument("--features", choices=["mfcc", "logmel"], default="mfcc")
    fit.add_argument("--pitch-bins", type=int, default=64, help="pitch bins incl. unvoiced; 0: off")
    fit.add_argument("--style-classes", type=int, default=100, help="style classes; 0: off")
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument(
        "--hubert",
        metavar="SPEC_DIR",
        help="take phonetic units from this HuBERT spec; fit only pitch and style",
    )
    fit.add_argument("--max-hours", type=float, help="fit on a seeded random subset this long")
    fit.add_argument(
        "--no-cmn",
        dest="cmn",
        action="store_false",
        help="keep each utterance's feature mean (default: subtract it); use when "
        "an utterance's units must not depend on its other parts",
    )
    fit.add_argument(
        "--cmn-seconds",
        type=float,
        default=0.0,
        metavar="S",
        help="subtract the mean of the first S seconds' sounding frames instead of the whole "
        "utterance's (0: whole), so a frame's units do not depend on audio long after it",
    )
    fit.add_argument(
        "--cmn-running",
        action="store_true",
        help="subtract from each frame the mean of all frames so far (of the first "
        "--cmn-seconds for those): causal like --cmn-seconds, nearly as speaker-robust as the "
        "whole utterance's mean (docs/demo_teacher.md)",
    )
    fit.add_argument(
        "--frame-rate",
        type=float,
        default=argparse.SUPPRESS,
        metavar="HZ",
        help="spectral units per second before deduplication (default: SpectralConfig's, 25; "
        "HuBERT's 50 gives a word's repeats more of the same units than 25)",
    )
    fit.add_argument(
        "--window-seconds",
        type=float,
        default=argparse.SUPPRESS,
        metavar="S",
        help="spectral analysis window (default: SpectralConfig's, 0.04 s)",
    )
    fit.add_argument(
        "--lda-dims",
        type=int,
        default=0,
        metavar="N",
        help="k-means on an N-dim LDA projection of the features, fitted on which word and "
        "which part of it each frame is: AUDIO must be a jsonl speech manifest with `words` "
        "([[word, start_s, end_s], ...]); makes units far more alike across voices "
        "(docs/demo_teacher.md); 0: off",
    )
    fit.add_argument(
        "--lda-bins", type=int, default=8, metavar="B", help="LDA labels: parts per word"
    )
    fit.add_argument(
        "--context-frames",
        type=int,
        default=0,
        metavar="C",
        help="each frame's features with C frames either side (for --lda-dims)",
    )
    fit.add_argument(
        "--vtln",
        action="store_true",
        help="vocal tract length normalisation: each utterance's mel filters warped by the "
        "factor (0.80-1.20) its own first --vtln-seconds choose against a codebook fitted "
        "here; no speaker labels (docs/demo_teacher.md)",
    )
    fit.add_argument(
        "--vtln-seconds",
        type=float,
        default=argparse.SUPPRESS,
        metavar="S",
        help="audio the warp is chosen on (default: SpectralConfig's, 3 s; 0: all of it)",
    )
    # (no argparse values unless given above: fit_units has SpectralConfig's, whose module loads
    # scipy, which `tinywave --help` should not pay for; test_audio_units checks the help's numbers)
    fit.add_argument("--skip-bad", action="store_true", help="warn on unreadable files, not fail")
    fit.add_argument("--overwrite", action="store_true", help="replace an existing units folder")
    fit.set_defaults(func=_fit, param_dests={"hubert_spec": "hubert"})

    spec = sub.add_parser(
        "hubert-spec",
        help="write a units folder for a HF HubertModel + k-means",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    spec.add_argument("out_dir")
    spec.add_argument("--model", required=True, help="HF HubertModel checkpoint folder")
    spec.add_argument("--centroids", required=True, help=".npy [K, hidden] or torch file")
    spec.add_argument("--layer", type=int, default=11)
    spec.add_argument("--frame-rate", type=float, default=25.0)
    spec.add_argument("--normalize-waveform", action="store_true")
    spec.set_defaults(func=_hubert_spec)

    ext = sub.add_parser("extract", help="print the unit streams of audio files")
    ext.add_argument("units_dir")
    ext.add_argument("audio", nargs="+")
    ext.set_defaults(func=_extract)


def _fit(args) -> int:
    from .fit import fit_units, read_word_timed_manifest
    from .io import list_audio

    word_times = None
    if args.lda_dims:
        files, word_times = read_word_timed_manifest(args.audio)
    else:
        files = list_audio(args.audio)
    print(f"units fit: {len(files)} audio files in {args.audio}")
    fit_units(
        files,
        args.out_dir,
        units=args.units,
        features=args.features,
        pitch_bins=args.pitch_bins,
        style_classes=args.style_classes,
        seed=args.seed,
        hubert_spec=args.hubert,
        max_hours=args.max_hours,
        skip_bad=args.skip_bad,
        overwrite=args.overwrite,
        cmn=args.cmn,
        cmn_seconds=args.cmn_seconds,
        cmn_running=args.cmn_running,
        context_frames=args.context_frames,
        lda_dims=args.lda_dims,
        lda_bins=args.lda_bins,
        vtln=args.vtln,
        word_times=word_times,
        **{
            k: getattr(args, k)
            for k in ("frame_rate", "window_seconds", "vtln_seconds")
            if hasattr(args, k)
        },
    )
    return 0


def _hubert_spec(args) -> int:
    from pathlib import Path

    from .extractor import PhoneticConfig, UnitsConfig, load_extractor, write_units_config
    from .hubert import HubertModelConfig

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hub = HubertModelConfig(
        model_dir=str(Path(args.model).resolve()),
        layer=args.layer,
        frame_rate=args.frame_rate,
        normalize_waveform=args.normalize_waveform,
    )
    hub.validate()
    cfg = UnitsConfig(
        phonetic=PhoneticConfig(
            kind="hubert", hubert=hub, centroids=str(Path(args.centroids).resolve())
        )
    )
    write_units_config(cfg, out)
    ext = load_extractor(out)  # checks model, frame rate and centroid dimension now
    print(f"units hubert-spec: wrote {out}; vocab {ext.vocab_sizes}, rates {ext.frame_rates}")
    return 0


def _extract(args) -> int:
    from ..errors import InputError
    from . import load_extractor, read_audio

    ext = load_extractor(args.units_dir)
    for path in args.audio:
        wav = read_audio(path)
        try:
            streams = ext.extract(wav)
        except InputError as e:  # too short for the extractor...: name the file
            raise InputError(f"{path}: {e}") from None
        parts = [
            f"{name}[{len(ids)}]: "
            + " ".join(map(str, ids[:20]))
            + (" ..." if len(ids) > 20 else "")
            for name, (ids, _) in streams.items()
        ]
        print(f"{path}\n  " + "\n  ".join(parts))
    return 0
