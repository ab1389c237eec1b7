"""`tinywave speak`: an espeak prompt -> built-in units -> a tiny LM (JAX checkpoint, and its GGUF
export in llama.cpp) -> a tiny imported vocoder -> wav. The written audio is checked against the
PyTorch reference vocoder (tests/vocoder_reference.py) on the prompt's units plus the LM's own
greedy continuation; bad prompts are one-line errors."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch
from hf_reference import make_hf_model
from speech_fixtures import SENTENCES, VOICES, speech_corpus, synthesize
from vocoder_reference import TorchCodeHiFiGAN

from tinywave_jax import cli
from tinywave_jax.audio import load_extractor, read_audio
from tinywave_jax.convert import import_hf
from tinywave_jax.data import resolve_layout
from tinywave_jax.data.layout import dedup
from tinywave_jax.generation import generate_tokens
from tinywave_jax.vocoder.checkpoint import import_vocoder

VOCAB = 128
LAYOUT = {"preset": None, "text_vocab_size": 100, "num_units": 16, "vocab_size": VOCAB}
HU = 102  # first HuBERT id of LAYOUT
# 25 units per second at 16 kHz (640 samples per unit), as the built-in extractor's units
VOCODER = {
    "upsample_rates": [5, 4, 4, 4, 2],
    "upsample_kernel_sizes": [11, 8, 8, 8, 4],
    "upsample_initial_channel": 32,
    "resblock_kernel_sizes": [3],
    "resblock_dilation_sizes": [[1, 3]],
    "num_embeddings": 16,
    "embedding_dim": 8,
    "model_in_dim": 8,
    "dur_predictor_params": {
        "encoder_embed_dim": 8,
        "var_pred_hidden_dim": 8,
        "var_pred_kernel_size": 3,
        "var_pred_dropout": 0.5,
    },
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from tinywave_jax.audio.fit import fit_units

    root = tmp_path_factory.mktemp("speak")
    paths = speech_corpus(root / "audio", sentences=SENTENCES[:2], voices=VOICES[:2])
    fit_units(paths, root / "units", units=16, pitch_bins=0, style_classes=0, log=lambda *a: None)
    make_hf_model(seed=5, vocab_size=VOCAB, init_std=0.1).save_pretrained(root / "hf")
    import_hf(root / "hf", root / "ckpt")
    (root / "layout.json").write_text(json.dumps(LAYOUT))
    ref = TorchCodeHiFiGAN(VOCODER).randomize(7)
    torch.save({"generator": ref.state_dict()}, root / "generator.pt")
    (root / "config.json").write_text(json.dumps(VOCODER))
    import_vocoder(root / "generator.pt", root / "config.json", root / "voc")
    prompt = synthesize(root / "prompt.wav", SENTENCES[2], *VOICES[0])
    return root, ref, prompt


def _speak(root, prompt, out, model, *extra):
    return cli.main(
        ["speak", str(prompt), str(out), "--model", str(model), "--units", str(root / "units")]
        + ["--vocoder", str(root / "voc"), "--layout", str(root / "layout.json")]
        + ["--seconds", "1", "--greedy", *extra]
    )


def _expected_wav(root, ref, prompt):
    """The reference vocoder on the prompt's deduplicated units + the JAX LM's greedy units."""
    frames = load_extractor(root / "units").extract(read_audio(prompt))["hubert"][0]
    units, _ = dedup(frames)
    layout = resolve_layout(str(root / "layout.json"), VOCAB)
    new_tokens = round(1.0 * units.size / (frames.size / 25))
    ids = generate_tokens(
        str(root / "ckpt"),
        [[layout.bos_id, 101, *(units + HU).tolist()]],
        layout=layout,
        modality="speech",
        max_new_tokens=new_tokens,
        greedy=True,
    )[0]["ids"]
    assert ids and all(HU <= i < HU + 16 for i in ids)
    codes = np.concatenate([units, np.asarray(ids) - HU])
    return ref(torch.tensor(codes)[None], dur_prediction=True)[0].numpy(), ids


def test_speak_jax_checkpoint_writes_the_reference_waveform(setup, tmp_path, capsys):
    root, ref, prompt = setup
    assert _speak(root, prompt, tmp_path / "out.wav", root / "ckpt") == 0
    out = capsys.readouterr().out
    assert "units" in out and "lm" in out and "vocoder" in out and "real-time factor" in out
    got, rate = sf.read(tmp_path / "out.wav", dtype="float32")
    want, _ = _expected_wav(root, ref, prompt)
    assert rate == 16000 and got.shape == want.shape
    assert np.max(np.abs(got - want)) <= 1.5 / 32768  # PCM-16 rounding


def test_speak_gguf_in_llama_cpp(setup, tmp_path, capsys):
    from tinywave_jax.convert.gguf_export import export_gguf

    root, ref, prompt = setup
    gguf = export_gguf(root / "ckpt", tmp_path / "m.gguf", "f32", layout=str(root / "layout.json"))
    assert _speak(root, prompt, tmp_path / "out.wav", gguf.path) == 0
    got, _ = sf.read(tmp_path / "out.wav", dtype="float32")
    want, _ = _expected_wav(root, ref, prompt)  # f32 llama.cpp continues as JAX does
    assert got.shape == want.shape and np.max(np.abs(got - want)) <= 1.5 / 32768


def test_bad_prompts_are_one_line_errors(setup, tmp_path, capsys):
    root, _, _ = setup
    short = tmp_path / "short.wav"
    sf.write(short, 0.1 * np.sin(np.arange(200) / 3.0), 16000)
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF....not audio")
    for path, needle in ((short, "short.wav"), (broken, "not readable audio")):
        assert _speak(root, path, tmp_path / "o.wav", root / "ckpt") == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and needle in err and err.startswith("tinywave speak:")
    assert not (tmp_path / "o.wav").exists()
