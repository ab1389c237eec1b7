"""Unit vocoder speed on CPU: the SpiritLM-sized CodeHiFiGAN (random weights,
vocoder.config.SPIRITLM_BASE_SHAPED: 14M parameters, 640 samples per 25 Hz unit, 16 kHz).

    .venv/bin/python bench/vocoder.py [--seconds 10] [--chunk-frames 25] [--repeats 3]
        [--speak [--speak-model CKPT_OR_GGUF] [--speak-vocoder VOC] [--speak-prompt WAV]]

Times whole-utterance synthesis of --seconds of random units, and streaming synthesis in
--chunk-frames chunks (each chunk computed with the receptive field on both sides), best of
--repeats after one warm-up call (compilation). RTF = synthesis seconds / audio seconds (< 1:
faster than real time). The last line printed is ONE JSON object:
    spiritlm_size_rtf            whole utterance
    spiritlm_size_stream_rtf     streaming, all chunks
    spiritlm_size_first_chunk_s  latency of the first streamed chunk
    demo_vocoder_rtf             null: there is no trained demo vocoder yet (issue 26 item 3)
    speak_rtf                    with --speak: the `tinywave speak` loop (vocoder.speak.Speaker),
                                 warm (its second call), all stages / seconds of speech written;
                                 speak_stages_s its stages, speak_components what ran. Defaults
                                 stand in for what does not exist yet: the shipped demo TEACHER
                                 (an upper bound for the 0.37x student) as q8_0 GGUF in llama.cpp,
                                 the SpiritLM-sized random vocoder, an espeak-ng prompt; the demo
                                 units folder. null without --speak.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# bench/gguf.py (this script's folder, first on sys.path) would shadow the gguf package
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import jax  # noqa: E402
import numpy as np  # noqa: E402

from tinywave_jax.vocoder.checkpoint import num_params  # noqa: E402
from tinywave_jax.vocoder.config import SPIRITLM_BASE_SHAPED, VocoderConfig  # noqa: E402
from tinywave_jax.vocoder.model import init_params  # noqa: E402
from tinywave_jax.vocoder.synthesis import Vocoder  # noqa: E402


def best_of(fn, repeats: int) -> tuple[float, object]:
    out = fn()  # warm-up: compilation
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def speak_loop(args, workdir: Path) -> dict:
    """The warm `speak` loop's stage times and RTF (see the module docstring for the parts)."""
    from tinywave_jax.vocoder.checkpoint import save_vocoder
    from tinywave_jax.vocoder.speak import Speaker

    teacher = Path(__file__).resolve().parents[1] / "tinywave_jax" / "demo" / "teacher"
    model = args.speak_model
    if model is None:
        from tinywave_jax.convert import import_hf
        from tinywave_jax.convert.gguf_export import export_gguf

        import_hf(teacher, workdir / "teacher_ckpt")
        model = export_gguf(workdir / "teacher_ckpt", workdir / "teacher.q8_0.gguf", "q8_0").path
    vocoder = args.speak_vocoder
    if vocoder is None:
        config, _ = VocoderConfig.from_json_dict(SPIRITLM_BASE_SHAPED)
        vocoder = save_vocoder(workdir / "voc", config, init_params(config))
    prompt = args.speak_prompt
    if prompt is None:
        prompt = workdir / "prompt.wav"
        subprocess.run(
            ["espeak-ng", "-w", str(prompt), "-s", "160", "Once upon a time a fox found a key."],
            check=True,
        )
    speaker = Speaker(model, teacher / "units", vocoder, layout=str(teacher / "layout.json"))
    runs = [
        speaker(prompt, workdir / f"out{i}.wav", seconds=args.speak_seconds, greedy=True)
        for i in range(2)
    ]
    r = runs[-1]
    print(
        f"speak loop (warm): prompt {r.prompt_seconds:.2f} s + continuation "
        f"{r.new_seconds:.2f} s ({r.new_units} units); "
        + ", ".join(f"{k} {v:.3f} s" for k, v in r.times.items())
        + f"; RTF {r.rtf:.3f} (first call {runs[0].rtf:.3f}, with loading / compilation)"
    )
    return {
        "speak_rtf": round(r.rtf, 4),
        "speak_stages_s": {k: round(v, 4) for k, v in r.times.items()},
        "speak_components": {"model": str(model), "vocoder": str(vocoder), "prompt": str(prompt)},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="audio per utterance")
    ap.add_argument("--chunk-frames", type=int, default=25, help="streaming chunk (25 = 1 s)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--speak", action="store_true", help="also time the speak loop")
    ap.add_argument("--speak-model", help="checkpoint or GGUF (default: demo teacher, q8_0)")
    ap.add_argument("--speak-vocoder", help="vocoder folder (default: SpiritLM-sized, random)")
    ap.add_argument("--speak-prompt", help="prompt wav (default: an espeak-ng sentence)")
    ap.add_argument("--speak-seconds", type=float, default=5.0)
    args = ap.parse_args()

    config, _ = VocoderConfig.from_json_dict(SPIRITLM_BASE_SHAPED)
    voc = Vocoder(config, init_params(config))
    frames = round(args.seconds * config.sampling_rate / config.hop_length)
    units = np.random.default_rng(0).integers(0, config.num_embeddings, frames)
    inputs = voc.prepare(units, speaker=0, style=0)
    audio_s = frames * config.hop_length / config.sampling_rate

    whole_s, wav = best_of(lambda: voc.synthesize(inputs), args.repeats)

    def stream():
        t0 = time.perf_counter()
        first = None
        chunks = []
        for chunk in voc.stream(inputs, chunk_frames=args.chunk_frames):
            chunks.append(chunk)
            first = time.perf_counter() - t0 if first is None else first
        return first, np.concatenate(chunks)

    stream_s, (first_s, streamed) = best_of(stream, args.repeats)
    left, right = config.frame_context()
    print(
        f"SpiritLM-sized vocoder: {num_params(voc.params) / 1e6:.2f}M params, {audio_s:.1f} s of "
        f"audio; whole {whole_s:.2f} s, streamed ({args.chunk_frames}-frame chunks, context "
        f"{left}+{right} frames) {stream_s:.2f} s, first chunk after {first_s:.3f} s; "
        f"max |stream - whole| {np.max(np.abs(streamed - wav)):.1e}; "
        f"{len(os.sched_getaffinity(0))} CPUs, jax {jax.__version__}"
    )
    result = {
        "spiritlm_size_rtf": round(whole_s / audio_s, 4),
        "spiritlm_size_stream_rtf": round(stream_s / audio_s, 4),
        "spiritlm_size_first_chunk_s": round(first_s, 4),
        "demo_vocoder_rtf": None,
        "speak_rtf": None,
        "audio_seconds": audio_s,
        "cpus": len(os.sched_getaffinity(0)),
    }
    if args.speak:
        with tempfile.TemporaryDirectory() as tmp:
            result.update(speak_loop(args, Path(tmp)))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
