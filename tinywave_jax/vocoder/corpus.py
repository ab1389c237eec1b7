"""The utterances `vocoder train` and `vocoder eval` read: audio path, speaker name, transcript.

AUDIO is a JSON-lines manifest (`.jsonl`, the demo's speech manifests: "path" relative to the
manifest's folder or absolute, optional "speaker", optional "transcript"), or anything
`audio.io.list_audio` reads (a folder, a plain manifest). Without a "speaker" the speaker is the
file's parent folder name; without a "transcript" it is the text of a sibling `<stem>.txt`, if
there is one (needed only by `vocoder eval`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..audio.io import list_audio
from ..errors import InputError
from ..jsonl import iter_jsonl


@dataclass(frozen=True)
class Item:
    path: Path
    speaker: str
    transcript: str | None = None


def item_of(path) -> Item:
    """A bare audio path's Item (speaker: parent folder name; transcript: sibling .txt)."""
    path = Path(path)
    txt = path.with_suffix(".txt")
    return Item(path, path.parent.name, txt.read_text().strip() if txt.is_file() else None)


def as_items(xs) -> list[Item]:
    """Items from Items or bare audio paths (`item_of`)."""
    return [x if isinstance(x, Item) else item_of(x) for x in xs]


def read_items(source) -> list[Item]:

    source = Path(source)
    if source.suffix != ".jsonl":
        return [item_of(p) for p in list_audio(source)]
    items = []
    for where, row in iter_jsonl(source, "audio manifest"):
        if not isinstance(row.get("path"), str):
            raise InputError(f'{where}: no "path" (the audio file, relative to {source.parent})')
        path = source.parent / row["path"]
        for key in ("speaker", "transcript"):
            if key in row and not isinstance(row[key], str):
                raise InputError(f'{where}: "{key}" must be a string')
        default = item_of(path)
        items.append(
            Item(
                path, row.get("speaker", default.speaker), row.get("transcript", default.transcript)
            )
        )
    if not items:
        raise InputError(f"{source}: the manifest lists no audio")
    return items
