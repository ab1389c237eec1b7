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
