"""`tinywave demo-vocoder --quick`: natural many-voiced speech -> a tiny vocoder on the shipped
teacher's units -> quality on held-out stories -> a package whose provenance records the command,
settings, data hashes and quality, and whose files are hash-checked."""

import json

import pytest

from tinywave_jax import cli
from tinywave_jax.demo.teacher import PACKAGE_DIR, folder_hashes
from tinywave_jax.demo.vocoder import VocoderBuildSettings, verify_package, vocoder_settings
from tinywave_jax.errors import ConfigError, InputError
from tinywave_jax.jsonl import iter_jsonl
from tinywave_jax.vocoder.checkpoint import load_vocoder


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("demovoc")
    args = ["demo-vocoder", "--quick", "--out", str(root / "pkg"), "--workdir", str(root / "w")]
    assert cli.main(args) == 0
    return root, args


def test_package_holds_vocoder_units_and_provenance(built, capsys):
    root, args = built
    pkg, work = root / "pkg", root / "w"
    prov = verify_package(pkg)
    assert prov["command"] == "tinywave demo-vocoder --out {} --workdir {} --quick".format(
        pkg, work
    )
    assert prov["settings"]["training"]["steps"] == 3 and prov["settings"]["channels"] == 32
    # the shipped teacher's units, unchanged, ship beside the vocoder
    assert folder_hashes(pkg / "units") == folder_hashes(PACKAGE_DIR / "units")
    assert prov["teacher"]["units_sha256"] == folder_hashes(PACKAGE_DIR / "units")
    config, _, info = load_vocoder(pkg)
    assert config.num_embeddings == 64 and config.dur_predictor_params is not None
    # many voices: each training story in a distillation voice and a pretraining voice
    train = [r for _, r in iter_jsonl(work / "speech" / "train.jsonl")]
    held = [r for _, r in iter_jsonl(work / "speech" / "heldout.jsonl")]
    assert [r["speaker"] for r in train] == ["target", "p0", "d1", "p1"]
    assert [r["speaker"] for r in held] == ["target", "d1"] and prov["data"]["voices"] == sorted(
        ["target", "p0", "d1", "p1"]
    )
    assert not {r["transcript"] for r in held} & {r["transcript"] for r in train}
    assert info["provenance"]["speakers"] == prov["data"]["voices"] == prov["training"]["speakers"]
    assert config.num_speakers == 4
    assert len(info["provenance"]["data_sha256"]) == 4
    # quality from `vocoder eval`, with intervals, as quality.json in the workdir
    q = prov["quality"]
    assert q["utterances"] == 2
    for key in ("wer_original", "wer_resynth", "wer_gap", "stoi", "unit_agreement"):
        lo, hi = q[f"{key}_ci"]
        assert lo <= q[key] <= hi
    assert json.loads((work / "quality.json").read_text())["summary"] == q
    card = (pkg / "README.md").read_text()
    assert "unit agreement" in card and prov["command"] in card

    # a rerun resumes (every stage cached) and leaves the package alone
    before = folder_hashes(pkg)
    assert cli.main(args) == 0
    assert "speech: cached" in capsys.readouterr().out and folder_hashes(pkg) == before


def test_altered_package_is_named(built, tmp_path):
    import shutil

    root, _ = built
    copy = tmp_path / "pkg"
    shutil.copytree(root / "pkg", copy)
    (copy / "units" / "units.json").write_text("{}")
    with pytest.raises(InputError, match="units.json: missing, extra or altered"):
        verify_package(copy)


def test_settings_are_checked():
    with pytest.raises(ConfigError, match="bogus"):
        vocoder_settings(True, ["bogus=1"])
    with pytest.raises(ConfigError, match="heldout_stories"):
        vocoder_settings(True, ["heldout_stories=4"])  # voices the 2 training stories lack
    g = VocoderBuildSettings().generator(units=64, speakers=12)
    assert g["model_in_dim"] == 128 and g["num_speakers"] == 12
