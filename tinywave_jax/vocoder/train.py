"""`tinywave vocoder train`: a CodeHiFiGAN trained as HiFi-GAN / speech-resynthesis train it.

Data: audio files (`corpus.Item`s: path, speaker) and a units folder; each file's units come
from the folder's extractor, so units and audio are aligned frame by frame (hop = the vocoder's
samples per unit, which must be the extractor's). Speaker ids (multispkr) are the speaker names
(a manifest's "speaker", else the parent folder name) in sorted order, recorded in the
provenance as "speakers"; style ids are 0. Vocoders that need pitch / style codes are not
trained here (the data would need them): that is a ConfigError.

Each step samples `segment_frames`-unit segments (seeded by seed and step, so a resumed run draws
the same batches), updates the discriminators (MPD + MSD, least-squares loss), then the
generator: adversarial + feature matching + 45 x log-mel L1 (+ the duration predictor's MSE of
log(1 + frames) on the segments' deduplicated units). AdamW (lr 2e-4, betas 0.8 / 0.99, weight
decay 0.01) with the learning rate decayed by `lr_decay` every `decay_every` steps.

The run folder holds `state.msgpack` (both networks and optimisers, written atomically every
`save_every` steps and at the end) and `run.json` (configs, data hashes, step); `--resume`
continues it, refusing other configs or data. The trained generator is written as a vocoder
folder with provenance (command, settings, data sha256, final losses).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..audio import load_extractor, read_audio
from ..config import to_dict
from ..errors import ConfigError, InputError, OutputExistsError
from ..outputs import check_output_dir, write_file_atomic
from ..storage import sha256_file
from . import losses
from .checkpoint import save_vocoder
from .config import VocoderConfig
from .corpus import as_items
from .discriminators import DiscriminatorConfig, Discriminators
from .losses import MelConfig
from .model import CodeHiFiGAN, init_params
from .synthesis import check_ids


@dataclass(frozen=True)
class VocoderTrainConfig:
    steps: int = 100_000
    batch_size: int = 16
    segment_frames: int = 14  # 8960 samples at 640 per unit, speech-resynthesis's segment
    learning_rate: float = 2e-4
    adam_b1: float = 0.8
    adam_b2: float = 0.99
    weight_decay: float = 0.01
    lr_decay: float = 0.999
    decay_every: int = 1000
    lambda_mel: float = 45.0
    lambda_fm: float = 1.0  # the feature loss is already 2 x L1
    lambda_dur: float = 1.0
    seed: int = 0
    log_every: int = 50
    save_every: int = 1000
    discriminator_width: float = 1.0  # channel scale of the discriminators (tests: small)
    mel: MelConfig = field(default_factory=MelConfig)

    def validate(self) -> None:
        for key in (
            "steps",
            "batch_size",
            "segment_frames",
            "decay_every",
            "log_every",
            "save_every",
        ):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}: {getattr(self, key)} must be >= 1")
        if not 0 < self.discriminator_width <= 1:
            raise ConfigError(f"discriminator_width: {self.discriminator_width} not in (0, 1]")

    def discriminators(self) -> DiscriminatorConfig:
        """HiFi-GAN's discriminators with channels scaled by discriminator_width (rounded up so
        that every group count divides the channels it sees)."""
        d = DiscriminatorConfig()
        w = self.discriminator_width
        mpd = tuple(max(1, math.ceil(c * w)) for c in d.mpd_channels)
        msd, groups = [], d.msd_groups
        for i, c in enumerate(d.msd_channels):
            step = math.lcm(groups[i], groups[i + 1] if i + 1 < len(groups) else 1)
            msd.append(max(step, math.ceil(c * w / step) * step))
        out = dataclasses.replace(d, mpd_channels=mpd, msd_channels=tuple(msd))
        out.validate()
        return out


@dataclass
class Utterance:
    path: str
    codes: np.ndarray  # unit ids per frame
    wav: np.ndarray  # frames * hop samples
    speaker: int


def load_data(items, units_dir, config: VocoderConfig, log=print) -> list[Utterance]:
    """Each file's units and frame-aligned audio; `items`: `corpus.Item`s or audio paths."""

    if config.num_f0_tokens or config.num_style_tokens:
        raise ConfigError(
            "num_f0_tokens / num_style_tokens: training a vocoder on pitch or style codes is not "
            "supported (only units, speaker and style ids)"
        )
    if config.sampling_rate != 16000:
        raise ConfigError(f"sampling_rate: {config.sampling_rate}; training audio is 16 kHz")
    extractor = load_extractor(units_dir)
    rate = extractor.frame_rates["hubert"]
    if abs(rate * config.hop_length - config.sampling_rate) > 1e-6:
        raise ConfigError(
            f"{units_dir} gives {rate:g} units per second; the vocoder makes "
            f"{config.sampling_rate / config.hop_length:g} (upsample_rates)"
        )
    items = sorted(as_items(items), key=lambda i: str(i.path))
    speakers = sorted({i.speaker for i in items})
    if config.has_speaker and len(speakers) > config.num_speakers:
        raise ConfigError(f"num_speakers: {config.num_speakers} < {len(speakers)} speakers")
    out = []
    for item in items:
        f = item.path
        wav = read_audio(f)
        codes = extractor.extract(wav)["hubert"][0].astype(np.int32)
        check_ids(codes, config.num_embeddings, "unit", str(f))
        n = codes.size * config.hop_length
        wav = np.pad(wav[:n], (0, max(0, n - wav.size)))
        out.append(Utterance(str(f), codes, wav, speakers.index(item.speaker)))
    log(f"vocoder train: {len(out)} files, {sum(u.codes.size for u in out) / rate / 60:.1f} min")
    return out


