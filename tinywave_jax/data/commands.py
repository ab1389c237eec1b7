"""`tinywave corpus build | finalize | info | show`: build the tokenized corpus (on one host, or
host-sharded: `build --num-hosts N --host-index I` on every host, then `finalize`) and look
inside it."""

from __future__ import annotations

import argparse

from ..errors import log_stderr


def _pairs(text: str, flag: str) -> dict:
    """'hubert=501,pitch=64' -> {'hubert': 501.0, 'pitch': 64.0}."""
    out = {}
    for part in filter(None, text.split(",")):
        key, _, value = part.partition("=")
        try:
            out[key.strip()] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag}: {part!r} is not name=number") from None
    return out


def register(subparsers):
    corpus = subparsers.add_parser("corpus", help="build or inspect a tokenized speech corpus")
    sub = corpus.add_subparsers(dest="corpus_command", metavar="ACTION", required=True)

    b = sub.add_parser(
        "build",
        help="units manifest or audio -> ArrayRecord corpus (TFDS)",
        description="Writes OUT/tinywave_corpus/1.0.0 (train/validation/test). "
        "Inputs: a jsonl manifest of pre-extracted units (id, speaker, units, "
        "optional times, words, transcript, split), or audio (a folder, or a "
        "jsonl manifest of `path`s) with --extractor. Restartable: finished "
        "shards in OUT/_staging are kept. Host-sharded: run it on every host with "
        "the same inputs, settings and shared OUT, each with its --host-index; each "
        "stages a disjoint share of the shards, then `tinywave corpus finalize OUT` "
        "writes the corpus (the same records, splits and order as a one-process "
        "build; docs/scaling.md, section 5).",
    )
    src = b.add_mutually_exclusive_group(required=True)
    src.add_argument("--manifest", help="jsonl manifest (units, or audio paths with --extractor)")
    src.add_argument(
        "--audio-dir",
        help="folder of audio (speaker = parent folder; x.txt "
        "transcript and x.words.json alignment beside x.wav)",
    )
    b.add_argument(
        "--out", required=True, help="output folder (a TFDS data_dir; gs://BUCKET/... too)"
    )
    b.add_argument("--extractor", help="units folder for tinywave_jax.audio.load_extractor")
    b.add_argument("--workers", type=int, default=1, help="processes (default 1)")
    b.add_argument("--shard-size", type=int, default=256, help="utterances per work shard")
    b.add_argument(
        "--layout",
        default="spiritlm_expressive",
        help="preset whose unit counts bound the unit ids (default spiritlm_expressive)",
    )
    b.add_argument("--vocab", default="", help="override unit counts, e.g. hubert=100,pitch=16")
    b.add_argument(
        "--frame-rates",
        default="",
        help="Hz of manifest streams without times (default hubert=25,pitch=12.5,style=1)",
    )
    b.add_argument(
        "--valid-fraction",
        type=float,
        default=0.01,
        help="share of utterances without a `split` that go to validation",
    )
    b.add_argument("--test-fraction", type=float, default=0.01)
    b.add_argument(
        "--max-skipped",
        type=int,
        default=None,
        help="fail when more bad utterances than this are skipped (0: fail on the first)",
    )
    b.add_argument(
        "--num-hosts",
        type=int,
        default=None,
        help="hosts building this corpus together (default: the process count of a "
        "multi-process launch, from TINYWAVE_NUM_PROCESSES / SLURM / the TPU slice; else 1)",
    )
    b.add_argument(
        "--host-index",
        type=int,
        default=None,
        help="this host's share, 0..N-1 (default: the process index of the launch)",
    )
    b.add_argument(
        "--no-speaker-f0",
        action="store_true",
        help="normalise pitch per utterance instead of per speaker",
    )
    b.set_defaults(func=_build)

    f = sub.add_parser(
        "finalize",
        help="check the host shares of a host-sharded build and write the corpus",
        description="After `corpus build --num-hosts N --host-index I` has finished on every "
        "host: checks that all N shares are in OUT/_staging and were built from the same "
        "inputs and settings (a missing or different share is named), then writes "
        "OUT/tinywave_corpus/1.0.0 and OUT/summary.json from all staged shards.",
    )
    f.add_argument("out", help="the --out the hosts built into")
    f.add_argument(
        "--max-skipped",
        type=int,
        default=None,
        help="fail when more bad utterances than this were skipped in all "
        "(default: the limit the shares were built with)",
    )
    f.set_defaults(func=_finalize)

    i = sub.add_parser("info", help="splits and sizes of a built corpus")
    i.add_argument("corpus_dir")
    i.set_defaults(func=_info)

    s = sub.add_parser("show", help="one record as a token string")
    s.add_argument("corpus_dir")
    s.add_argument("--split", default="train")
    s.add_argument("--index", type=int, default=0)
    s.add_argument(
        "--kind", default="expressive", choices=["speech", "expressive", "interleaved", "text"]
    )
    s.add_argument("--layout", default="spiritlm_expressive")
    s.add_argument("--tokenizer", help="Hugging Face tokenizer folder (text, interleaved)")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=_show)


