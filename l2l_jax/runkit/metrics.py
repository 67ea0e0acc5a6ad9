"""A run directory's ``metrics.jsonl``: one JSON record a line, appended and flushed as the run goes.

A kill can cut the last line short: `read_records` skips it. A resumed run first drops the records of what
it will do again (`MetricsFile.keep`, an atomic rewrite), so every record appears once after any number of
interruptions. The records' keys are the trainer's (l2l-train: `l2l_jax.training.log`).

On a bucket (a ``gs://`` run directory) an object cannot be appended to: the file's text is kept in memory and
the whole object is written again with every record (one upload, atomic; the file is small).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from typing import Any

from l2l_jax import storage
from l2l_jax.errors import ConfigError
from l2l_jax.outputs import atomic_write_text

METRICS_FILE = "metrics.jsonl"


class StorageWriteError(ConfigError):
    """A bucket refused a write or did not answer (the run stops; its last complete checkpoint stays)."""


def rewrite_object(path: storage.AnyPath, text: str | bytes) -> None:
    """Write the whole object `path` (a URL) with `text` (or bytes); a refusal (403) or a storage that does not
    answer is one `StorageWriteError` line naming it."""
    try:
        storage.write_bytes(path, text.encode("utf-8") if isinstance(text, str) else text)
    except Exception as e:  # noqa: BLE001 (gcsfs and aiohttp raise many kinds)
        reason = " ".join(str(e).split()) or type(e).__name__
        reason = reason if len(reason) <= 200 else reason[:197] + "..."
        raise StorageWriteError(f"{path}: could not be written ({type(e).__name__}: {reason}); the storage refused the "
                          "write or does not answer") from None


def read_records(path: str | os.PathLike) -> list[dict]:
    """The records of a metrics.jsonl ([] if there is none), skipping a line cut short by a kill."""
    path = storage.path(path)
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


class MetricsFile:
    """``run_dir/metrics.jsonl``: `keep` (on resume), then `open`, `write` records, `close`."""

    def __init__(self, run_dir: str | os.PathLike, name: str = METRICS_FILE):
        self.path = storage.absolute(run_dir) / name
        self._file = None
        self._text: str | None = None  # a bucket's object: its whole text, rewritten per record

    def records(self) -> list[dict]:
        return read_records(self.path)

    def keep(self, wanted: Callable[[dict], bool]) -> list[dict]:
        """Rewrite the file (atomically) with only the records `wanted` accepts (and no cut line); returns
        the records read before. Nothing is created when there is no file."""
        records = read_records(self.path)
        if self.path.exists():
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in records if wanted(r)))
        return records

    def open(self) -> None:
        """Open for appending (creates the file)."""
        if storage.is_url(self.path):
            if self._text is None:
                self._text = self.path.read_text() if self.path.exists() else ""
                if self._text and not self._text.endswith("\n"):  # a line cut short: as appending would leave it
                    self._text += "\n"
                rewrite_object(self.path, self._text)
        elif self._file is None:
            self._file = open(self.path, "a")  # noqa: SIM115 (closed by close())

    @property
    def is_open(self) -> bool:
        return self._file is not None or self._text is not None

    def write(self, record: Mapping[str, Any]) -> None:
        """Append one record and flush it (a bucket: write the whole object again)."""
        line = json.dumps(record) + "\n"
        if self._text is not None:
            self._text += line
            rewrite_object(self.path, self._text)
            return
        self._file.write(line)
        self._file.flush()

    def close(self) -> None:
        self._text = None
        if self._file is not None:
            self._file.close()
            self._file = None


__all__ = ["METRICS_FILE", "MetricsFile", "StorageWriteError", "read_records", "rewrite_object"]
