"""Where bytes live: local paths and URLs (``gs://bucket/...``, any scheme `etils.epath` knows), one API.

Every path a program takes goes through `path`: a local path stays a `pathlib.Path` (so local runs behave
exactly as before: atomic renames, locks, memory maps), a URL becomes an `etils.epath.Path`, which reads and
writes objects through fsspec (gcsfs for ``gs://``). The few things a bucket does differently live here:

- `is_url`: whether a path is an object-store URL (no rename, no append, no memory map, no ``fcntl``);
- `write_bytes`: a whole object or file at once; on a bucket one upload is atomic by itself (readers see the
  old object or the new one), locally it is a temporary file renamed over the target;
- `create_exclusive`: create only if absent (a bucket's ``ifGenerationMatch=0`` precondition; locally
  ``O_CREAT | O_EXCL`` through a hard link), for locks;
- `read_ranges`: several byte ranges of one file in one request batch (a pack on a bucket), counted in
  `REQUESTS` so benchmarks and tests can see how many requests a batch costs;
- `remove_tree` / `copy_tree` / `move_tree`: folders (prefixes on a bucket), listed afresh;
- `forget_listings`: fsspec caches listings, which objects orbax writes through TensorStore never enter.

Against a local emulator (``STORAGE_EMULATOR_HOST``, ``TENSORSTORE_GCS_HTTP_URL``) nothing here changes.
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import fsspec
from etils import epath

#: A local `pathlib.Path` or an `etils.epath.Path` for a URL; both have the pathlib API used here.
AnyPath = Path | epath.Path

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")

#: Requests made by `read_ranges`, by URL scheme (a bucket: one batch of ranged GETs is counted per range).
REQUESTS: collections.Counter[str] = collections.Counter()
_requests_lock = threading.Lock()


def is_url(p: str | os.PathLike | AnyPath) -> bool:
    """True for ``scheme://...`` (``gs://``, ``s3://``, ...), False for a local path (``file://`` included)."""
    s = os.fspath(p) if not isinstance(p, epath.Path) else str(p)
    return bool(_URL.match(s)) and not s.startswith("file://")


def path(p: str | os.PathLike | AnyPath) -> AnyPath:
    """The path object for a flag's value: `etils.epath.Path` for a URL, `pathlib.Path` otherwise."""
    if isinstance(p, epath.Path) and not isinstance(p, Path):
        return p
    if is_url(p):
        return epath.Path(os.fspath(p) if not isinstance(p, epath.Path) else str(p))
    s = os.fspath(p)
    return Path(s[len("file://"):] if s.startswith("file://") else s)


def absolute(p: str | os.PathLike | AnyPath) -> AnyPath:
    """`path`, made absolute when local (a URL is absolute already)."""
    q = path(p)
    return q if is_url(q) else q.absolute()


def display(p: str | os.PathLike | AnyPath) -> str:
    """The text that names a path in messages and records: the URL as given, or the absolute local path."""
    return str(absolute(p))


def _fs(p: AnyPath) -> tuple[Any, str]:
    """(fsspec file system, path within it) of a URL."""
    fs, key = fsspec.core.url_to_fs(str(p))
    return fs, key


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def url_problem(p: str | os.PathLike | AnyPath) -> str | None:
    """Why a URL cannot be used (its bucket does not exist, or the storage does not answer), or None."""
    fs, key = _fs(path(p))
    bucket = key.split("/", 1)[0]
    try:
        found = fs.exists(bucket)
    except Exception as e:  # a network or service error, whatever the client library calls it
        return f"the storage does not answer ({type(e).__name__}: {e})"
    return None if found else f"bucket {bucket} does not exist (or these credentials cannot see it)"


def write_bytes(p: str | os.PathLike | AnyPath, data: bytes) -> None:
    """Write a whole file atomically: a reader sees the old content or the new, never part of it. Locally a
    temporary file beside it renamed over it, with the mode ``open(path, "wb")`` would give a new file (0666
    less the umask)."""
    q = path(p)
    if is_url(q):
        q.write_bytes(data)  # one object upload: atomic on an object store
        return
    fd, tmp = tempfile.mkstemp(prefix=f".{q.name}.", suffix=".tmp", dir=q.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, q)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(p: str | os.PathLike | AnyPath, text: str) -> None:
    """`write_bytes` of UTF-8 text."""
    write_bytes(p, text.encode("utf-8"))


