"""`tinywave demo-vocoder`: builds the demo's small unit vocoder ahead of time, as `demo-teacher`
builds its teacher, and packages it with provenance.

Stages (in WORKDIR, each recorded when done, so a rerun resumes):
  1 speech    training stories of a world spoken naturally (`synth.speak` through `speech.Cast`,
              natural synthesis): each story in a distillation voice and in one of the
              teacher's other voices (`speech.pretrain_rows`, 12 voices), every utterance its
              own synthesis; validation stories in the distillation voices at held-out speeds
              (`speech.heldout_rows`): the held-out set, never trained on
  2 train     `vocoder train` (vocoder/train.py) on the training utterances with the units of
              the teacher package's fitted extractor (`teacher_dir`/units); resumable
  3 evaluate  `vocoder eval` (vocoder/quality.py) on the held-out utterances: pocketsphinx WER
              of resynthesis and original, STOI, unit agreement, 95 % intervals
  4 package   OUT: the vocoder folder (config.json, tinywave.json, params/), units/ (the
              extractor it was trained with, for `tinywave speak --units`), README.md and
              provenance.json (command, settings, data hashes, training, quality, and the sha256
              of every file)
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import shutil
from pathlib import Path

from ..errors import ConfigError, InputError
from ..vocoder.train import VocoderTrainConfig
from .stages import StagedRun

FORMAT = "tinywave-demo-vocoder/1"
PROVENANCE = "provenance.json"


def _training() -> VocoderTrainConfig:
    # HiFi-GAN's recipe with quarter-width discriminators (the GAN step is the CPU's cost)
    return VocoderTrainConfig(
        steps=3000, batch_size=8, discriminator_width=0.25, log_every=25, save_every=100
    )


@dataclasses.dataclass(frozen=True)
class VocoderBuildSettings:
    """The demo vocoder's data, generator shape and training. The generator is CodeHiFiGAN at
    the units' 25 Hz (upsample rates 5, 4, 4, 4, 2 = 640 samples per unit at 16 kHz) with a unit
    embedding, a speaker embedding (one per voice) and a duration predictor (`speak` expands the
    LM's deduplicated units with it, as SpiritLM Base does)."""

    teacher_dir: str = ""  # the package whose units/ the vocoder speaks ("" = the shipped one)
    world_seed: int = 0
    train_stories: int = 300  # each spoken twice (a distillation and a pretraining voice)
    heldout_stories: int = 32  # validation stories in the distillation voices: quality only
    channels: int = 128  # upsample_initial_channel (SpiritLM's: 512)
    embedding_dim: int = 64  # unit and speaker embeddings each
    resblock_kernel_sizes: tuple[int, ...] = (3, 7)
    resblock_dilations: tuple[int, ...] = (1, 3, 5)
    training: VocoderTrainConfig = dataclasses.field(default_factory=_training)
    draws: int = 2000  # bootstrap resamples of the quality intervals

    def validate(self):
        if self.train_stories < 1 or self.heldout_stories < 2:
            raise ConfigError("train_stories: must be >= 1; heldout_stories: >= 2")
        if self.channels < 2**5 or self.embedding_dim < 1 or self.draws < 1:
            raise ConfigError(
                "channels: must be >= 32 (5 stages halve it); embedding_dim, draws >= 1"
            )
        from .synth import DISTILL_VOICES

        n = len(DISTILL_VOICES)  # held-out story k is in distillation voice k % n
        if min(self.heldout_stories, n) > min(self.train_stories, n):
            raise ConfigError(
                f"heldout_stories: {self.heldout_stories} stories speak in voices that "
                f"{self.train_stories} training stories do not (give train_stories >= "
                f"{min(self.heldout_stories, n)})"
            )
        if not self.resblock_kernel_sizes or not self.resblock_dilations:
            raise ConfigError("resblock_kernel_sizes, resblock_dilations: give at least one")
        self.training.validate()

    def generator(self, units: int, speakers: int) -> dict:
        """The generator's config.json (speech-resynthesis keys)."""
        d = self.embedding_dim
        return {
            "upsample_rates": [5, 4, 4, 4, 2],
            "upsample_kernel_sizes": [11, 8, 8, 8, 4],
            "upsample_initial_channel": self.channels,
            "resblock_kernel_sizes": list(self.resblock_kernel_sizes),
            "resblock_dilation_sizes": [list(self.resblock_dilations)]
            * len(self.resblock_kernel_sizes),
            "num_embeddings": units,
            "embedding_dim": d,
            "model_in_dim": 2 * d,
            "multispkr": "from_input_file",
            "num_speakers": speakers,
            "dur_predictor_params": {
                "encoder_embed_dim": d,
                "var_pred_hidden_dim": d,
                "var_pred_kernel_size": 3,
                "var_pred_dropout": 0.5,
            },
        }


QUICK = {
    "train_stories": 2,
    "heldout_stories": 2,
    "channels": 32,
    "embedding_dim": 8,
    "resblock_kernel_sizes": [3],
    "resblock_dilations": [1, 3],
    "training": {
        "steps": 3,
        "batch_size": 2,
        "segment_frames": 4,
        "discriminator_width": 1 / 32,
        "mel": {"n_fft": 256, "hop": 64, "n_mels": 20},
        "log_every": 1,
    },
    "draws": 50,
}


def vocoder_settings(quick: bool = False, overrides=()) -> VocoderBuildSettings:
    from ..config import apply_overrides, from_dict

    data = apply_overrides(dict(QUICK) if quick else {}, list(overrides))
    return from_dict(VocoderBuildSettings, data, prefix="demo-vocoder")


def verify_package(folder: str | Path) -> dict:
    """Checks a demo vocoder package against its provenance (same files, same sha256) and loads
    the vocoder (its own hash check); returns the provenance. InputError names the file."""
    from ..vocoder.checkpoint import load_vocoder
    from .teacher import folder_hashes

    folder = Path(folder)
    path = folder / PROVENANCE
    try:
        prov = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: not a readable provenance file ({e})") from None
    if not isinstance(prov, dict) or prov.get("format") != FORMAT:
        raise InputError(f"{path}: not a {FORMAT} provenance file")
    have = folder_hashes(folder)
    for rel in sorted(set(prov.get("files", {})) | set(have)):
        if prov["files"].get(rel) != have.get(rel):
            raise InputError(f"{folder / rel}: missing, extra or altered (see {path})")
    load_vocoder(folder)
    return prov


class VocoderBuild(StagedRun):
    STAGES = ("speech", "train", "evaluate", "package")
    NEEDS = {"speech": ["espeak-ng"], "evaluate": ["pocketsphinx", "jiwer", "pystoi"]}

    def __init__(self, workdir, settings, out, overwrite=False, command="", log=print):
        super().__init__(workdir, settings, log)
        self.out, self.overwrite, self.command = Path(out), overwrite, command
        self.speech_dir, self.run_dir = self.dir / "speech", self.dir / "train"
        self.voc_dir = self.dir / "vocoder"

    @property
    def teacher(self) -> Path:
        from .teacher import PACKAGE_DIR

        return Path(self.settings.teacher_dir) if self.settings.teacher_dir else PACKAGE_DIR

    @property
    def units(self) -> Path:
        return self.teacher / "units"

    def check(self, stages) -> None:
        from .teacher import verify_teacher

        verify_teacher(self.teacher)  # its units are the vocoder's input: unaltered
        if "package" in stages and self.done("package") is None:
            from ..outputs import check_output_dir

            check_output_dir(self.out, self.overwrite, sources=[self.dir, self.teacher])

    def stage_speech(self) -> dict:
        from ..jsonl import write_jsonl_atomic
        from . import speech
        from .world import WorldSplits, make_world, world_hash

        s, cast = self.settings, speech.Cast(natural=True)
        splits = WorldSplits(
            train=s.train_stories, validation=s.heldout_stories, test=2, seed=s.world_seed
        )
        world = make_world(splits)
        rows = {
            "train": speech.pretrain_rows(self.speech_dir, world["train"], cast),
            "heldout": speech.heldout_rows(
                self.speech_dir, {"validation": world["validation"], "test": []}, cast
            ),
        }
        for name, r in rows.items():
            write_jsonl_atomic(self.speech_dir / f"{name}.jsonl", r)
        hours = speech.hours(rows["train"])
        self.log(
            f"  {len(rows['train'])} training utterances ({hours:.2f} h), "
            f"{len(rows['heldout'])} held out"
        )
        return {
            "world": dataclasses.asdict(splits),
            "world_hash": world_hash(world),
            "hours": hours,
            "utterances": {k: len(v) for k, v in rows.items()},
            "voices": sorted({r["speaker"] for r in rows["train"]}),
        }

    def stage_train(self) -> dict:
        from ..audio import load_extractor
        from ..vocoder.corpus import read_items
        from ..vocoder.train import train_vocoder

        s = self.settings
        items = read_items(self.speech_dir / "train.jsonl")
        speakers = len({i.speaker for i in items})
        units = load_extractor(self.units).vocab_sizes["hubert"]
        config = self.dir / "generator.json"
        config.write_text(json.dumps(s.generator(units, speakers), indent=1) + "\n")
        train_vocoder(
            config,
            items,
            self.units,
            self.run_dir,
            self.voc_dir,
            s.training,
            resume=(self.run_dir / "state.msgpack").is_file(),  # an interrupted stage goes on
            overwrite=True,
            command=self.command,
            log=lambda m: self.log("  " + m),
        )
        from ..vocoder.checkpoint import load_vocoder

        prov = load_vocoder(self.voc_dir)[2]["provenance"]
        return {"steps": prov["steps"], "final_losses": prov["final_losses"]}

    def stage_evaluate(self) -> dict:
        from ..vocoder.corpus import read_items
        from ..vocoder.quality import evaluate_vocoder, report

        result = evaluate_vocoder(
            self.voc_dir,
            read_items(self.speech_dir / "heldout.jsonl"),
            self.units,
            draws=self.settings.draws,
            log=lambda m: self.log("  " + m),
        )
        (self.dir / "quality.json").write_text(json.dumps(result, indent=1) + "\n")
        self.log("  " + report(result["summary"]).replace("\n", "\n  "))
        return {"quality": result["summary"]}

    def stage_package(self) -> dict:
        from ..outputs import atomic_output_dir
        from .teacher import folder_hashes

        staging = self.dir / "package"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(self.voc_dir, staging)
        shutil.copytree(self.units, staging / "units")
        prov = self.provenance()
        (staging / "README.md").write_text(model_card(prov))
        prov["files"] = folder_hashes(staging)
        (staging / PROVENANCE).write_text(json.dumps(prov, indent=1) + "\n")
        with atomic_output_dir(self.out, self.overwrite) as tmp:
            for p in staging.iterdir():
                (shutil.copytree if p.is_dir() else shutil.copy2)(p, tmp / p.name)
        verify_package(self.out)
        size = sum(p.stat().st_size for p in self.out.rglob("*") if p.is_file())
        self.log(f"  demo vocoder package: {self.out} ({size / 1e6:.1f} MB)")
        return {"out": str(self.out), "bytes": size}

    def provenance(self) -> dict:
        from .. import __version__
        from ..vocoder.checkpoint import load_vocoder, num_params
        from .settings import settings_dict
        from .teacher import folder_hashes, sha256_file

        _, params, info = load_vocoder(self.voc_dir)
        speech, train = self.done("speech"), self.done("train")
        return {
            "format": FORMAT,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": self.command,
            "package_version": __version__,
            "settings": settings_dict(self.settings),
            "num_params": num_params(params),
            "teacher": {
                "dir": str(self.teacher),
                "units_sha256": folder_hashes(self.units),
            },
            "data": {
                "world": speech["world"],
                "world_hash": speech["world_hash"],
                "hours": speech["hours"],
                "utterances": speech["utterances"],
                "voices": speech["voices"],
                "sha256": {
                    f"speech/{n}.jsonl": sha256_file(self.speech_dir / f"{n}.jsonl")
                    for n in ("train", "heldout")
                },
                "audio_sha256": "in tinywave.json's provenance.data_sha256 (every training file)",
            },
            "training": {
                "steps": train["steps"],
                "seconds": train["seconds"],
                "cpu_seconds": train["cpu_seconds"],
                "final_losses": train["final_losses"],
                "speakers": info["provenance"]["speakers"],
            },
            "quality": self.done("evaluate")["quality"],
        }


def model_card(prov: dict) -> str:
    """The package's README.md: what it is, how it was made, how good it is."""
    from ..vocoder.quality import report

    s, d, t = prov["settings"], prov["data"], prov["training"]
    return "\n".join(
        [
            "# The tinywave demo vocoder",
            "",
            f"A CodeHiFiGAN (unit HiFi-GAN, SpiritLM's decoder) of {prov['num_params'] / 1e6:.2f}M "
            f"parameters ({s['channels']} channels, unit + speaker embeddings, duration "
            "predictor): the demo's units (`units/`, 25 Hz) -> 16 kHz speech in "
            f"{len(d['voices'])} voices ({', '.join(d['voices'])}). Trained by "
            f"`tinywave demo-vocoder` on {d['utterances']['train']} naturally synthesised "
            f"utterances ({d['hours']:.2f} h) for {t['steps']} steps "
            f"({t['seconds'] / 60:.0f} min on the build machine).",
            "",
            "    tinywave speak prompt.wav out.wav --model STUDENT.gguf --units THIS/units "
            "--vocoder THIS",
            "",
            f"- command: `{prov['command']}`",
            f"- created: {prov['created']} (tinywave_jax {prov['package_version']})",
            f"- teacher whose units it speaks: `{prov['teacher']['dir']}`",
            f"- world hash (story texts): `{d['world_hash']}`",
            "",
            "Quality on held-out utterances (validation stories, never trained on):",
            "",
            "```",
            report(prov["quality"]),
            "```",
            "",
            "Settings, data hashes and the sha256 of every file are in `provenance.json`.",
            "",
        ]
    )


def build_vocoder(
    out, workdir, quick=False, overrides=(), overwrite=False, stages=None, command="", log=print
) -> dict:
    build = VocoderBuild(
        workdir, vocoder_settings(quick, list(overrides)), out, overwrite, command, log
    )
    return build.run(stages)
