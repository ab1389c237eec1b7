"""`tinywave demo-teacher`: pretrains the demo's teacher, the way SpiritLM was pretrained before
anyone distilled it, and packages it as a Hugging Face folder with its units, tokenizer, layout
and provenance. The package at `tinywave_jax/demo/teacher/` is this command's output.

Stages (in WORKDIR, each recorded when done, so a rerun resumes):
  1 speech    the world's training stories in the target voice and one other voice each,
              validation / test stories and benchmark pairs, each utterance its own synthesis
  2 tokens    `units fit` on pretraining audio, word tokenizer, token layout, the corpora
  3 pretrain  the teacher from random init, cross-entropy on the pretraining corpus
  4 evaluate  sSC / tSC / words / perplexity on validation and test stories (95 % intervals)
  5 package   OUT: HF folder (config.json, model.safetensors, tokenizer files), units/,
              layout.json and provenance.json (command, settings, data hashes, quality, and the
              sha256 of every file, which `tinywave demo` checks before it trains anything)
"""

from __future__ import annotations

import datetime
import json
import shutil
from pathlib import Path

from ..errors import InputError
from ..storage import sha256_file
from .settings import TeacherSettings, settings_dict
from .stages import StagedRun

PACKAGE_DIR = Path(__file__).parent / "teacher"  # the shipped base teacher
PACKAGE_DIRS = {  # variant -> its shipped teacher
    "base": PACKAGE_DIR,
    "expressive": Path(__file__).parent / "teacher_expressive",
}
PROVENANCE = "provenance.json"
FORMAT = "tinywave-demo-teacher/1"


