"""JSON-lines files: one reader that names `file:line` on bad input, one atomic writer."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Iterator

from . import storage
from .errors import InputError, MissingInputError


def iter_jsonl(
    path: str | Path, what: str = "input file", error: type[Exception] = InputError
) -> Iterator[tuple[str, dict]]:
    """Yields ("path:line", object) for each non-blank line. A missing file raises
    MissingInputError naming `what`; a line that is not a JSON object raises `error` naming it.
    `path` may be local or gs://."""
    storage.check_gcs(path, what=what)
    path = storage.path(path)
    if not path.is_file():
        raise MissingInputError(f"{what} not found: {path}")
    with path.open("rb") as f:
        for n, raw in enumerate(f, 1):
            where = f"{path}:{n}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise error(f"{where}: not UTF-8 text (byte {e.start} of the line)") from None
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise error(f"{where}: not valid JSON: {e}") from None
            if not isinstance(rec, dict):
                raise error(f"{where}: expected a JSON object")
            yield where, rec


def write_jsonl_atomic(path: str | Path, records: Iterable[dict]) -> None:
    """Writes to a temporary sibling and renames, so a failure never leaves a half file. On object
    storage (gs://) the file is one object, uploaded when complete: equally all or nothing."""
    if storage.is_remote(path):
        storage.check_gcs(storage.path(path).parent, write=True, what="output file in")
        text = "".join(json.dumps(rec) + "\n" for rec in records)
        storage.path(path).write_text(text)
        return
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("w") as f:
            for rec in records:
                f.write(json.dumps(rec) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
