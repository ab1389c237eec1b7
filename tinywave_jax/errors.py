"""The errors a user can cause and fix: a bad config, input file, record or tensor, or an output
folder in the way. The CLI prints a `TinywaveError` as one line and exits 2; any other exception is
a bug (ours or a library's) and keeps its traceback (exit 1).

Each class also derives from the builtin a caller would naturally catch (ValueError,
FileNotFoundError, FileExistsError). Areas add their own subclasses next to the code that raises
them (CorpusError, BenchmarkError, SafetensorsError, TeacherError).

A library function names its own Python parameter (`max_new_tokens: must be >= 1`), never a
command-line flag its Python caller did not pass: an error about a parameter starts with the
parameter's name and says so in `param`; the CLI (cli.py) writes the flag in its place.
"""

from __future__ import annotations

import contextlib
import sys


class TinywaveError(Exception):
    """Root of the errors whose message tells the user what to fix. `param`: the function
    parameter the message starts with, which the CLI replaces by the flag that set it; a tuple
    names further parameters the message mentions (each replaced wherever it stands as a word,
    `param=VALUE` as the command line sets it: `overwrite=True` -> --overwrite); its first entry
    None: the message starts with no parameter."""

    def __init__(self, *args, param: str | tuple[str | None, ...] | None = None):
        super().__init__(*args)
        self.param = param


class ConfigError(TinywaveError, ValueError):
    """A bad config key or value, or command-line argument; the message names the key."""


class InputError(TinywaveError, ValueError):
    """An input file, record or tensor that is malformed or does not fit; the message names it."""


class ConversionError(InputError):
    """A tensor or file that does not fit the model; the message names the file and tensor."""


class MissingInputError(TinywaveError, FileNotFoundError):
    """A file or folder the user named (or that one implies) does not exist."""


class OutputExistsError(TinywaveError, FileExistsError):
    """An output folder already holds something that would be replaced or mixed in."""


class RunStopped(TinywaveError):
    """A run that SIGTERM or Ctrl-C stopped after saving its checkpoint, inside a command that
    cannot return the stop itself (the demo's stages); the CLI exits 143 (130 for Ctrl-C)."""

    def __init__(self, message: str, signal: str = "SIGTERM"):
        super().__init__(message)
        self.signal = signal


@contextlib.contextmanager
def naming(param: str):
    """A `TinywaveError` raised inside that names no parameter gets `param`: its message starts
    with what a helper was told to call `param` (`what="out"`), which the CLI writes as a flag."""
    try:
        yield
    except TinywaveError as e:
        if e.param is None:
            e.param = param
        raise


def first_line(e: BaseException, with_type: bool = False) -> str:
    """The first line of `e`'s message (at most 300 characters; the type's name for an empty
    one), for a one-line error that quotes a library's long one; `with_type`: "Type: line"."""
    text = str(e).strip().splitlines()
    line = text[0][:300] if text else ""
    if with_type:
        return f"{type(e).__name__}: {line}".rstrip(": ")
    return line or type(e).__name__


def log_stderr(msg: str) -> None:
    """The default `log` / `warn` of library functions: one line on stderr, flushed."""
    print(msg, file=sys.stderr, flush=True)
