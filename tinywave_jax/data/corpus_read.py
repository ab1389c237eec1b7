"""Reading a built corpus: its TFDS folder (`version_dir`) and `CorpusSource`, random access to
one split's records (a grain data source) in the dict form `streams.py` takes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from array_record.python.array_record_module import ArrayRecordReader

from .. import storage
from ..errors import MissingInputError
from .corpus_format import NAME, CorpusError, decode_record


def version_dir(corpus_dir) -> Path:
    """The TFDS dataset folder: `corpus_dir` itself or `corpus_dir/tinywave_corpus/<version>`.
    A gs:// corpus: that folder is found on the bucket and read from a local copy
    (storage.local_mirror: downloaded once per host, reused while unchanged), since ArrayRecord
    files are opened by a reader that takes local paths only."""
    d = storage.path(corpus_dir)
    if (d / "dataset_info.json").exists():
        found = d
    else:
        base = d / NAME
        versions = (
            sorted(
                p
                for p in base.iterdir()
                if not p.name.startswith(".")  # a version folder being written
                and (p / "dataset_info.json").exists()
            )
            if base.is_dir()
            else []
        )
        if not versions:
            raise MissingInputError(f"no {NAME} corpus under {d} (run `tinywave corpus build`)")
        found = versions[-1]
    return storage.local_mirror(found, "corpus") if storage.is_remote(found) else found


def corpus_splits(corpus_dir) -> list[str]:
    """The splits a built corpus holds, sorted."""

    return sorted(tfds.builder_from_directory(str(version_dir(corpus_dir))).info.splits)


class CorpusSource:
    """Random-access records of one split (a grain data source). Decoding errors name the
    ArrayRecord file and record; records come back in the dict form `streams.py` takes."""

    def __init__(self, corpus_dir, split="train"):
        self.dir, self.split = str(version_dir(corpus_dir)), split
        self._open()

    def _open(self):

        builder = tfds.builder_from_directory(self.dir)
        if self.split not in builder.info.splits:  # as corpus_splits
            raise CorpusError(
                f"corpus {self.dir} has no split {self.split!r}; it has "
                f"{sorted(builder.info.splits)}"
            )
        instr = builder.info.splits[self.split].file_instructions
        self._files = [fi.filename for fi in instr]
        self._starts = np.cumsum([0] + [fi.take for fi in instr])
        self._features = builder.info.features
        self._readers = {}

    def __getstate__(self):  # reopened lazily in grain worker processes
        return {"dir": self.dir, "split": self.split}

    def __setstate__(self, state):
        self.dir, self.split = state["dir"], state["split"]
        self._open()

    def __len__(self):
        return int(self._starts[-1])

    def locate(self, index: int) -> tuple[str, int]:
        k = int(np.searchsorted(self._starts, index, side="right") - 1)
        return self._files[k], index - int(self._starts[k])

    def _reader(self, path):
        if path not in self._readers:
            self._readers[path] = ArrayRecordReader(path, "readahead_buffer_size:0")
        return self._readers[path]

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"record {index} outside split {self.split} ({len(self)} records)")
        path, local = self.locate(index)
        where = f"{path} record {local}"
        try:
            ex = self._features.deserialize_example_np(self._reader(path).read([local])[0])
        except Exception as e:
            raise CorpusError(f"{where}: cannot read or decode: {type(e).__name__}: {e}") from None
        return decode_record(ex, where)