def sample_batch(data: list[Utterance], cfg: VocoderTrainConfig, hop: int, step: int) -> dict:
    """Segments for `step` (seeded by seed and step): codes, wav, speaker, and the deduplicated
    units with their frame counts (padded, masked) for the duration loss."""
    S = cfg.segment_frames
    usable = [u for u in data if u.codes.size >= S]
    if not usable:
        longest = max(data, key=lambda u: u.codes.size)
        raise InputError(
            f"no file has segment_frames={S} units (longest: {longest.path}, "
            f"{longest.codes.size}); lower segment_frames"
        )
    rng = np.random.default_rng([cfg.seed, step])
    codes, wavs, spk = [], [], []
    units = np.zeros((cfg.batch_size, S), np.int32)
    durs = np.zeros((cfg.batch_size, S), np.int32)
    mask = np.zeros((cfg.batch_size, S), np.float32)
    for b in range(cfg.batch_size):
        u = usable[rng.integers(len(usable))]
        start = int(rng.integers(u.codes.size - S + 1))
        c = u.codes[start : start + S]
        codes.append(c), wavs.append(u.wav[start * hop : (start + S) * hop]), spk.append(u.speaker)
        edges = np.flatnonzero(np.concatenate([[True], c[1:] != c[:-1], [True]]))
        k = edges.size - 1
        units[b, :k], durs[b, :k], mask[b, :k] = c[edges[:-1]], np.diff(edges), 1
    return {
        "codes": np.stack(codes),
        "wav": np.stack(wavs).astype(np.float32),
        "speaker": np.asarray(spk, np.int32),
        "units": units,
        "durations": durs,
        "unit_mask": mask,
    }


def make_step(config: VocoderConfig, cfg: VocoderTrainConfig):
    """(init(rng) -> state, jitted step(state, batch) -> (state, metrics))."""

    gen, disc = CodeHiFiGAN(config), Discriminators(cfg.discriminators())
    schedule = optax.exponential_decay(
        cfg.learning_rate, cfg.decay_every, cfg.lr_decay, staircase=True
    )
    opt = optax.adamw(schedule, cfg.adam_b1, cfg.adam_b2, weight_decay=cfg.weight_decay)

    def conditions(batch):
        kw = {}
        if config.has_speaker:
            kw["speaker"] = batch["speaker"]
        if config.has_style:
            kw["style"] = jnp.zeros_like(batch["speaker"])
        return kw

    def init(seed: int) -> dict:
        g = init_params(config, seed)
        wav = jnp.zeros((1, cfg.segment_frames * config.hop_length))
        d = disc.init(jax.random.PRNGKey(seed + 1), wav)["params"]
        return {"g": g, "d": d, "g_opt": opt.init(g), "d_opt": opt.init(d), "step": 0}

    def step(state, batch):
        wav = batch["wav"]
        fake, g_vjp = jax.vjp(
            lambda g: gen.apply({"params": g}, batch["codes"], **conditions(batch)), state["g"]
        )

        def d_loss(d):
            real_logits, _ = disc.apply({"params": d}, wav)
            fake_logits, _ = disc.apply({"params": d}, jax.lax.stop_gradient(fake))
            return losses.discriminator_loss(real_logits, fake_logits)

        d_value, d_grads = jax.value_and_grad(d_loss)(state["d"])
        d_updates, d_opt = opt.update(d_grads, state["d_opt"], state["d"])
        d = optax.apply_updates(state["d"], d_updates)

        mel_real = losses.log_mel(wav, cfg.mel, config.sampling_rate)
        _, real_fmaps = disc.apply({"params": d}, wav)

        def g_loss(fake):
            fake_logits, fake_fmaps = disc.apply({"params": d}, fake)
            mel = jnp.mean(jnp.abs(losses.log_mel(fake, cfg.mel, config.sampling_rate) - mel_real))
            adv = losses.generator_adversarial_loss(fake_logits)
            fm = losses.feature_loss(real_fmaps, fake_fmaps)
            total = adv + cfg.lambda_fm * fm + cfg.lambda_mel * mel
            return total, {"mel": mel, "adv": adv, "fm": fm}

        (g_value, parts), fake_grad = jax.value_and_grad(g_loss, has_aux=True)(fake)
        (g_grads,) = g_vjp(fake_grad)
        parts["d"] = d_value
        if config.dur_predictor_params is not None:

            def dur_loss(g):
                log_dur = gen.apply(
                    {"params": g},
                    batch["units"],
                    batch["unit_mask"],
                    method=CodeHiFiGAN.log_durations,
                )
                return losses.duration_loss(log_dur, batch["durations"], batch["unit_mask"])

            dur, dur_grads = jax.value_and_grad(dur_loss)(state["g"])
            g_grads = jax.tree.map(lambda a, b: a + cfg.lambda_dur * b, g_grads, dur_grads)
            parts["dur"] = dur
        g_updates, g_opt = opt.update(g_grads, state["g_opt"], state["g"])
        g = optax.apply_updates(state["g"], g_updates)
        new = {"g": g, "d": d, "g_opt": g_opt, "d_opt": d_opt, "step": state["step"] + 1}
        return new, parts

    return init, jax.jit(step, donate_argnums=0)


