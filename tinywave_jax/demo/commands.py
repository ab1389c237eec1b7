"""`tinywave demo` (the whole TinyWave recipe on a CPU, see demo/pipeline.py),
`tinywave demo-teacher` (pretrains and packages the demo's teacher, see demo/teacher.py) and
`tinywave demo-vocoder` (trains and packages the demo's vocoder, see demo/vocoder.py)."""

from __future__ import annotations

import argparse

_HELP = """\
Distils the shipped demo teacher (a 6-layer speech LM pretrained on 2,400 spoken stories, loaded
with `tinywave import-hf` after its files' hashes are checked) into a 2-layer student on a small
target-voice subset of its data (480 stories), and trains the same shape from scratch on exactly
that subset as the baseline; both sweep the same learning rates, chosen on validation perplexity.
Benchmarks all models on 128 held-out stories (spoken / topic story cloze, word vs non-word,
perplexity, 95 % paired-bootstrap intervals), scores the student's q8_0 GGUF export in llama.cpp
as one more row, and exports the student to Hugging Face format, checking that transformers
continues speech exactly as JAX does. `--ablation` adds the rows
between the baseline and the full recipe, and a cached top-k logit KD row (k = 64) trained from
a teacher cache built once (no teacher in its step). Every stage is cached in WORKDIR: a rerun
resumes.

`--variant expressive` runs the same recipe on the expressive teacher (units + pitch + style
tokens merged by time, pretrained on expressive speech, text and speech-text interleaving) and
adds a speaker-consistency test and cross-modal story cloze (speech/text context ->
speech/text ending); `--variant interleaved` corrects that teacher on interleaved data, starts
the student and the baseline from the expressive variant's (run first in WORKDIR/expressive
unless --set expressive_workdir=DIR) and distils on interleaved data.

example: tinywave demo --workdir runs/demo          (about 11 min on 2 CPU cores; +12 with --ablation)
         tinywave demo --variant expressive --workdir runs/demo-expressive   (about 21 min)
         tinywave demo --workdir runs/quick --quick (toy sizes, for the tests)
"""

_TEACHER_HELP = """\
Builds the demo's teacher package: synthesises the world's training stories (target voice plus
one other voice each, every utterance its own espeak-ng synthesis with its own speed and pitch),
fits the units, pretrains the teacher (about 29 minutes in all on 2 CPU cores), scores it on
held-out validation and test stories and writes OUT: a Hugging Face folder with units/,
layout.json and provenance.json (command, settings, data hashes, quality, file hashes).
`tinywave_jax/demo/teacher/` was made this way; `--variant expressive` builds
`tinywave_jax/demo/teacher_expressive/` (pitch and style tokens; pretrained on a mixture of
expressive speech, text and interleaved speech-text). See docs/demo_teacher.md.
"""


_VOCODER_HELP = """\
Builds the demo's vocoder package: synthesises the world's training stories naturally in the
demo's voices (each story in a distillation voice and one of the teacher's other voices, every
utterance its own espeak-ng synthesis) and held-out validation stories, trains a small unit
HiFi-GAN on the teacher package's units (`vocoder train`), measures it on the held-out stories
(`vocoder eval`: pocketsphinx WER of resynthesis vs original, STOI, unit agreement) and writes OUT:
the vocoder folder with units/, README.md and provenance.json (command, settings, data hashes,
training, quality, file hashes). Settings: demo/vocoder.py VocoderBuildSettings (--set
training.steps=500, --set teacher_dir=DIR, ...). See docs/vocoder.md.
"""


