"""Output paths, checked before any work starts, and files written atomically with the user's umask.

Every program calls `output_file` / `output_dir` on each output flag first, so a path that cannot take the
output (a directory where a file goes, a FIFO or device, a file in the way of a directory, a read-only
place, a kernel interface such as ``/proc``, ``/sys`` or ``/dev`` where root could "write" many files) is a
`ConfigError` naming the flag, never a traceback after the work is done and never a hang.
`atomic_write_bytes` / `atomic_write_text` write beside the target and rename, so a kill leaves the old file
or the new one, and give the file the mode a plain ``open(path, "w")`` would (0666 less the umask). A write
that still fails after the check (a full disk) is turned into one `ConfigError` line by `writing`.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from l2l_jax import storage
from l2l_jax.errors import ConfigError

_SPECIAL = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
            (stat.S_ISSOCK, "a socket"))


#: Kernel interfaces, never storage: refused by prefix (after symlinks), whoever runs the program.
KERNEL_PREFIXES = ("/proc", "/sys")
#: File systems that are kernel interfaces too (where mounted elsewhere; /dev is devtmpfs).
_KERNEL_FS = frozenset({"proc", "sysfs", "devtmpfs", "devpts", "cgroup", "cgroup2", "debugfs", "tracefs",
                        "securityfs", "configfs", "pstore", "bpf", "fusectl", "efivarfs", "mqueue", "binfmt_misc",
                        "nsfs", "rpc_pipefs"})


def _special(mode: int) -> str | None:
    return next((name for test, name in _SPECIAL if test(mode)), None)


def _mounts() -> list[tuple[str, str]]:
    """(mount point, file system type) of this process's mounts, longest mount point first and, at one mount
    point, the one on top (listed last) first; none off Linux."""
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        fields = line.split()
        if len(fields) >= 3:  # the kernel writes a space in a mount point as \040 (octal escapes)
            point = fields[1].encode("latin-1").decode("unicode_escape")
            out.append((point, fields[2]))
    return sorted(reversed(out), key=lambda m: len(m[0]), reverse=True)  # stable: the later mount stays first


def _within(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def _kernel_place(path: Path) -> str | None:
    """Why `path` is no place for a program's output (a kernel interface), or None. Checked on the target
    with symlinks resolved and on the directory the file is written in (an atomic write replaces the name
    itself, e.g. the symlink /dev/stdout)."""
    places = {os.path.realpath(path), os.path.realpath(_nearest_existing(path.absolute().parent))}
    for place in sorted(places):
        top = next((p for p in KERNEL_PREFIXES if _within(place, p)), None)
        if top is not None:
            return f"{top} is a kernel interface, not a place for files"
    mounts = _mounts()
    for place in sorted(places):
        point, fs = next(((p, t) for p, t in mounts if _within(place, p)), ("", ""))
        if fs in _KERNEL_FS:
            return f"{point} is a kernel interface ({fs}), not a place for files"
    return None


def _refuse_kernel_place(path: Path, flag: str, advice: str | None) -> None:
    why = _kernel_place(path)
    if why is not None:
        raise ConfigError(f"{flag} {path}: {why}; {advice or 'choose a directory on a disk'}")


def _nearest_existing(path: Path) -> Path:
    return next(p for p in [path, *path.absolute().parents] if os.path.lexists(p))


def _check_creatable(path: Path, flag: str, advice: str | None = None) -> None:
    """`path` does not exist: its nearest existing ancestor must be a writable directory."""
    above = _nearest_existing(path)
    if not above.is_dir():
        raise ConfigError(f"{flag} {path}: {above} is a file, not a directory; {advice or 'choose another path'}")
    if not os.access(above, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {path}: cannot write into {above} (permission denied); "
                          f"{advice or 'choose a writable place'}")


def _check_url(path: storage.AnyPath, flag: str, want_dir: bool, advice: str | None) -> storage.AnyPath:
    """A URL output: its bucket exists and answers, and nothing of the other kind is in the way (an object
    where a folder goes, or a folder where an object goes). Write permission shows only when writing
    (`writing` turns a refusal into one line)."""
    problem = storage.url_problem(path)
    if problem is not None:
        raise ConfigError(f"{flag} {path}: {problem}")
    if want_dir and path.is_file():
        raise ConfigError(f"{flag} {path}: is an object, not a folder; {advice or 'name a folder'}")
    if not want_dir and path.is_dir():
        raise ConfigError(f"{flag} {path}: is a folder; {advice or 'give a file name'}")
    return path


def output_file(path: str | os.PathLike, flag: str, *, advice: str | None = None) -> storage.AnyPath:
    """Checks that `path` can take a file written by the program (flag: e.g. ``--export``): not a directory,
    FIFO, device or socket; writable where it exists; else creatable. Returns it as a `Path`. `advice`
    replaces the default "what to do" (for a file whose name the program fixes inside a ``--out`` folder).
    A URL (``gs://...``) is checked by `_check_url` and returned as an `etils.epath.Path`."""
    if storage.is_url(path):
        return _check_url(storage.path(path), flag, False, advice)
    path = Path(path)
    _refuse_kernel_place(path, flag, advice)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        _check_creatable(path, flag, advice)
        return path
    except OSError as e:
        raise ConfigError(f"{flag} {path}: cannot use this path ({e.strerror or e})") from None
    if stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{flag} {path}: is a directory; {advice or 'give a file name'}")
    kind = _special(st.st_mode)
    if kind is not None:
        raise ConfigError(f"{flag} {path}: is {kind}, not a regular file; {advice or 'give a file name'}")
    if not os.access(path, os.W_OK) or not os.access(path.absolute().parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {path}: cannot be replaced (permission denied); "
                          f"{advice or 'choose a writable place'}")
    return path


def output_dir(path: str | os.PathLike, flag: str, *, advice: str | None = None) -> storage.AnyPath:
    """Checks that `path` is, or can become, a directory the program writes into: an existing writable
    directory, or a path whose nearest existing ancestor is a writable directory. Returns it as a `Path`.
    `advice` replaces the default "what to do" (see `output_file`); a URL as there."""
    if storage.is_url(path):
        return _check_url(storage.path(path), flag, True, advice)
    path = Path(path)
    _refuse_kernel_place(path, flag, advice)
    if os.path.lexists(path):
        if not path.is_dir():
            kind = _special(os.stat(path).st_mode) if path.exists() else None
            raise ConfigError(f"{flag} {path}: is {kind or 'a file'}, not a directory; {advice or 'name a directory'}")
        if not os.access(path, os.W_OK | os.X_OK):
            raise ConfigError(f"{flag} {path}: cannot write into this directory (permission denied)"
                              + (f"; {advice}" if advice else ""))
        return path
    _check_creatable(path, flag, advice)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Writes `data` to a temporary file beside `path`, then renames it over `path` (mode: 0666 less the
    umask, as ``open(path, "wb")`` would give a new file); a URL is one object upload (`storage.write_bytes`)."""
    storage.write_bytes(path, data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """`atomic_write_bytes` of UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save(path: str | os.PathLike, array: np.ndarray) -> None:
    """``np.save`` of `array` (no pickles), written atomically with the umask's mode (`atomic_write_bytes`)."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


@contextlib.contextmanager
def writing(path: str | os.PathLike, flag: str) -> Iterator[None]:
    """``with writing(path, "--export"):`` turns an `OSError` raised inside (no space left, a quota, an I/O
    error) into a `ConfigError` naming the flag and the path, so a write that fails after `output_file`'s
    check ends the program with one line, not a traceback."""
    try:
        yield
    except OSError as e:
        raise ConfigError(f"{flag} {path}: could not be written ({e.strerror or e}); free some space or choose "
                          "another place, then run again") from None


__all__ = ["atomic_save", "atomic_write_bytes", "atomic_write_text", "output_dir", "output_file", "writing"]
