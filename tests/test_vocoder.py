"""The unit vocoder: waveform parity of an imported PyTorch CodeHiFiGAN (tests/vocoder_reference.py,
random weight-normed weights under SpiritLM's names) with the JAX generator, exact chunked
streaming, batching, and the import's checks on bad configs, tensors and unit ids."""

import json

import jax
import numpy as np
import pytest
import torch
from vocoder_reference import TorchCodeHiFiGAN

from tinywave_jax import cli
from tinywave_jax.errors import ConfigError, ConversionError, InputError
from tinywave_jax.vocoder.checkpoint import import_vocoder, load_vocoder, num_params
from tinywave_jax.vocoder.config import SPIRITLM_BASE_SHAPED, VocoderConfig
from tinywave_jax.vocoder.model import CodeHiFiGAN, init_params
from tinywave_jax.vocoder.synthesis import FrameInputs, Vocoder

PARITY_ATOL = 1e-4  # the bound (float32)

# SpiritLM Base's layout at toy size: units + speaker + style embeddings, duration predictor; an
# odd upsampling rate (5, kernel 11) as SpiritLM's first stage; training keys to be ignored.
BASE = {
    "resblock": "1",
    "upsample_rates": [5, 2],
    "upsample_kernel_sizes": [11, 4],
    "upsample_initial_channel": 16,
    "resblock_kernel_sizes": [3, 5],
    "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5]],
    "num_embeddings": 20,
    "embedding_dim": 8,
    "model_in_dim": 24,
    "multispkr": "from_input_file",
    "num_speakers": 3,
    "multistyle": "from_input_file",
    "num_styles": 4,
    "dur_predictor_params": {
        "encoder_embed_dim": 8,
        "var_pred_hidden_dim": 8,
        "var_pred_kernel_size": 3,
        "var_pred_dropout": 0.5,
    },
    "code_hop_size": 10,
    "sampling_rate": 16000,
    "batch_size": 16,
    "learning_rate": 0.0002,
    "segment_size": 8960,
    "dist_config": {"dist_backend": "nccl"},
}
# SpiritLM Expressive's layout: units + pitch codes (1 per 2 units) + style codes (1 per 5) +
# speaker, no duration predictor.
EXPRESSIVE = {
    **{
        k: v
        for k, v in BASE.items()
        if k not in ("multistyle", "num_styles", "dur_predictor_params")
    },
    "num_f0_tokens": 6,
    "f0_hop_size": 20,
    "num_style_tokens": 5,
    "style_hop_size": 50,
    "model_in_dim": 32,
}


def _checkpoint(tmp_path, cfg, seed=0, name="voc"):
    torch.manual_seed(seed)
    ref = TorchCodeHiFiGAN(cfg).randomize(seed)
    gen, conf = tmp_path / f"{name}.pt", tmp_path / f"{name}.json"
    torch.save({"generator": ref.state_dict()}, gen)
    conf.write_text(json.dumps(cfg))
    return ref, gen, conf


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("base")
    ref, gen, conf = _checkpoint(tmp, BASE)
    out, config, params = import_vocoder(gen, conf, tmp / "out")
    return ref, Vocoder(config, params), out


def _units(n, size, seed):
    return np.random.default_rng(seed).integers(0, size, n)


def test_state_dict_has_spiritlm_names():
    sd = TorchCodeHiFiGAN(BASE).state_dict()
    for name in (
        "dict.weight",
        "spkr.weight",
        "style.weight",
        "conv_pre.weight_g",
        "conv_pre.weight_v",
        "ups.1.weight_v",
        "resblocks.3.convs1.2.weight_g",
        "resblocks.3.convs2.2.bias",
        "conv_post.weight_g",
        "dur_predictor.conv1.0.weight",
        "dur_predictor.conv2.0.bias",
        "dur_predictor.ln2.weight",
        "dur_predictor.proj.weight",
    ):
        assert name in sd, name


def test_base_parity_with_pytorch(base):
    ref, voc, _ = base
    units = _units(37, BASE["num_embeddings"], 1)
    units[5:9] = units[4]  # a run, so that deduplication matters
    worst = 0.0
    for dedup in (False, True):
        inputs = voc.prepare(units, speaker=2, style=1, dedup=dedup)
        got = voc.synthesize(inputs)
        want = ref(torch.tensor(units)[None], spkr=2, style=1, dur_prediction=dedup)[0].numpy()
        assert got.shape == want.shape
        assert 0.05 < want.std() and np.mean(np.abs(want) > 0.99) < 0.5  # a signal, not saturated
        worst = max(worst, float(np.max(np.abs(got - want))))
    print(f"base-layout vocoder parity: max abs waveform difference {worst:.2e}")
    assert worst <= PARITY_ATOL


