"""Value checks of flags shared by every program: each raises a `ConfigError` naming the flag and the value,
before the program reads or writes anything."""

from __future__ import annotations

import math

from l2l_jax.errors import ConfigError

MAX_SEED = 2**32 - 1  # seeds are 32-bit (numpy and JAX keys)
MAX_BATCH = 1 << 16  # the largest --batch_size any program takes


def count_in(flag: str, value: int, hi: int, lo: int = 1) -> None:
    """`value` is an integer in [lo, hi]."""
    if value < lo:
        raise ConfigError(f"{flag} must be at least {lo}, not {value}")
    if value > hi:
        raise ConfigError(f"{flag} {value}: must be at most {hi}")


def number_in(flag: str, value: float, lo: float, hi: float | None, *, lo_open: bool = False,
              hi_open: bool = False, example: str = "") -> None:
    """`value` is a finite number in the interval from `lo` to `hi` (open at an end with `lo_open` / `hi_open`;
    no upper end when `hi` is None)."""
    ok = (math.isfinite(value) and (value > lo if lo_open else value >= lo)
          and (hi is None or (value < hi if hi_open else value <= hi)))
    if not ok:
        if hi is None:
            span = f"{'above' if lo_open else 'at least'} {lo:g}"
        else:
            span = f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        raise ConfigError(f"{flag} {value}: must be a finite number {span}{f' (e.g. {example})' if example else ''}")


def seed(flag: str, value: int, hi: int = MAX_SEED) -> None:
    """`value` is a seed in [0, hi]."""
    if not 0 <= value <= hi:
        raise ConfigError(f"{flag} {value}: must be in [0, {'2**32' if hi == MAX_SEED else hi + 1})")


def plain_name(flag: str, value: str | None) -> None:
    """`value` (None: not given) is a plain file-name part: not empty, not ``.`` or ``..``, no ``/``, ``\\`` or
    NUL, so a file named after it stays in its folder."""
    if value is not None and (not value or value in (".", "..") or any(c in value for c in "/\\\0")):
        raise ConfigError(f"{flag} {value!r}: must be a plain file-name part (no '/', not empty)")


__all__ = ["MAX_BATCH", "MAX_SEED", "count_in", "number_in", "plain_name", "seed"]
