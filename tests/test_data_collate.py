"""l2l_jax.data.collate: parity with upstream's recorded collates, mask and fill rules, the seeded plan."""

from __future__ import annotations

import random

import numpy as np
import pytest
from batch_helpers import assemble, collate
from fixture_inputs import array_sha256, clip_features, eval_collate, read_json

from l2l_jax.data.collate import (
    ReplayRandInt,
    ShortBatchError,
    mask_for,
    plan_seeded,
    plan_upstream,
    window_of,
)

CASES = [(v, c) for v in ("two", "single") for c in read_json(f"collate/{v}.json")]


def fixture_items(variant, case):
    if variant == "two":
        return [(clip_features(si, n), clip_features(sa, n), lab, k) for k, (si, sa, n, lab) in
                enumerate(zip(case["image_seeds"], case["audio_seeds"], case["lengths"], case["labels"], strict=True))]
    return [(clip_features(s, n, case["width"]), lab, k) for k, (s, n, lab) in
            enumerate(zip(case["feature_seeds"], case["lengths"], case["labels"], strict=True))]


@pytest.mark.parametrize("variant, case", CASES, ids=[c["name"] for _, c in CASES])
def test_parity_with_upstream_collate(variant, case):
    replay = ReplayRandInt(case["randint_calls"])
    batch = collate(fixture_items(variant, case), variant=variant, train=case["train"], randint=replay)
    assert replay.exhausted
    keys = ("image", "audio") if variant == "two" else ("features",)
    for k in keys:
        assert list(batch[k].shape) == case["out_shape"]
        assert array_sha256(batch[k]) == case[f"{k}_sha256"], k
    np.testing.assert_array_equal(batch["mask"], np.array(case["mask"], np.float32))
    assert batch["label"].tolist() == case["label_out"] and batch["label"].dtype == np.int32
    assert batch["index"].tolist() == case["idx_out"] and batch["index"].dtype == np.int32
    assert batch["valid"].tolist() == [1.0] * len(case["labels"])
    assert batch["length"].shape == () and batch["length"].dtype == np.int32
    assert int(batch["length"]) == case["out_shape"][1]
    assert sorted(batch) == sorted([*keys, "mask", "label", "index", "valid", "length"])


def test_eval_collate_matches_the_fixture_helper():
    case = read_json("collate/two.json")[0]
    items = fixture_items("two", case)
    batch = collate(items, variant="two", train=False, randint=ReplayRandInt([]))
    (img, aud), mask = eval_collate([it[:2] for it in items])
    np.testing.assert_array_equal(batch["image"], img)
    np.testing.assert_array_equal(batch["audio"], aud)
    np.testing.assert_array_equal(batch["mask"], mask)


def test_mask_rules():
    # pre-crop lengths; L = 12: ones up to max(10, l) capped at L, zero beyond L (bucket padding)
    m = mask_for(np.array([3, 10, 11, 12, 500]), 12, out_len=16)
    assert m.sum(1).tolist() == [10, 10, 11, 12, 12]
    assert m[:, 12:].sum() == 0 and m.dtype == np.float32


def test_fill_rules_two_and_single():
    rng = np.random.default_rng(0)
    short = rng.random((4, 3)).astype(np.float32)
    long = rng.random((30, 3)).astype(np.float32)
    b = collate([(short, short + 1, 0, 0), (long, long + 1, 1, 1)], variant="two", train=False,
                randint=ReplayRandInt([]))
    # root: rows 4..9 repeat the last real clip, rows >= 10 are zero
    np.testing.assert_array_equal(b["image"][0, 4:10], np.repeat(short[3:], 6, 0))
    np.testing.assert_array_equal(b["audio"][0, 4:10], np.repeat(short[3:] + 1, 6, 0))
    assert not b["image"][0, 10:].any()
    calls = [[0, 3, v] for v in (2, 0, 1, 3, 3, 0)]
    s = collate([(short, 0, 0), (long, 1, 1)], variant="single", train=False, randint=ReplayRandInt(calls))
    np.testing.assert_array_equal(s["features"][0, 4:10], short[[2, 0, 1, 3, 3, 0]])
    assert s["mask"][0].sum() == 10


