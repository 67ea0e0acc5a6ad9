"""The run directory's lock: one run writes into a run directory (``--checkpoint_path``, ``--out``) at a time.

``<run>/.lock`` holds JSON ``{"host", "pid", "started"}``. It is created atomically with its content (written
to a private temporary file, then hard-linked to ``.lock``, which fails if the lock exists: the effect of
``O_CREAT | O_EXCL`` without a window in which the lock is empty) and removed when the run ends, also on
errors. A second run into the same directory is refused with the holder's host and pid. A lock left by a
dead process of this host (its pid answers ``os.kill(pid, 0)`` with ProcessLookupError) is taken over with
a warning; a lock of another host cannot be checked from here and is always refused. In multi-process runs
only process 0 takes the lock (`lock_run`).

On a bucket (``gs://bucket/run``) the lock is an object created only if absent (``ifGenerationMatch=0``,
`l2l_jax.storage.create_exclusive`). Whether its holder still runs cannot be checked from here (it may be
another host): a lock on a URL is always refused with its holder named, to be removed by hand if stale.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Callable
from typing import Any, TypeVar

import jax
import numpy as np
from jax.experimental import multihost_utils

from l2l_jax import parallel, storage
from l2l_jax.errors import ConfigError

LOCK_NAME = ".lock"
T = TypeVar("T")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def _one_line(e: BaseException) -> str:
    """An exception in one short line (a bucket client's messages can hold a whole response)."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 240 else text[:237] + "..."


class RunLock:
    """``with RunLock(run_dir) as lock:`` (or `acquire` / `release`); `warnings` lists what was taken over.
    `flag` is the program's flag naming the directory, used in the messages (l2l-finetune: ``--out``)."""

    def __init__(self, run_dir: str | os.PathLike, flag: str = "--checkpoint_path"):
        self.run_dir = storage.absolute(run_dir)
        self.url = storage.is_url(self.run_dir)
        self.flag = flag
        self.path = self.run_dir / LOCK_NAME
        self.warnings: list[str] = []
        self._mine: dict[str, Any] | None = None

    def _read(self) -> dict[str, Any] | None:
        """The holder's record; None if the lock vanished meanwhile."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        except Exception as e:  # noqa: BLE001 (OSError locally; a bucket's client raises its own kinds too)
            raise ConfigError(f"{self.flag} {self.run_dir}: cannot read its lock {self.path} ({e})") from None
        try:
            holder = json.loads(text)
            if not isinstance(holder, dict) or not isinstance(holder.get("pid"), int):
                raise ValueError
        except ValueError:
            raise ConfigError(f"{self.flag} {self.run_dir}: its lock {self.path} is not a run's lock record; "
                              "if no run writes there, remove the file") from None
        return holder

    def _create(self, record: dict[str, Any]) -> bool:
        return storage.create_exclusive(self.path, json.dumps(record).encode())

    def acquire(self) -> RunLock:
        """Take the lock or raise `ConfigError` naming the holder."""
        try:
            if not self.url:  # a bucket has no folders to create
                self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"{self.flag} {self.run_dir}: cannot create the run directory ({e})") from None
        record = {"host": socket.gethostname(), "pid": os.getpid(),
                  "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        for _ in range(3):
            try:
                if self._create(record):
                    self._mine = record
                    return self
            except Exception as e:  # noqa: BLE001 (OSError locally; a bucket's 403 or outage in its client's kinds)
                if not (self.url or isinstance(e, OSError)):
                    raise
                raise ConfigError(f"{self.flag} {self.run_dir}: cannot create its lock {self.path} "
                                  f"({_one_line(e)})") from None
            holder = self._read()
            if holder is None:  # released meanwhile: try again
                continue
            where = f"host {holder.get('host')} pid {holder['pid']} (since {holder.get('started', '?')})"
            if self.url or holder.get("host") != record["host"] or _alive(holder["pid"]):
                raise ConfigError(f"{self.flag} {self.run_dir}: another run writes there ({where}; lock "
                                  f"{self.path}). Wait for it to end or choose another {self.flag}; if it is "
                                  "not running, remove the lock")
            # a dead process's lock: take it over (rename first, so two takers cannot both remove a live lock)
            stale = self.path.with_name(f"{LOCK_NAME}.stale.{os.getpid()}")
            try:
                os.rename(self.path, stale)
            except FileNotFoundError:
                continue
            with contextlib.suppress(OSError):
                os.unlink(stale)
            self.warnings.append(f"{self.flag} {self.run_dir}: took over the lock of a run that is no longer "
                                 f"running ({where})")
        raise ConfigError(f"{self.flag} {self.run_dir}: could not take the lock {self.path}; another run is "
                          "starting there")

    def release(self) -> None:
        """Remove the lock if it is still ours."""
        if self._mine is None:
            return
        with contextlib.suppress(Exception):  # an outage here must not hide the run's own error
            if self._read() == self._mine:
                self.path.unlink()
        self._mine = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def on_main_process(action: Callable[[], T], refusal: str) -> T | None:
    """Process 0 runs `action` (which writes into the run directory); the others learn whether it raised a
    `ConfigError` and then raise one with `refusal`. Returns process 0's result (None elsewhere)."""
    result, error = None, None
    if parallel.is_main_process():
        try:
            result = action()
        except ConfigError as e:
            error = e
    if jax.process_count() > 1:
        failed = multihost_utils.broadcast_one_to_all(np.int32(error is not None))
        if failed and error is None:
            raise ConfigError(refusal)
    if error is not None:
        raise error
    return result


def lock_run(run_dir: str | os.PathLike, flag: str = "--checkpoint_path") -> RunLock | None:
    """Process 0 locks the run directory; the others learn whether it could and stop with it if not.
    Returns process 0's lock (None elsewhere)."""
    return on_main_process(lambda: RunLock(run_dir, flag).acquire(),
                           f"{flag} {run_dir}: process 0 could not lock the run directory (see its message)")


__all__ = ["LOCK_NAME", "RunLock", "lock_run", "on_main_process"]
