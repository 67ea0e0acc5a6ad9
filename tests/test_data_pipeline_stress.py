"""The batch loader under stress: recycled memory and the prefetching thread never change a batch, and a
consumer never waits forever.

Every batch of the prefetching iterator (1, 2 or 10 reader threads, several bucket sets, prefetch bounds that
keep the buffer pool full, a consumer that sleeps at random, holds batches and views of them, jumps with
`set_state` and meets failing reads) is compared bit for bit with a reference loader that recycles nothing and
reads in the calling thread. Calls that could hang run in a helper thread joined with a timeout, so that a
regression fails instead of hanging the suite.
"""

from __future__ import annotations

import gc
import threading
import time
from collections import deque

import numpy as np
import pytest
from fixture_inputs import clip_features
from test_data_pipeline import assert_batches_equal

from l2l_jax.data import pipeline
from l2l_jax.data.index import write_index
from l2l_jax.data.pipeline import BatchLoader
from l2l_jax.data.source import open_split

LENGTHS = [3, 7, 12, 40, 90, 150, 230, 310, 420, 520, 610, 9, 25, 66]  # 4 batches of 4, the last with fillers
WIDTH = 16
C = 3
HANG_LIMIT = 30  # seconds a next() may take here before it counts as hung


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("stress")
    for d in ("image_features", "audio_features", "r2plus1d152_features"):
        (root / d).mkdir()
    for i, n in enumerate(LENGTHS):
        for j, d in enumerate(("image_features", "audio_features", "r2plus1d152_features")):
            np.save(root / d / f"v{i}.npy", clip_features(100 * j + i, n, WIDTH))
    write_index(root / "train.pkl", [f"imageAudio_features/v{i}.npy" for i in range(len(LENGTHS))],
                [i % C for i in range(len(LENGTHS))])
    return root


def source(root, variant="two"):
    return open_split(root / "train.pkl", variant=variant, num_classes=C, width=WIDTH, cache=False, progress=False)


def loader(src, **kw):
    kw = {"batch_size": 4, "train": True, "seed": 0, "process_index": 0, "process_count": 1, "pad_short_batches": True,
          **kw}
    return BatchLoader(src, **kw)


def finishes(fn, limit=HANG_LIMIT):
    """fn() run in a helper thread: its result, or what it raised (any BaseException); fails if it hangs."""
    out = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - reported to the test
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(limit)
    assert not t.is_alive(), f"still waiting after {limit} s: the consumer hangs"
    if "error" in out:
        raise out["error"]
    return out["value"]


# (settings of the loader, prefetch bytes in batches (None: no byte bound), batches held, failing read every n)
CASES = {
    "dense-default-buckets": ({"window": (20, 120)}, None, 0, 0),
    "dense-eval-no-buckets": ({"train": False, "buckets": None, "prefetch": 1}, None, 5, 0),
    "chunk-small-buckets": ({"chunk_groups": 2, "buckets": (16, 48, 200), "overflow_step": 64,
                             "window": (10, 300)}, 1.0, 6, 23),
    "single-fills-held": ({"window": (12, 200), "buckets": (32, 96, 300), "prefetch": 3}, 0.5, 8, 0),
    "single-chunk-failing": ({"chunk_groups": 4, "train": False, "longest_first": True,
                              "prefetch": 1}, None, 3, 17),
}


@pytest.mark.parametrize("threads", [1, 2, 10])
@pytest.mark.parametrize("case", sorted(CASES))
def test_batches_match_a_loader_without_reuse(root, threads, case):
    """Many epochs through the prefetching iterator: each batch (and each batch or view held on to while later
    ones are made in recycled memory) equals the reference loader's, bit for bit."""
    kw, ahead_batches, hold, fail_every = CASES[case]
    variant = "single" if case.startswith("single") else "two"
    ref = loader(source(root, variant), reuse_buffers=False, num_threads=1, seed=11, **kw)
    src = source(root, variant)
    if fail_every:  # a read fails now and then: its half-written buffer must not leak into a later batch
        calls, lock, real = [0], threading.Lock(), src.read_into

        def flaky(i, *a, **k):
            with lock:
                calls[0] += 1
                fail = calls[0] % fail_every == 0
            if fail:
                raise OSError("injected read failure")
            return real(i, *a, **k)

        src.read_into = flaky
    one = max(ref.batch_nbytes(e, b) for e in range(3) for b in range(ref.batches_per_epoch))
    limit = None if ahead_batches is None else int(ahead_batches * one)
    ld = loader(src, num_threads=threads, seed=11, prefetch_bytes=limit, **kw)
    epochs = 40
    total = epochs * ld.batches_per_epoch
    it = ld.iterator(num_epochs=epochs)
    rng = np.random.default_rng([threads, sorted(CASES).index(case)])
    held: deque[tuple[int, str | None, object]] = deque()
    jumped, failures, full = False, 0, 0

    def check_held(k, part, x):
        want = ref.batch_at(k)
        if part is None:
            assert_batches_equal(x, want)
        else:
            np.testing.assert_array_equal(x, want[part][1:, ::2], err_msg=f"view of batch {k}")

    while True:
        k = it.get_state()["next_index"]
        if k >= total:
            break
        if not jumped and k == total // 2:  # resume elsewhere: batches made ahead are dropped
            jumped = True
            it.set_state({"next_index": int(rng.integers(1, total - 5))})
            continue
        try:
            batch = finishes(lambda: next(it))
        except OSError:
            failures += 1
            continue
        assert_batches_equal(batch, ref.batch_at(k))
        if hold and rng.random() < 0.4:  # held on to (or a view of its first modality, half the time)
            part = ld.source.keys[0] if rng.random() < 0.5 else None
            held.append((k, part, batch if part is None else batch[part][1:, ::2]))
            while len(held) > hold:
                check_held(*held.popleft())
        del batch
        full = max(full, ld.pool._owned)
        if rng.random() < 0.3:
            time.sleep(float(rng.uniform(0, 0.003)))
    for h in held:
        check_held(*h)
    with pytest.raises(StopIteration):
        next(it)
    assert ld.pool.reused > total // 4
    assert failures > 0 or not fail_every
    if hold:  # the pool filled up (then it replaces free buffers too small, or hands out fresh memory)
        assert full == ld.pool.max_buffers


