"""l2l_jax.data.buckets: bucket choice, time padding, filler rows."""

from __future__ import annotations

import numpy as np
import pytest
from batch_helpers import collate, fill_rows, pad_to_bucket, pad_to_length

from l2l_jax.data.buckets import DEFAULT_BUCKETS, bucket_length
from l2l_jax.data.collate import ReplayRandInt
from l2l_jax.programs import flags as program_flags


def test_bucket_length():
    assert [bucket_length(L) for L in (1, 10, 16, 17, 200, 257, 500, 512)] == [16, 16, 16, 32, 256, 384, 512, 512]
    assert DEFAULT_BUCKETS == tuple(program_flags.FLAGS["buckets"]["default"])  # one default for library and programs
    assert bucket_length(513) == 640 and bucket_length(700) == 768
    assert bucket_length(700, (64, 128), overflow_step=100) == 700 and bucket_length(701, (64,), 100) == 800
    assert bucket_length(37, None) == 37 and bucket_length(37, ()) == 37
    assert bucket_length(37, (100, 40, 50)) == 40
    with pytest.raises(ValueError):
        bucket_length(0)
    assert all(DEFAULT_BUCKETS[i] < DEFAULT_BUCKETS[i + 1] for i in range(len(DEFAULT_BUCKETS) - 1))


def _batch(variant="two"):
    x = np.arange(37 * 3, dtype=np.float32).reshape(37, 3) + 1
    if variant == "two":
        items = [(x, -x, 4, 7), (x[:5], -x[:5], 2, 9)]
    else:
        items = [(x, 4, 7), (x[:5], 2, 9)]
    return collate(items, variant=variant, train=False, randint=ReplayRandInt([] if variant == "two" else
                                                                                [[0, 4, 1]] * 5))


@pytest.mark.parametrize("variant", ["two", "single"])
def test_pad_to_bucket(variant):
    b = _batch(variant)
    p = pad_to_bucket(b)
    keys = ("image", "audio") if variant == "two" else ("features",)
    for k in (*keys, "mask"):
        assert p[k].shape[1] == 64 and p[k].dtype == b[k].dtype
        np.testing.assert_array_equal(p[k][:, :37], b[k])
        assert not p[k][:, 37:].any()
    assert int(p["length"]) == 37
    for k in ("label", "index", "valid"):
        np.testing.assert_array_equal(p[k], b[k])
    with pytest.raises(ValueError):
        pad_to_length(p, 40)


def test_fill_rows():
    b = pad_to_bucket(_batch())
    f = fill_rows(b, 5)
    assert f["image"].shape == (5, 64, 3)
    assert f["valid"].tolist() == [1, 1, 0, 0, 0] and f["valid"].dtype == np.float32
    assert f["index"].tolist() == [7, 9, -1, -1, -1] and f["index"].dtype == np.int32
    assert f["label"].tolist() == [4, 2, 4, 4, 4]
    for r in (2, 3, 4):
        np.testing.assert_array_equal(f["image"][r], b["image"][0])
        np.testing.assert_array_equal(f["mask"][r], b["mask"][0])
    assert f["length"] is b["length"]
    assert fill_rows(b, 2)["image"] is b["image"]
    with pytest.raises(ValueError):
        fill_rows(b, 1)
