"""Length buckets: pad a batch's time axis to one of a few fixed lengths so a jitted step compiles once per
bucket, and fill a short batch up to the batch size with masked filler rows (docs/DESIGN.md, Batches).

The batch's own L travels as `length`; positions >= length are bucket padding (zero features, zero mask),
which the model ignores exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DEFAULT_BUCKETS: tuple[int, ...] = (16, 32, 64, 128, 192, 256, 320, 384, 448, 512)
OVERFLOW_STEP = 128  # beyond the largest bucket, round up to a multiple of this
TIME_KEYS = ("image", "audio", "features", "mask")


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


def pad_to_length(batch: dict[str, np.ndarray], out_len: int) -> dict[str, np.ndarray]:
    """Zero-pad the time axis of the features and the mask to `out_len` (other keys unchanged)."""
    out = dict(batch)
    for k in TIME_KEYS:
        if k not in batch:
            continue
        x = batch[k]
        if x.shape[1] > out_len:
            raise ValueError(f"{k} has time length {x.shape[1]} > bucket {out_len}")
        if x.shape[1] < out_len:
            pad = [(0, 0)] * x.ndim
            pad[1] = (0, out_len - x.shape[1])
            out[k] = np.pad(x, pad)
    return out


def pad_to_bucket(batch: dict[str, np.ndarray], buckets: Sequence[int] | None = DEFAULT_BUCKETS,
                  overflow_step: int = OVERFLOW_STEP) -> dict[str, np.ndarray]:
    """Pad `batch` to the bucket of its `length`."""
    return pad_to_length(batch, bucket_length(int(batch["length"]), buckets, overflow_step))


def fill_rows(batch: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    """Grow a batch to `size` rows with copies of row 0 marked `valid`=0 and `index`=-1 (no metric, loss or
    BatchNorm statistic counts them; copies of a real row keep every value finite)."""
    n = batch["label"].shape[0]
    if n > size:
        raise ValueError(f"batch has {n} rows > {size}")
    if n == size:
        return dict(batch)
    out = {}
    for k, x in batch.items():
        if k == "length":
            out[k] = x
            continue
        extra = np.repeat(x[:1], size - n, axis=0)
        if k == "valid":
            extra = np.zeros_like(extra)
        elif k == "index":
            extra = np.full_like(extra, -1)
        out[k] = np.concatenate([x, extra], axis=0)
    return out
