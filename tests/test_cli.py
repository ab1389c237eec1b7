"""The CLI's error contract: a TinywaveError is one line and exit code 2; anything else is a bug
and keeps its traceback (it propagates out of main, so Python prints it and exits 1)."""

import pytest

from tinywave_jax import cli
from tinywave_jax.errors import (
    ConfigError,
    ConversionError,
    InputError,
    MissingInputError,
    OutputExistsError,
    TinywaveError,
)


def test_user_errors_are_one_line_with_exit_code_2(tmp_path, capsys):
    assert cli.main(["export-hf", str(tmp_path / "no_such_ckpt"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no_such_ckpt" in err and err.startswith("tinywave export-hf:")


def test_a_bug_keeps_its_traceback(monkeypatch):
    """A plain ValueError (say from inside jax or numpy) is not turned into a one-line message."""
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if a.dest == "command")

    def broken(args):
        raise ValueError("an internal invariant broke")

    commands.choices["plan"].set_defaults(func=broken)
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    with pytest.raises(ValueError, match="an internal invariant broke"):
        cli.main(["plan", "x.yaml"])


def test_user_errors_are_still_the_builtins_callers_catch():
    assert issubclass(ConfigError, ValueError) and issubclass(InputError, ValueError)
    assert issubclass(ConversionError, InputError)
    assert issubclass(MissingInputError, FileNotFoundError)
    assert issubclass(OutputExistsError, FileExistsError)
    for cls in (ConfigError, InputError, MissingInputError, OutputExistsError):
        assert issubclass(cls, TinywaveError)
    with pytest.raises(TinywaveError):
        raise ConversionError("x")


def test_library_errors_name_the_parameter_and_the_cli_the_flag(tmp_path, capsys):
    """A Python caller reads the parameter it passed (`topology`); the command line, the flag."""
    from tinywave_jax.plan import resolve_topology

    with pytest.raises(ConfigError, match=r"^topology 'nope': no such hardware overlay") as e:
        resolve_topology("nope")
    assert e.value.param == "topology"
    assert cli.main(["plan", str(tmp_path / "run.yaml"), "--topology", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tinywave plan: error: --topology 'nope': no such hardware overlay"), err


def test_a_flag_named_unlike_its_parameter_is_mapped_by_param_dests():
    import argparse

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    p = sub.add_parser("gen")
    p.add_argument("--stop", action="append")
    p.add_argument("--top-k", type=int)
    run = lambda args: None  # noqa: E731
    p.set_defaults(func=run, param_dests={"stop_ids": "stop"})
    args = parser.parse_args(["gen"])
    stop = ConfigError("stop_ids: 9 is outside the vocabulary [0, 8)", param="stop_ids")
    top_k = ConfigError("top_k: must be in [0, 8], got 9", param="top_k")
    unnamed = ConfigError("top_k appears here without param")
    assert cli.flag_message(parser, args, stop) == "--stop: 9 is outside the vocabulary [0, 8)"
    assert cli.flag_message(parser, args, top_k) == "--top-k: must be in [0, 8], got 9"
    assert cli.flag_message(parser, args, unnamed) == "top_k appears here without param"
    both = ConfigError("top_k: 9 needs stop_ids, unlike top_kk", param=("top_k", "stop_ids"))
    assert cli.flag_message(parser, args, both) == "--top-k: 9 needs --stop, unlike top_kk"
    # a message that starts with no parameter (None first) has the later ones written as flags
    mid = ConfigError("run/: changed; or stop_ids 3 on purpose", param=(None, "stop_ids"))
    assert cli.flag_message(parser, args, mid) == "run/: changed; or --stop 3 on purpose"
    # a parameter's name inside a path or a config key is left alone; at a sentence's end not
    where = ConfigError(
        "runs/stop_ids/x: data.stop_ids set; pass stop_ids.", param=(None, "stop_ids")
    )
    assert (
        cli.flag_message(parser, args, where) == "runs/stop_ids/x: data.stop_ids set; pass --stop."
    )


def test_naming_gives_a_helpers_error_its_parameter():
    """`errors.naming`: a helper told what="out" raises an error naming no parameter; inside
    `naming("out")` it names `out`, which the CLI writes as --out (eval's --out checks)."""
    from tinywave_jax.errors import naming

    with pytest.raises(ConfigError) as e, naming("out"):
        raise ConfigError("out file x.json is the input x.json")
    assert e.value.param == "out"
    with pytest.raises(ConfigError) as e, naming("out"):  # an error that names one keeps it
        raise ConfigError("layout: bad", param="layout")
    assert e.value.param == "layout"
