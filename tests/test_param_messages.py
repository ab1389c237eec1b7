"""Library errors name the Python parameter a caller passed (`overwrite=True`, `verify=False`,
`pitch_bins=0`, ...); the command line reads each as the flag of the command that ran
(cli.flag_message: `--overwrite`, `--no-verify`, `--pitch-bins 0`). Each message is raised by the
library function itself, then written for a command that calls it."""

import types

import numpy as np
import pytest

from tinywave_jax import cli
from tinywave_jax.errors import (
    ConfigError,
    InputError,
    MissingInputError,
    OutputExistsError,
    TinywaveError,
)

PARSER = cli.build_parser()


def _cli(argv: list[str], e: BaseException) -> str:
    """`e`'s message as `tinywave ARGV` prints it."""
    return cli.flag_message(PARSER, PARSER.parse_args(argv), e)


def test_flag_message_writes_a_parameters_value_as_the_command_line_sets_it():
    import argparse

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    p = sub.add_parser("cmd")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--no-verify", action="store_true")
    p.add_argument("--pitch-bins", type=int)
    p.set_defaults(func=lambda args: None)
    args = parser.parse_args(["cmd"])

    def line(msg, *params):
        return cli.flag_message(parser, args, ConfigError(msg, param=(None, *params)))

    assert line("x (pass overwrite=True)", "overwrite") == "x (pass --overwrite)"
    assert line("x (verify=False loads it)", "verify") == "x (--no-verify loads it)"
    assert line("x (pass pitch_bins=0)", "pitch_bins") == "x (pass --pitch-bins 0)"
    # a value no switch sets, or a parameter the command has no flag for, stays as written
    assert line("x (overwrite=False)", "overwrite") == "x (overwrite=False)"
    assert line("x (verify=True)", "verify") == "x (verify=True)"
    assert line("x (pass skip_bad=True)", "skip_bad") == "x (pass skip_bad=True)"


def test_a_non_empty_output_folder_names_overwrite(tmp_path):
    from tinywave_jax.outputs import check_output_dir

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "f").write_text("x")
    with pytest.raises(OutputExistsError, match=r"is not empty \(pass overwrite=True to") as e:
        check_output_dir(tmp_path / "out", overwrite=False)
    assert "(pass --overwrite to replace it)" in _cli(["export-hf", "a", "b"], e.value)


def test_an_existing_gguf_file_names_overwrite(tmp_path):
    from tinywave_jax.convert.gguf_export import check_output_file

    (tmp_path / "m.gguf").write_bytes(b"x")
    with pytest.raises(OutputExistsError, match=r"exists \(pass overwrite=True to replace") as e:
        check_output_file(tmp_path / "m.gguf")
    assert "m.gguf exists (pass --overwrite to replace it)" in _cli(
        ["export-gguf", "a", "b.gguf"], e.value
    )


def test_units_fit_names_overwrite_skip_bad_and_pitch_bins(tmp_path):
    from tinywave_jax.audio.extractor import CONFIG_FILE
    from tinywave_jax.audio.fit import fit_units
    from tinywave_jax.audio.pitch import fit_pitch_edges

    fit = ["units", "fit", "audio", "out"]
    (tmp_path / "u").mkdir()
    (tmp_path / "u" / CONFIG_FILE).write_text("{}")
    with pytest.raises(OutputExistsError, match=r"\(pass overwrite=True to replace it\)") as e:
        fit_units([], tmp_path / "u")
    assert "(pass --overwrite to replace it)" in _cli(fit, e.value)

    with pytest.raises(InputError, match=r"\(pass skip_bad=True to leave such files out\)") as e:
        fit_units([tmp_path / "gone.wav"], tmp_path / "v", units=4)
    assert "gone.wav: audio file not found (pass --skip-bad to leave" in _cli(fit, e.value)

    with pytest.raises(InputError, match=r"\(pass pitch_bins=0 to leave pitch out\)") as e:
        fit_pitch_edges(np.array([np.nan]), 8)
    assert "(pass --pitch-bins 0 to leave pitch out)" in _cli(fit, e.value)


def test_vocoder_messages_name_their_parameters(tmp_path):
    from tinywave_jax.vocoder.config import VocoderConfig
    from tinywave_jax.vocoder.quality import speaker_ids
    from tinywave_jax.vocoder.speak import speak

    with pytest.raises(ConfigError, match=r"\(allow_unknown_keys=True imports regardless\)") as e:
        VocoderConfig.from_json_dict({"bogus": 1})
    assert "(--allow-unknown-keys imports regardless)" in _cli(
        ["import-vocoder", "g.pt", "c.json", "out"], e.value
    )

    (tmp_path / "o.wav").write_bytes(b"x")
    with pytest.raises(OutputExistsError, match=r"\(pass overwrite=True to replace it\)") as e:
        speak("p.wav", tmp_path / "o.wav", model="m", units_dir="u", vocoder_dir="v")
    argv = ["speak", "--model", "m", "--units", "u", "--vocoder", "v", "p.wav", "o.wav"]
    assert "o.wav exists (pass --overwrite to replace it)" in _cli(argv, e.value)

    config = types.SimpleNamespace(has_speaker=True)
    with pytest.raises(
        ConfigError, match="no training speakers .*: choose one with speaker=ID"
    ) as e:
        speaker_ids([], config, {}, None)
    argv = ["vocoder", "eval", "--units", "u", "voc", "audio.jsonl"]
    assert _cli(argv, e.value).endswith("choose one with --speaker ID")