def host_share(num_hosts, host_index, environ=None) -> tuple[int, int]:
    """(--num-hosts, --host-index), given or from the launch: the process count and index that
    `jax.process_count()` / `process_index()` report in a multi-process run. Explicit and SLURM
    launches name them in the environment (read without starting jax's distributed runtime, so
    hosts need not wait for each other); on a Cloud TPU VM jax finds them itself
    (`maybe_initialize`). A plain one-host run is host 0 of 1, with no jax start-up."""
    from ..errors import ConfigError
    from .corpus_build import check_hosts

    if num_hosts is None and host_index is None:
        from ..parallel.distributed import detect, maybe_initialize

        spec = detect(environ)
        if spec is None:
            return 1, 0
        if spec.num_processes is not None:
            return spec.num_processes, spec.process_id
        maybe_initialize(environ)
        import jax

        return jax.process_count(), jax.process_index()
    if num_hosts is None or host_index is None:
        raise ConfigError("give both --num-hosts and --host-index (or neither: one host)")
    check_hosts(num_hosts, host_index)
    return num_hosts, host_index


def _build(args):
    from .corpus_build import build_corpus, format_summary
    from .layout import STREAMS, preset_layout

    num_hosts, host_index = host_share(args.num_hosts, args.host_index)
    layout = preset_layout(args.layout)
    vocab = {s: layout.stream_size(s) for s in STREAMS}
    vocab.update({k: int(v) for k, v in _pairs(args.vocab, "--vocab").items()})
    summary = build_corpus(
        args.out,
        manifest=args.manifest,
        audio_dir=args.audio_dir,
        extractor=args.extractor,
        shard_size=args.shard_size,
        workers=args.workers,
        valid_fraction=args.valid_fraction,
        test_fraction=args.test_fraction,
        vocab_sizes=vocab,
        frame_rates=_pairs(args.frame_rates, "--frame-rates"),
        max_skipped=args.max_skipped,
        speaker_f0=not args.no_speaker_f0,
        num_hosts=num_hosts,
        host_index=host_index,
        log=log_stderr,
    )
    if "share" in summary:
        print(f"share {host_index} of {num_hosts}:")
    print(format_summary(summary))
    if "share" in summary:
        print(f"next, once every share is staged: tinywave corpus finalize {args.out}")


def _finalize(args):
    from .corpus_build import finalize_corpus, format_summary

    summary = finalize_corpus(
        args.out,
        max_skipped="shares" if args.max_skipped is None else args.max_skipped,
        log=log_stderr,
    )
    print(format_summary(summary))


def _info(args):
    import json

    from .. import storage
    from .corpus_read import CorpusSource, version_dir

    d = version_dir(args.corpus_dir)
    summary = storage.path(args.corpus_dir) / "summary.json"
    if summary.exists():
        from .corpus_build import format_summary

        print(format_summary(json.loads(summary.read_text())))
    info = json.loads((d / "dataset_info.json").read_text())
    for split in info.get("splits", []):
        n = len(CorpusSource(args.corpus_dir, split["name"]))
        print(f"{split['name']}: {n} records in {len(split.get('shardLengths', []))} shard(s)")
    print(f"folder: {d}")


def _show(args):
    import numpy as np

    from .corpus_read import CorpusSource
    from .layout import ids_to_string, load_tokenizer, preset_layout
    from .streams import sequence_for

    layout = preset_layout(args.layout)
    tok = load_tokenizer(args.tokenizer, layout) if args.tokenizer else None
    rec = CorpusSource(args.corpus_dir, args.split)[args.index]
    print(
        f"{rec['id']} speaker={rec['speaker']} duration={rec['duration']:.2f}s "
        f"words={len(rec['words'] or [])} ({rec['where']})"
    )
    ids = sequence_for(args.kind, rec, layout, tok, np.random.default_rng(args.seed))
    print(ids_to_string(ids, layout, tok))