def folder_hashes(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under `folder` except the provenance file."""
    return {
        str(p.relative_to(folder)): sha256_file(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != PROVENANCE
    }


def teacher_world(prov: dict) -> dict:
    """The WorldSplits settings a teacher package was built on; packages from before story
    kinds existed were built on name-swap ("stranger") stories."""
    return {"kind": "stranger", **prov["settings"]["world"]}


def teacher_cast(prov: dict):
    """Who spoke the teacher's audio (speech.Cast); packages from before natural synthesis were
    built from word banks in one target voice."""
    from .speech import Cast

    settings = prov["settings"]
    return Cast(
        natural=settings.get("synthesis", "word_bank") == "natural",
        roster=settings.get("voices", "accents"),
    )


class TeacherError(InputError):
    """A missing or altered teacher package; the message names the file."""


def verify_teacher(folder: str | Path) -> dict:
    """Checks a teacher package against its provenance (every listed file present, same sha256);
    returns the provenance. Raises TeacherError naming the first file at fault."""
    folder = Path(folder)
    prov_path = folder / PROVENANCE
    if not folder.is_dir():
        raise TeacherError(
            f"{folder}: teacher folder not found (build one with `tinywave demo-teacher --out DIR`)"
        )
    if not prov_path.is_file():
        raise TeacherError(
            f"{prov_path}: missing; a teacher package records its files' hashes there"
        )
    try:
        prov = json.loads(prov_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TeacherError(f"{prov_path}: not valid JSON ({e})") from None
    if (
        not isinstance(prov, dict)
        or prov.get("format") != FORMAT
        or not isinstance(prov.get("files"), dict)
    ):
        raise TeacherError(f"{prov_path}: not a {FORMAT} provenance file")
    for rel, digest in sorted(prov["files"].items()):
        path = folder / rel
        if not path.is_file():
            raise TeacherError(f"{path}: missing from the teacher package")
        if sha256_file(path) != digest:
            raise TeacherError(f"{path}: altered (sha256 differs from {prov_path})")
    return prov


class TeacherBuild(StagedRun):
    STAGES = ("speech", "tokens", "pretrain", "evaluate", "package")
    NEEDS = {"speech": ["espeak-ng"], "tokens": ["transformers"], "package": ["transformers"]}

    def __init__(
        self,
        workdir,
        settings: TeacherSettings,
        out: str | Path,
        overwrite=False,
        command: str = "",
        log=print,
    ):
        super().__init__(workdir, settings, log)
        self.out, self.overwrite, self.command = Path(out), overwrite, command
        self.speech_dir, self.tokens_dir = self.dir / "speech", self.dir / "tokens"
        self.run_dir = self.dir / "pretrain"

    def check(self, stages) -> None:
        if "package" in stages and self.done("package") is None:
            from ..outputs import check_output_dir

            check_output_dir(self.out, self.overwrite, sources=[self.dir])  # --workdir

    def world(self) -> dict:
        from .world import make_world

        return make_world(self.settings.world)

    @property
    def cast(self):
        from .speech import Cast

        return Cast(natural=self.settings.synthesis == "natural", roster=self.settings.voices)

    # ---------------------------------------------------------------- stages
    def stage_speech(self) -> dict:
        from ..jsonl import write_jsonl_atomic
        from . import speech
        from .world import mirrored, world_hash

        world, out, cast = self.world(), self.speech_dir, self.cast
        manifests = {
            "pretrain": speech.pretrain_rows(out, world["train"], cast),
            "heldout": speech.heldout_rows(out, world, cast),
        }
        for name, rows in manifests.items():
            write_jsonl_atomic(out / f"{name}.jsonl", rows)
        extras = self.settings.variant == "expressive"
        kind = self.settings.world.kind
        pairs = {
            folder: speech.write_bench(
                out, world[split], folder, words, extras, cast, unseen, mirrored(world, split, kind)
            )
            for folder, split, words, unseen in speech.bench_folders(cast)
        }
        hours = speech.hours(manifests["pretrain"])
        self.log(f"  {len(manifests['pretrain'])} pretraining utterances, {hours:.2f} h")
        return {
            "world_hash": world_hash(world),
            "hours": hours,
            "utterances": {k: len(v) for k, v in manifests.items()},
            "pairs": pairs,
        }

    def stage_tokens(self) -> dict:
        from ..audio.fit import fit_units
        from ..jsonl import iter_jsonl
        from . import tokens
        from .world import vocabulary

        s = self.settings
        rows = [r for _, r in iter_jsonl(self.speech_dir / "pretrain.jsonl", "speech manifest")]
        fit = fit_units(
            [self.speech_dir / r["path"] for r in rows],
            self.tokens_dir / "units",
            units=s.units,
            features="mfcc",
            pitch_bins=s.pitch_bins,
            style_classes=s.style_classes,
            seed=s.seed,
            max_hours=s.units_fit_hours,
            overwrite=True,
            # speaker mean removal over the first cmn_seconds only: a cloze pair shares its
            # context audio, and the context's units must not depend on which ending follows
            # (the whole-utterance mean would); 0 (the word-bank teachers): none
            cmn=s.cmn_seconds > 0,
            cmn_seconds=s.cmn_seconds,
            cmn_running=s.cmn_running,
            frame_rate=s.unit_frame_rate,
            window_seconds=s.unit_window_seconds,
            context_frames=s.unit_context_frames,
            lda_dims=s.unit_lda_dims,
            lda_bins=s.unit_lda_bins,
            vtln=s.unit_vtln,
            word_times=[r["words"] for r in rows] if s.unit_lda_dims else None,
            log=lambda m: self.log("  " + m),
        )
        n_text = tokens.write_text_tokenizer(vocabulary(), self.tokens_dir / "tokenizer")
        layout = tokens.layout_config(s.units, n_text, s.pitch_bins, s.style_classes)
        (self.tokens_dir / "layout.json").write_text(json.dumps(layout, indent=1))
        summaries = tokens.build_corpora(
            {n: self.speech_dir / f"{n}.jsonl" for n in ("pretrain", "heldout")},
            self.tokens_dir / "units",
            self.tokens_dir / "corpus",
            layout,
            self.log,
        )
        return {
            "units": fit.vocab_sizes,
            "text_vocab": n_text,
            "vocab_size": tokens.vocab_size(layout),
            "corpora": tokens.corpus_counts(summaries),
        }

    def stage_pretrain(self) -> dict:
        from ..train.metrics import read_metrics
        from .training import data_section, pretrain_config, train_runs

        s = self.settings
        vocab = self.done("tokens")["vocab_size"]

        def data(mixture: dict) -> dict:
            tokens = {
                "layout": json.loads((self.tokens_dir / "layout.json").read_text()),
                "tokenizer": self.tokens_dir / "tokenizer",
            }
            corpus = self.tokens_dir / "corpus" / "pretrain"
            return data_section(corpus, tokens, s.seq_len, s.batch_size, s.seed, mixture)

        # each run on every core, one after the other (the sweep's runs take one core each)
        start, out = None, {}
        if s.text_steps:  # as SpiritLM starts from a text LLM: the stories' text alone first
            name, run_dir = "teacher/pretrain_text", self.dir / "pretrain_text"
            cfg = pretrain_config(name, s, data({"text": 1.0}), run_dir, vocab, s.text_steps)
            start = train_runs([(name, cfg)], self.log, pin=False)[name]
            out["text_final_train_ce"] = round(read_metrics(run_dir)[-1]["ce"], 4)
        name = "teacher/pretrain"
        cfg = pretrain_config(name, s, data(s.mixture), self.run_dir, vocab, s.steps, start)
        final = train_runs([(name, cfg)], self.log, pin=False)[name]
        last = read_metrics(self.run_dir)[-1]
        steps = s.text_steps + s.steps
        return out | {
            "final": str(final),
            "steps": s.steps,
            "tokens_seen": steps * s.batch_size * s.seq_len,
            "final_train_ce": round(last["ce"], 4),
        }

    def stage_evaluate(self) -> dict:
        quality = evaluate_teacher(
            self.run_dir / "final",
            self.speech_dir,
            self.tokens_dir,
            self.tokens_dir / "units",
            self.tokens_dir / "layout.json",
            tokenizer=self.tokens_dir / "tokenizer",
            log=self.log,
        )
        (self.dir / "quality.json").write_text(json.dumps(quality, indent=1))
        return {"quality": quality}

    def stage_package(self) -> dict:
        from ..checkpoint import load_model
        from ..convert.hf_export import write_hf_dir
        from ..outputs import atomic_output_dir

        staging = self.dir / "package"
        shutil.rmtree(staging, ignore_errors=True)
        params, config, _ = load_model(self.run_dir / "final", as_numpy=True)
        write_hf_dir(
            params, config, staging, overwrite=True, tokenizer_dir=self.tokens_dir / "tokenizer"
        )
        shutil.copytree(self.tokens_dir / "units", staging / "units")
        shutil.copy2(self.tokens_dir / "layout.json", staging / "layout.json")
        prov = self.provenance(staging)
        (staging / "README.md").write_text(model_card(prov))
        prov["files"]["README.md"] = sha256_file(staging / "README.md")
        (staging / PROVENANCE).write_text(json.dumps(prov, indent=1) + "\n")
        with atomic_output_dir(self.out, self.overwrite) as tmp:
            for p in staging.iterdir():
                (shutil.copytree if p.is_dir() else shutil.copy2)(p, tmp / p.name)
        verify_teacher(self.out)
        size = sum(p.stat().st_size for p in self.out.rglob("*") if p.is_file())
        self.log(f"  teacher package: {self.out} ({size / 1e6:.1f} MB)")
        return {"out": str(self.out), "bytes": size}

    def provenance(self, staging: Path) -> dict:
        from .. import __version__
        from ..data.corpus_read import version_dir

        data_hashes = {
            f"speech/{n}.jsonl": sha256_file(self.speech_dir / f"{n}.jsonl")
            for n in ("pretrain", "heldout")
        }
        for n in ("pretrain", "heldout"):
            vdir = version_dir(self.tokens_dir / "corpus" / n)
            data_hashes.update(
                {
                    f"corpus/{n}/{p.name}": sha256_file(p)
                    for p in sorted(vdir.iterdir())
                    if "array_record" in p.name
                }
            )
        stages = {k: self.done(k) for k in ("speech", "tokens", "pretrain")}
        return {
            "format": FORMAT,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": self.command,
            "package_version": __version__,
            "settings": settings_dict(self.settings),
            "world_hash": stages["speech"]["world_hash"],
            "data": {
                "hours": stages["speech"]["hours"],
                "utterances": stages["speech"]["utterances"],
                "corpora": stages["tokens"]["corpora"],
                "sha256": data_hashes,
            },
            "training": {
                k: stages["pretrain"][k] for k in ("steps", "tokens_seen", "final_train_ce")
            }
            | {"seconds": stages["pretrain"]["seconds"]},
            "quality": self.done("evaluate")["quality"],
            "files": folder_hashes(staging),
        }


def model_card(prov: dict) -> str:
    """The package's README.md: what it is, how it was made, how good it is."""
    s, d, t = prov["settings"], prov["data"], prov["training"]
    shape = s["shape"]

    def row(split, key):
        r = prov["quality"][split]
        if key not in r:
            return "-"
        lo, hi = r[f"{key}_ci"]
        return (
            f"{r[key]:.{2 if key == 'ppl' else 1}f} [{lo:.{2 if key == 'ppl' else 1}f}, "
            f"{hi:.{2 if key == 'ppl' else 1}f}]"
        )

    expressive = s.get("variant", "base") == "expressive"
    tokens = (
        f"the demo's speech units, {s['pitch_bins']} pitch and {s['style_classes']} style tokens "
        "merged by time (SpiritLM-Expressive's layout) and its words"
        if expressive
        else "the demo's speech units"
    )
    mixture = (
        " Its training streams: "
        + ", ".join(f"{k} {v:g}" for k, v in s["mixture"].items())
        + " (interleaved: speech and text spans switching at word boundaries)."
        if expressive
        else ""
    )
    cast = teacher_cast(prov)
    voices = len(cast.distill) + len(cast.pretrain)
    metrics = [
        k
        for k in ("ssc", "tsc", "words", "voice", "ss", "st", "ts", "tt", "ppl")
        if k in prov["quality"]["test"]
    ]
    names = {"ss": "S→S", "st": "S→T", "ts": "T→S", "tt": "T→T", "ppl": "PPL"}
    names.update(ssc="sSC", tsc="tSC")
    lines = [
        "# The tinywave demo teacher" + (" (expressive)" if expressive else ""),
        "",
        f"A {shape['num_hidden_layers']}-layer Llama (hidden {shape['hidden_size']}, "
        f"{shape['num_attention_heads']} heads, FFN {shape['intermediate_size']}) over "
        f"{tokens}, pretrained from random init by `tinywave demo-teacher` on "
        f"{s['world']['train']} spoken stories ({d['utterances']['pretrain']} utterances, "
        f"{d['hours']:.1f} h of audio in all, {voices} voices).{mixture} A Hugging Face folder: "
        "`transformers.LlamaForCausalLM.from_pretrained` loads it, `tinywave import-hf` converts it; "
        "`units/` is its unit extractor (`tinywave units extract`), `layout.json` its token layout, "
        "the tokenizer files its word-level text tokenizer.",
        "",
        f"- command: `{prov['command']}`",
        f"- created: {prov['created']} (tinywave_jax {prov['package_version']})",
        f"- training: {t['steps']} steps, {t['tokens_seen']:,} tokens, {t['seconds'] / 60:.0f} min "
        f"on the build machine, final training CE {t['final_train_ce']} nats per unit",
        f"- world hash (story texts of every split): `{prov['world_hash']}`",
        "",
        "Quality on held-out stories ("
        + (
            "the training voices; test_unseen: a voice no model heard"
            if s.get("synthesis") == "natural"
            else "target voice, a synthesis no training file comes from"
        )
        + "; 95 % bootstrap intervals):",
        "",
        "| split | " + " | ".join(names.get(k, k) for k in metrics) + " |",
        "|---|" + "---|" * len(metrics),
        *[
            f"| {split} | " + " | ".join(row(split, k) for k in metrics) + " |"
            for split in ("validation", "test", "test_unseen")
            if split in prov["quality"]
        ],
        "",
        "Data hashes (sha256) and every setting are in `provenance.json`; so is the sha256 of each "
        "file here, which `tinywave demo` checks before it trains anything.",
        "",
    ]
    return "\n".join(lines)


def evaluate_teacher(
    ckpt: Path,
    speech_dir: Path,
    tokens_dir: Path,
    units: Path,
    layout: Path,
    tokenizer: Path | None = None,
    log=print,
) -> dict:
    """{"validation": row, "test": row}: cloze accuracies (and words on test; the voice and
    cross-modal pairs where written) with intervals, perplexity on the held-out stories."""
    from ..checkpoint import load_model
    from .evaluate import bench_inputs, bench_tasks, ppl_inputs, score_model, summarize

    params, config, _ = load_model(ckpt)
    out = {}
    for split, folder in (
        ("validation", "bench_valid"),
        ("test", "bench"),
        ("test_unseen", "bench_unseen"),  # natural speech: voices no model heard
    ):
        if not (speech_dir / folder).is_dir():
            continue
        tasks = bench_tasks(speech_dir / folder, words=split != "validation")
        inputs = bench_inputs(
            speech_dir / folder, units, layout, config.vocab_size, tasks, log, tokenizer
        )
        if split != "test_unseen":
            inputs["ppl"] = ppl_inputs(
                tokens_dir / "corpus" / "heldout", split, layout, config.vocab_size
            )
        out[split] = summarize(score_model(params, config, inputs), draws=2000)
        r = out[split]
        log(
            f"  teacher on {split}: "
            + ", ".join(
                f"{k} {r[k]:.1f} [{r[k + '_ci'][0]:.1f}, {r[k + '_ci'][1]:.1f}]"
                for k in ("ssc", "tsc", "words", "voice", "ss", "st", "ts", "tt", "ppl")
                if k in r
            )
        )
    return out


def build_teacher(
    out,
    workdir,
    quick=False,
    overrides=(),
    overwrite=False,
    stages=None,
    command="",
    log=print,
    variant="base",
) -> dict:
    from .settings import teacher_settings

    build = TeacherBuild(
        workdir, teacher_settings(quick, list(overrides), variant), out, overwrite, command, log
    )
    return build.run(stages)
