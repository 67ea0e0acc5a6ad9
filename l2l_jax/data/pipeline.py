"""The batch loader: deterministic, resumable, per-process sharded, prefetching.

Batch k of a run is a pure function of (seed, epoch, batch-in-epoch): the epoch's order (shuffled in
training, as upstream's `shuffle=True`; in order for eval), the global batch's members, and its plan
(L window, crops, random fills: `collate.plan_seeded`, drawn from a Generator keyed by those three numbers)
are computed identically by every process; each process then reads only its rows
`[p * B/P, (p+1) * B/P)` of the global batch. `BatchLoader.iterator` makes batches ahead of the consumer
on one background thread, each batch's rows read by `num_threads` threads together, and holds at most
`prefetch` batches and `prefetch_bytes` bytes made ahead (at least one batch): host memory is bounded in bytes,
whatever the thread count. Its state (`{"next_index": k}`, as a grain iterator's) is all a checkpoint needs to
resume exactly where it stopped.

Shapes: the time axis is padded to a length bucket (`buckets.bucket_length(L)`), so a jitted step compiles
once per bucket; partial last batches are filled to the batch size with copies of row 0 marked valid=0 and
index=-1 (always for eval; for training unless `fill_last=False`, which keeps upstream's smaller batch).
"""

from __future__ import annotations

import math
import mmap
import threading
import weakref
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass

import grain
import jax
import numpy as np

from l2l_jax import variants
from l2l_jax.layouts import chunk as chunk_layout

from .buckets import DEFAULT_BUCKETS, OVERFLOW_STEP, bucket_length
from .collate import MIN_CLIPS, TRAIN_WINDOW, BatchPlan, mask_for, plan_seeded
from .source import FeatureSource

_TAG_SHUFFLE = 0x5348
_TAG_BATCH = 0x4241
DEFAULT_PREFETCH_BYTES = 1 << 29  # batches made ahead of the consumer, at most (at least one batch)
_NO_RANGES = np.zeros((0, 2), np.int64)
_ALL = np.array([[0, 2**62]], np.int64)  # a buffer whose contents are unknown


class _Buffer:
    """One pool buffer: zeroed memory mapped lazily (pages are backed when first written, as with calloc), and
    the (k, 2) byte ranges of it that may be nonzero. The memory is not an ndarray, so that an array made on it
    is the owner its views point to (numpy stops collapsing `base` chains at a non-array)."""

    __slots__ = ("raw", "dirty")

    def __init__(self, nbytes: int):
        flags = {"flags": mmap.MAP_PRIVATE} if hasattr(mmap, "MAP_PRIVATE") else {}
        self.raw = mmap.mmap(-1, max(nbytes, 1), **flags)
        self.dirty = _NO_RANGES


