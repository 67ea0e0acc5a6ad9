"""The record of the settings that give a run directory's checkpoints their meaning, checked on every rerun.

A trainer names the settings its checkpoints depend on (flags such as ``--lr``, ``--seed``, ``--objective``;
digests of its data) as a flat JSON-able mapping; `check_rerun`, called under the run lock before any work,
compares them with ``<run>/<file>`` (default ``settings.json``, written atomically by `write_settings`). A
rerun whose recorded settings differ is refused with one `ConfigError` naming each difference
(``--lr 0.01 (recorded) vs 0.02 (given)``, ``train.pkl differs``, ``teacher files differ``), as is one asking
for fewer epochs than its checkpoints hold, or checkpoints without a record. ``overwrite`` (the programs'
``--overwrite``) removes the old checkpoints and record instead. Without checkpoints there is nothing to mix
with: an old record is simply replaced. The record may carry facts that are not compared (`info`: a video
count, a path).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Mapping
from typing import Any

from l2l_jax import storage
from l2l_jax.errors import ConfigError
from l2l_jax.outputs import atomic_write_text
from l2l_jax.runkit.checkpoints import CHECKPOINT_DIR, has_run_checkpoints
from l2l_jax.runkit.checkpoints import epochs_done as checkpoint_epochs

SETTINGS_FILE = "settings.json"
SETTINGS_FORMAT = "l2l-run-settings"
_MISSING = object()


def _is_digest(text: str) -> bool:
    """A hex digest (SHA-256 and the like): shown cut, and a fact holding one just "differs"."""
    return len(text) >= 32 and all(c in "0123456789abcdef" for c in text)


def _shown(value: Any) -> str:
    """A recorded or given value in a message: as the user wrote it (paths whole), digests cut."""
    if value is _MISSING:
        return "none"
    text = value if isinstance(value, str) else json.dumps(value)
    return text[:16] + "..." if _is_digest(text) else text


def _is_flag(key: str) -> bool:
    """Settings are flags (``lr``: ``--lr``) unless named with a dot or a space: facts of the data, such as
    ``train.pkl`` (its digest) or ``train.pkl features``."""
    return "." not in key and " " not in key


def _json(settings: Mapping[str, Any]) -> dict[str, Any]:
    """`settings` as they read back from the record (tuples become lists)."""
    return json.loads(json.dumps(dict(settings)))


def settings_differences(recorded: Mapping[str, Any], given: Mapping[str, Any]) -> list[str]:
    """Each setting that differs, in words (``--lr 0.01 (recorded) vs 0.02 (given)``; a fact of the data:
    ``train.pkl differs``, `_fact`), in `given`'s order then the recorded ones no longer given; empty: the same
    settings. 1 and 1.0 are the same; True and 1 are not."""
    given = _json(given)
    out = []
    for key in [*given, *(k for k in recorded if k not in given)]:
        old, new = recorded.get(key, _MISSING), given.get(key, _MISSING)
        if old == new and isinstance(old, bool) == isinstance(new, bool):
            continue
        flag = f"--{key} {_shown(old)} (recorded) vs {_shown(new)} (given)"
        out.append(flag if _is_flag(key) else _fact(key, old, new))
    return out


def _fact(key: str, old: Any, new: Any) -> str:
    """A fact of the data that differs: ``train.pkl differs`` (digests), ``student classes differ (3
    recorded, 4 given)`` (other values; a plural name takes "differ")."""
    verb = "differ" if key.endswith("s") else "differs"
    if any(isinstance(v, str) and _is_digest(v) for v in (old, new)):
        return f"{key} {verb}"
    return f"{key} {verb} ({_shown(old)} recorded, {_shown(new)} given)"


def read_settings(run_dir: str | os.PathLike, *, program: str, flag: str = "--out",
                  file: str = SETTINGS_FILE) -> dict[str, Any] | None:
    """The recorded settings of `run_dir` (None: no record); `ConfigError` if the file is not a record of
    `program` (e.g. ``l2l-finetune``)."""
    path = storage.absolute(run_dir) / file
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
        if (not isinstance(record, dict) or record.get("format") != SETTINGS_FORMAT or record.get("program") != program
                or not isinstance(record.get("settings"), dict)):
            raise ValueError
    except (OSError, ValueError):
        raise ConfigError(f"{flag} {path.parent}: {path} is not a settings record of {program}; start over with "
                          f"--overwrite, or choose a new {flag} to keep it") from None
    return record["settings"]


def write_settings(run_dir: str | os.PathLike, settings: Mapping[str, Any], *, program: str,
                   file: str = SETTINGS_FILE, info: Mapping[str, Any] | None = None) -> storage.AnyPath:
    """Record `settings` (JSON-able) of `program` in ``run_dir/file``, atomically, with `info` (facts shown,
    not compared) beside them; returns the path."""
    path = storage.absolute(run_dir) / file
    record = {**_json(info or {}), "format": SETTINGS_FORMAT, "version": 1, "program": program,
              "settings": _json(settings)}
    atomic_write_text(path, json.dumps(record, indent=1) + "\n")
    return path


def check_rerun(run_dir: str | os.PathLike, settings: Mapping[str, Any], *, program: str, flag: str = "--out",
                epochs: int | None = None, overwrite: bool = False, file: str = SETTINGS_FILE,
                info: Mapping[str, Any] | None = None) -> None:
    """Before any work, under the run lock: the checkpoints of `run_dir` were made with `settings` (or there
    are none), and hold at most `epochs` epochs; else `ConfigError` naming the directory and each
    difference. With `overwrite`, the old checkpoints (``checkpoints/``, the quarantined ones too) and record
    are removed. Then `settings` (and `info`) are recorded (`write_settings`)."""
    run_dir = storage.absolute(run_dir)
    what = f"start over with --overwrite, or choose a new {flag} to keep them"
    if overwrite:
        if storage.is_url(run_dir):
            with contextlib.suppress(OSError):
                storage.remove_tree(run_dir / CHECKPOINT_DIR)
        else:
            shutil.rmtree(run_dir / CHECKPOINT_DIR, ignore_errors=True)
        if (run_dir / CHECKPOINT_DIR).exists():
            raise ConfigError(f"{flag} {run_dir}: --overwrite cannot remove {run_dir / CHECKPOINT_DIR}; remove it")
        if (run_dir / file).exists():
            (run_dir / file).unlink()
    elif has_run_checkpoints(run_dir):
        recorded = read_settings(run_dir, program=program, flag=flag, file=file)
        if recorded is None:
            raise ConfigError(f"{flag} {run_dir}: {run_dir / CHECKPOINT_DIR} holds checkpoints without a record of "
                              f"their settings; {what}")
        diffs = settings_differences(recorded, settings)
        if diffs:
            raise ConfigError(f"{flag} {run_dir}: its checkpoints were made with other settings ({'; '.join(diffs)}); "
                              f"{what}")
        done = epochs_done(run_dir) if epochs is not None else None
        if done is not None and done > epochs:
            raise ConfigError(f"{flag} {run_dir}: its checkpoints reach epoch {done}, beyond --epochs {epochs}; give "
                              f"--epochs {done} or more, or {what}")
    if not storage.is_url(run_dir):  # a bucket has no folders to create
        run_dir.mkdir(parents=True, exist_ok=True)
    write_settings(run_dir, settings, program=program, file=file, info=info)


def epochs_done(run_dir: str | os.PathLike) -> int | None:
    """The epochs the newest readable checkpoint of `run_dir` holds (its ``next_epoch``); None if none reads.
    Read from the progress files (`l2l_jax.runkit.checkpoints.epochs_done`): process 0 asks alone."""
    return checkpoint_epochs(run_dir)


__all__ = ["SETTINGS_FILE", "SETTINGS_FORMAT", "check_rerun", "epochs_done", "read_settings", "settings_differences",
           "write_settings"]
