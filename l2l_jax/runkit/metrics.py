"""A run directory's ``metrics.jsonl``: one JSON record a line, appended and flushed as the run goes.

A kill can cut the last line short: `read_records` skips it. A resumed run first drops the records of what
it will do again (`MetricsFile.keep`, an atomic rewrite), so every record appears once after any number of
interruptions. The records' keys are the trainer's (l2l-train: `l2l_jax.training.log`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from l2l_jax.outputs import atomic_write_text

METRICS_FILE = "metrics.jsonl"


def read_records(path: str | os.PathLike) -> list[dict]:
    """The records of a metrics.jsonl ([] if there is none), skipping a line cut short by a kill."""
    path = Path(path)
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
        self.path = Path(run_dir).absolute() / name
        self._file = None

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
        if self._file is None:
            self._file = open(self.path, "a")  # noqa: SIM115 (closed by close())

    @property
    def is_open(self) -> bool:
        return self._file is not None

    def write(self, record: Mapping[str, Any]) -> None:
        """Append one record and flush it."""
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


__all__ = ["METRICS_FILE", "MetricsFile", "read_records"]
