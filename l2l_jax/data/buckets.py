"""Length buckets: the few fixed lengths a batch's time axis is padded to, so a jitted step compiles once per
bucket (docs/DESIGN.md, Batches). The loader (`pipeline`) does the padding, and fills a short batch up to the
batch size with masked filler rows.

The batch's own L travels as `length`; positions >= length are bucket padding (zero features, zero mask),
which the model ignores exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

DEFAULT_BUCKETS: tuple[int, ...] = (16, 32, 64, 128, 256, 384, 512)  # the programs' --buckets default
OVERFLOW_STEP = 128  # beyond the largest bucket, round up to a multiple of this


def bucket_length(L: int, buckets: Sequence[int] | None = DEFAULT_BUCKETS, overflow_step: int = OVERFLOW_STEP) -> int:
    """The smallest bucket >= L; beyond the largest, L rounded up to a multiple of `overflow_step`.
    `buckets=None` disables bucketing (returns L)."""
    if L < 1:
        raise ValueError(f"batch length must be >= 1, got {L}")
    if not buckets:
        return int(L)
    for b in sorted(buckets):
        if b >= L:
            return int(b)
    return int(-(-L // overflow_step) * overflow_step)

