"""The packed layouts (`l2l_jax.packing`): the pack and chunk indices, `relayout`, the chunked scores and
attention against dense products, the BatchNorm statistics
with the zero positions as one weighted row, and the model's outputs and gradients with a tight host-built
index equal to those with the full-capacity index computed inside the model."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from fixture_inputs import clip_features, eval_collate, manifest_state_dict

from l2l_jax import packing, torch_names
from l2l_jax.model import PreviewConfig, build_model
from l2l_jax.nn import TorchBatchNorm
from l2l_jax.recipe import Recipe
from l2l_jax.steps import apply_model


def test_capacity_fits_with_at_most_a_quarter_spare_and_few_shapes():
    counts = np.arange(1, 40000)
    caps = np.array([packing.capacity(int(c)) for c in counts])
    assert np.all(caps >= counts) and np.all(caps >= packing.MIN_CAPACITY)
    big = counts >= packing.MIN_CAPACITY
    assert np.all(caps[big] <= 1.25 * counts[big] + 1)
    assert len(np.unique(caps[(counts >= 4000) & (counts <= 16000)])) <= 10


def test_chunk_index_covers_each_valid_rows_positions_up_to_its_last_mask():
    mask = np.zeros((4, 70), np.float32)
    mask[0, :70] = mask[1, :10] = mask[2, :33] = 1
    chunks = packing.chunk_index(mask, np.array([1, 1, 1, 0], np.float32), groups=2)  # 3 chunks a row
    assert chunks.shape == (2, packing.MIN_CHUNKS)
    np.testing.assert_array_equal(chunks[0, :5], [0, 1, 2, 3, -1])  # row 0: 3 chunks, row 1: 1
    np.testing.assert_array_equal(chunks[1, :3], [0, 1, -1])  # row 2: 2 chunks; row 3 is a filler


def test_pack_index_lists_masked_positions_of_valid_rows_per_group():
    mask = np.zeros((4, 6), np.float32)
    mask[0, :5] = mask[1, :2] = mask[2, :6] = mask[3, :3] = 1
    valid = np.array([1, 1, 1, 0], np.float32)  # row 3 is a filler
    pack = packing.pack_index(mask, valid, groups=2)
    assert pack.shape == (2, packing.MIN_CAPACITY)
    np.testing.assert_array_equal(pack[0, :8], [0, 1, 2, 3, 4, 6, 7, -1])  # rows 0, 1: flat row*6 + t
    np.testing.assert_array_equal(pack[1, :7], [0, 1, 2, 3, 4, 5, -1])  # row 2 only; the filler is left out
    assert np.all(pack[:, 8:] == -1)
    with pytest.raises(ValueError, match="do not fit"):
        packing.pack_index(mask, valid, groups=1, slots=4)
    with pytest.raises(ValueError, match="does not split"):
        packing.pack_index(mask, valid, groups=3)


def test_relayout_round_trip_and_its_gradients_match_a_plain_scatter():
    rng = np.random.default_rng(0)
    mask = (rng.uniform(size=(4, 9)) < 0.6).astype(np.float32)
    pack = jnp.asarray(packing.pack_index(mask, groups=2))
    x = jnp.asarray(rng.standard_normal((4, 9, 3)), jnp.float32)
    rows = packing.gather_packed(x, pack)
    inverse = packing.inverse_index(pack, 18)
    dest = jnp.where(pack >= 0, pack, 18)
    fill = jnp.asarray([0.5, -1.0, 2.0], jnp.float32)
    dense = packing.relayout(rows, fill, inverse, dest).reshape(4, 9, 3)
    want = np.where(mask[..., None] > 0, np.asarray(x), np.asarray(fill))
    np.testing.assert_array_equal(np.asarray(dense), want)
    g = jnp.asarray(rng.standard_normal((4, 9, 3)), jnp.float32)

    def reference(r, f):  # the same map by jnp indexing, whose gradient is jax's scatter-add
        table = jnp.concatenate([r, jnp.broadcast_to(f, (2, 1, 3))], axis=1)
        return jnp.take_along_axis(table, inverse[..., None], axis=1).reshape(4, 9, 3)

    ours = jax.grad(lambda r, f: jnp.sum(packing.relayout(r, f, inverse, dest).reshape(4, 9, 3) * g), (0, 1))
    ref = jax.grad(lambda r, f: jnp.sum(reference(r, f) * g), (0, 1))
    for a, b in zip(ours(rows, fill), ref(rows, fill), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("groups", [1, 2])
def test_chunk_scores_and_attend_equal_dense_products_with_their_gradients(groups):
    rng = np.random.default_rng(3)
    b, lb, k = 4, 70, 8
    mask = np.zeros((b, lb), np.float32)
    for r, n in enumerate([70, 10, 33, 41]):
        mask[r, :n] = 1
    valid = np.ones(b, np.float32)
    pack = jnp.asarray(packing.pack_index(mask, valid, groups))
    chunks = jnp.asarray(packing.chunk_index(mask, valid, groups))
    layout = packing.make_layout(pack, chunks, b, lb)
    keys = jnp.asarray(rng.standard_normal((b, lb, k)), jnp.float32) * mask[..., None]
    bank = jnp.asarray(rng.standard_normal((b, lb, k)), jnp.float32) * mask[..., None]
    q = jnp.asarray(rng.standard_normal((b, k)), jnp.float32)
    probs = jax.nn.softmax(jnp.asarray(rng.standard_normal((b, lb, 2)), jnp.float32), axis=1) * mask[..., None]
    rows = packing.gather_packed(keys, pack)
    fill = jnp.zeros((k,), jnp.float32)

    def ours(rows, q, probs):
        s = packing.chunk_scores(q, packing.to_chunks(rows, fill, layout), layout)
        a = packing.chunk_attend(probs, packing.dense_to_chunks(bank, layout), layout)
        return s, a

    def dense(keys, q, probs):
        return jnp.einsum("blk,bk->bl", keys, q) * mask, jnp.einsum("blj,blf->bjf", probs, bank)

    got, want = ours(rows, q, probs), dense(keys, q, probs)
    for a, w in zip(got, want, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(w), rtol=1e-5, atol=1e-5)
    gs, ga = jnp.asarray(rng.standard_normal((b, lb))), jnp.asarray(rng.standard_normal((b, 2, k)))

    def loss(fn):
        return lambda x, q, p: jnp.sum(fn(x, q, p)[0] * gs * mask) + jnp.sum(fn(x, q, p)[1] * ga)

    g_ours = jax.grad(loss(ours), (0, 1, 2))(rows, q, probs)
    g_dense = jax.grad(loss(dense), (0, 1, 2))(keys, q, probs)
    np.testing.assert_allclose(np.asarray(g_ours[0]), np.asarray(packing.gather_packed(g_dense[0], pack)),
                               rtol=1e-5, atol=1e-5)
    for a, w in zip(g_ours[1:], g_dense[1:], strict=True):
        np.testing.assert_allclose(np.asarray(a) * (1 if a.ndim == 2 else mask[..., None]),
                                   np.asarray(w) * (1 if w.ndim == 2 else mask[..., None]), rtol=1e-5, atol=1e-5)


def test_batchnorm_implicit_rows_equal_materialised_rows():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((2, 5, 4)), jnp.float32)
    w = jnp.asarray([[1, 1, 1, 0, 0], [1, 1, 0, 1, 0]], jnp.float32)
    row = jnp.asarray(rng.standard_normal(4), jnp.float32)
    bn = TorchBatchNorm(4)
    variables = bn.init(jax.random.key(0), x, w, False)
    (got, got_row), got_stats = bn.apply(variables, x, w, True, implicit=(jnp.float32(3.0), row),
                                         mutable=["batch_stats"])
    full = jnp.concatenate([x.reshape(-1, 4), jnp.broadcast_to(row, (3, 4))])
    full_w = jnp.concatenate([w.reshape(-1), jnp.ones(3)])
    want, want_stats = bn.apply(variables, full, full_w, True, mutable=["batch_stats"])
    np.testing.assert_allclose(np.asarray(got).reshape(-1, 4), np.asarray(want[:10]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(got_row), np.asarray(want[-1]), rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(got_stats), jax.tree.leaves(want_stats), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("groups", [1, 2])
def test_tight_pack_index_gives_the_full_capacity_results(groups):
    """Outputs, loss, every gradient and BatchNorm statistic: host index (tight, 1 or 2 groups) vs the
    index the model builds itself (one group, B * Lb slots)."""
    lengths = [37, 4, 12, 25]
    videos = [(clip_features(900 + j, n), clip_features(950 + j, n)) for j, n in enumerate(lengths)]
    arrays, mask = eval_collate(videos)
    b, L = mask.shape
    batch = {"image": arrays[0], "audio": arrays[1], "mask": mask, "length": np.int32(L),
             "label": np.arange(b, dtype=np.int32) % 12, "valid": np.ones(b, np.float32),
             "start_idx": np.zeros(b, np.int32)}
    variables = torch_names.from_state_dict(manifest_state_dict("manifests/preview_two_C12.json", 7), "two")
    cfg = PreviewConfig(num_classes=12, with_replacement=True, feature_interpolate=True, subsample_factor=2)
    model = build_model(cfg, "two")
    recipe = Recipe("two", with_avgpool_ce_loss=True, with_lstm_ce_loss=True)

    @jax.jit
    def run(batch):
        def loss_fn(params):
            out, upd = apply_model(model, {"params": params, "batch_stats": variables["batch_stats"]}, batch,
                                   batch["start_idx"], train=True, hard=False)
            return recipe.loss(out, batch["label"], batch["valid"])[0], (out, upd)

        (loss, (out, upd)), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
        ev = apply_model(model, variables, batch, batch["start_idx"], train=False, hard=False)
        return {"loss": loss, "train": out, "eval": ev, "grads": grads, "stats": upd}

    tight = dict(batch, pack=packing.pack_index(mask, batch["valid"], groups),
                 chunks=packing.chunk_index(mask, batch["valid"], groups))
    assert tight["pack"].size < b * L
    want, got = jax.device_get(run(batch)), jax.device_get(run(tight))
    for (path, w), g in zip(jax.tree_util.tree_leaves_with_path(want), jax.tree.leaves(got), strict=True):
        if np.issubdtype(np.asarray(w).dtype, np.integer):
            np.testing.assert_array_equal(g, w, err_msg=jax.tree_util.keystr(path))
        else:
            np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-6, err_msg=jax.tree_util.keystr(path))