def test_training_crop_shares_one_start_across_modalities():
    x = np.arange(300 * 2, dtype=np.float32).reshape(300, 2)
    b = collate([(x, -x, 0, 0), (x[:50], -x[:50], 0, 1)], variant="two", train=True,
                randint=ReplayRandInt([[200, 500, 240], [0, 60, 17]]))
    assert b["image"].shape == (2, 240, 2)
    np.testing.assert_array_equal(b["image"][0], x[17:257])
    np.testing.assert_array_equal(b["audio"][0], -x[17:257])
    assert b["mask"][0].sum() == 240 and b["mask"][1].sum() == 50


def test_short_batch_raises_a_clear_error():
    x = np.ones((7, 4), np.float32)
    for train, calls in ((False, []), (True, [[200, 500, 300]])):
        with pytest.raises(ShortBatchError, match="shorter than 10 clips"):
            collate([(x, x, 0, 0), (x[:3], x[:3], 0, 1)], variant="two", train=train, randint=ReplayRandInt(calls))
    b = collate([(x, x, 0, 0)], variant="two", train=False, randint=ReplayRandInt([]), pad_short_batches=True)
    assert b["image"].shape == (1, 10, 4) and b["mask"].sum() == 10 and int(b["length"]) == 10


def _upstream_calls(lengths, plan, train, random_fill):
    """The randint calls upstream would have made to produce `plan`."""
    calls = []
    if train:
        calls.append([200, 500, plan.L if plan.L < max(lengths) else 500])
    calls += [[0, n - plan.L, int(plan.starts[b])] for b, n in enumerate(lengths) if n > plan.L]
    if random_fill:
        calls += [[0, n - 1, int(plan.fill_src[b, p])] for b, n in enumerate(lengths) for p in range(n, 10)]
    return calls


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("random_fill", [True, False])
def test_seeded_plan_is_an_upstream_plan(train, random_fill):
    lengths = [520, 230, 15, 7, 260, 3, 333, 48, 1, 10]
    for seed in range(20):
        plan = plan_seeded(lengths, train=train, random_fill=random_fill, rng=np.random.default_rng(seed))
        assert 200 <= plan.L <= 500 if train else plan.L == 520
        replay = ReplayRandInt(_upstream_calls(lengths, plan, train, random_fill))
        again = plan_upstream(lengths, train=train, random_fill=random_fill, randint=replay)
        assert replay.exhausted and again.L == plan.L
        np.testing.assert_array_equal(again.starts, plan.starts)
        np.testing.assert_array_equal(again.fill_src, plan.fill_src)
        for b, n in enumerate(lengths):
            s, e = window_of(n, plan, b)
            assert 0 <= s and e <= n and e - s == min(n, plan.L)


def test_seeded_plan_distribution_and_determinism():
    lengths = np.array([600, 600, 600, 5])
    a = [plan_seeded(lengths, train=True, random_fill=True, rng=np.random.default_rng(s)) for s in range(400)]
    b = [plan_seeded(lengths, train=True, random_fill=True, rng=np.random.default_rng(s)) for s in range(400)]
    assert all(x.L == y.L and np.array_equal(x.starts, y.starts) for x, y in zip(a, b, strict=True))
    Ls = np.array([p.L for p in a])
    assert Ls.min() >= 200 and Ls.max() <= 500 and len(set(Ls)) > 150
    frac = np.array([p.starts[0] / (600 - p.L) for p in a])
    assert 0.4 < frac.mean() < 0.6 and frac.min() < 0.05 and frac.max() > 0.95
    fills = np.concatenate([p.fill_src[3, 5:] for p in a])
    assert set(fills.tolist()) == {0, 1, 2, 3, 4}
    assert plan_seeded([50, 20], train=True, random_fill=False, rng=np.random.default_rng(0)).L == 50


def test_random_randint_source_and_assemble_dtype():
    rng = random.Random(3)
    items = [(np.ones((n, 8), np.float16), n, n) for n in (3, 400, 250)]
    b = collate(items, variant="single", train=True, randint=rng.randint)
    assert b["features"].dtype == np.float32 and b["features"].shape[0] == 3
    plan = plan_seeded([3, 12], train=False, random_fill=False, rng=np.random.default_rng(0))
    outs = assemble([(np.ones((3, 2), np.float16),), (np.ones((12, 2), np.float16),)], [3, 12], plan,
                    out_len=16, dtype=np.float16)
    assert outs[0].dtype == np.float16 and outs[0].shape == (2, 16, 2) and outs[0][0].sum() == 20
