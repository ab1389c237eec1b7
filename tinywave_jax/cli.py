"""`tinywave` command line: one sub-command per job; each area registers its own sub-commands.

A module in COMMAND_MODULES defines `register(subparsers)`, which adds parsers whose
`func(args) -> int | None` does the work. Heavy imports (jax, torch) happen inside `func`, so
`tinywave --help` stays fast.

A `TinywaveError` (errors.py: a bad config, input or output folder) is printed as one line naming
what to fix, exit code 2; anything else is a bug and keeps its traceback (exit 1). Library code
names its Python parameter in an error (`e.param`); here it becomes the flag that set it.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys

COMMAND_MODULES = [
    "tinywave_jax.convert.commands",  # import-hf, export-hf, export-gguf
    "tinywave_jax.commands",  # score, generate
    "tinywave_jax.audio.commands",  # units fit / hubert-spec / extract
    "tinywave_jax.distill.commands",  # distill, init-student, teacher-cache build
    "tinywave_jax.train.commands",  # train, plan
    "tinywave_jax.data.commands",  # corpus build / info / show
    "tinywave_jax.eval.commands",  # eval
    "tinywave_jax.demo.commands",  # demo
    "tinywave_jax.vocoder.commands",  # import-vocoder, speak, vocoder train
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tinywave",
        description="Layer-aligned distillation of speech language models in JAX (TinyWave).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from . import storage
    from .errors import RunStopped, TinywaveError
    from .tpu import keep_jax_off_absent_tpu

    parser = build_parser()
    args = parser.parse_args(argv)
    storage.forget_lost()  # storage operations lost by an earlier command in this process
    keep_jax_off_absent_tpu()  # libtpu on a machine without TPUs: stay on the CPU quietly
    try:
        return int(args.func(args) or 0)
    except RunStopped as e:
        print(f"tinywave {args.command}: {e}", file=sys.stderr)
        return 130 if e.signal == "SIGINT" else 143
    except TinywaveError as e:
        print(f"tinywave {args.command}: error: {flag_message(parser, args, e)}", file=sys.stderr)
        return _exit_code(2, program=argv is None)
    except KeyboardInterrupt:  # a second Ctrl-C (training saves on the first): no traceback
        print(f"tinywave {args.command}: interrupted (Ctrl-C)", file=sys.stderr)
        return 130
    except Exception as e:
        from .storage import storage_failure

        named = disk_full(e)
        if named is None and storage_failure(e) is not None:  # names `resume`: as its flag
            named = flag_message(
                parser, args, TinywaveError(storage_failure(e), param=(None, "resume"))
            )
        if named is None:
            raise
        if "tinywave_jax.checkpoint" in sys.modules:  # orbax's abandoned writes report at exit
            sys.modules["tinywave_jax.checkpoint"]._quiet_orbax_aftermath()
        print(f"tinywave {args.command}: error: {named}", file=sys.stderr)
        return _exit_code(2, program=argv is None)


def flag_message(parser: argparse.ArgumentParser, args, e: BaseException) -> str:
    """`e`'s message with the parameter it starts with (`e.param`, errors.py) written as the flag
    of the command that ran (`max_new_tokens: ...` -> `--max-new-tokens: ...`). A command whose
    flag's name differs from the parameter's says so in its `param_dests` default."""
    msg, params = str(e), getattr(e, "param", None) or ()
    params = (params,) if isinstance(params, str) else tuple(params)
    command = _command_parser(parser, args.func) if params else None
    if command is None:
        return msg
    dests = getattr(args, "param_dests", None) or {}
    actions = {a.dest: a for a in command._actions if a.option_strings}
    for k, param in enumerate(params):
        if param is None:
            continue
        # `param=VALUE` as the command line writes it: `--flag VALUE`, or a switch's flag alone
        # (`overwrite=True` -> --overwrite, `verify=False` -> --no-verify)
        dest = dests.get(param, param)
        msg = re.sub(
            rf"(?<![\w./-]){re.escape(param)}=([\w.]+)",
            lambda m, dest=dest: _flag_with(actions, dest, m.group(1)) or m.group(0),
            msg,
        )
        action = actions.get(dest)
        if action is None:
            continue
        flag = max(action.option_strings, key=len)
        if k == 0 and msg.startswith(param):
            msg = flag + msg[len(param) :]
        elif k > 0:
            # as a word of its own: not inside a path (runs/resume/) or a config key (data.x)
            msg = re.sub(rf"(?<![\w./-]){re.escape(param)}(?![\w/=-]|\.\w)", flag, msg)
    return msg


def _flag_with(actions: dict, dest: str, value: str) -> str | None:
    """How the command line sets parameter `dest` to `value` (a Python literal's text): the flag
    and the value, a switch's flag when it sets that value (its `--no-X` one for X=False), or
    None when no flag does."""
    action = actions.get(dest)
    if action is not None and action.nargs != 0:
        return f"{max(action.option_strings, key=len)} {value}"
    if action is not None and str(action.const) == value:
        return max(action.option_strings, key=len)
    negated = actions.get(f"no_{dest}")
    if negated is not None and negated.nargs == 0 and str(not negated.const) == value:
        return max(negated.option_strings, key=len)
    return None


def _command_parser(parser: argparse.ArgumentParser, func):
    """The (sub-)sub-parser whose `func` default is `func`, or None."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                if sub.get_default("func") is func:
                    return sub
                found = _command_parser(sub, func)
                if found is not None:
                    return found
    return None


def _exit_code(code: int, program: bool) -> int:
    """`code`; but a program (not a call from Python) that left a storage operation behind past
    its deadline exits at once: orbax's commit thread, which the interpreter would join at exit,
    may wait on the lost bucket without end."""
    from . import storage

    if program and storage.abandoned():
        import logging
        import os

        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


# errno values of a full disk, a quota or the file-size limit (ENOSPC, EDQUOT, EFBIG), and how
# tensorstore (orbax's writer) reports them inside a ValueError
_FULL = {
    28: "no space left on the device",
    122: "disk quota exceeded",
    27: "file too large",
    # numpy's tofile (gguf's tensor writer) reports a cut-short write without its errno
    "short": "a write was cut short (no space left, disk quota or file-size limit)",
}
_SHORT_WRITE = re.compile(r"^\d+ requested and \d+ written$")


def disk_full(e: BaseException) -> str | None:
    """A one-line message when `e` (or what caused it) is a write that ran out of disk space,
    quota or file-size limit; None for anything else."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        code = getattr(e, "errno", None)
        where = getattr(e, "filename", None) or getattr(e, "written_file", None)
        if code not in _FULL:
            m = re.search(r"os_error_code='(\d+)'", str(e))
            code = int(m.group(1)) if m else None
            w = re.search(r'Failed writing: "([^"]+)"', str(e))
            where = w.group(1) if w else where
        if code not in _FULL and isinstance(e, OSError) and _SHORT_WRITE.search(str(e)):
            code = "short"
        if code in _FULL:
            return (
                f"{_FULL[code]} while writing {where or 'a file'}: free space there (or write "
                "elsewhere) and rerun; outputs are written aside and renamed into place, so "
                "nothing that was complete was replaced"
            )
        e = e.__cause__ or e.__context__
    return None


if __name__ == "__main__":
    sys.exit(main())