def test_expressive_parity_with_pytorch(tmp_path):
    ref, gen, conf = _checkpoint(tmp_path, EXPRESSIVE, seed=3)
    _, config, params = import_vocoder(gen, conf, tmp_path / "out")
    voc = Vocoder(config, params)
    units = _units(41, 20, 2)
    f0 = _units(21, 6, 3)  # 41 units / 2, one short: the last code is repeated
    style = _units(9, 5, 4)  # 41 / 5, one long: cut
    got = voc.synthesize(voc.prepare(units, f0_codes=f0, style_codes=style, speaker=1))
    want = ref(
        torch.tensor(units)[None],
        f0_code=torch.tensor(f0)[None],
        style_code=torch.tensor(style)[None],
        spkr=1,
    )[0].numpy()
    with pytest.raises(InputError, match=r"no style embedding \(multistyle is off\)"):
        voc.prepare(units, f0_codes=f0, style_codes=style, speaker=1, style=2)
    with pytest.raises(InputError, match="do not cover 41 units"):
        voc.prepare(units, f0_codes=f0[:15], style_codes=style, speaker=1)
    diff = float(np.max(np.abs(got - want)))
    print(f"expressive-layout vocoder parity: max abs waveform difference {diff:.2e}")
    assert diff <= PARITY_ATOL


