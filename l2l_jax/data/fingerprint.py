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

An object on a URL (``gs://...``) has no stat: its fingerprint comes from the storage's record of it
(`index.object_info`, one metadata request, no read): `size` is the object's size, `mtime_ns` holds its
*generation* (a number the storage changes on every overwrite; the update time in ns where a store has none),
and `digest` is its MD5 (``md5Hash``, a hash of the whole content, as 32 hex digits); an object without one (a
composite upload) gets the sampled digest above, read with ranged reads. `fingerprints` takes many at once: on
a bucket one listing per folder (a request per 1000 objects) instead of one metadata request per object.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import fsspec

from l2l_jax import storage

from .index import BadFileError, object_info, open_regular, read_object, stat_regular

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


def _url_fingerprint(path: str | os.PathLike, info: dict | None = None) -> Fingerprint:
    """The fingerprint of an object on a URL: size, generation (as `mtime_ns`) and MD5 (see the module);
    `info`: its record when already listed."""
    info = object_info(path) if info is None else info
    size = int(info["size"])
    generation = info.get("generation")
    if generation is not None:
        stamp = int(generation)
    else:
        when = info.get("mtime") or info.get("updated")
        if isinstance(when, str):
            when = datetime.datetime.fromisoformat(when.replace("Z", "+00:00"))
        if not isinstance(when, datetime.datetime):
            raise BadFileError(path, "the storage records neither a generation nor a modification time for it")
        stamp = int(when.timestamp() * 1e9)
    md5 = info.get("md5Hash")
    if md5:
        return Fingerprint(size, stamp, base64.b64decode(md5).hex())
    h = hashlib.sha256(f"l2l-fp{FINGERPRINT_VERSION}:{size}:".encode())
    for offset, length in sample_offsets(size):
        h.update(read_object(path, offset, offset + length))
    return Fingerprint(size, stamp, h.hexdigest()[:32])


def fingerprint(path: str | os.PathLike) -> Fingerprint:
    """The fingerprint of a regular file or an object on a URL; `BadFileError` (missing, not a regular file,
    unreadable)."""
    if storage.is_url(path):
        return _url_fingerprint(path)
    try:
        with open_regular(path, buffering=0) as f:
            st = os.fstat(f.fileno())
            return Fingerprint(st.st_size, st.st_mtime_ns, _digest(f, st.st_size))
    except OSError as e:
        raise BadFileError(path, f"cannot read ({e.strerror or e})") from None


def fingerprints(paths: list[str], num_threads: int = 8) -> dict[str, Fingerprint | str]:
    """The fingerprint of each path, or why it has none (`BadFileError`'s reason). Local files: `fingerprint`
    on `num_threads` threads. Objects on a URL: one listing of each folder (the storage's records of all its
    objects), then `fingerprint` alone for any object the listing lacks (its reason: missing, a folder...)."""
    out: dict[str, Fingerprint | str] = {}
    if not paths:
        return out
    folders: dict[str, list[str]] = {}
    for p in paths:
        if storage.is_url(p):
            folders.setdefault(p.rsplit("/", 1)[0], []).append(p)
    listed: dict[str, dict] = {}
    for folder in folders:
        try:
            fs, key = fsspec.core.url_to_fs(folder)
            entries = fs.ls(key, detail=True, refresh=True)
            fs.invalidate_cache(key)  # no listing kept: a later check asks the storage again
        except Exception:  # noqa: BLE001 - a folder that cannot be listed: each object is asked for alone
            continue
        scheme = folder.split("://", 1)[0]
        listed.update({f"{scheme}://{e['name']}": e for e in entries if e.get("type") == "file"})

    def one(p: str) -> Fingerprint | str:
        try:
            entry = listed.get(p)
            return _url_fingerprint(p, entry) if entry is not None else fingerprint(p)
        except BadFileError as e:
            return e.reason

    with ThreadPoolExecutor(max_workers=num_threads) as pool:
        out.update(zip(paths, pool.map(one, paths), strict=True))
    return out


def url_change(now: Fingerprint, recorded: Fingerprint) -> str | None:
    """Why an object's fingerprint `now` differs from `recorded` (None: it does not)."""
    if now.size != recorded.size:
        return f"size changed ({recorded.size} -> {now.size} bytes)"
    if now.mtime_ns != recorded.mtime_ns:
        return "overwritten (the object's generation changed)"
    return None if now == recorded else "content changed (size and generation unchanged)"


def what_changed(path: str | os.PathLike, recorded: Fingerprint) -> str | None:
    """Why `path` no longer matches `recorded` (None: it matches). A changed size or mtime is seen from
    `stat` alone; only a file whose size and mtime match is read (the sampled blocks). An object on a URL is
    compared by its record alone (size, generation, MD5: one metadata request)."""
    if storage.is_url(path):
        try:
            now = _url_fingerprint(path)
        except BadFileError as e:
            return e.reason
        return url_change(now, recorded)
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
