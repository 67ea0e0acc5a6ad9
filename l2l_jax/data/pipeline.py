"""The batch loader: deterministic, resumable, per-process sharded, prefetching.

Batch k of a run is a pure function of (seed, epoch, batch-in-epoch): the epoch's order (shuffled in
training, as upstream's `shuffle=True`; in order for eval), the global batch's members, and its plan
(L window, crops, random fills: `collate.plan_seeded`, drawn from a Generator keyed by those three numbers)
are computed identically by every process; each process then reads only its rows
`[p * B/P, (p+1) * B/P)` of the global batch. The grain pipeline maps batch numbers to batches with a
thread pool that reads ahead (`prefetch` batches), and its iterator state (`{"next_index": k}`) is all a
checkpoint needs to resume exactly where it stopped.

Shapes: the time axis is padded to a length bucket (`buckets.bucket_length(L)`), so a jitted step compiles
once per bucket; partial last batches are filled to the batch size with copies of row 0 marked valid=0 and
index=-1 (always for eval; for training unless `fill_last=False`, which keeps upstream's smaller batch).
"""

from __future__ import annotations

import math
import sys
import threading
from collections.abc import Iterator, Sequence

import grain
import numpy as np

from l2l_jax.layouts import chunk as chunk_layout

from .buckets import DEFAULT_BUCKETS, OVERFLOW_STEP, bucket_length
from .collate import MIN_CLIPS, TRAIN_WINDOW, BatchPlan, mask_for, plan_seeded
from .source import FeatureSource

_TAG_SHUFFLE = 0x5348
_TAG_BATCH = 0x4241


def _refs(x: object) -> int:
    return sys.getrefcount(x)


_probe = [np.empty(1, np.uint8)]
_FREE_REFS = next(_refs(b) for b in _probe)  # references of an idle pool buffer seen from BufferPool.take
del _probe


class BufferPool:
    """Reusable memory for batch arrays. Fresh large arrays cost page faults and a kernel zeroing pass on
    every batch (about twice the time of the copies themselves); a pool buffer is handed out again only when
    nothing but the pool references it (no batch, view or device alias of it is alive), so live data is
    never overwritten. Buffers are flat bytes; a batch array is a contiguous view of the first bytes."""

    def __init__(self, max_buffers: int):
        self.max_buffers = max_buffers
        self._bufs: list[np.ndarray] = []
        self._lock = threading.Lock()
        self.reused = 0  # how many arrays came from recycled memory

    def take(self, shape: tuple[int, ...], dtype) -> tuple[np.ndarray, bool]:
        """An array of `shape`/`dtype`: (array, recycled). Recycled arrays hold stale data."""
        dtype = np.dtype(dtype)
        nbytes = math.prod(shape) * dtype.itemsize
        with self._lock:
            chosen = None
            for buf in self._bufs:
                if buf.nbytes >= nbytes and _refs(buf) == _FREE_REFS:
                    chosen = buf
                    break
            recycled = chosen is not None
            self.reused += recycled
            if chosen is None:
                if len(self._bufs) >= self.max_buffers:  # replace a free buffer that is too small, if any
                    small = None
                    for buf in self._bufs:
                        if _refs(buf) == _FREE_REFS:
                            small = buf
                            break
                    if small is None:
                        return np.zeros(shape, dtype), False
                    self._bufs.remove(small)
                    del small
                chosen = np.zeros(max([nbytes] + [b.nbytes for b in self._bufs]), np.uint8)
                self._bufs.append(chosen)
            return chosen[:nbytes].view(dtype).reshape(shape), recycled


