"""The demo's training runs as `tinywave train` / `tinywave distill` run configs.

  teacher pretraining  (`tinywave demo-teacher`) a random Llama on the pretraining corpus, CE
  teacher/correct      LoRA teacher correction on the distillation corpus (merged at the end)
  <row>/lr<lr>         one student row at one learning rate of the sweep, on the distillation
                       corpus, the same steps and batches for every row:
                         baseline  random init, cross-entropy only
                         init_ce   cut from the teacher's layers, cross-entropy only
                         logit     + logit KD
                         topk_cached  cut from the teacher's layers, CE + top-k logit KD read
                                   from the teacher cache (no teacher weights, no teacher
                                   forward: the student is cut once beforehand, init/)
                         hidden    + hidden-state alignment
                         student   + attention-map alignment: the full TinyWave recipe
Each run's config is a checked TrainConfig / DistillConfig from the moment it is built (a bad key
fails there, naming the run); each run's model is RUN_DIR/final (a tinywave model checkpoint); a
run interrupted before that resumes from its latest checkpoint on the next call.
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

from ..config import from_dict, to_dict
from ..errors import RunStopped
from ..train.config import DistillConfig, TrainConfig

RunConfig = Union[TrainConfig, DistillConfig]

TOP_K = 64  # the cached row's teacher support (teacher ids kept per token)
# row -> (what it is, loss weights; None: a random model trained with cross-entropy alone);
# weights beyond the paper's four are registered terms (distill.terms, e.g. topk_kl)
ROWS = {
    "baseline": ("random init, CE only", None),
    "init_ce": (
        "teacher-layer init, CE only",
        {"ce": 1.0, "logit_kl": 0.0, "hidden": 0.0, "attention": 0.0},
    ),
    "logit": ("+ logit KD", {"ce": 1.0, "logit_kl": 1.0, "hidden": 0.0, "attention": 0.0}),
    "topk_cached": (
        f"cached top-k logit KD (k={TOP_K})",
        {"ce": 1.0, "logit_kl": 0.0, "hidden": 0.0, "attention": 0.0, "topk_kl": 1.0},
    ),
    "hidden": (
        "+ hidden-state loss",
        {"ce": 1.0, "logit_kl": 1.0, "hidden": 1.0, "attention": 0.0},
    ),
    "student": (
        "+ attention-map loss (full recipe)",
        {"ce": 1.0, "logit_kl": 1.0, "hidden": 1.0, "attention": 1.0},
    ),
}
MAIN_ROWS = ("student", "baseline")
ABLATION_ROWS = ("init_ce", "logit", "topk_cached", "hidden")
# rows trained from the teacher cache (teacher.cache) instead of a teacher in the step
CACHED_ROWS = ("topk_cached",)


def data_section(
    corpus_dir: Path, tokens: dict, seq_len: int, batch_size: int, seed: int, mixture=None
) -> dict:
    """A corpus data section (default: speech only); `tokens`: {"layout": dict, "tokenizer":
    folder}. Interleaved spans carry expressive speech when the layout has pitch and style."""
    expressive = bool(tokens["layout"].get("num_pitch"))
    return {
        "source": "corpus",
        "seq_len": seq_len,
        "batch_size": batch_size,
        "seed": seed,
        "corpus": {
            "corpus_dir": str(corpus_dir),
            "split": "train",
            "mixture": dict(mixture or {"speech": 1.0}),
            "interleaved_speech": "expressive" if expressive else "hubert",
            "layout": tokens["layout"],
            "tokenizer": str(tokens["tokenizer"]),
            "read_threads": 2,
        },
    }


def loop_section(steps: int, checkpoint_every: int | None = None) -> dict:
    return {
        "steps": steps,
        "log_every": max(1, min(10, steps // 10)),
        "checkpoint_every": checkpoint_every or max(1, steps // 2),
        "checkpoint_keep": 1,
        "async_checkpoint": False,
        "tensorboard": True,
    }


def optimizer_section(lr: float, steps: int, warmup: int | None = None) -> dict:
    return {
        "learning_rate": lr,
        "warmup_steps": max(1, steps // 10) if warmup is None else warmup,
        "min_lr_ratio": 0.1,
        "weight_decay": 0.0,
        "clip_norm": 1.0,
    }


def model_shape(shape, vocab_size: int) -> dict:
    return {
        "vocab_size": vocab_size,
        "hidden_size": shape.hidden_size,
        "intermediate_size": shape.intermediate_size,
        "num_hidden_layers": shape.num_hidden_layers,
        "num_attention_heads": shape.num_attention_heads,
        "num_key_value_heads": shape.num_key_value_heads,
        "max_position_embeddings": 2048,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }


def _checked(name: str, cfg: dict) -> RunConfig:
    """The run config `cfg` (a `tinywave train|distill` YAML's content) as its typed object:
    DistillConfig when it has a teacher. An unknown key or a bad value fails here, naming `name`."""
    return from_dict(DistillConfig if "teacher" in cfg else TrainConfig, cfg, prefix=name)


def pretrain_config(
    name: str,
    s,
    data: dict,
    run_dir: Path,
    vocab_size: int,
    steps: int,
    start: Path | None = None,
) -> TrainConfig:
    """One run `name` of the teacher's pretraining (TeacherSettings `s`): `steps` steps from a
    random model of `s.shape`, or from the model folder `start` (the text-only run's final/)."""
    model = (
        {"path": str(start)}
        if start is not None
        else {"shape": model_shape(s.shape, vocab_size), "seed": s.seed}
    )
    return _checked(
        name,
        {
            "run_dir": str(run_dir),
            "model": model,
            "optimizer": optimizer_section(s.learning_rate, steps, s.warmup_steps),
            "train": loop_section(steps, checkpoint_every=max(1, min(250, steps))),
            "data": data,
            "logit_chunk_size": 128,
        },
    )


def correction_config(s, teacher_ckpt: Path, data: dict, run_dir: Path) -> TrainConfig:
    """LoRA teacher correction (DemoSettings `s`)."""
    return _checked(
        "teacher/correct",
        {
            "run_dir": str(run_dir),
            "model": {"path": str(teacher_ckpt)},
            "lora": {"enabled": True, "rank": s.lora_rank, "alpha": 2.0 * s.lora_rank},
            "optimizer": optimizer_section(s.lora_lr, s.lora_steps),
            "train": loop_section(s.lora_steps),
            "data": data,
            "logit_chunk_size": 128,
        },
    )


def row_config(
    row: str,
    lr: float,
    s,
    teacher_ckpt: Path,
    teacher_config,
    data: dict,
    run_dir: Path,
    start: str | None = None,
    cache: str | None = None,
) -> RunConfig:
    """One student row at learning rate `lr` (DemoSettings `s`); `teacher_config`: the corrected
    teacher's LlamaConfig (the baseline takes its width and vocabulary). `start`: a model the
    row starts from instead (the interleaved variant's rows start from the expressive ones, a
    cached row from its student cut beforehand). `cache`: a CACHED_ROWS row's teacher cache."""
    from ..distill.terms import PAPER_TERMS

    if (row in CACHED_ROWS) != (cache is not None):
        raise ValueError(f"{row}: a teacher cache is for the rows {CACHED_ROWS} only")
    weights = None if ROWS[row][1] is None else dict(ROWS[row][1])
    layer_map = s.layer_map if isinstance(s.layer_map, str) else list(s.layer_map)
    common = {
        "run_dir": str(run_dir),
        "optimizer": optimizer_section(lr, s.distill_steps),
        "train": loop_section(s.distill_steps),
        "data": data,
    }
    name = f"{row}/lr{lr:g}"
    if weights is None and start is not None:
        return _checked(name, {**common, "model": {"path": str(start)}, "logit_chunk_size": None})
    if weights is None:
        t = teacher_config
        shape = {
            "vocab_size": t.vocab_size,
            "hidden_size": t.hidden_size,
            "intermediate_size": t.intermediate_size,
            "num_hidden_layers": s.student_layers,
            "num_attention_heads": t.num_attention_heads,
            "num_key_value_heads": t.num_key_value_heads,
            "max_position_embeddings": t.max_position_embeddings,
            "bos_token_id": t.bos_token_id,
            "eos_token_id": t.eos_token_id,
        }
        model = {"shape": shape, "seed": s.seed + 1}
        return _checked(name, {**common, "model": model, "logit_chunk_size": None})
    teacher = {"path": str(teacher_ckpt), "dtype": "float32"}
    if cache is not None:  # the cache stands in for the teacher, which still names what it matches
        teacher["cache"] = str(cache)
    terms = {k: v for k, v in weights.items() if k not in PAPER_TERMS}
    return _checked(
        name,
        {
            **common,
            "teacher": teacher,
            "student": {"path": str(start)} if start else {"num_layers": s.student_layers},
            "distill": {
                "weights": {k: v for k, v in weights.items() if k in PAPER_TERMS},
                **({"terms": terms, "top_k": TOP_K} if terms else {}),  # other rows' as before
                "temperature": s.temperature,
                "layer_map": layer_map,
                "init_layers": "mapped",
                # whole-sequence logits and 128-query attention blocks: ~30 % faster
                # than chunking at these sizes, and the demo's memory is small
                "attention_block_size": 128,
                "logit_chunk_size": None,
            },
        },
    )


TIMING = "timing.json"


def run_timing(run_dir: Path) -> dict | None:
    """{"wall_seconds", "cpu_seconds", "resumed"} of the process that finished the run (its
    start, compilation and final save included); None for a run finished before they were kept."""
    import json

    path = Path(run_dir) / TIMING
    return json.loads(path.read_text()) if path.is_file() else None


def cut_student(teacher: Path, s, out: Path, log=print) -> Path:
    """The student cut from `teacher`'s layers at `s.layer_map` (DemoSettings), as a distill
    run with init_layers: mapped cuts it (the same library function, float32), saved once in
    `out` so that a cached row loads no teacher weights."""
    from ..checkpoint import load_model, save_model
    from ..distill.layer_map import resolve_layer_map
    from ..distill.student_init import init_student_from_teacher

    if (out / "tinywave.json").is_file():
        return out
    params, config, _ = load_model(teacher, dtype="float32", as_numpy=True)
    lm = resolve_layer_map(
        s.layer_map, config.num_hidden_layers, s.student_layers, key="demo.layer_map"
    )
    layers = lm.init_teacher_layers
    student, student_cfg = init_student_from_teacher(params, config, layers, "demo.layer_map")
    prov = {"kind": "student-from-teacher", "teacher": str(teacher), "teacher_layers": list(layers)}
    save_model(out, student, student_cfg, prov, overwrite=True, tokenizer_dir=teacher / "tokenizer")
    log(f"  the cached rows' student: teacher layers {list(layers)} -> {out}")
    return out


def build_cache(cfg: DistillConfig, out: Path, log=print) -> dict:
    """The teacher cache (k = TOP_K) that the cached run config `cfg` reads, built in `out`
    by the library's `teacher-cache build` from that config's own teacher and corpus (so the
    run's checks of teacher, layout, corpus and top_k hold); an interrupted build resumes.
    Returns its summary with `wall_seconds` (the whole call: teacher load, compile, shards)."""
    import time

    from ..distill.cache_build import build_teacher_cache

    t0 = time.time()
    summary = build_teacher_cache(cfg, out, TOP_K)
    summary = {
        "dir": str(out),
        "top_k": TOP_K,
        "wall_seconds": round(time.time() - t0, 1),
        **{k: round(v, 1) if isinstance(v, float) else v for k, v in summary.items()},
        # of the shards built in this call (None: all were kept from an interrupted one)
        "bytes_per_token": round(summary["bytes"] / summary["tokens"], 1)
        if summary["tokens"]
        else None,
    }
    log(
        f"  teacher cache (k={TOP_K}): {summary['tokens']} tokens, {summary['bytes'] / 1e6:.1f} "
        f"MB in {summary['wall_seconds']:.0f} s ({summary['skipped']} shards kept from before)"
    )
    return summary


def _cores() -> list[int]:
    """The CPU cores runs are pinned to (with `taskset`); none where it is missing."""
    import os
    import shutil

    if not hasattr(os, "sched_getaffinity") or shutil.which("taskset") is None:
        return []
    return sorted(os.sched_getaffinity(0))


def latest_step(run_dir: Path) -> int | None:
    """The step of the checkpoint a run in `run_dir` would resume from, None when there is none
    (the library's own reading of its checkpoints/: an unfinished step's folder does not count)."""
    from ..train.resume import checkpoint_manager

    if not (Path(run_dir) / "checkpoints").is_dir():
        return None
    mngr = checkpoint_manager(run_dir, 1, False)
    try:
        return mngr.latest_step()
    finally:
        mngr.close()


def train_runs(
    jobs: list[tuple[str, RunConfig]], log=print, max_parallel: int | None = None, pin: bool = True
) -> dict[str, Path]:
    """Runs `jobs` ([(name, run config)]) through the library's `tinywave train|distill` (the
    train/api.py entry point), each finished run skipped, an interrupted one resumed (latest_step).
    Returns name -> final/. Each run is a subprocess with one CPU device; with `pin`, each is
    pinned to one CPU core, as many at once as there are cores: a run's numerics then do not
    depend on how many run beside it, and two single-core runs on 2 cores train ~1.5x faster
    than one run on both; without, one run at a time on every core (the teacher's pretraining).
    Each run's console output is in RUN_DIR/train.log; progress is echoed every 30 s; a run
    trained here records its wall and CPU seconds in RUN_DIR/timing.json (run_timing).
    SIGTERM or Ctrl-C is passed on to the runs, which save a checkpoint and stop; then RunStopped
    (the CLI exits 143 / 130), and the same call resumes them."""
    import json
    import os
    import signal
    import time

    from ..outputs import write_file_atomic
    from ..train.metrics import read_metrics

    out, todo = {}, []
    env = dict(os.environ)  # one CPU device per run, whatever this process simulates
    env["XLA_FLAGS"] = " ".join(
        f
        for f in env.get("XLA_FLAGS", "").split()
        if not f.startswith("--xla_force_host_platform_device_count")
    )
    for name, cfg in jobs:
        final = Path(cfg.run_dir) / "final"
        if (final / "tinywave.json").is_file():
            log(f"  {name}: done already ({final})")
            out[name] = final
        else:
            todo.append((name, cfg))
    cores = _cores() if pin else []
    slots = cores or [None]
    slots = slots[:max_parallel] if max_parallel else slots
    running: dict[int | None, tuple] = {}
    stopped: list[str] = []  # the signal that stopped the runs, once one has

    def pass_on(signum, frame):
        if not stopped:
            stopped.append(signal.Signals(signum).name)
            for _, _, proc, _, _ in running.values():
                proc.send_signal(signum)

    # (the runs have their own session, so a Ctrl-C reaches each once: from here)
    before = {s: signal.signal(s, pass_on) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        last_echo = time.time()
        while (todo and not stopped) or running:
            for core in [c for c in slots if c not in running]:
                if not todo or stopped:
                    break
                name, cfg = todo.pop(0)
                running[core] = _start(name, cfg, core, env, log)
            time.sleep(0.5)
            for core, (name, cfg, proc, logf, t0) in list(running.items()):
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)  # its own CPU time
                if pid == 0:
                    continue
                proc.returncode = os.waitstatus_to_exitcode(status)
                logf.close()
                del running[core]
                final = Path(cfg.run_dir) / "final"
                if stopped and proc.returncode in (130, 143):
                    continue  # saved and stopped: resumed by the next call
                if proc.returncode != 0 or not (final / "tinywave.json").is_file():
                    for _, _, other, _, _ in running.values():
                        other.terminate()
                    tail = (Path(cfg.run_dir) / "train.log").read_text()[-3000:]
                    raise RuntimeError(
                        f"{name}: training failed (exit {proc.returncode}); rerun to "
                        f"resume. End of {cfg.run_dir}/train.log:\n{tail}"
                    )
                rows = read_metrics(cfg.run_dir)
                timing = {  # this call's process: a resumed run's earlier sessions are not in it
                    "wall_seconds": round(time.time() - t0, 1),
                    "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),
                    "resumed": "--resume" in proc.args,
                }
                write_file_atomic(Path(cfg.run_dir) / TIMING, json.dumps(timing))
                log(
                    f"  {name}: done in {time.time() - t0:.0f} s, final loss {rows[-1]['loss']:.4f}"
                )
                out[name] = final
            if running and time.time() - last_echo > 30:
                last_echo = time.time()
                for name, cfg, *_ in running.values():
                    path = Path(cfg.run_dir) / "metrics.jsonl"
                    if path.exists() and path.read_text().strip():
                        r = read_metrics(cfg.run_dir)[-1]
                        log(
                            f"  {name}: step {r['step']}/{cfg.train.steps} loss {r['loss']:.4f} "
                            f"tok/s {r['tokens_per_s'] / 1e3:.1f}k"
                        )
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
    if stopped:
        steps = {n: latest_step(c.run_dir) for n, c in jobs if n not in out}
        left = [(n, step) for n, step in steps.items() if step is not None] or [("runs", 0)]
        raise RunStopped(
            f"{', '.join(n for n, _ in left)}: stopped by {stopped[0]} at step "
            f"{', '.join(str(step) for _, step in left)} after saving a checkpoint; rerun the "
            "same command to resume",
            stopped[0],
        )
    return out


def _start(name: str, cfg: RunConfig, core: int | None, env: dict, log) -> tuple:
    """Starts run `name` as `tinywave train|distill RUN_DIR/run.yaml [--resume]` (on `core`)."""
    import subprocess
    import sys
    import time

    import yaml

    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "run.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    kind = "distill" if isinstance(cfg, DistillConfig) else "train"
    resume = latest_step(run_dir) is not None
    cmd = [sys.executable, "-m", "tinywave_jax.cli", kind, str(run_dir / "run.yaml")]
    cmd += ["--resume"] * resume
    if core is not None:
        cmd = ["taskset", "-c", str(core)] + cmd
    logf = open(run_dir / "train.log", "a")
    proc = subprocess.Popen(
        cmd, stdout=logf, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    log(
        f"  {name}: {'resuming' if resume else 'training'} for {cfg.train.steps} steps"
        + (f" on core {core}" if core is not None else "")
    )
    return name, cfg, proc, logf, time.time()
