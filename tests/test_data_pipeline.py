"""l2l_jax.data.pipeline: upstream batches, buckets (one compile each), determinism, resume, process shards."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from batch_helpers import collate, fill_rows, pad_to_length
from fixture_inputs import clip_features

from l2l_jax.data.buckets import bucket_length
from l2l_jax.data.collate import ReplayRandInt, ShortBatchError
from l2l_jax.data.index import write_index
from l2l_jax.data.pipeline import BatchLoader
from l2l_jax.data.source import open_split

LENGTHS = [3, 5, 8, 12, 20, 33, 47, 64, 90, 130, 180, 210, 260, 320, 400, 520, 17, 9, 41, 75, 300, 14]
C = 5


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    for d in ("image_features", "audio_features", "r2plus1d152_features"):
        (root / d).mkdir()
    for i, n in enumerate(LENGTHS):
        np.save(root / "image_features" / f"v{i}.npy", clip_features(1000 + i, n))
        np.save(root / "audio_features" / f"v{i}.npy", clip_features(2000 + i, n))
        np.save(root / "r2plus1d152_features" / f"v{i}.npy", clip_features(3000 + i, n, 48))
    write_index(root / "train.pkl", [f"imageAudio_features/v{i}.npy" for i in range(len(LENGTHS))],
                [i % C for i in range(len(LENGTHS))])
    return root


def source(root, variant="two"):
    return open_split(root / "train.pkl", variant=variant, num_classes=C, width=512 if variant == "two" else 48,
                      cache=False, progress=False)


def loader(src, **kw):
    kw = {"batch_size": 8, "train": True, "seed": 0, "process_index": 0, "process_count": 1, **kw}
    return BatchLoader(src, **kw)


def assert_batches_equal(a, b):
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def upstream_batch(ld, epoch, b):
    """The same batch through upstream's collate (with the loader's draws replayed), then bucket + fill."""
    pos, valid, plan = ld.plan(epoch, b)
    n_real = int(valid.sum())
    sub = ld.subsample
    items = []
    for i in pos[:n_real]:
        arrays = [np.load(p)[::sub] for p in ld.source.index.paths[i]]
        items.append((*arrays, int(ld.source.labels[i]), int(ld.source.ids[i])))
    lengths = [it[0].shape[0] for it in items]
    calls = []
    if ld.train:
        calls.append([200, 500, plan.L if plan.L < max(lengths) else 500])
    calls += [[0, n - plan.L, int(plan.starts[r])] for r, n in enumerate(lengths) if n > plan.L]
    if ld.random_fill:
        calls += [[0, n - 1, int(plan.fill_src[r, p])] for r, n in enumerate(lengths) for p in range(n, 10)]
    replay = ReplayRandInt(calls)
    out = collate(items, variant=ld.source.variant, train=ld.train, randint=replay)
    assert replay.exhausted
    out = pad_to_length(out, bucket_length(plan.L, ld.buckets))
    return fill_rows(out, len(pos))


@pytest.mark.parametrize("variant", ["two", "single"])
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("subsample", [1, 2])
def test_batches_are_upstream_collates(root, variant, train, subsample):
    ld = loader(source(root, variant), train=train, subsample=subsample)
    assert ld.batches_per_epoch == 3
    for epoch in (0, 1) if train else (0,):
        for b in range(3):
            assert_batches_equal(ld.make_batch(epoch, b), upstream_batch(ld, epoch, b))


def test_epoch_covers_every_video_once(root):
    src = source(root)
    for train in (True, False):
        ld = loader(src, train=train)
        batches = list(ld.iterator(num_epochs=1))
        assert len(batches) == 3 and all(b["label"].shape == (8,) for b in batches)
        idx = np.concatenate([b["index"] for b in batches])
        valid = np.concatenate([b["valid"] for b in batches])
        assert valid.tolist() == [1] * 22 + [0] * 2 and idx[-2:].tolist() == [-1, -1]
        assert sorted(idx[:22].tolist()) == list(range(22))
        assert (idx[:22].tolist() == list(range(22))) == (not train)  # eval in order, training shuffled
        last = batches[-1]
        for r in (6, 7):  # filler rows copy row 0
            for k in ("image", "audio", "mask", "label"):
                np.testing.assert_array_equal(last[k][r], last[k][0])


def test_training_can_keep_upstreams_partial_batch(root):
    ld = loader(source(root), fill_last=False)
    last = ld.make_batch(0, 2)
    assert last["label"].shape == (6,) and last["valid"].tolist() == [1] * 6
    with pytest.raises(ValueError, match="evaluation always fills"):
        loader(source(root), train=False, fill_last=False)
    with pytest.raises(ValueError, match="fill_last=True"):
        loader(source(root), fill_last=False, process_count=2)
    with pytest.raises(ValueError, match="not divisible"):
        loader(source(root), process_count=3)


def test_same_seed_same_batches(root):
    src = source(root)
    a = list(loader(src, seed=7).iterator(num_epochs=2))
    b = list(loader(src, seed=7).iterator(num_epochs=2))
    c = list(loader(src, seed=8).iterator(num_epochs=2))
    for x, y in zip(a, b, strict=True):
        assert_batches_equal(x, y)
    assert any(not np.array_equal(x["index"], y["index"]) for x, y in zip(a, c, strict=True))
    assert not np.array_equal(a[0]["index"], a[3]["index"])  # a new order each epoch
    assert len({int(x["length"]) for x in a}) > 1


def test_iterator_state_resumes_mid_epoch(root):
    src = source(root)
    ld = loader(src, seed=3)
    it = ld.iterator(num_epochs=3)
    for _ in range(4):  # one epoch (3 batches) and one batch into the next
        next(it)
    state = json.loads(json.dumps(it.get_state()))  # what a checkpoint stores
    expected = [next(it) for _ in range(4)]
    resumed = loader(src, seed=3).iterator(num_epochs=3)
    resumed.set_state(state)
    for x, y in zip(expected, [next(resumed) for _ in range(4)], strict=True):
        assert_batches_equal(x, y)
    assert ld.epoch_of(4) == (1, 1)
    assert_batches_equal(expected[0], ld.batch_at(4))
    # starting at a later epoch gives that epoch's batches
    assert_batches_equal(next(ld.iterator(num_epochs=1, start_epoch=1)), ld.make_batch(1, 0))
    assert len(list(ld.iterator(num_epochs=2))) == 6
    endless = ld.iterator(num_epochs=None)
    for _ in range(7):
        last = next(endless)
    assert_batches_equal(last, ld.make_batch(2, 0))


def test_one_compile_per_bucket(root):
    src = source(root)
    traces = []

    @jax.jit
    def step(batch):
        traces.append(batch["image"].shape)  # runs only while tracing
        w = batch["mask"] * batch["valid"][:, None]
        return jnp.sum(batch["image"].sum(-1) * w) + jnp.sum(batch["audio"]) * batch["length"]

    shapes = set()
    for ld in (loader(src, batch_size=4, seed=1), loader(src, batch_size=4, train=False)):
        for batch in ld.iterator(num_epochs=2 if ld.train else 1):
            step(batch)
            shapes.add(batch["image"].shape)
    lengths = {s[1] for s in shapes}
    assert lengths <= {16, 32, 64, 128, 192, 256, 320, 384, 448, 512, 640}
    assert len(traces) == len(shapes) == len(set(traces))  # once per bucket, never again
    assert len(traces) < 12


def test_process_shards(root):
    src = source(root)
    whole = loader(src, seed=5)
    reads = []
    real = src.read_into
    for p in (0, 1):
        part = loader(src, seed=5, process_index=p, process_count=2)
        assert part.local_batch_size == 4
        src.read_into = lambda i, *a, **k: reads.append(i) or real(i, *a, **k)
        try:
            for b in range(3):
                full = whole.make_batch(0, b)
                reads.clear()
                mine = part.make_batch(0, b)
                for k in full:
                    exp = full[k] if k == "length" else full[k][4 * p : 4 * p + 4]
                    np.testing.assert_array_equal(mine[k], exp, err_msg=k)
                pos, valid = whole.members(0, b)
                allowed = set(pos[4 * p : 4 * p + 4].tolist())
                if not valid[4 * p : 4 * p + 4].all():
                    allowed.add(int(pos[0]))  # filler rows copy global row 0
                assert set(reads) <= allowed and len(reads) <= 4
        finally:
            del src.read_into


def test_short_batches(tmp_path):
    for d in ("image_features", "audio_features"):
        (tmp_path / d).mkdir()
    for i, n in enumerate([4, 6, 12]):
        np.save(tmp_path / "image_features" / f"v{i}.npy", clip_features(i, n))
        np.save(tmp_path / "audio_features" / f"v{i}.npy", clip_features(50 + i, n))
    write_index(tmp_path / "p.pkl", [f"imageAudio_features/v{i}.npy" for i in range(3)], [0, 1, 0])
    src = open_split(tmp_path / "p.pkl", num_classes=2, cache=False, progress=False)
    ld = loader(src, batch_size=2, train=False)
    ld.make_batch(0, 1)  # [12] + filler: fine
    with pytest.raises(ShortBatchError, match="shorter than 10 clips"):
        ld.make_batch(0, 0)  # [4, 6]
    b = loader(src, batch_size=2, train=False, pad_short_batches=True).make_batch(0, 0)
    assert int(b["length"]) == 10 and b["mask"].sum() == 20


def test_buffer_reuse_never_touches_live_batches(root):
    src = source(root)
    fresh = loader(src, batch_size=4, seed=2, reuse_buffers=False)
    pooled = loader(src, batch_size=4, seed=2)
    held, held_copy = [], []
    for e in range(3):
        for b in range(pooled.batches_per_epoch):
            x = pooled.make_batch(e, b)
            assert_batches_equal(x, fresh.make_batch(e, b))  # recycled memory is cleared where unused
            if b % 3 == 0:  # keep some batches (and a view of one) alive while later ones are built
                held.append(x["image"][1:] if b == 3 else x)
                held_copy.append({k: v.copy() for k, v in x.items()})
            del x
    assert pooled.pool._owned <= pooled.pool.max_buffers and pooled.pool.reused > 20
    for h, c in zip(held, held_copy, strict=True):
        if isinstance(h, dict):
            assert_batches_equal(h, c)
        else:
            np.testing.assert_array_equal(h, c["image"][1:])


@pytest.mark.parametrize("variant,groups", [("two", 1), ("two", 2), ("single", 4)])
def test_chunk_groups_write_the_chunk_layout_of_the_dense_batch(root, variant, groups):
    """`chunk_groups`: the features come in the chunk layout (`packing.chunk_features` of the dense batch),
    with the batch's chunk index; recycled buffers (several epochs, last batch with filler rows) hold
    nothing stale."""
    from l2l_jax.layouts import chunk as packing

    src = source(root, variant)
    dense_ld, chunk_ld = loader(src), loader(src, chunk_groups=groups)
    for epoch in range(3):
        for b in range(dense_ld.batches_per_epoch):
            dense, got = dense_ld.make_batch(epoch, b), chunk_ld.make_batch(epoch, b)
            chunks = packing.chunk_index(dense["mask"], dense["valid"], groups)
            want = {**dense, "chunks": chunks}
            for k in src.keys:
                want[k] = packing.chunk_features(dense[k], chunks)
            assert_batches_equal(got, want)
    assert chunk_ld.pool.reused > 0
    with pytest.raises(ValueError, match="chunk groups"):
        loader(src, chunk_groups=3)


def test_prefetch_is_bounded_in_bytes_whatever_the_threads(root):
    """Batches made ahead of a consumer that does not ask stay within `prefetch_bytes` (one batch at least),
    however many reader threads; the batches are those of `make_batch`, bit for bit."""
    import time

    src = source(root)
    ref = loader(src, seed=4, num_threads=1)
    one = max(ref.batch_nbytes(0, b) for b in range(ref.batches_per_epoch))
    for threads, limit in ((1, int(2.5 * one)), (4, int(2.5 * one)), (4, one // 2)):
        ld = loader(src, seed=4, num_threads=threads, prefetch=50, prefetch_bytes=limit)
        it = ld.iterator(num_epochs=5)
        assert_batches_equal(next(it), ref.make_batch(0, 0))
        held = []
        for _ in range(30):  # the producer runs ahead while this consumer waits
            time.sleep(0.01)
            with it._ahead.cond:
                held.append((len(it._ahead.made), sum(m[2] for m in it._ahead.made.values())))
        assert max(n for n, _ in held) >= 1
        assert all(nbytes <= limit or n == 1 for n, nbytes in held), held
        for k in range(1, 5 * ld.batches_per_epoch):
            assert_batches_equal(next(it), ref.batch_at(k))
        with pytest.raises(StopIteration):
            next(it)


def test_threads_and_chunk_layout_give_the_same_batches(root):
    src = source(root)
    for kw in ({}, {"chunk_groups": 2}):
        one, four = loader(src, seed=6, num_threads=1, **kw), loader(src, seed=6, num_threads=4, **kw)
        for b in range(one.batches_per_epoch):
            assert_batches_equal(one.make_batch(1, b), four.make_batch(1, b))
