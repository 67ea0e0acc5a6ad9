"""Batch builders that only tests use: upstream's collate written plainly, and bucket padding and filler rows
applied to a finished batch.

`collate` is the reference the loader (`l2l_jax.data.pipeline.BatchLoader`) is checked against: it replays
upstream's draw order (`plan_upstream`) from any `randint(a, b)` source, crops each video to its window and
stacks the windows one row at a time (`assemble`, `place_row`), filling short videos as upstream does.
`pad_to_length`, `pad_to_bucket` and `fill_rows` do, on such a batch, what the loader does while it reads
(time axis zero-padded to a bucket, masked copies of row 0 up to the batch size); the bucket-invariance test
applies them to show that the padding changes no number. The loader writes its batches with its own code,
so none of this is library code: it lives here, next to the tests that use it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from l2l_jax.data.buckets import DEFAULT_BUCKETS, OVERFLOW_STEP, bucket_length
from l2l_jax.data.collate import MIN_CLIPS, TRAIN_WINDOW, BatchPlan, RandInt, mask_for, plan_upstream, window_of
from l2l_jax.data.index import Variant
from l2l_jax.variants import MODALITY_KEYS

TIME_KEYS = ("image", "audio", "features", "mask")


def place_row(outs: Sequence[np.ndarray], row: int, windows: Sequence[np.ndarray], length: int,
              plan_fill: np.ndarray) -> None:
    """Write one video's cropped window into row `row` of each output, then its short-video fill rows."""
    n = windows[0].shape[0]
    for out, w in zip(outs, windows, strict=True):
        out[row, :n] = w
        for p in range(int(length), plan_fill.shape[0]):
            out[row, p] = out[row, plan_fill[p]]


def assemble(windows: Sequence[Sequence[np.ndarray]], lengths: Sequence[int], plan: BatchPlan, *,
             out_len: int | None = None, dtype=np.float32) -> list[np.ndarray]:
    """Stack already-cropped per-video windows into zero-padded (B, out_len, F) arrays, one per modality."""
    B = len(windows)
    out_len = plan.L if out_len is None else out_len
    outs = [np.zeros((B, out_len, w.shape[1]), dtype) for w in windows[0]]
    for b in range(B):
        place_row(outs, b, windows[b], int(lengths[b]), plan.fill_src[b])
    return outs


def collate(items: Sequence[tuple], *, variant: Variant, train: bool, randint: RandInt,
            window: tuple[int, int] = TRAIN_WINDOW, min_clips: int = MIN_CLIPS,
            pad_short_batches: bool = False) -> dict[str, np.ndarray]:
    """Upstream's collate on in-memory items, in upstream's draw order.

    `items`: `(image, audio, label, index)` (two) or `(features, label, index)` (single), arrays (T, F).
    `randint(a, b)`: inclusive draws (`random.randint`, or a replay of upstream's recorded calls).
    Returns a batch dict of docs/DESIGN.md (float32, unpadded: time length L, `valid` all ones).
    """
    k = len(MODALITY_KEYS[variant])
    arrays = [tuple(np.asarray(a) for a in it[:k]) for it in items]
    lengths = np.array([a[0].shape[0] for a in arrays], np.int64)
    plan = plan_upstream(lengths, train=train, random_fill=(variant == "single"), randint=randint,
                         window=window, min_clips=min_clips, pad_short_batches=pad_short_batches)
    windows = []
    for b, arrs in enumerate(arrays):
        s, e = window_of(lengths[b], plan, b)
        windows.append(tuple(a[s:e] for a in arrs))
    outs = assemble(windows, lengths, plan, dtype=np.float32)
    batch = dict(zip(MODALITY_KEYS[variant], outs, strict=True))
    batch["mask"] = mask_for(lengths, plan.L, min_clips=min_clips)
    batch["label"] = np.array([int(it[k]) for it in items], np.int32)
    batch["index"] = np.array([int(it[k + 1]) for it in items], np.int32)
    batch["valid"] = np.ones(len(items), np.float32)
    batch["length"] = np.asarray(plan.L, np.int32)
    return batch


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
