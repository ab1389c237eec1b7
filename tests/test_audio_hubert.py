"""HuBERT units from a tiny random HF HubertModel, checked against the torch model directly."""

import json

import numpy as np
import pytest
import torch
from speech_fixtures import synthesize
from transformers import HubertConfig, HubertModel

from tinywave_jax import cli
from tinywave_jax.audio import load_extractor, read_audio
from tinywave_jax.audio.extractor import CONFIG_FILE
from tinywave_jax.errors import InputError

# 25 Hz: conv strides multiply to 640 samples at 16 kHz, like mHuBERT-25Hz.
KERNELS, STRIDES = (10, 3, 3, 3, 3, 2, 2, 2), (5, 2, 2, 2, 2, 2, 2, 2)


def _tiny_hubert(path, strides=STRIDES, kernels=KERNELS):
    torch.manual_seed(0)
    cfg = HubertConfig(
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(16,) * len(strides),
        conv_stride=strides,
        conv_kernel=kernels,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
    )
    HubertModel(cfg).eval().save_pretrained(path)
    return path


def _spec(directory, model_dir, centroids, layer=2, frame_rate=25.0):
    directory.mkdir(parents=True, exist_ok=True)
    cfg = {
        "format": "tinywave-units/1",
        "phonetic": {
            "kind": "hubert",
            "centroids": str(centroids),
            "hubert": {"model_dir": str(model_dir), "layer": layer, "frame_rate": frame_rate},
        },
    }
    (directory / CONFIG_FILE).write_text(json.dumps(cfg))
    return directory


@pytest.fixture(scope="module")
def hubert_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("hubert")
    _tiny_hubert(root / "model")
    centroids = np.random.default_rng(0).standard_normal((20, 32)).astype(np.float32)
    np.save(root / "km.npy", centroids)
    return root


def _expected_frames(n):
    for k, s in zip(KERNELS, STRIDES):
        n = (n - k) // s + 1
    return n


def test_hubert_units_match_torch_features_and_brute_force_assignment(hubert_dir, tmp_path):
    ext = load_extractor(_spec(tmp_path / "spec", hubert_dir / "model", hubert_dir / "km.npy"))
    assert ext.vocab_sizes == {"hubert": 20} and ext.frame_rates == {"hubert": 25.0}
    wav = read_audio(synthesize(tmp_path / "s.wav", "Good morning to you all.", voice="en+m3"))
    streams = ext.extract(wav)
    assert set(streams) == {"hubert"}
    ids, times = streams["hubert"]
    assert ids.dtype == np.int32 and len(ids) == _expected_frames(len(wav)) == len(times)
    assert abs(len(ids) - len(wav) / 640) <= 2
    np.testing.assert_allclose(times, np.arange(len(ids)) * 0.04)
    assert ids.min() >= 0 and ids.max() < 20

    model = HubertModel.from_pretrained(hubert_dir / "model").eval()
    with torch.no_grad():
        feats = model(torch.from_numpy(wav)[None], output_hidden_states=True).hidden_states[2][0]
    feats = feats.numpy().astype(np.float64)
    centroids = np.load(hubert_dir / "km.npy").astype(np.float64)
    brute = np.argmin(((feats[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    np.testing.assert_array_equal(ids, brute)
    assert len(np.unique(ids)) > 1
    np.testing.assert_array_equal(ext.extract(wav)["hubert"][0], ids)  # deterministic


def test_torch_centroid_file_and_hubert_spec_command(hubert_dir, tmp_path):
    centroids = np.load(hubert_dir / "km.npy")
    torch.save({"cluster_centers_": torch.from_numpy(centroids)}, tmp_path / "km.pt")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cli, "COMMAND_MODULES", ["tinywave_jax.audio.commands"])
        assert (
            cli.main(
                [
                    "units",
                    "hubert-spec",
                    str(tmp_path / "spec"),
                    "--model",
                    str(hubert_dir / "model"),
                    "--centroids",
                    str(tmp_path / "km.pt"),
                    "--layer",
                    "3",
                ]
            )
            == 0
        )
    ext = load_extractor(tmp_path / "spec")
    np.testing.assert_array_equal(ext.centroids, centroids)
    wav = np.random.default_rng(0).standard_normal(9000).astype(np.float32) * 0.1
    assert len(ext.extract(wav)["hubert"][0]) == _expected_frames(9000)


def test_hubert_errors_name_the_file_and_numbers(hubert_dir, tmp_path):
    bad = tmp_path / "km13.npy"
    np.save(bad, np.zeros((20, 13), np.float32))
    with pytest.raises(InputError, match=rf"{bad}.*13.*32"):
        load_extractor(_spec(tmp_path / "a", hubert_dir / "model", bad))
    with pytest.raises(InputError, match=r"stride product is 640 .* 50 Hz needs a hop of 320"):
        load_extractor(
            _spec(tmp_path / "b", hubert_dir / "model", hubert_dir / "km.npy", frame_rate=50.0)
        )
    with pytest.raises(InputError, match="layer 5 asked but the model has 3 layers"):
        load_extractor(_spec(tmp_path / "c", hubert_dir / "model", hubert_dir / "km.npy", layer=5))
    with pytest.raises(InputError, match="not a Hugging Face HubertModel folder"):
        load_extractor(_spec(tmp_path / "d", tmp_path / "nowhere", hubert_dir / "km.npy"))
    ext = load_extractor(_spec(tmp_path / "e", hubert_dir / "model", hubert_dir / "km.npy"))
    with pytest.raises(InputError, match="too short"):
        ext.extract(np.full(300, 0.1, np.float32))


def test_fit_pitch_and_style_on_top_of_a_hubert_spec(hubert_dir, tmp_path, capsys):
    spec = _spec(tmp_path / "spec", hubert_dir / "model", "../km.npy")  # relative to the spec
    (tmp_path / "km.npy").write_bytes((hubert_dir / "km.npy").read_bytes())
    audio = tmp_path / "audio"
    synthesize(audio / "a.wav", "The rain in Spain stays mainly in the plain.", voice="en+f3")
    synthesize(audio / "b.wav", "Birds of a feather flock together.", voice="en+m3")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cli, "COMMAND_MODULES", ["tinywave_jax.audio.commands"])
        assert (
            cli.main(
                [
                    "units",
                    "fit",
                    str(audio),
                    str(tmp_path / "expr"),
                    "--hubert",
                    str(spec),
                    "--pitch-bins",
                    "8",
                    "--style-classes",
                    "2",
                ]
            )
            == 0
        )
        capsys.readouterr()
        assert cli.main(["units", "extract", str(tmp_path / "expr"), str(audio / "a.wav")]) == 0
    printed = capsys.readouterr().out
    ext = load_extractor(tmp_path / "expr")
    assert ext.vocab_sizes == {"hubert": 20, "pitch": 8, "style": 2}
    wav = read_audio(audio / "a.wav")
    streams = ext.extract(wav)
    plain = load_extractor(spec).extract(wav)["hubert"][0]
    np.testing.assert_array_equal(streams["hubert"][0], plain)
    assert len(streams["pitch"][0]) == len(wav) // 1280
    assert f"hubert[{len(plain)}]: " + " ".join(map(str, plain[:20])) in printed
