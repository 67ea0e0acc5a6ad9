"""Output paths, checked before any work starts, and files written atomically with the user's umask.

Every program calls `output_file` / `output_dir` on each output flag first, so a path that cannot take the
output (a directory where a file goes, a FIFO or device, a file in the way of a directory, a read-only
place) is a `ConfigError` naming the flag, never a traceback after the work is done and never a hang.
`atomic_write_bytes` / `atomic_write_text` write beside the target and rename, so a kill leaves the old file
or the new one, and give the file the mode a plain ``open(path, "w")`` would (0666 less the umask). A write
that still fails after the check (a full disk) is turned into one `ConfigError` line by `writing`.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from l2l_jax.errors import ConfigError

_SPECIAL = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
            (stat.S_ISSOCK, "a socket"))


def _special(mode: int) -> str | None:
    return next((name for test, name in _SPECIAL if test(mode)), None)


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


def output_file(path: str | os.PathLike, flag: str, *, advice: str | None = None) -> Path:
    """Checks that `path` can take a file written by the program (flag: e.g. ``--export``): not a directory,
    FIFO, device or socket; writable where it exists; else creatable. Returns it as a `Path`. `advice`
    replaces the default "what to do" (for a file whose name the program fixes inside a ``--out`` folder)."""
    path = Path(path)
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


def output_dir(path: str | os.PathLike, flag: str, *, advice: str | None = None) -> Path:
    """Checks that `path` is, or can become, a directory the program writes into: an existing writable
    directory, or a path whose nearest existing ancestor is a writable directory. Returns it as a `Path`.
    `advice` replaces the default "what to do" (see `output_file`)."""
    path = Path(path)
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


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Writes `data` to a temporary file beside `path`, then renames it over `path` (mode: 0666 less the
    umask, as ``open(path, "wb")`` would give a new file)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """`atomic_write_bytes` of UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


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


__all__ = ["atomic_write_bytes", "atomic_write_text", "output_dir", "output_file", "writing"]
