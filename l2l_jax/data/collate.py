"""Upstream's train/eval collate (docs/UPSTREAM.md §2) as a plan (the random draws) and a mask; the loader
(`pipeline`) assembles the arrays from them, and tests/batch_helpers.py holds the whole collate written plainly.

Steps, per batch: L = randint(200, 500) capped at the longest video (training) or the longest video (eval);
longer videos are cropped to a window [s, s+L) shared by the modalities; shorter ones zero-padded; videos
shorter than E_c = 10 then get rows l..9 filled, with the last real clip (two-modality) or a random real clip
drawn per position (single variant), after every crop of the batch; mask ones up to max(10, l).

`plan_upstream` replays upstream's draw order from any `randint(a, b)` source (inclusive), so tests can feed
upstream's recorded calls. `plan_seeded` draws the same distributions from a numpy Generator, vectorised and
row-independent, so every process of a multi-host run computes the same plan for a global batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

MIN_CLIPS = 10  # E_c: hard-coded in upstream's collates, independent of --episode_length (quirk 2)
TRAIN_WINDOW = (200, 500)  # training L ~ randint(200, 500), capped at the longest video (quirk 3)

RandInt = Callable[[int, int], int]


class ShortBatchError(ValueError):
    """Every video of a batch is shorter than E_c clips: upstream's collate would overrun (IndexError)."""


@dataclass(frozen=True)
class BatchPlan:
    """The draws of one batch: `L`, crop `starts` (B,), and `fill_src` (B, min_clips): the source row of
    fill position p (-1 where position p is a real clip)."""

    L: int
    starts: np.ndarray
    fill_src: np.ndarray

    def take(self, rows: np.ndarray | Sequence[int]) -> BatchPlan:
        """The plan restricted to `rows` (same L)."""
        rows = np.asarray(rows, dtype=np.int64)
        return BatchPlan(self.L, self.starts[rows], self.fill_src[rows])


def _check_L(L: int, lengths: np.ndarray, min_clips: int, pad_short: bool) -> int:
    if L < min_clips:
        if pad_short:
            return min_clips
        raise ShortBatchError(
            f"every video in this batch is shorter than {min_clips} clips (longest: {int(lengths.max())}); "
            f"upstream's collate needs a batch length of at least {min_clips} (it raises IndexError). "
            "Use a larger batch, drop such videos, or pass pad_short_batches=True."
        )
    return L


def batch_length(lengths: np.ndarray, *, train: bool, draw: int | None = None,
                 min_clips: int = MIN_CLIPS, pad_short_batches: bool = False) -> int:
    """Upstream's L: the drawn window capped at the longest video (train), or the longest video (eval)."""
    lengths = np.asarray(lengths)
    longest = int(lengths.max())
    L = min(int(draw), longest) if train else longest
    return _check_L(L, lengths, min_clips, pad_short_batches)


def plan_upstream(lengths: Sequence[int], *, train: bool, random_fill: bool, randint: RandInt,
                  window: tuple[int, int] = TRAIN_WINDOW, min_clips: int = MIN_CLIPS,
                  pad_short_batches: bool = False) -> BatchPlan:
    """The plan drawn in upstream's order: L (train), one crop start per longer video in batch order, then
    (single variant) one draw per fill position of each short video in batch order."""
    lengths = np.asarray(lengths, dtype=np.int64)
    draw = randint(*window) if train else None
    L = batch_length(lengths, train=train, draw=draw, min_clips=min_clips, pad_short_batches=pad_short_batches)
    starts = np.zeros(len(lengths), np.int64)
    for b, n in enumerate(lengths):
        if n > L:
            starts[b] = randint(0, int(n) - L)
    fill = np.full((len(lengths), min_clips), -1, np.int64)
    for b, n in enumerate(lengths):
        for p in range(int(n), min_clips):
            fill[b, p] = randint(0, int(n) - 1) if random_fill else int(n) - 1
    return BatchPlan(L, starts, fill)


def plan_seeded(lengths: Sequence[int], *, train: bool, random_fill: bool, rng: np.random.Generator,
                window: tuple[int, int] = TRAIN_WINDOW, min_clips: int = MIN_CLIPS,
                pad_short_batches: bool = False) -> BatchPlan:
    """The same distributions as `plan_upstream`, drawn from `rng` for all rows at once (a fixed number of
    draws whatever the lengths, so row b's draws do not depend on which process reads it)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    draw = int(rng.integers(window[0], window[1] + 1))
    L = batch_length(lengths, train=train, draw=draw, min_clips=min_clips, pad_short_batches=pad_short_batches)
    u_start = rng.random(len(lengths))
    u_fill = rng.random((len(lengths), min_clips))
    span = np.maximum(lengths - L, 0) + 1
    starts = np.where(lengths > L, np.minimum((u_start * span).astype(np.int64), span - 1), 0)
    pos = np.arange(min_clips)[None, :]
    short = pos >= lengths[:, None]
    if random_fill:
        src = np.minimum((u_fill * lengths[:, None]).astype(np.int64), lengths[:, None] - 1)
    else:
        src = np.broadcast_to(lengths[:, None] - 1, short.shape)
    fill = np.where(short, src, -1).astype(np.int64)
    return BatchPlan(L, starts, fill)


def window_of(length: int, plan: BatchPlan, row: int) -> tuple[int, int]:
    """Rows [start, stop) of video `row` that land in the batch."""
    s = int(plan.starts[row])
    return s, s + min(int(length), plan.L)


def mask_for(lengths: np.ndarray, L: int, out_len: int | None = None, min_clips: int = MIN_CLIPS) -> np.ndarray:
    """Upstream's mask: ones for t < max(min_clips, l_b) (pre-crop l_b), capped at L; zero beyond L."""
    lengths = np.asarray(lengths, dtype=np.int64)
    out_len = L if out_len is None else out_len
    valid = np.minimum(np.maximum(lengths, min_clips), L)
    return (np.arange(out_len)[None, :] < valid[:, None]).astype(np.float32)


class ReplayRandInt:
    """A `randint` that replays recorded `[a, b, value]` calls, checking each call's bounds."""

    def __init__(self, calls: Sequence[Sequence[int]]):
        self.calls = [tuple(int(x) for x in c) for c in calls]
        self.pos = 0

    def __call__(self, a: int, b: int) -> int:
        if self.pos >= len(self.calls):
            raise AssertionError(f"randint({a}, {b}) called more often than recorded ({len(self.calls)} calls)")
        ea, eb, v = self.calls[self.pos]
        if (ea, eb) != (a, b):
            raise AssertionError(f"call {self.pos}: randint({a}, {b}) but upstream called randint({ea}, {eb})")
        self.pos += 1
        return v

    @property
    def exhausted(self) -> bool:
        return self.pos == len(self.calls)
