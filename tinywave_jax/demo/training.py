"""Demo stages 3 and 4 as `tinywave train` / `tinywave distill` run configs.

  teacher/pretrain   a random Llama pretrained on the training voices (cross-entropy)
  teacher/correct    LoRA teacher correction on the held-out target voice (merged at the end)
  student/distill    a third of the teacher's layers, cut from it, distilled on the target voice
                     with all four terms (CE, logit KL, hidden cosine, attention KL)
  student/baseline   the same shape from random init, cross-entropy only, same steps and batches
Each run's model is RUN_DIR/final (a tinywave model checkpoint); a run interrupted before that
resumes from its latest checkpoint on the next `tinywave demo`.
"""
from __future__ import annotations

from pathlib import Path

RUNS = ("teacher/pretrain", "teacher/correct", "student/distill", "student/baseline")


def _data(settings, tokens_dir: Path, corpus: str) -> dict:
    import json
    layout = json.loads((tokens_dir / "layout.json").read_text())
    speech = "expressive" if settings.expressive else "speech"
    mixture = {speech: 1.0 - settings.interleaved_weight}
    if settings.interleaved_weight > 0:
        mixture["interleaved"] = settings.interleaved_weight
    return {"source": "corpus", "seq_len": settings.seq_len, "batch_size": settings.batch_size,
            "seed": settings.seed,
            "corpus": {"corpus_dir": str(tokens_dir / "corpus" / corpus), "split": "train",
                       "mixture": mixture, "layout": layout,
                       "tokenizer": str(tokens_dir / "tokenizer"),
                       "interleaved_speech": "expressive" if settings.expressive else "hubert",
                       "read_threads": 2}}


def _loop(steps: int) -> dict:
    return {"steps": steps, "log_every": max(1, min(10, steps // 10)),
            "checkpoint_every": max(1, steps // 2), "checkpoint_keep": 1,
            "async_checkpoint": False, "tensorboard": True}


def _optimizer(lr: float, steps: int) -> dict:
    return {"learning_rate": lr, "warmup_steps": max(1, steps // 10), "min_lr_ratio": 0.1,
            "weight_decay": 0.0, "clip_norm": 1.0}


def teacher_shape(settings, vocab_size: int) -> dict:
    t = settings.teacher
    return {"vocab_size": vocab_size, "hidden_size": t.hidden_size,
            "intermediate_size": t.intermediate_size, "num_hidden_layers": t.num_hidden_layers,
            "num_attention_heads": t.num_attention_heads,
            "num_key_value_heads": t.num_key_value_heads, "max_position_embeddings": 2048,
            "bos_token_id": 1, "eos_token_id": 2}


def run_configs(settings, tokens_dir: Path, runs_dir: Path, vocab_size: int) -> dict[str, dict]:
    """Run name -> config dict (TrainConfig or DistillConfig fields), in run order."""
    shape = teacher_shape(settings, vocab_size)
    student_shape = {**shape, "num_hidden_layers": settings.student_layers}
    target = _data(settings, tokens_dir, "target")
    return {
        "teacher/pretrain": {
            "run_dir": str(runs_dir / "teacher/pretrain"),
            "model": {"shape": shape, "seed": settings.seed},
            "optimizer": _optimizer(settings.pretrain_lr, settings.pretrain_steps),
            "train": _loop(settings.pretrain_steps),
            "data": _data(settings, tokens_dir, "pretrain")},
        "teacher/correct": {
            "run_dir": str(runs_dir / "teacher/correct"),
            "model": {"path": str(runs_dir / "teacher/pretrain/final")},
            "lora": {"enabled": True, "rank": settings.lora_rank, "alpha": 2.0 * settings.lora_rank},
            "optimizer": _optimizer(settings.lora_lr, settings.lora_steps),
            "train": _loop(settings.lora_steps), "data": target},
        "student/distill": {
            "run_dir": str(runs_dir / "student/distill"),
            "teacher": {"path": str(runs_dir / "teacher/correct/final"), "dtype": "float32"},
            "student": {"num_layers": settings.student_layers},
            "distill": {"weights": {"ce": 1.0, "logit_kl": 1.0, "hidden": 1.0, "attention": 1.0},
                        "temperature": settings.temperature, "layer_map": "uniform",
                        "init_layers": "mapped", "attention_block_size": 64,
                        "logit_chunk_size": 128},
            "optimizer": _optimizer(settings.distill_lr, settings.distill_steps),
            "train": _loop(settings.distill_steps), "data": target},
        "student/baseline": {
            "run_dir": str(runs_dir / "student/baseline"),
            "model": {"shape": student_shape, "seed": settings.seed + 1},
            "optimizer": _optimizer(settings.distill_lr, settings.distill_steps),
            "train": _loop(settings.distill_steps), "data": target,
            "logit_chunk_size": 128},
    }


def train_run(name: str, cfg_dict: dict, log=print) -> Path:
    """Runs (or resumes, or skips when finished) one run; returns its final model folder."""
    from ..config import from_dict
    from ..train.config import DistillConfig, TrainConfig
    from ..train.loop import checkpoint_manager, run

    run_dir = Path(cfg_dict["run_dir"])
    final = run_dir / "final"
    if (final / "tinywave.json").is_file():
        log(f"  {name}: done already ({final})")
        return final
    cls = DistillConfig if name == "student/distill" else TrainConfig
    cfg = from_dict(cls, cfg_dict, prefix=name)
    resume = False
    if (run_dir / "checkpoints").is_dir():
        mngr = checkpoint_manager(run_dir, 1, False)
        resume = mngr.latest_step() is not None
        mngr.close()
    log(f"  {name}: {'resuming' if resume else 'training'} for {cfg.train.steps} steps")
    out = run(cfg, resume=resume, echo=True)
    if out["final_dir"] is None:
        raise RuntimeError(f"{name}: stopped at step {out['step']} before the end; rerun the demo "
                           "to resume")
    return Path(out["final_dir"])
