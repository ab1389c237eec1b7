"""The errors a user can cause and fix: a bad config, input file, record or tensor, or an output
folder in the way. The CLI prints a `TinywaveError` as one line and exits 2; any other exception is
a bug (ours or a library's) and keeps its traceback (exit 1).

Each class also derives from the builtin a caller would naturally catch (ValueError,
FileNotFoundError, FileExistsError). Areas add their own subclasses next to the code that raises
them (CorpusError, BenchmarkError, SafetensorsError, TeacherError).
"""

from __future__ import annotations


class TinywaveError(Exception):
    """Root of the errors whose message tells the user what to fix."""


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