# the stage names live with each build (importing them here would load jax for `tinywave --help`)
_STAGES_HELP = "comma-separated stages to run (default: all; earlier ones must be done)"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="end-to-end TinyWave demo on CPU (no downloads)",
        description=_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--workdir", default="runs/demo", help="where every stage writes its outputs")
    p.add_argument("--quick", action="store_true", help="toy sizes (what the tests run)")
    p.add_argument(
        "--variant",
        default="base",
        help="base (default), expressive or interleaved: which of TinyWave's students to make",
    )
    p.add_argument(
        "--ablation",
        action="store_true",
        help="also train and score the ablation rows (teacher-layer init + CE, "
        "+ logit KD, + hidden-state loss, cached top-k logit KD from a teacher cache)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a demo setting (demo/settings.py), e.g. --set distill_steps=300",
    )
    p.add_argument(
        "--stages",
        help=_STAGES_HELP,
    )
    p.set_defaults(func=_run)

    t = subparsers.add_parser(
        "demo-teacher",
        help="pretrain and package the demo's teacher",
        description=_TEACHER_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t.add_argument("--out", required=True, help="the teacher package folder to write")
    t.add_argument(
        "--workdir",
        default="runs/demo_teacher",
        help="where the stages write audio, corpora and the training run",
    )
    t.add_argument("--quick", action="store_true", help="toy sizes (what the tests run)")
    t.add_argument(
        "--variant", default="base", help="base (default) or expressive: which teacher to build"
    )
    t.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    t.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a setting (demo/settings.py TeacherSettings), e.g. --set steps=500",
    )
    t.add_argument(
        "--stages",
        help=_STAGES_HELP,
    )
    t.set_defaults(func=_run_teacher)

    v = subparsers.add_parser(
        "demo-vocoder",
        help="train and package the demo's vocoder (units -> speech in the demo's voices)",
        description=_VOCODER_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    v.add_argument("--out", required=True, help="the vocoder package folder to write")
    v.add_argument(
        "--workdir",
        default="runs/demo_vocoder",
        help="where the stages write audio, the training run and the quality report",
    )
    v.add_argument("--quick", action="store_true", help="toy sizes (what the tests run)")
    v.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    v.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a setting (demo/vocoder.py VocoderBuildSettings)",
    )
    v.add_argument(
        "--stages",
        help=_STAGES_HELP,
    )
    v.set_defaults(func=_run_vocoder)


def _stages(arg: str | None, known) -> list[str]:
    if arg is None:
        return list(known)
    stages = [s.strip() for s in arg.split(",") if s.strip()]
    bad = [s for s in stages if s not in known]
    if bad:
        from ..errors import ConfigError

        raise ConfigError(f"--stages: unknown stage(s) {bad}; stages are {list(known)}")
    return stages


def _quiet():
    import logging
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    logging.basicConfig(level=logging.WARNING)


def _run(args) -> int:
    import time

    from .pipeline import STAGES, run_demo

    _quiet()
    t = time.time()
    run_demo(
        args.workdir,
        args.quick,
        args.overrides,
        _stages(args.stages, STAGES),
        ablation=args.ablation,
        log=lambda m: print(m, flush=True),
        variant=args.variant,
    )
    there = outputs_there(args.workdir)
    print(
        f"demo: finished in {time.time() - t:.0f} s; outputs in {args.workdir}"
        + (f" ({', '.join(there)})" if there else "")
    )
    return 0


OUTPUTS = (
    "results.md",
    "results.json",
    "loss_curves.png",
    "attention.png",
    "student_hf/",
    "student.q8_0.gguf",
)


def outputs_there(workdir) -> list[str]:
    """The demo's final outputs (OUTPUTS) that exist in `workdir`: a run of some stages only
    (`--stages speech`) lists none it did not write."""
    from pathlib import Path

    return [n for n in OUTPUTS if (Path(workdir) / n.rstrip("/")).exists()]


def _run_teacher(args) -> int:
    import time

    from .teacher import TeacherBuild, build_teacher

    _quiet()
    t = time.time()
    build_teacher(
        args.out,
        args.workdir,
        args.quick,
        args.overrides,
        args.overwrite,
        _stages(args.stages, TeacherBuild.STAGES),
        _command(args),
        log=lambda m: print(m, flush=True),
        variant=args.variant,
    )
    print(f"demo-teacher: finished in {time.time() - t:.0f} s; package in {args.out}")
    return 0


def _run_vocoder(args) -> int:
    import time

    from .vocoder import VocoderBuild, build_vocoder

    _quiet()
    t = time.time()
    build_vocoder(
        args.out,
        args.workdir,
        args.quick,
        args.overrides,
        args.overwrite,
        _stages(args.stages, VocoderBuild.STAGES),
        _command(args, "demo-vocoder"),
        log=lambda m: print(m, flush=True),
    )
    print(f"demo-vocoder: finished in {time.time() - t:.0f} s; package in {args.out}")
    return 0


def _command(args, name: str = "demo-teacher") -> str:
    """The command line that reproduces this build (recorded in the provenance)."""
    import shlex

    parts = ["tinywave", name, "--out", args.out, "--workdir", args.workdir]
    parts += ["--quick"] * args.quick + ["--overwrite"] * args.overwrite
    variant = getattr(args, "variant", "base")  # demo-vocoder has none
    parts += ["--variant", variant] * (variant != "base")
    parts += [x for o in args.overrides for x in ("--set", o)]
    return " ".join(shlex.quote(p) for p in parts)