class BufferPool:
    """Reusable memory for batch arrays: fresh large arrays cost page faults and a kernel zeroing pass on every
    batch (about twice the time of the copies themselves).

    Why live data is never overwritten, with no reference counting here: a buffer goes back to the pool when
    the array handed out on it is deallocated, exactly when numpy would free a fresh array. Every view, export
    or device alias of that array holds it, and ndarrays are not tracked by the cyclic garbage collector, so its
    finalizer runs at deallocation, never earlier. The pool owns at most `max_buffers` buffers (then fresh
    memory), and clears a recycled buffer only where old data lies outside what the new batch writes."""

    def __init__(self, max_buffers: int):
        self.max_buffers = max_buffers
        self._free: list[_Buffer] = []  # buffers no array uses; under _lock
        self._returned: deque[_Buffer] = deque()  # appended by the arrays' finalizers (any thread, no lock)
        self._owned = 0  # buffers made and not dropped: free, returned or leased
        self._largest = 0  # new buffers get the largest size asked so far, so that they fit later batches
        self._lock = threading.Lock()
        self.reused = 0  # how many arrays came from recycled memory

    def take(self, shape: tuple[int, ...], dtype) -> tuple[np.ndarray, np.ndarray, _Buffer | None]:
        """An array of `shape`/`dtype`, the (k, 2) byte ranges of it that may hold stale data (none for fresh
        memory, which is zero), and its buffer (None: fresh memory outside the pool)."""
        dtype = np.dtype(dtype)
        nbytes = math.prod(shape) * dtype.itemsize
        with self._lock:
            while self._returned:
                self._free.append(self._returned.popleft())
            fits = [j for j, b in enumerate(self._free) if len(b.raw) >= nbytes]
            if fits:
                buf = self._free.pop(fits[0])
                self.reused += 1
            else:
                if self._owned >= self.max_buffers:
                    if not self._free:  # every buffer is leased
                        return np.zeros(shape, dtype), _NO_RANGES, None
                    self._free.pop(0)  # free but too small: make room for one that fits
                    self._owned -= 1
                self._largest = max(self._largest, nbytes)
                buf = _Buffer(self._largest)
                self._owned += 1
        stale = np.clip(buf.dirty, 0, nbytes)
        buf.dirty = _ALL  # until `record`: a batch that fails half-way leaves it unknown
        array = np.ndarray(shape, dtype, buffer=buf.raw)
        weakref.finalize(array, self._returned.append, buf).atexit = False
        return array, stale[stale[:, 1] > stale[:, 0]], buf

    @staticmethod
    def record(buf: _Buffer | None, nbytes: int, written: np.ndarray) -> None:
        """After the array of `buf` (its first `nbytes`) was filled: it is zero outside the (k, 2) byte ranges
        `written`; the buffer's bytes beyond it stay unknown."""
        if buf is not None:
            buf.dirty = np.concatenate([written, np.array([[nbytes, 2**62]], np.int64)])


def _outside(dirty: np.ndarray, written: np.ndarray) -> np.ndarray:
    """The (k, 2) byte ranges covered by `dirty` but not by `written` (each a set of disjoint ranges)."""
    if not len(dirty):
        return _NO_RANGES
    pts = np.unique(np.concatenate([dirty.ravel(), written.ravel()]))
    lo, hi = pts[:-1], pts[1:]

    def covered(ranges: np.ndarray) -> np.ndarray:
        if not len(ranges):
            return np.zeros(len(lo), bool)
        order = np.argsort(ranges[:, 0], kind="stable")
        starts, stops = ranges[order, 0], ranges[order, 1]
        j = np.searchsorted(starts, lo, "right") - 1
        return (j >= 0) & (lo < stops[np.maximum(j, 0)])

    keep = covered(dirty) & ~covered(written)
    return np.stack([lo[keep], hi[keep]], axis=1) if keep.any() else _NO_RANGES