def test_streaming_equals_whole_and_needs_the_whole_receptive_field(base):
    _, voc, _ = base
    inputs = voc.prepare(_units(53, 20, 5), speaker=0, style=3)
    whole = voc.synthesize(inputs)
    left, right = voc.config.frame_context()
    # by hand, from the output back: conv_post [-3, 12] samples; stage 2 ResBlocks (widest:
    # kernel 5, (2 + 4 + 6) * 2 = 24) [-27, 36], its transposed conv (k 4, u 2, p 1) [-14, 18];
    # stage 1 ResBlocks [-38, 42], transposed conv (k 11, u 5, p 3) [-9, 9]; conv_pre [-12, 12]
    assert (left, right) == (12, 12)
    for chunk in (1, 7, 25, 60):
        got = np.concatenate(list(voc.stream(inputs, chunk_frames=chunk)))
        np.testing.assert_allclose(got, whole, rtol=0, atol=1e-6, err_msg=f"chunk {chunk}")
    # half the context is visibly wrong: the test can fail
    got = np.concatenate(list(voc.stream(inputs, chunk_frames=7, context=(left // 2, right // 2))))
    assert np.max(np.abs(got - whole)) > 1e-3


def test_receptive_field_is_exact(base):
    """The gradient of one frame's samples reaches exactly frame_context() frames each way (the
    outermost frames' effect is real but can round away in float32 waveform differences)."""
    _, voc, _ = base
    model, t, hop = CodeHiFiGAN(voc.config), 30, voc.hop_length
    feats = jax.random.normal(jax.random.PRNGKey(0), (1, 61, voc.config.model_in_dim))

    def frame_t(x):
        y = model.apply({"params": voc.params}, x, method=CodeHiFiGAN.decode)
        return y[0, t * hop : (t + 1) * hop].sum()

    reached = np.flatnonzero(np.abs(np.asarray(jax.grad(frame_t)(feats))[0]).max(-1) > 0)
    assert (t - reached.min(), reached.max() - t) == voc.config.frame_context()


def test_batch_equals_single_utterances(base):
    _, voc, _ = base
    batch = [voc.prepare(_units(n, 20, n), speaker=n % 3, style=n % 4) for n in (3, 40, 17)]
    for x, wav in zip(batch, voc.synthesize_batch(batch)):
        np.testing.assert_allclose(wav, voc.synthesize(x), rtol=0, atol=1e-6)
        assert wav.shape == (x.frames * 10,)


def test_bad_ids_name_the_first_and_its_position(base):
    _, voc, _ = base
    units = _units(30, 20, 0)
    units[12], units[20] = 20, -1
    with pytest.raises(InputError, match=r"unit id 20 at position 12 .* 20 ids \(0\.\.19\); 2 ids"):
        voc.prepare(units, speaker=0, style=0)
    with pytest.raises(InputError, match="speaker id 3 at position 0"):
        voc.prepare(units[:5], speaker=3, style=0)
    with pytest.raises(InputError, match="no units"):
        voc.prepare([], speaker=0, style=0)


def test_folder_round_trip_and_tamper(base):
    _, voc, out = base
    config, params, info = load_vocoder(out)
    assert config == voc.config and info["num_params"] == num_params(params)
    prov = info["provenance"]
    assert (
        len(prov["generator_sha256"]) == 64 and prov["weight_norm_folded"] == 1 + 2 + 2 * 2 * 6 + 1
    )
    assert "batch_size" in prov["ignored_training_keys"]
    f = out / "params" / "params.safetensors"
    data = bytearray(f.read_bytes())
    data[-1] ^= 1
    f.write_bytes(bytes(data))
    with pytest.raises(ConversionError, match="differs from the sha256"):
        load_vocoder(out)


@pytest.mark.parametrize(
    "change, field",
    [
        ({"f0": True}, "f0: True asks for a continuous"),
        ({"resblock": "2"}, "resblock"),
        ({"upsample_kernel_sizes": [10, 4]}, r"upsample_kernel_sizes\[0\]"),
        ({"model_in_dim": 16}, "model_in_dim: 16"),
        (
            {"num_embeddings": 21},
            r"dict.weight has shape \[20, 8\], the config implies \[21, 8\].*num_embeddings",
        ),
        (
            {"multistyle": None, "model_in_dim": 16},
            "tensor.* the config does not use: style.weight",
        ),
        ({"resblock_kernel_sizes": [3, 7]}, r"resblocks.1.convs1.0.weight has shape"),
        ({"wavelet": 3}, "unknown key.* wavelet"),
    ],
)
def test_import_names_what_does_not_fit_before_writing(tmp_path, change, field):
    _, gen, _ = _checkpoint(tmp_path, BASE)
    conf = tmp_path / "changed.json"
    conf.write_text(json.dumps({**BASE, **change}))
    with pytest.raises((ConfigError, ConversionError), match=field):
        import_vocoder(gen, conf, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_import_names_a_missing_tensor(tmp_path):
    ref, gen, conf = _checkpoint(tmp_path, BASE)
    sd = ref.state_dict()
    del sd["ups.1.weight_g"]
    torch.save({"generator": sd}, gen)
    with pytest.raises(ConversionError, match=r"missing tensor ups.1.weight .*upsample_rates"):
        import_vocoder(gen, conf, tmp_path / "out")


def test_cli_import_vocoder(tmp_path, capsys):
    _, gen, conf = _checkpoint(tmp_path, BASE)
    assert cli.main(["import-vocoder", str(gen), str(conf), str(tmp_path / "v")]) == 0
    assert "receptive field 12+12 frames" in capsys.readouterr().out
    assert cli.main(["import-vocoder", str(gen), str(conf), str(tmp_path / "v")]) == 2
    assert "not empty" in capsys.readouterr().err
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    assert (
        cli.main(["import-vocoder", str(tmp_path / "bad.pt"), str(conf), str(tmp_path / "w")]) == 2
    )
    assert "bad.pt: not a readable PyTorch checkpoint" in capsys.readouterr().err


def test_spiritlm_sized_state_dict_imports(tmp_path):
    """SpiritLM Base's generator at full size (config.SPIRITLM_BASE_SHAPED): every tensor maps."""
    cfg = SPIRITLM_BASE_SHAPED
    ref = TorchCodeHiFiGAN(cfg)
    gen, conf = tmp_path / "generator.pt", tmp_path / "config.json"
    torch.save({"generator": ref.state_dict()}, gen)
    conf.write_text(json.dumps(cfg))
    _, config, params = import_vocoder(gen, conf, tmp_path / "out")
    torch_count = sum(v.numel() for k, v in ref.state_dict().items() if not k.endswith("weight_g"))
    assert num_params(params) == torch_count
    assert 13e6 < num_params(params) < 15e6  # SpiritLM Base's generator: 14M parameters
    assert config.hop_length == 640


def test_random_init_runs():
    config, _ = VocoderConfig.from_json_dict(BASE)
    voc = Vocoder(config, init_params(config))
    wav = voc.synthesize(FrameInputs(np.arange(6, dtype=np.int32), speaker=0, style=0))
    assert wav.shape == (60,) and np.all(np.isfinite(wav))