def test_batch_in_a_resurrected_cycle_keeps_its_memory(root):
    """A batch whose last holder is a garbage cycle that resurrects it (a `__del__`) is still intact after later
    batches were made: memory goes back to the pool only when its array is deallocated."""
    src = source(root)
    ld, ref = loader(src, seed=3, prefetch=1), loader(src, seed=3, reuse_buffers=False)
    saved = []

    class Holder:
        def __init__(self, batch):
            self.batch, self.me = batch, self

        def __del__(self):
            saved.append(self.batch)

    Holder(ld.make_batch(0, 0))
    gc.collect()
    assert len(saved) == 1
    for e in range(3):
        for b in range(ld.batches_per_epoch):
            assert_batches_equal(ld.make_batch(e, b), ref.make_batch(e, b))
    assert ld.pool.reused > 0
    assert_batches_equal(saved[0], ref.make_batch(0, 0))


def test_pool_replaces_a_free_buffer_behind_a_leased_one_of_the_same_size():
    """The pool is full, the free buffer is not the first, and an earlier (leased) buffer has the same size: a
    larger request replaces the free one and leaves the leased one alone (this once compared arrays by value
    and raised)."""
    pool = pipeline.BufferPool(max_buffers=2)
    a = pool.take((4, 8), np.float32)[0]
    b = pool.take((4, 8), np.float32)[0]
    a[:] = 1
    del b
    c = pool.take((8, 8), np.float32)[0]
    c[:] = 2
    assert c.shape == (8, 8) and (a == 1).all() and pool._owned == 2
    d = pool.take((8, 8), np.float32)[0]  # both leased: fresh memory outside the pool
    assert not d.any() and (a == 1).all() and (c == 2).all()


def _fail_at(ld, batch, exc):
    """Make `ld`'s reads of global batch `batch` (epoch 0, evaluation order) raise `exc` once."""
    pos, _ = ld.members(0, batch)
    doomed, real, state = set(pos.tolist()), ld.source.read_into, {"armed": True}

    def read_into(i, *a, **k):
        if i in doomed and state["armed"]:
            state["armed"] = False
            raise exc("injected")
        return real(i, *a, **k)

    ld.source.read_into = read_into


@pytest.mark.parametrize("threads", [1, 3])
def test_next_after_a_failed_batch_when_the_producer_lingers(root, monkeypatch, threads):
    """The producer hands over its error and is still alive (a pause after its last step) when the consumer
    asks again: the next call starts a new producer instead of waiting on the old one."""
    real = pipeline._produce

    def lingering(*a):
        real(*a)
        time.sleep(1.0)

    monkeypatch.setattr(pipeline, "_produce", lingering)
    ref = loader(source(root), train=False, reuse_buffers=False)
    ld = loader(source(root), train=False, num_threads=threads, prefetch=1)
    _fail_at(ld, 1, OSError)
    it = ld.iterator(num_epochs=2)
    assert_batches_equal(finishes(lambda: next(it)), ref.make_batch(0, 0))
    with pytest.raises(OSError, match="injected"):
        finishes(lambda: next(it))
    for k in range(2, 2 * ld.batches_per_epoch):
        assert_batches_equal(finishes(lambda: next(it), limit=10), ref.batch_at(k))


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit])
def test_a_producer_ended_by_a_base_exception_is_not_waited_on(root, threads, exc):
    """KeyboardInterrupt or SystemExit raised while reading a batch is that batch's error; the consumer gets it
    at its turn and then the next batch, and never waits on the dead thread."""
    ref = loader(source(root), train=False, reuse_buffers=False)
    ld = loader(source(root), train=False, num_threads=threads, prefetch=1)
    _fail_at(ld, 1, exc)
    it = ld.iterator(num_epochs=1)
    assert_batches_equal(finishes(lambda: next(it)), ref.make_batch(0, 0))
    with pytest.raises(exc, match="injected"):
        finishes(lambda: next(it))
    for k in range(2, ld.batches_per_epoch):
        assert_batches_equal(finishes(lambda: next(it), limit=10), ref.batch_at(k))