@dataclass(frozen=True)
class _Draft:
    """Everything about a local batch but its features: rows, draws, bucket, mask, chunk index, array shape."""

    lpos: np.ndarray
    lvalid: np.ndarray
    plan: BatchPlan
    out_len: int
    lengths: np.ndarray
    mask: np.ndarray
    chunks: np.ndarray | None
    spans: np.ndarray | None
    shape: tuple[int, ...]
    nbytes: int  # of the feature arrays, all modalities


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
    `num_threads` threads read the rows of one batch together; `iterator()` holds at most `prefetch` batches
    and `prefetch_bytes` bytes of features made ahead of the consumer (at least one batch), so the memory a
    loader holds does not grow with its thread count.
    """

    def __init__(self, source: FeatureSource, *, batch_size: int, train: bool, seed: int = 0,
                 buckets: Sequence[int] | None = DEFAULT_BUCKETS, overflow_step: int = OVERFLOW_STEP,
                 window: tuple[int, int] = TRAIN_WINDOW, min_clips: int = MIN_CLIPS, subsample: int = 1,
                 shuffle: bool | None = None, fill_last: bool = True, pad_short_batches: bool = False,
                 num_threads: int = 2, prefetch: int = 2, process_index: int | None = None,
                 process_count: int | None = None, reuse_buffers: bool = True, chunk_groups: int | None = None,
                 longest_first: bool = False, feature_dtype: str | None = None,
                 prefetch_bytes: int | None = DEFAULT_PREFETCH_BYTES):
        if process_index is None or process_count is None:
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
        self.prefetch = max(1, prefetch)
        self.prefetch_bytes = prefetch_bytes  # None: no byte bound (only `prefetch` batches)
        self._executor: ThreadPoolExecutor | None = None
        self._workers_lock = threading.Lock()
        self.process_index = process_index
        self.process_count = process_count
        self.local_batch_size = batch_size // process_count
        self.random_fill = variants.get(source.variant).random_fill
        self.lengths = -(-np.asarray(source.lengths, np.int64) // subsample)  # clips after subsampling
        self._longest_first = np.argsort(-self.lengths, kind="stable") if longest_first else None
        self.batches_per_epoch = math.ceil(len(source) / batch_size)
        self._order_cache: tuple[int, np.ndarray] | None = None
        n_keys = len(source.keys)
        # made ahead (at most `prefetch`), in the making (one), held by the consumer and its device (a few)
        self.pool = BufferPool(n_keys * (self.prefetch + 4)) if reuse_buffers else None

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
        return self._assemble(self._draft(epoch, batch))

    def batch_nbytes(self, epoch: int, batch: int) -> int:
        """Bytes of the feature arrays of `make_batch(epoch, batch)`, known before anything is read."""
        return self._draft(epoch, batch).nbytes

    def _draft(self, epoch: int, batch: int) -> _Draft:
        pos, valid, plan = self.plan(epoch, batch)
        rows = self.local_rows(len(pos))
        lpos, lvalid = pos[rows], valid[rows]
        lplan = plan.take(np.arange(len(pos))[rows])
        out_len = bucket_length(plan.L, self.buckets, self.overflow_step)
        lengths = self.lengths[lpos]
        mask = mask_for(lengths, plan.L, out_len, self.min_clips)
        chunks = spans = None
        if self.chunk_groups:
            chunks = chunk_layout.chunk_index(mask, lvalid, self.chunk_groups, full=self.process_count > 1)
            spans = chunk_layout.row_spans(chunks, len(lpos), out_len)
            shape = (self.chunk_groups, chunks.shape[1] * chunk_layout.CHUNK, self.source.width)
        else:
            shape = (len(lpos), out_len, self.source.width)
        nbytes = math.prod(shape) * self.feature_dtype.itemsize * len(self.source.keys)
        return _Draft(lpos, lvalid, lplan, out_len, lengths, mask, chunks, spans, shape, nbytes)

    def _assemble(self, d: _Draft) -> dict[str, np.ndarray]:
        """The batch of a draft: feature arrays (recycled memory when free), rows read by the loader's threads."""
        src, L = self.source, d.plan.L
        taken = [self.pool.take(d.shape, self.feature_dtype) if self.pool
                 else (np.zeros(d.shape, self.feature_dtype), _NO_RANGES, None) for _ in src.keys]
        outs = [o for o, _, _ in taken]
        written = self._written(d)
        for o, stale, _ in taken:  # recycled memory: clear old data the rows will not overwrite
            flat = o.reshape(-1).view(np.uint8)
            for a, z in _outside(stale, written).tolist():
                flat[a:z] = 0
        if d.chunks is not None:  # each row's span of the chunk layout; filler rows have none
            rows_out = [[o[g, a:z] for o in outs] if z > a else None for g, a, z in d.spans]
        else:
            rows_out = [[o[r] for o in outs] for r in range(len(d.lpos))]
        reads, copies, first_real = [], [], {}
        for r, i in enumerate(d.lpos.tolist()):  # a filler row of a video read here copies that row
            if rows_out[r] is None:
                continue
            if not d.lvalid[r] and i in first_real:
                copies.append((r, first_real[i]))
                continue
            reads.append(r)
            first_real.setdefault(i, r)

        sub = self.subsample

        def request(r: int) -> tuple[int, int, int, int, list[np.ndarray]]:
            """Row r's read: (video, first raw clip, stop, step, its destinations)."""
            s, n = int(d.plan.starts[r]), min(int(d.lengths[r]), L)
            return int(d.lpos[r]), s * sub, (s + n - 1) * sub + 1, sub, [x[:n] for x in rows_out[r]]

        def fill(r: int) -> None:
            """Row r's fill positions (a video shorter than E_c clips), from its own rows."""
            for p in range(int(d.lengths[r]), self.min_clips):
                for x in rows_out[r]:
                    x[p] = x[d.plan.fill_src[r, p]]

        def read_rows(part: Sequence[int]) -> None:
            for r in part:
                src.read_into(*request(r))
                fill(r)

        workers = None if src.reads_whole_batch else self._workers()
        if src.reads_whole_batch:  # a pack on a bucket: the whole batch in one ranged read per modality
            src.read_many([request(r) for r in reads])
            for r in reads:
                fill(r)
        elif workers is None or len(reads) < 2:
            read_rows(reads)
        else:  # contiguous shares, one per thread; every share ends before the batch is returned or fails
            k = min(self.num_threads, len(reads))
            cuts = [len(reads) * j // k for j in range(k + 1)]
            futures = [workers.submit(read_rows, reads[cuts[j] : cuts[j + 1]]) for j in range(k)]
            wait(futures)
            for f in futures:
                f.result()
        for r, r0 in copies:
            for x, x0 in zip(rows_out[r], rows_out[r0], strict=True):
                x[:] = x0
        for o, _, buf in taken:
            BufferPool.record(buf, o.nbytes, written)
        batch_d = dict(zip(src.keys, outs, strict=True))
        batch_d["mask"] = d.mask
        if d.chunks is not None:
            batch_d["chunks"] = d.chunks
        batch_d["label"] = src.labels[d.lpos].astype(np.int32)
        batch_d["index"] = np.where(d.lvalid, src.ids[d.lpos], -1).astype(np.int32)
        batch_d["valid"] = d.lvalid.astype(np.float32)
        batch_d["length"] = np.asarray(L, np.int32)
        return batch_d

    def _written(self, d: _Draft) -> np.ndarray:
        """The (k, 2) byte ranges of one feature array that the rows of `d` write: each row's first
        max(clips, E_c) positions (its clips and fills; a filler row copies a row of the same video)."""
        w = np.maximum(np.minimum(d.lengths, d.plan.L), self.min_clips)
        if d.chunks is not None:
            g, a, z = d.spans.T
            has = z > a
            starts, w = (g * d.shape[1] + a)[has], np.minimum(w[has], (z - a)[has])
        else:
            starts, w = np.arange(len(d.lpos)) * d.out_len, np.minimum(w, d.out_len)
        row_bytes = d.shape[-1] * self.feature_dtype.itemsize
        return np.stack([starts * row_bytes, (starts + w) * row_bytes], axis=1).astype(np.int64)

    def _workers(self) -> ThreadPoolExecutor | None:
        """The threads that read a batch's rows together (None with one thread), made on first use."""
        if self.num_threads < 2:
            return None
        with self._workers_lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self.num_threads, thread_name_prefix="l2l-read")
                weakref.finalize(self, self._executor.shutdown, wait=False)
            return self._executor

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

    def iterator(self, *, num_epochs: int | None = 1, start_epoch: int = 0) -> BatchIterator:
        """A prefetching iterator over the batches (`BatchIterator`, bounded in bytes); `get_state()` /
        `set_state()` resume it exactly."""
        n = (2**62 if num_epochs is None else num_epochs * self.batches_per_epoch)
        return BatchIterator(self, n, start_epoch)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        """One epoch (epoch 0): the natural loop for evaluation."""
        return self.iterator(num_epochs=1)

    def __len__(self) -> int:
        return self.batches_per_epoch


