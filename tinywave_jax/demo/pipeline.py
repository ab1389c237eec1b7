"""`tinywave demo`: the TinyWave recipe end to end on a CPU, no downloads.

Stages (each writes under WORKDIR and records itself in WORKDIR/stages/<stage>.json when done, so
a rerun skips finished stages and resumes an interrupted training run from its checkpoint):

  1 speech    espeak-ng stories in several voices, word timings by construction (demo/corpus.py)
  2 tokens    `units fit` on the training audio, text tokenizer, token layout, two corpora
  3 teacher   pretraining on the training voices, LoRA correction on the target voice
  4 student   distilled third-depth student, and the same shape trained without distillation
  5 bench     sSC / tSC / word test / perplexity for all three: results.md, results.json, PNGs
  6 export    the student in Hugging Face format; its transformers greedy continuation of a
              speech prompt must equal the JAX one
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable

from .settings import DemoSettings, settings_dict

STAGES = ("speech", "tokens", "teacher", "student", "bench", "export")


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (load-independent cost)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class Demo:
    def __init__(self, workdir: str | Path, settings: DemoSettings, log: Callable = print):
        self.dir = Path(workdir)
        self.settings = settings
        self.log = log
        self.dir.mkdir(parents=True, exist_ok=True)
        stamp = self.dir / "settings.json"
        mine = settings_dict(settings)
        if stamp.exists():
            saved = json.loads(stamp.read_text())
            if saved != mine:
                diff = sorted(k for k in set(saved) | set(mine) if saved.get(k) != mine.get(k))
                raise ValueError(f"{self.dir} holds a demo run with other settings ({', '.join(diff)}); "
                                 "use another --workdir (or delete this one)")
        else:
            stamp.write_text(json.dumps(mine, indent=1))

    # paths
    @property
    def speech_dir(self) -> Path:
        return self.dir / "speech"

    @property
    def tokens_dir(self) -> Path:
        return self.dir / "tokens"

    @property
    def runs_dir(self) -> Path:
        return self.dir / "runs"

    def record(self, stage: str) -> Path:
        return self.dir / "stages" / f"{stage}.json"

    def done(self, stage: str) -> dict | None:
        path = self.record(stage)
        return json.loads(path.read_text()) if path.exists() else None

    def preflight(self, stages) -> None:
        """Fails before any work when something a pending stage needs is missing."""
        import importlib.util
        import shutil
        pending = [s for s in stages if self.done(s) is None]
        need = {"speech": ["espeak-ng"], "bench": ["matplotlib"], "export": ["torch", "transformers"]}
        missing = []
        for stage in pending:
            for what in need.get(stage, []):
                found = shutil.which(what) if what == "espeak-ng" else importlib.util.find_spec(what)
                if not found:
                    missing.append(f"{what} (stage {stage})")
        if missing:
            raise ValueError("tinywave demo needs " + ", ".join(missing) + ": run `make demo`, "
                               "or `make espeak` and `pip install -e '.[test]'`")

    def run(self, stages=STAGES) -> dict:
        for k, stage in enumerate(STAGES):
            if stage in stages:
                missing = [s for s in STAGES[:k] if s not in stages and self.done(s) is None]
                if missing:
                    raise ValueError(f"stage {stage} needs stage(s) {missing} first "
                                     f"(run them, or leave --stages out)")
        self.preflight(stages)
        t0 = time.time()
        out = {}
        for k, stage in enumerate(STAGES, 1):
            if stage not in stages:
                continue
            rec = self.done(stage)
            if rec is not None:
                self.log(f"[{k}/{len(STAGES)}] {stage}: cached ({rec['seconds']:.0f} s when run)")
            else:
                self.log(f"[{k}/{len(STAGES)}] {stage} ...")
                t, cpu = time.time(), _cpu_seconds()
                info = getattr(self, f"stage_{stage}")()
                rec = {"stage": stage, "seconds": round(time.time() - t, 1),
                       "cpu_seconds": round(_cpu_seconds() - cpu, 1), **info}
                self.record(stage).parent.mkdir(parents=True, exist_ok=True)
                self.record(stage).write_text(json.dumps(rec, indent=1))
                self.log(f"[{k}/{len(STAGES)}] {stage}: done in {rec['seconds']:.0f} s")
            out[stage] = rec
        out["wall_seconds"] = round(time.time() - t0, 1)
        return out

    # ---------------------------------------------------------------- stages
    def stage_speech(self) -> dict:
        from .corpus import build_speech
        return build_speech(self.settings, self.speech_dir, self.log)

    def stage_tokens(self) -> dict:
        from .corpus import build_tokens
        return build_tokens(self.settings, self.speech_dir, self.tokens_dir, self.log)

    def _configs(self) -> dict:
        from .training import run_configs
        vocab = self.done("tokens")["vocab_size"]
        return run_configs(self.settings, self.tokens_dir, self.runs_dir, vocab)

    def _train(self, names) -> dict:
        from .training import train_run
        cfgs = self._configs()
        return {name: str(train_run(name, cfgs[name], self.log)) for name in names}

    def stage_teacher(self) -> dict:
        return {"models": self._train(("teacher/pretrain", "teacher/correct"))}

    def stage_student(self) -> dict:
        return {"models": self._train(("student/distill", "student/baseline"))}

    def models(self) -> dict[str, Path]:
        return {"teacher": self.runs_dir / "teacher/correct/final",
                "student": self.runs_dir / "student/distill/final",
                "baseline": self.runs_dir / "student/baseline/final"}

    def stage_bench(self) -> dict:
        from .evaluate import evaluate_models, write_results
        results = evaluate_models(self.models(), self.speech_dir / "bench", self.tokens_dir,
                                  self.log)
        table = write_results(self.dir, results, self.settings)
        self.log("\n" + table)
        plots = self._plots()
        return {"results": str(self.dir / "results.json"), "plots": plots}

    def _plots(self) -> list[str]:
        from ..checkpoint import load_model
        from ..distill.layer_map import resolve_layer_map
        from ..eval.perplexity import corpus_seqs
        from ..eval.sequences import resolve_layout
        from .plots import plot_attention, plot_losses
        runs = {name: self.runs_dir / name for name in
                ("teacher/pretrain", "teacher/correct", "student/distill", "student/baseline")}
        losses = plot_losses(runs, self.dir / "loss_curves.png")
        models = self.models()
        teacher = load_model(models["teacher"])[:2]
        student = load_model(models["student"])[:2]
        lm = resolve_layer_map("uniform", teacher[1].num_hidden_layers, student[1].num_hidden_layers)
        layout = resolve_layout(str(self.tokens_dir / "layout.json"), teacher[1].vocab_size)
        ids = corpus_seqs(self.tokens_dir / "corpus" / "target", "test", layout, limit=1)[0].ids[:96]
        attn = plot_attention(teacher, student, ids,
                              list(enumerate(lm.teacher_for_student)), self.dir / "attention.png",
                              "one test utterance (target voice): teacher vs distilled student")
        return [str(losses), str(attn)]

    def stage_export(self) -> dict:
        from .evaluate import export_and_compare
        s = self.settings
        return export_and_compare(self.models()["student"], self.dir, self.tokens_dir,
                                  s.prompt_tokens, s.generate_tokens, self.log)


def run_demo(workdir: str | Path, quick: bool = False, overrides=(), stages=STAGES,
             log: Callable = print) -> dict:
    from .settings import demo_settings
    demo = Demo(workdir, demo_settings(quick, list(overrides)), log)
    return demo.run(stages)