def create_exclusive(p: str | os.PathLike | AnyPath, data: bytes) -> bool:
    """Create `p` holding `data` if nothing is there; False (nothing written) if it exists. Atomic with its
    content: no one ever sees it empty. On a bucket: an upload with ``ifGenerationMatch=0``."""
    q = path(p)
    if is_url(q):
        fs, key = _fs(q)
        try:
            fs.pipe_file(key, data, mode="create")
        except FileExistsError:
            return False
        return True
    tmp = q.with_name(f"{q.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, q)
        except FileExistsError:
            return False
        return True
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def read_ranges(p: str | os.PathLike | AnyPath, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
    """The bytes ``[start, stop)`` of each range of one file. On a bucket the ranges go out together as
    concurrent ranged GETs (fsspec ``cat_ranges``); locally they are ``pread`` calls."""
    q = path(p)
    if not ranges:
        return []
    if is_url(q):
        fs, key = _fs(q)
        with _requests_lock:
            REQUESTS[str(q).split("://", 1)[0]] += len(ranges)
        out = fs.cat_ranges([key] * len(ranges), [a for a, _ in ranges], [b for _, b in ranges])
        for (a, b), chunk in zip(ranges, out, strict=True):
            if isinstance(chunk, BaseException):
                raise chunk
            if len(chunk) != b - a:
                raise OSError(f"{q}: asked for bytes {a}:{b}, got {len(chunk)} (the object is shorter)")
        return list(out)
    fd = os.open(q, os.O_RDONLY)
    try:
        return [os.pread(fd, b - a, a) for a, b in ranges]
    finally:
        os.close(fd)


def forget_listings(p: str | os.PathLike | AnyPath) -> None:
    """Drop the cached listings of a URL's file system (nothing to do locally): fsspec caches listings, and
    objects written by TensorStore, which orbax uses, never enter that cache, so a check for existence or a
    listing after such a write must be fetched anew."""
    q = path(p)
    if is_url(q):
        _fs(q)[0].invalidate_cache()
        epath_fs = getattr(getattr(epath.backend, "fsspec_backend", None), "fs", None)  # etils keeps its own client
        if epath_fs is not None:
            epath_fs(str(q)).invalidate_cache()


def _objects_under(fs: Any, key: str) -> list[str]:
    """Every object under a prefix, listed afresh."""
    fs.invalidate_cache()
    return fs.find(key.rstrip("/") + "/")


def remove_tree(p: str | os.PathLike | AnyPath) -> None:
    """Remove a folder (every object under a prefix) if it exists."""
    q = path(p)
    if is_url(q):
        fs, key = _fs(q)
        files = _objects_under(fs, key)
        if files:
            fs.rm(files)
        fs.invalidate_cache()
        return
    if q.exists():
        shutil.rmtree(q)


def copy_tree(src: str | os.PathLike | AnyPath, dst: str | os.PathLike | AnyPath) -> None:
    """Copy a folder to `dst`: every file or object to its exact new name (on a bucket no "into an existing
    folder" guess, which a stale listing could mislead)."""
    s, d = path(src), path(dst)
    if not is_url(s):
        shutil.copytree(s, d)
        return
    fs, key = _fs(s)
    _, dkey = _fs(d)
    files = _objects_under(fs, key)
    if not files:
        raise FileNotFoundError(f"{s}: no such folder")
    prefix = key.rstrip("/")
    fs.copy(files, [dkey.rstrip("/") + f[len(prefix):] for f in files])
    fs.invalidate_cache()


def move_tree(src: str | os.PathLike | AnyPath, dst: str | os.PathLike | AnyPath) -> None:
    """Move a folder to `dst` (which must not exist). Locally one rename; on a bucket `copy_tree`, then the
    removal of the originals (no atomic rename exists there)."""
    s = path(src)
    if not is_url(s):
        os.replace(s, path(dst))
        return
    copy_tree(s, dst)
    remove_tree(s)


__all__ = ["REQUESTS", "AnyPath", "absolute", "copy_tree", "create_exclusive", "display", "forget_listings", "is_url",
           "move_tree", "path", "read_ranges", "remove_tree", "url_problem", "write_bytes", "write_text"]