class BatchLoader:
    """Batches of one split for training (`train=True`) or evaluation, for this process's share.

    `batch_size` is the global batch (upstream's --batch_size); each process gets batch_size / process_count
    rows. `subsample` keeps every s-th clip (upstream's --feature_subsample with --subsample_factor).
    With `reuse_buffers` the feature arrays of a batch live in recycled memory, reused only once nothing
    references them (keeping a batch, a view of it or a zero-copy device array keeps it intact).
    With `chunk_groups` = G the features come in the chunk layout (G, S, F) of the batch's chunk index
    (`l2l_jax.layouts.chunk`; one group per local device), which the batch carries as ``chunks``: the policy's
    own layout, written directly, with no dense (B, Lb, F) copy. Without it they are dense (B, Lb, F).
    `feature_dtype` (e.g. "float16") converts features while reading; default: as the source stores them.
    """

    def __init__(self, source: FeatureSource, *, batch_size: int, train: bool, seed: int = 0,
                 buckets: Sequence[int] | None = DEFAULT_BUCKETS, overflow_step: int = OVERFLOW_STEP,
                 window: tuple[int, int] = TRAIN_WINDOW, min_clips: int = MIN_CLIPS, subsample: int = 1,
                 shuffle: bool | None = None, fill_last: bool = True, pad_short_batches: bool = False,
                 num_threads: int = 2, prefetch: int = 2, process_index: int | None = None,
                 process_count: int | None = None, reuse_buffers: bool = True, chunk_groups: int | None = None,
                 longest_first: bool = False, feature_dtype: str | None = None):
        if process_index is None or process_count is None:
            import jax

            process_index = jax.process_index() if process_index is None else process_index
            process_count = jax.process_count() if process_count is None else process_count
        if batch_size < 1 or subsample < 1:
            raise ValueError("batch_size and subsample must be >= 1")
        if batch_size % process_count:
            raise ValueError(f"batch_size {batch_size} is not divisible by {process_count} processes")
        if not (fill_last or train):
            raise ValueError("evaluation always fills its last batch (fill_last=False is for training)")
        if process_count > 1 and not fill_last:
            raise ValueError("multi-process loading needs fill_last=True (one shape per global batch)")
        if len(source) == 0:
            raise ValueError("empty split")
        if chunk_groups is not None and (batch_size // process_count) % chunk_groups:
            raise ValueError(f"{batch_size // process_count} rows per process do not split into "
                             f"{chunk_groups} chunk groups (one per local device)")
        if longest_first and train:
            raise ValueError("longest_first is for evaluation (training shuffles)")
        self.feature_dtype = np.dtype(feature_dtype) if feature_dtype else np.dtype(source.dtype)
        self.chunk_groups = chunk_groups
        self.source = source
        self.batch_size = batch_size
        self.train = train
        self.seed = int(seed)
        self.buckets = tuple(buckets) if buckets else None
        self.overflow_step = overflow_step
        self.window = window
        self.min_clips = min_clips
        self.subsample = subsample
        self.shuffle = train if shuffle is None else shuffle
        self.fill_last = fill_last
        self.pad_short_batches = pad_short_batches
        self.num_threads = num_threads
        self.prefetch = prefetch
        self.process_index = process_index
        self.process_count = process_count
        self.local_batch_size = batch_size // process_count
        self.random_fill = source.variant == "single"
        self.lengths = -(-np.asarray(source.lengths, np.int64) // subsample)  # clips after subsampling
        self._longest_first = np.argsort(-self.lengths, kind="stable") if longest_first else None
        self.batches_per_epoch = math.ceil(len(source) / batch_size)
        self._order_cache: tuple[int, np.ndarray] | None = None
        n_keys = len(source.keys)
        self.pool = BufferPool(n_keys * (prefetch + num_threads + 4)) if reuse_buffers else None

    # ----- the pure part: which videos, which draws -----
    def order(self, epoch: int) -> np.ndarray:
        """The epoch's video order (positions in the source): longest (after subsampling) first, stable, with
        `longest_first`; else shuffled per epoch in training, else the split's order."""
        if self._longest_first is not None:
            return self._longest_first
        if not self.shuffle:
            return np.arange(len(self.source))
        cached = self._order_cache  # one epoch cached; a tuple swap is atomic across reader threads
        if cached is not None and cached[0] == epoch:
            return cached[1]
        perm = np.random.default_rng([_TAG_SHUFFLE, self.seed, epoch]).permutation(len(self.source))
        self._order_cache = (epoch, perm)
        return perm

    def members(self, epoch: int, batch: int) -> tuple[np.ndarray, np.ndarray]:
        """(positions, valid) of global batch `batch` of `epoch`, filler rows (copies of row 0) included."""
        if not 0 <= batch < self.batches_per_epoch:
            raise IndexError(f"batch {batch} out of range [0, {self.batches_per_epoch})")
        pos = self.order(epoch)[batch * self.batch_size : (batch + 1) * self.batch_size]
        valid = np.ones(len(pos), bool)
        if len(pos) < self.batch_size and self.fill_last:
            n_fill = self.batch_size - len(pos)
            pos = np.concatenate([pos, np.repeat(pos[:1], n_fill)])
            valid = np.concatenate([valid, np.zeros(n_fill, bool)])
        return pos, valid

    def plan(self, epoch: int, batch: int) -> tuple[np.ndarray, np.ndarray, BatchPlan]:
        """(positions, valid, plan) of a global batch; filler rows share row 0's draws."""
        pos, valid = self.members(epoch, batch)
        n_real = int(valid.sum())
        rng = np.random.default_rng([_TAG_BATCH, self.seed, epoch, batch])
        plan = plan_seeded(self.lengths[pos[:n_real]], train=self.train, random_fill=self.random_fill, rng=rng,
                           window=self.window, min_clips=self.min_clips,
                           pad_short_batches=self.pad_short_batches)
        if n_real < len(pos):
            take = np.concatenate([np.arange(n_real), np.zeros(len(pos) - n_real, np.int64)])
            plan = plan.take(take)
        return pos, valid, plan

    def local_rows(self, n_global: int) -> slice:
        if self.process_count == 1:
            return slice(0, n_global)
        b = self.local_batch_size
        return slice(self.process_index * b, (self.process_index + 1) * b)

    # ----- the I/O part -----
    def make_batch(self, epoch: int, batch: int) -> dict[str, np.ndarray]:
        """This process's share of global batch `batch` of `epoch`, padded to its length bucket."""
        pos, valid, plan = self.plan(epoch, batch)
        rows = self.local_rows(len(pos))
        lpos, lvalid = pos[rows], valid[rows]
        lplan = plan.take(np.arange(len(pos))[rows])
        L = plan.L
        out_len = bucket_length(L, self.buckets, self.overflow_step)
        src, sub = self.source, self.subsample
        lengths = self.lengths[lpos]
        mask = mask_for(lengths, L, out_len, self.min_clips)
        chunks = None
        if self.chunk_groups:
            groups = self.chunk_groups
            chunks = chunk_layout.chunk_index(mask, lvalid, groups, full=self.process_count > 1)
            spans = chunk_layout.row_spans(chunks, len(lpos), out_len)
            shape = (groups, chunks.shape[1] * chunk_layout.CHUNK, src.width)
        else:
            shape = (len(lpos), out_len, src.width)
        dtype = self.feature_dtype
        taken = [self.pool.take(shape, dtype) if self.pool else (np.zeros(shape, dtype), False)
                 for _ in src.keys]
        outs = [o for o, _ in taken]
        stale = any(r for _, r in taken)
        if chunks is not None:  # each row's span of the chunk layout; filler rows have none
            rows_out = [[o[g, a:z] for o in outs] if z > a else None for g, a, z in spans]
            if stale:  # a recycled buffer: clear every group's unused slots
                for g in range(groups):
                    for o in outs:
                        o[g, spans[spans[:, 0] == g, 2].max(initial=0):] = 0
        else:
            rows_out = [[o[r] for o in outs] for r in range(len(lpos))]
        first_real: dict[int, int] = {}
        for r, i in enumerate(lpos):
            i = int(i)
            dests = rows_out[r]
            if dests is None:
                continue
            if not lvalid[r] and i in first_real:  # filler: copy the row already read
                for d, d0 in zip(dests, rows_out[first_real[i]], strict=True):
                    d[:] = d0
                continue
            s = int(lplan.starts[r])
            n = min(int(lengths[r]), L)
            src.read_into(i, s * sub, (s + n - 1) * sub + 1, sub, [d[:n] for d in dests])
            for p in range(int(lengths[r]), self.min_clips):
                for d in dests:
                    d[p] = d[lplan.fill_src[r, p]]
            if stale:  # a recycled buffer: clear what this row did not write
                for d in dests:
                    d[max(n, self.min_clips) :] = 0
            first_real.setdefault(i, r)
        batch_d = dict(zip(src.keys, outs, strict=True))
        batch_d["mask"] = mask
        if chunks is not None:
            batch_d["chunks"] = chunks
        batch_d["label"] = src.labels[lpos].astype(np.int32)
        batch_d["index"] = np.where(lvalid, src.ids[lpos], -1).astype(np.int32)
        batch_d["valid"] = lvalid.astype(np.float32)
        batch_d["length"] = np.asarray(L, np.int32)
        return batch_d

    def batch_at(self, step: int, start_epoch: int = 0) -> dict[str, np.ndarray]:
        """Batch number `step` of a run that begins at `start_epoch` (epoch-major order)."""
        epoch, b = divmod(step, self.batches_per_epoch)
        return self.make_batch(start_epoch + epoch, b)

    def epoch_of(self, step: int, start_epoch: int = 0) -> tuple[int, int]:
        """(epoch, batch in epoch) of run step `step`."""
        epoch, b = divmod(step, self.batches_per_epoch)
        return start_epoch + epoch, b

    # ----- grain -----
    def dataset(self, *, num_epochs: int | None = 1, start_epoch: int = 0) -> grain.MapDataset:
        """A grain MapDataset whose element k is `batch_at(k, start_epoch)`; `num_epochs=None`: endless."""
        n = (2**62 if num_epochs is None else num_epochs * self.batches_per_epoch)
        return grain.MapDataset.range(n).map(lambda k: self.batch_at(int(k), start_epoch))

    def iterator(self, *, num_epochs: int | None = 1, start_epoch: int = 0) -> grain.DatasetIterator:
        """A prefetching grain iterator over the batches; `get_state()`/`set_state()` resume it exactly."""
        opts = grain.ReadOptions(num_threads=max(1, self.num_threads), prefetch_buffer_size=max(1, self.prefetch))
        return iter(self.dataset(num_epochs=num_epochs, start_epoch=start_epoch).to_iter_dataset(opts))

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        """One epoch (epoch 0): the natural loop for evaluation."""
        return self.iterator(num_epochs=1)

    def __len__(self) -> int:
        return self.batches_per_epoch
