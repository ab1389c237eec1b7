"""`tinywave demo`: the TinyWave recipe end to end on a CPU, no downloads.

The teacher is the shipped package `tinywave_jax/demo/teacher/` (or `--set teacher_dir=...`),
made by `tinywave demo-teacher`: like SpiritLM, it was pretrained on far more than the
distillation data (2,400 stories in seven voices against 480 in one) and comes with the units,
tokenizer and layout it was trained with. Its files' hashes are checked before anything runs.

Stages (numbered as --variant interleaved prints them; the other variants have no stage 4 and
print seven; each writes under WORKDIR and records itself in WORKDIR/stages/<stage>.json when done, so
a rerun skips finished stages and resumes an interrupted training run from its checkpoint):

  1 speech    the distillation corpus (target-voice audio of the first `distill_stories` training
              stories), held-out validation / test stories and benchmark pairs (speech.py)
  2 tokens    `tinywave import-hf` of the teacher; the corpora through the teacher's units
  3 teacher   LoRA teacher correction on the distillation corpus
  4 expressive (--variant interleaved only) the expressive variant's student and baseline, which
              the interleaved ones start from (the whole expressive demo, its table included, run
              in WORKDIR/expressive; or reused from --set expressive_workdir=DIR)
  5 student   the distilled student and the from-scratch baseline, each trained at every
              learning rate of `lr_sweep`; validation perplexity picks one per row
  6 ablation  (only with --ablation, base variant) the rows between them: teacher-layer init
              + CE, + logit KD, + hidden-state loss, and cached top-k logit KD (k = 64: the
              corrected teacher's top-k over the distillation corpus, built once by the
              library's teacher cache in WORKDIR/teacher_cache/, its record and build time in
              WORKDIR/teacher_cache.json; the run loads no teacher), each with the same sweep
  7 bench     sSC / tSC / words / perplexity (expressive and interleaved: + speaker consistency
              and cross-modal cloze) on the test stories with 95 % paired-bootstrap intervals:
              results.md, results.json, loss curves and attention maps; the student is also
              exported to student.q8_0.gguf and scored in llama.cpp (the table's q8_0 row)
  8 export    the student in Hugging Face format; its transformers greedy continuation of a
              speech prompt must equal the JAX one (llama.cpp's q8_0 one is shown beside them)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

from ..errors import ConfigError
from .evaluate import UNSEEN_BENCH
from .results import Q8
from .settings import DemoSettings
from .stages import StagedRun
from .training import ABLATION_ROWS, CACHED_ROWS, MAIN_ROWS, ROWS

STAGES = ("speech", "tokens", "teacher", "expressive", "student", "ablation", "bench", "export")
# what each variant trains on (data.mixture)
MIXTURES = {
    "base": {"speech": 1.0},
    "expressive": {"expressive": 1.0},
    "interleaved": {"interleaved": 1.0},
}


class Demo(StagedRun):
    STAGES = STAGES
    NEEDS = {
        "speech": ["espeak-ng"],
        "bench": ["matplotlib", "gguf", "llama_cpp"],  # the q8_0 row runs in llama.cpp
        "export": ["torch", "transformers", "llama_cpp"],
    }

    def __init__(self, workdir, settings: DemoSettings, log: Callable = print, quick=False):
        super().__init__(workdir, settings, log)
        self.speech_dir, self.tokens_dir = self.dir / "speech", self.dir / "tokens"
        self.runs_dir = self.dir / "runs"
        self.quick = quick  # the nested expressive run (interleaved) uses the same sizes
        self.OPTIONAL = ("ablation",)
        if settings.variant != "interleaved":  # numbered [k/7] as before the variants
            self.STAGES = tuple(s for s in STAGES if s != "expressive")

    @property
    def teacher_dir(self) -> Path:
        from .teacher import PACKAGE_DIRS

        if self.settings.teacher_dir:
            return Path(self.settings.teacher_dir)
        return PACKAGE_DIRS["base" if self.settings.variant == "base" else "expressive"]

    @property
    def seq_len(self) -> int:
        """Training sequence length: the setting, or (0) the teacher's pretraining length."""
        if self.settings.seq_len:
            return self.settings.seq_len
        prov = json.loads((self.teacher_dir / "provenance.json").read_text())
        return int(prov["settings"]["seq_len"])

    @property
    def expressive_dir(self) -> Path:
        return Path(self.settings.expressive_workdir or self.dir / "expressive")

    def check(self, stages) -> None:
        """The teacher package is intact and its world holds the splits this demo asks for."""
        from .teacher import verify_teacher

        if all(self.done(s) is not None for s in stages if s in ("speech", "tokens")):
            return
        from ..distill.layer_map import resolve_layer_map

        prov = verify_teacher(self.teacher_dir)
        world = prov["settings"]["world"]
        s = self.settings
        from .teacher import TeacherError

        teacher_variant = prov["settings"].get("variant", "base")
        if (teacher_variant == "expressive") != (s.variant != "base"):
            raise TeacherError(
                f"{self.teacher_dir}: a {teacher_variant} teacher; the {s.variant} variant needs "
                + ("a base" if s.variant == "base" else "an expressive")
                + " one (tinywave demo-teacher --variant ...)"
            )
        resolve_layer_map(
            s.layer_map,
            prov["settings"]["shape"]["num_hidden_layers"],
            s.student_layers,
            key="demo.layer_map",
        )
        for key, have in (
            ("distill_stories", world["train"]),
            ("test_stories", world["test"]),
            ("valid_stories", world["validation"]),
        ):
            if getattr(s, key) > have:
                raise ConfigError(
                    f"{key}: {getattr(s, key)} asked, the teacher's world has "
                    f"{have} ({self.teacher_dir / 'provenance.json'})"
                )

    def world(self, prov: dict) -> dict:
        """The teacher's world (checked against its recorded hash), cut to this demo's sizes."""
        from ..config import from_dict
        from .teacher import TeacherError, teacher_world
        from .world import WorldSplits, make_world, world_hash

        world = make_world(from_dict(WorldSplits, teacher_world(prov), prefix="world"))
        if world_hash(world) != prov["world_hash"]:
            raise TeacherError(
                f"{self.teacher_dir / 'provenance.json'}: its stories differ from "
                "the ones this version of tinywave_jax generates (world_hash)"
            )
        s = self.settings
        return {
            "train": world["train"][: s.distill_stories],
            "validation": world["validation"][: s.valid_stories],
            "test": world["test"][: s.test_stories],
        }

    def tokens(self) -> dict:
        return {
            "layout": json.loads((self.tokens_dir / "layout.json").read_text()),
            "tokenizer": self.tokens_dir / "teacher" / "tokenizer",
        }

    # ---------------------------------------------------------------- stages
    def stage_speech(self) -> dict:
        from ..jsonl import write_jsonl_atomic
        from . import speech
        from .teacher import teacher_cast, teacher_world, verify_teacher
        from .world import WORD_PAIRS, mirrored

        prov = verify_teacher(self.teacher_dir)
        world, out, cast = self.world(prov), self.speech_dir, teacher_cast(prov)
        manifests = {
            "distill": speech.distill_rows(out, world["train"], cast),
            "heldout": speech.heldout_rows(out, world, cast),
        }
        for name, rows in manifests.items():
            write_jsonl_atomic(out / f"{name}.jsonl", rows)
        extras = self.settings.variant != "base"
        mirrors = mirrored(world, "test", teacher_world(prov)["kind"])
        pairs = speech.write_bench(
            out, world["test"], "bench", WORD_PAIRS, extras, cast, False, mirrors
        )
        if cast.unseen:  # natural speech: the test stories in voices no model heard too
            speech.write_bench(
                out, world["test"], UNSEEN_BENCH, WORD_PAIRS, extras, cast, True, mirrors
            )
        hours = speech.hours(manifests["distill"])
        self.log(
            f"  {len(manifests['distill'])} distillation utterances ({hours:.2f} h), "
            f"benchmark pairs {pairs}"
        )
        return {
            "utterances": {k: len(v) for k, v in manifests.items()},
            "pairs": pairs,
            "distill_hours": hours,
        }

    def stage_tokens(self) -> dict:
        from ..convert.hf_import import import_hf
        from . import tokens

        teacher = self.teacher_dir
        shutil.rmtree(self.tokens_dir, ignore_errors=True)
        self.tokens_dir.mkdir(parents=True)
        import_hf(teacher, self.tokens_dir / "teacher", dtype="float32")
        shutil.copytree(teacher / "units", self.tokens_dir / "units")
        shutil.copy2(teacher / "layout.json", self.tokens_dir / "layout.json")
        layout = tokens.read_layout(self.tokens_dir / "layout.json")
        summaries = tokens.build_corpora(
            {n: self.speech_dir / f"{n}.jsonl" for n in ("distill", "heldout")},
            self.tokens_dir / "units",
            self.tokens_dir / "corpus",
            layout,
            self.log,
        )
        return {
            "teacher": str(teacher),
            "vocab_size": tokens.vocab_size(layout),
            "corpora": tokens.corpus_counts(summaries),
        }

    def data(self) -> dict:
        from .training import data_section

        s = self.settings
        return data_section(
            self.tokens_dir / "corpus" / "distill",
            self.tokens(),
            self.seq_len,
            s.batch_size,
            s.seed,
            MIXTURES[s.variant],
        )

    def stage_teacher(self) -> dict:
        from .training import correction_config, train_runs

        cfg = correction_config(
            self.settings,
            self.tokens_dir / "teacher",
            self.data(),
            self.runs_dir / "teacher/correct",
        )
        return {"model": str(train_runs([("teacher/correct", cfg)], self.log)["teacher/correct"])}

    def _cached_inputs(self) -> dict:
        """What the cached rows train from, made once (WORKDIR/teacher_cache.json records it; an
        interrupted build resumes shard by shard): the student cut from the corrected teacher
        beforehand and that teacher's top-k cache over the distillation corpus."""
        from ..checkpoint import load_model_config
        from ..outputs import write_file_atomic
        from .training import build_cache, cut_student, row_config

        record = self.dir / "teacher_cache.json"
        if record.is_file():
            return json.loads(record.read_text())
        s, teacher = self.settings, self.runs_dir / "teacher/correct/final"
        start = cut_student(teacher, s, self.runs_dir / "cached_init", self.log)
        cache = self.dir / "teacher_cache"
        row = CACHED_ROWS[0]  # the cache is built from a cached run's own config
        cfg = row_config(
            row,
            s.lr_sweep[0],
            s,
            teacher,
            load_model_config(teacher),
            self.data(),
            self.runs_dir / row / "cache_build",
            start=str(start),
            cache=str(cache),
        )
        rec = {"start": str(start), "cache": str(cache), "build": build_cache(cfg, cache, self.log)}
        write_file_atomic(record, json.dumps(rec, indent=1))
        return rec

    def _sweep(self, rows) -> dict:
        """Each row at every learning rate (all runs side by side, one CPU core each); validation
        perplexity picks one learning rate per row (ties: the lower). Cached rows train from
        `_cached_inputs`; each run's wall and CPU seconds go in its row's `train_seconds`."""
        from ..checkpoint import load_model, load_model_config
        from .evaluate import ppl_inputs, ppl_of, score_model
        from .training import row_config, run_timing, train_runs

        s, teacher = self.settings, self.runs_dir / "teacher/correct/final"
        t_config = load_model_config(teacher)
        starts = dict(self.done("expressive") or {})
        cached = self._cached_inputs() if set(CACHED_ROWS) & set(rows) else None
        starts.update({row: cached["start"] for row in CACHED_ROWS if cached})
        jobs = [
            (
                f"{row}/lr{lr:g}",
                row_config(
                    row,
                    lr,
                    s,
                    teacher,
                    t_config,
                    self.data(),
                    self.runs_dir / f"{row}/lr{lr:g}",
                    start=starts.get(row),
                    cache=cached["cache"] if row in CACHED_ROWS else None,
                ),
            )
            for row in rows
            for lr in s.lr_sweep
        ]
        finals = train_runs(jobs, self.log)
        valid = ppl_inputs(
            self.tokens_dir / "corpus" / "heldout",
            "validation",
            self.tokens_dir / "layout.json",
            t_config.vocab_size,
        )
        out = {}
        for row in rows:
            tried = {}
            for lr in s.lr_sweep:
                final = finals[f"{row}/lr{lr:g}"]
                params, config, _ = load_model(final)
                nll, tok = score_model(params, config, {"ppl": valid})["ppl"]
                tried[f"{lr:g}"] = {"model": str(final), "valid_ppl": round(ppl_of(nll, tok), 4)}
            best = min(tried, key=lambda k: (tried[k]["valid_ppl"], float(k)))
            out[row] = {
                "description": ROWS[row][0],
                "chosen_lr": float(best),
                "model": tried[best]["model"],
                "sweep": tried,
                "train_seconds": {
                    f"{lr:g}": run_timing(Path(finals[f"{row}/lr{lr:g}"]).parent)
                    for lr in s.lr_sweep
                },
            }
            if row in CACHED_ROWS:
                out[row]["teacher_cache"] = cached["build"]
            self.log(
                f"  {row}: validation perplexity "
                + ", ".join(f"lr {k} {v['valid_ppl']:.3f}" for k, v in tried.items())
                + f"; chose lr {best}"
            )
        return out

    def stage_expressive(self) -> dict:
        """The expressive variant's student and baseline (TinyWave's interleaved student starts
        from its distilled expressive one; the baseline from the expressive baseline, so both
        rows have seen the same data)."""
        from .settings import demo_settings

        s = self.settings
        if s.expressive_workdir:
            path = self.expressive_dir / "stages" / "student.json"
            rec = json.loads(path.read_text()) if path.is_file() else None
            variant = (self.expressive_dir / "settings.json").is_file() and json.loads(
                (self.expressive_dir / "settings.json").read_text()
            ).get("variant")
            if rec is None or variant != "expressive":
                raise ConfigError(
                    f"expressive_workdir: {self.expressive_dir} has no finished expressive "
                    "student (run `tinywave demo --variant expressive --workdir "
                    f"{self.expressive_dir}` first)"
                )
        else:
            self.log(f"  the expressive variant first, in {self.expressive_dir}")
            expr = Demo(
                self.expressive_dir,
                demo_settings(self.quick, [f"seed={s.seed}"], "expressive"),
                lambda m: self.log("  [expressive] " + m),
                quick=self.quick,
            )
            expr.run()  # every stage: the expressive variant's own table comes with it
            rec = expr.done("student")
        out = {row: rec["rows"][row]["model"] for row in MAIN_ROWS}
        for row, model in out.items():
            self.log(f"  {row} starts from {model}")
        return out

    def stage_student(self) -> dict:
        return {"rows": self._sweep(MAIN_ROWS)}

    def stage_ablation(self) -> dict:
        return {"rows": self._sweep(ABLATION_ROWS)}

    def rows(self) -> dict:
        """Every trained row so far (student, baseline and, after --ablation, the others)."""
        out = {}
        for stage in ("student", "ablation"):
            rec = self.done(stage)
            if rec is not None:
                out.update(rec["rows"])
        return out

    def stage_bench(self) -> dict:
        from .results import write_results

        results = write_results(self, self.log)
        plots = self._plots()
        return {
            "results": str(self.dir / "results.json"),
            "rows": sorted(results["rows"]),
            "plots": plots,
        }

    def _plots(self) -> list[str]:
        from ..checkpoint import load_model
        from ..data.layout import resolve_layout
        from ..distill.layer_map import resolve_layer_map
        from ..eval.perplexity import corpus_seqs
        from .plots import plot_attention, plot_losses

        rows = self.rows()
        runs = {"teacher/correct": self.runs_dir / "teacher/correct"}
        runs.update(
            {f"{r}/lr{rows[r]['chosen_lr']:g}": Path(rows[r]["model"]).parent for r in MAIN_ROWS}
        )
        losses = plot_losses(runs, self.dir / "loss_curves.png")
        teacher = load_model(self.runs_dir / "teacher/correct/final")[:2]
        student = load_model(rows["student"]["model"])[:2]
        lm = resolve_layer_map(
            self.settings.layer_map,
            teacher[1].num_hidden_layers,
            student[1].num_hidden_layers,
            key="demo.layer_map",
        )
        layout = resolve_layout(str(self.tokens_dir / "layout.json"), teacher[1].vocab_size)
        ids = corpus_seqs(self.tokens_dir / "corpus" / "heldout", "test", layout, limit=1)[0].ids[
            :96
        ]
        attn = plot_attention(
            teacher,
            student,
            ids,
            list(enumerate(lm.teacher_for_student)),
            self.dir / "attention.png",
            "one test story (target voice): teacher vs distilled student",
        )
        return [str(losses), str(attn)]

    def stage_export(self) -> dict:
        from .evaluate import GGUF_FILE, export_and_compare, export_student_gguf

        s = self.settings
        student = Path(self.rows()["student"]["model"])
        gguf = self.dir / GGUF_FILE  # written by the bench stage (its q8_0 row)
        if not gguf.is_file():
            gguf = export_student_gguf(student, self.dir, self.tokens_dir / "layout.json", self.log)
        return export_and_compare(
            student,
            self.dir,
            self.tokens_dir / "corpus" / "heldout",
            self.tokens_dir / "layout.json",
            s.prompt_tokens,
            s.generate_tokens,
            self.log,
            gguf=gguf,
        )

    def run(self, stages=None, ablation: bool = False) -> dict:
        if ablation and self.settings.variant != "base":
            raise ConfigError("--ablation: only for the base variant")
        interleaved = self.settings.variant == "interleaved"
        stages = [
            s
            for s in (STAGES if stages is None else stages)
            if (s != "ablation" or ablation) and (s != "expressive" or interleaved)
        ]
        with self.locked():  # the records below are changed under the workdir's lock too
            abl = self.done("ablation")
            if ablation and abl is not None and not set(ABLATION_ROWS) <= set(abl["rows"]):
                self.record("ablation").unlink()  # gains the cached row (finished runs are kept)
            bench = self.done("bench")
            if bench is not None and (
                (ablation and not set(ABLATION_ROWS) <= set(bench["rows"]))  # gains ablation rows
                or Q8 not in bench["rows"]  # a workdir from before the q8_0 GGUF row
            ):
                self.record("bench").unlink()
            export = self.done("export")
            if export is not None and "gguf" not in export:  # from before the llama.cpp line
                self.record("export").unlink()
            return super().run(stages)


def run_demo(
    workdir: str | Path,
    quick: bool = False,
    overrides=(),
    stages=STAGES,
    ablation: bool = False,
    log: Callable = print,
    variant: str = "base",
) -> dict:
    from .settings import demo_settings

    demo = Demo(workdir, demo_settings(quick, list(overrides), variant), log, quick=quick)
    return demo.run(stages, ablation=ablation)