def test_vocoder_train_names_resume(tmp_path):
    """The Python refusal (test_vocoder_train) read as `vocoder train` prints it."""
    e = OutputExistsError("runs/v is not empty (resume=True continues it)", param=(None, "resume"))
    argv = ["vocoder", "train", "--units", "u", "--run", "r", "--out", "o", "c.json", "a"]
    assert _cli(argv, e) == "runs/v is not empty (--resume continues it)"


def test_a_damaged_checkpoint_names_verify(tmp_path):
    from tinywave_jax.checkpoint import (
        HASHES_KEY,
        CheckpointIntegrityError,
        _damaged,
        verify_params,
    )

    ckpt = tmp_path / "ck"
    (ckpt / "params").mkdir(parents=True)
    info = {HASHES_KEY: {"a": "0" * 64}}  # lists params/a, which is missing
    with pytest.raises(
        CheckpointIntegrityError, match=r"\(verify=False loads it regardless\)"
    ) as e:
        verify_params(ckpt, info)
    assert "params/a " in str(e.value)
    assert "(--no-verify loads it regardless)" in _cli(["export-hf", "a", "b"], e.value)

    unchecked = _damaged(ckpt, "params unreadable", None)
    assert str(unchecked).endswith("(drop verify=False to find the file that changed)")
    assert _cli(["score", "c", "i", "o"], unchecked).endswith(
        "(drop --no-verify to find the file that changed)"
    )


def test_plan_text_names_how_to_give_the_device_figures(tmp_path, capsys):
    """format_plan's hints name resolve_topology's parameters; `tinywave plan` prints its flags."""
    import json

    import yaml
    from train_fixtures import distill_dict

    from tinywave_jax.flags import flag_name
    from tinywave_jax.plan import format_plan

    cfg = tmp_path / "tiny.yaml"  # CE only, one student layer: the smallest step to compile
    weights = {"ce": 1.0, "logit_kl": 0.0, "hidden": 0.0, "attention": 0.0}
    cfg.write_text(
        yaml.safe_dump(distill_dict(student={"num_layers": 1}, distill={"weights": weights}))
    )
    argv = ["plan", str(cfg), "--topology", "cpu", "--devices", "1", "--json"]
    assert cli.main(argv) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["hbm_per_device_bytes"] is None  # the cpu overlay gives no device memory
    plan["step_s"] = None  # as with no peak FLOP/s
    text, flags = format_plan(plan), format_plan(plan, flag_name)  # the latter: `tinywave plan`
    assert "device memory unknown (give hbm_gib)" in text
    assert "no peak FLOP/s known (give peak_tflops)" in text
    assert "device memory unknown (give --hbm-gib)" in flags
    assert "no peak FLOP/s known (give --peak-tflops)" in flags
    plan_flags = set(
        cli._command_parser(PARSER, PARSER.parse_args(argv).func)._option_string_actions
    )
    assert {"--hbm-gib", "--peak-tflops"} <= plan_flags


def test_expressive_audio_prompts_and_text_prompts_name_their_parameters(tmp_path):
    from tinywave_jax.data.layout import resolve_layout
    from tinywave_jax.eval.sequences import AudioTokenizer
    from tinywave_jax.generation import parse_prompt

    layout = resolve_layout("spiritlm_base", 32512)
    with pytest.raises(ConfigError, match="^expressive: layout .* no pitch/style tokens") as e:
        AudioTokenizer(tmp_path, layout, expressive=True)
    assert _cli(["generate", "ck"], e.value).startswith("--modality: layout ")

    with pytest.raises(ConfigError, match="text needs tokenizer") as e:
        parse_prompt("hello", layout)
    assert _cli(["generate", "ck"], e.value).endswith("text needs --tokenizer")


def test_a_storage_failure_names_resume_as_the_commands_flag(monkeypatch, capsys):
    """A storage request that fails mid-command: from Python `resume=True`, from `tinywave
    train` --resume (cli.main's own message for such failures)."""
    from tinywave_jax.storage import storage_failure

    gave_up = ValueError("All 5 retry attempts failed")
    assert storage_failure(gave_up).endswith("and rerun (runs: with resume=True)")
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if a.dest == "command")

    def failing(args):
        raise gave_up

    commands.choices["train"].set_defaults(func=failing)
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    assert cli.main(["train", "x.yaml"]) == 2
    assert capsys.readouterr().err.strip().endswith("and rerun (runs: with --resume)")


def test_finalize_sends_back_to_the_build_both_ways(tmp_path):
    """corpus finalize's missing share names the other step as a Python call and a command."""
    from tinywave_jax.data.corpus_build import finalize_corpus

    (tmp_path / "_staging").mkdir()
    with pytest.raises(MissingInputError) as e:
        finalize_corpus(tmp_path, log=lambda m: None)
    msg = str(e.value)
    assert "build_corpus(..., num_hosts=N, host_index=I)" in msg
    assert "`tinywave corpus build ... --num-hosts N --host-index I`" in msg
    assert isinstance(e.value, TinywaveError)


def test_a_missing_teacher_cache_names_its_build_both_ways(tmp_path):
    """A run whose teacher.cache has no cache.json: the build as a Python call and a command."""
    from tinywave_jax.distill.teacher_cache import TeacherCache, TeacherCacheError

    with pytest.raises(TeacherCacheError) as e:
        TeacherCache(tmp_path)
    assert str(e.value).endswith(
        "no cache.json; build it first (cache_build.build_teacher_cache(config, out), or "
        "`tinywave teacher-cache build CONFIG --out DIR`)"
    )