class _Ahead:
    """What a `BatchIterator` and its producer thread share (the thread holds no reference to the iterator, so
    an abandoned iterator is collected and its thread stops)."""

    def __init__(self, start: int):
        self.cond = threading.Condition()
        self.next = start  # the consumer's next batch
        self.made: dict[int, tuple[dict | None, BaseException | None, int]] = {}  # k -> (batch, error, bytes)
        self.generation = 0  # bumped by set_state and close: a producer of an older generation stops
        self.running = False  # a producer of this generation works; it clears this, under the lock, as it ends
        self.thread: threading.Thread | None = None


def _produce(ahead: _Ahead, loader: BatchLoader, length: int, start_epoch: int, generation: int) -> None:
    """Make batches k = ahead.next.. in order while what is made ahead stays within the loader's bounds. A batch
    that fails (whatever it raises, KeyboardInterrupt and SystemExit too) is handed over as batch k's error and
    ends the thread; the consumer's next call starts a new producer after k. Whatever ends the thread, its last
    act under the lock is to clear `running` and notify, so a consumer never waits on a producer that is gone."""
    try:
        with ahead.cond:
            k = ahead.next
        while k < length:
            try:
                made = _make(ahead, loader, k, start_epoch, generation)
            except BaseException as e:  # noqa: BLE001 - handed to the consumer at batch k
                made = (None, e, 0)
            if made is None:
                return
            with ahead.cond:
                if ahead.generation != generation:
                    return
                ahead.made[k] = made
                ahead.cond.notify_all()
            if made[1] is not None:
                return
            del made
            k += 1
    finally:
        with ahead.cond:
            if ahead.generation == generation:
                ahead.running = False
            ahead.cond.notify_all()