def _eta(seconds: float) -> str:
    seconds = int(seconds)
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
        if seconds >= 3600
        else f"{seconds // 60}m{seconds % 60:02d}s"
    )


def train_vocoder(
    config_path,
    audio_files,
    units_dir,
    run_dir,
    out_dir,
    cfg: VocoderTrainConfig,
    resume: bool = False,
    overwrite: bool = False,
    command: str | None = None,
    log=print,
) -> Path:
    """Trains (or, with `resume`, continues) a vocoder and writes it to `out_dir`.
    `audio_files`: paths (speaker = parent folder name) or `corpus.Item`s."""

    config, _ = VocoderConfig.from_file(config_path)
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if not audio_files:
        raise InputError("no training audio files given")
    items = as_items(audio_files)
    files = sorted(str(i.path) for i in items)
    meta = {
        "format": "tinywave-vocoder-run",
        "vocoder_config": config.to_json_dict(),
        "train_config": to_dict(cfg),
        "units_dir": str(Path(units_dir).resolve()),
        "data_sha256": {f: sha256_file(Path(f)) for f in files},
        "speakers": sorted({i.speaker for i in items}),
    }
    state_file, meta_file = run_dir / "state.msgpack", run_dir / "run.json"
    if resume:
        if not state_file.is_file():
            raise InputError(f"{run_dir}: nothing to resume (no state.msgpack)")
        saved = json.loads(meta_file.read_text())
        for key in ("vocoder_config", "data_sha256", "speakers"):
            if saved.get(key) != meta[key]:
                raise ConfigError(
                    f"resume: {key} differs from the run in {run_dir}", param="resume"
                )
        for key, value in meta["train_config"].items():
            if (
                key not in ("steps", "log_every", "save_every")
                and saved["train_config"].get(key) != value
            ):
                raise ConfigError(
                    f"resume: {key} {value!r} differs from the run's "
                    f"{saved['train_config'].get(key)!r}",
                    param="resume",
                )
    elif run_dir.is_dir() and any(run_dir.iterdir()):
        raise OutputExistsError(
            f"{run_dir} is not empty (resume=True continues it)", param=(None, "resume")
        )
    check_output_dir(out_dir, overwrite, sources=[run_dir, *files])  # before training, not after

    data = load_data(items, units_dir, config, log)
    init, step_fn = make_step(config, cfg)
    state = init(cfg.seed)
    if resume:
        state = flax.serialization.from_bytes(state, state_file.read_bytes())
        log(f"vocoder train: resumed {run_dir} at step {int(state['step'])}")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_file_atomic(meta_file, (json.dumps(meta, indent=2) + "\n").encode())

    def save():
        write_file_atomic(state_file, flax.serialization.to_bytes(jax.device_get(state)))

    start, t0, metrics = int(state["step"]), time.perf_counter(), {}
    for s in range(start, cfg.steps):
        batch = sample_batch(data, cfg, config.hop_length, s)
        state, metrics = step_fn(state, batch)
        done = s + 1
        if done % cfg.log_every == 0 or done == cfg.steps:
            m = {k: float(v) for k, v in metrics.items()}
            rate = (done - start) / (time.perf_counter() - t0)
            log(
                f"vocoder train: step {done}/{cfg.steps} "
                + " ".join(f"{k} {v:.4f}" for k, v in m.items())
                + f"; {rate:.2f} steps/s, ETA {_eta((cfg.steps - done) / rate)}"
            )
        if done % cfg.save_every == 0 and done < cfg.steps:
            save()
    save()
    provenance = {
        "command": command,
        "train_config": meta["train_config"],
        "units_dir": meta["units_dir"],
        "data_sha256": meta["data_sha256"],
        "speakers": meta["speakers"],
        "steps": int(state["step"]),
        "final_losses": {k: float(v) for k, v in metrics.items()},
    }
    return save_vocoder(
        out_dir,
        config,
        jax.device_get(state["g"]),
        provenance,
        overwrite,
        sources=[run_dir, *files],
    )
