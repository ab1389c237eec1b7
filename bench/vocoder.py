"""Unit vocoder speed on CPU: the SpiritLM-sized CodeHiFiGAN (random weights,
vocoder.config.SPIRITLM_BASE_SHAPED: 14M parameters, 640 samples per 25 Hz unit, 16 kHz).

    .venv/bin/python bench/vocoder.py [--seconds 10] [--chunk-frames 25] [--repeats 3]

Times whole-utterance synthesis of --seconds of random units, and streaming synthesis in
--chunk-frames chunks (each chunk computed with the receptive field on both sides), best of
--repeats after one warm-up call (compilation). RTF = synthesis seconds / audio seconds (< 1:
faster than real time). The last line printed is ONE JSON object:
    spiritlm_size_rtf            whole utterance
    spiritlm_size_stream_rtf     streaming, all chunks
    spiritlm_size_first_chunk_s  latency of the first streamed chunk
    demo_vocoder_rtf, speak_rtf  null: there is no trained demo vocoder, and no `tinywave speak`
                                 loop, yet (issue 26 items 3-5)
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="audio per utterance")
    ap.add_argument("--chunk-frames", type=int, default=25, help="streaming chunk (25 = 1 s)")
    ap.add_argument("--repeats", type=int, default=3)
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
        f"{os.cpu_count()} CPUs, jax {jax.__version__}"
    )
    print(
        json.dumps(
            {
                "spiritlm_size_rtf": round(whole_s / audio_s, 4),
                "spiritlm_size_stream_rtf": round(stream_s / audio_s, 4),
                "spiritlm_size_first_chunk_s": round(first_s, 4),
                "demo_vocoder_rtf": None,
                "speak_rtf": None,
                "audio_seconds": audio_s,
                "cpus": os.cpu_count(),
            }
        )
    )


if __name__ == "__main__":
    main()