def _make(ahead: _Ahead, loader: BatchLoader, k: int, start_epoch: int,
          generation: int) -> tuple[dict, None, int] | None:
    """(batch k, None, its feature bytes), made once the batches waiting leave room for it; None if stopped."""
    draft = loader._draft(*loader.epoch_of(k, start_epoch))
    limit = loader.prefetch_bytes
    with ahead.cond:
        while ahead.generation == generation and ahead.made and (
                len(ahead.made) >= loader.prefetch
                or (limit is not None and sum(m[2] for m in ahead.made.values()) + draft.nbytes > limit)):
            ahead.cond.wait()
        if ahead.generation != generation:
            return None
    return loader._assemble(draft), None, draft.nbytes


class BatchIterator:
    """Batches 0..length-1 of a run (`BatchLoader.batch_at(k, start_epoch)`), in order, made ahead of the
    consumer by one background thread: the batch in the making and those waiting count against the loader's
    `prefetch` (batches) and `prefetch_bytes` (feature bytes); one batch is always allowed. A batch that fails
    raises at its turn. `get_state()`/`set_state()` use grain's form, `{"next_index": k}`."""

    def __init__(self, loader: BatchLoader, length: int, start_epoch: int = 0):
        self._loader = loader
        self._length = int(length)
        self._start_epoch = int(start_epoch)
        self._ahead = _Ahead(0)
        weakref.finalize(self, _stop, self._ahead)

    def __iter__(self) -> BatchIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        a = self._ahead
        with a.cond:
            if a.next >= self._length:
                raise StopIteration
            while a.next not in a.made:
                if not a.running:  # none yet, or it ended (after a failed batch) before making this one
                    a.thread = threading.Thread(target=_produce, name="l2l-batches", daemon=True,
                                                args=(a, self._loader, self._length, self._start_epoch, a.generation))
                    a.thread.start()
                    a.running = True
                a.cond.wait()
            batch, error, _ = a.made.pop(a.next)
            a.next += 1
            a.cond.notify_all()
        if error is not None:
            raise error
        return batch

    def get_state(self) -> dict[str, int]:
        """`{"next_index": k}`: the next batch this iterator returns."""
        return {"next_index": self._ahead.next}

    def set_state(self, state: dict) -> None:
        """Continue at batch `state["next_index"]` (what `get_state` returned); work made ahead is dropped."""
        k = int(state["next_index"])
        if not 0 <= k <= self._length:
            raise IndexError(f"next_index {k} is out of range for {self._length} batches")
        _stop(self._ahead)
        with self._ahead.cond:
            self._ahead.next = k

    def close(self) -> None:
        """Stop making batches ahead and drop those made."""
        _stop(self._ahead)

    def __len__(self) -> int:
        return self._length


def _stop(ahead: _Ahead) -> None:
    """Stop the producer (after the batch it is making) and drop what it made."""
    with ahead.cond:
        ahead.generation += 1
        ahead.running = False
        ahead.made.clear()
        ahead.cond.notify_all()
        thread, ahead.thread = ahead.thread, None
    if thread is not None and thread is not threading.current_thread():
        thread.join()
