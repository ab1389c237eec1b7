"""`tinywave demo`: the whole TinyWave recipe on a CPU (see demo/pipeline.py)."""
from __future__ import annotations

import argparse

_HELP = """\
Synthesises spoken stories with espeak-ng, fits speech units, pretrains and LoRA-corrects a small
teacher, distils a third-depth student (and trains a same-size baseline without distillation),
benchmarks all three (spoken / topic story cloze, word vs non-word, perplexity) and exports the
student to Hugging Face format, checking that transformers continues speech exactly as JAX does.
Every stage is cached in WORKDIR: rerunning resumes where it stopped.

example: tinywave demo --workdir runs/demo          (11-14 min on 2 idle CPU cores)
         tinywave demo --workdir runs/quick --quick (toy sizes, about 1.5 min)
"""


def register(subparsers) -> None:
    from .pipeline import STAGES
    p = subparsers.add_parser("demo", help="end-to-end TinyWave demo on CPU (no downloads)",
                              description=_HELP,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="runs/demo", help="where every stage writes its outputs")
    p.add_argument("--quick", action="store_true", help="toy sizes (what the tests run)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a demo setting (demo/settings.py), e.g. --set distill_steps=400")
    p.add_argument("--stages", default=",".join(STAGES),
                   help="comma-separated stages to run (earlier ones must be done)")
    p.set_defaults(func=_run)


def _run(args) -> int:
    import logging
    import os
    import time

    from .pipeline import STAGES, run_demo
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    logging.basicConfig(level=logging.WARNING)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    bad = [s for s in stages if s not in STAGES]
    if bad:
        raise ValueError(f"--stages: unknown stage(s) {bad}; stages are {list(STAGES)}")
    t = time.time()
    out = run_demo(args.workdir, args.quick, args.overrides, stages,
                   log=lambda m: print(m, flush=True))
    print(f"demo: finished in {time.time() - t:.0f} s; outputs in {args.workdir} "
          f"(results.md, results.json, loss_curves.png, attention.png, student_hf/)")
    return 0 if out else 1
