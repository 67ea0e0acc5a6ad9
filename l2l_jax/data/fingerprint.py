"""Cheap fingerprints of feature files: (size, mtime, content digest), one implementation for the validation
scan's cache (`validate.py`) and for a pack's record of its source files (`pack.py`, `source.py`).

The content digest is a SHA-256 of the file's size and
- the whole file when it is at most `FULL_HASH_MAX` bytes, else
- its first `HEAD_BYTES` (the `.npy` header and the first rows) and `NUM_SAMPLES` blocks of `SAMPLE_BYTES` at
  fixed, evenly spaced positions after it (the last block ends at the end of the file).

So fingerprinting a large file costs one `stat` and a few small reads, never a full read; a file rewritten
with other values (even with its size and mtime restored) changes the digest unless every sampled byte
happens to stay equal. Only regular files are fingerprinted (`index.open_regular`): a FIFO or device is a
`BadFileError`, never opened.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from .index import BadFileError, open_regular, stat_regular

FINGERPRINT_VERSION = 1
HEAD_BYTES = 4096
SAMPLE_BYTES = 512
NUM_SAMPLES = 6
FULL_HASH_MAX = 64 * 1024


@dataclass(frozen=True)
class Fingerprint:
    """Size in bytes, modification time in ns, and the content digest (32 hex digits) of one file."""

    size: int
    mtime_ns: int
    digest: str

    def to_json(self) -> list:
        return [self.size, self.mtime_ns, self.digest]

    @classmethod
    def from_json(cls, x: object) -> Fingerprint:
        """The inverse of `to_json`; ValueError when `x` is not a recorded fingerprint."""
        if (not isinstance(x, list | tuple) or len(x) != 3 or not all(type(v) is int for v in x[:2])
                or not isinstance(x[2], str)):
            raise ValueError(f"not a file fingerprint: {x!r}")
        return cls(int(x[0]), int(x[1]), str(x[2]))


def sample_offsets(size: int) -> list[tuple[int, int]]:
    """(offset, length) of the blocks hashed for a file of `size` bytes (the whole file when small)."""
    if size <= FULL_HASH_MAX:
        return [(0, size)]
    first, last = HEAD_BYTES, size - SAMPLE_BYTES
    return [(0, HEAD_BYTES)] + [(first + k * (last - first) // (NUM_SAMPLES - 1), SAMPLE_BYTES)
                                for k in range(NUM_SAMPLES)]


def _digest(f, size: int) -> str:
    h = hashlib.sha256(f"l2l-fp{FINGERPRINT_VERSION}:{size}:".encode())
    for offset, length in sample_offsets(size):
        f.seek(offset)
        h.update(f.read(length))
    return h.hexdigest()[:32]


def fingerprint(path: str | os.PathLike) -> Fingerprint:
    """The fingerprint of a regular file; `BadFileError` (missing, not a regular file, unreadable)."""
    try:
        with open_regular(path, buffering=0) as f:
            st = os.fstat(f.fileno())
            return Fingerprint(st.st_size, st.st_mtime_ns, _digest(f, st.st_size))
    except OSError as e:
        raise BadFileError(path, f"cannot read ({e.strerror or e})") from None


def what_changed(path: str | os.PathLike, recorded: Fingerprint) -> str | None:
    """Why `path` no longer matches `recorded` (None: it matches). A changed size or mtime is seen from
    `stat` alone; only a file whose size and mtime match is read (the sampled blocks)."""
    try:
        st = stat_regular(path)
        if st.st_size != recorded.size:
            return f"size changed ({recorded.size} -> {st.st_size} bytes)"
        if st.st_mtime_ns != recorded.mtime_ns:
            return "modified (mtime changed)"
        now = fingerprint(path)
    except BadFileError as e:
        return e.reason
    if now != recorded:
        return "content changed (size and mtime unchanged)"
    return None
