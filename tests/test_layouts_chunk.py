"""The chunk layout (`l2l_jax.layouts.chunk`): the chunk index, host and device layouts of features,
`relayout`, the chunked scores and attention against dense products, the BatchNorm statistics with the zero
positions as one weighted row, and the model's outputs and gradients with a tight host-built chunk layout
(as the loader writes it) equal to those of the dense layout."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from fixture_inputs import clip_features, eval_collate, manifest_state_dict

from l2l_jax import torch_names
from l2l_jax.layouts import chunk as packing
from l2l_jax.model import PreviewConfig, build_model
from l2l_jax.recipe import Recipe
from l2l_jax.steps import apply_model
from l2l_jax.torch_ops import TorchBatchNorm


def test_capacity_fits_with_at_most_a_quarter_spare_and_few_shapes():
    counts = np.arange(1, 40000)
    caps = np.array([packing.capacity(int(c)) for c in counts])
    assert np.all(caps >= counts) and np.all(caps >= packing.MIN_CHUNKS)
    big = counts >= packing.MIN_CHUNKS
    assert np.all(caps[big] <= 1.25 * counts[big] + 1)
    assert len(np.unique(caps[(counts >= 4000) & (counts <= 16000)])) <= 10


def test_chunk_index_covers_each_valid_rows_positions_up_to_its_last_mask():
    mask = np.zeros((4, 70), np.float32)
    mask[0, :70] = mask[1, :10] = mask[2, :33] = 1
    chunks = packing.chunk_index(mask, np.array([1, 1, 1, 0], np.float32), groups=2)  # 3 chunks a row
    assert chunks.shape == (2, packing.MIN_CHUNKS)
    np.testing.assert_array_equal(chunks[0, :5], [0, 1, 2, 3, -1])  # row 0: 3 chunks, row 1: 1
    np.testing.assert_array_equal(chunks[1, :3], [0, 1, -1])  # row 2: 2 chunks; row 3 is a filler
    full = packing.chunk_index(mask, np.array([1, 1, 1, 0], np.float32), groups=2, full=True)
    np.testing.assert_array_equal(full[:, :packing.MIN_CHUNKS], chunks)  # 2 rows x 3 chunks, at least 8


@pytest.mark.parametrize("groups", [1, 2])
def test_host_chunk_features_equal_the_device_layout_and_round_trip(groups):
    rng = np.random.default_rng(0)
    b, lb = 4, 70
    mask = np.zeros((b, lb), np.float32)
    for r, n in enumerate([70, 10, 0, 0]):
        mask[r, :n] = 1
    valid = np.array([1, 1, 0, 0], np.float32)  # rows 2, 3 are fillers (with 2 groups, the whole second)
    x = (rng.standard_normal((b, lb, 3)) * mask[..., None]).astype(np.float16)
    chunks = packing.chunk_index(mask, valid, groups)
    layout = packing.make_layout(jnp.asarray(chunks), b, lb)
    host = packing.chunk_features(x, chunks)
    assert host.shape == (groups, chunks.shape[1] * packing.CHUNK, 3) and host.dtype == np.float16
    np.testing.assert_array_equal(host, np.asarray(packing.to_chunks(jnp.asarray(x), layout)))
    np.testing.assert_array_equal(np.asarray(packing.to_dense(jnp.asarray(host), layout)), x)
    idx = jnp.asarray([69, 40, 3, 0], jnp.int32)  # 40 lies past row 1's chunks: zero, as its dense value
    np.testing.assert_array_equal(np.asarray(packing.pick(jnp.asarray(host), layout, idx)), x[np.arange(b), idx])
    np.testing.assert_allclose(np.asarray(packing.row_sums(jnp.asarray(host, jnp.float32), layout)),
                               x.astype(np.float32).sum(axis=1), rtol=1e-5, atol=1e-5)
    laid_out = packing.as_chunks(jnp.asarray(host), layout)
    assert laid_out.dtype == jnp.float32 and laid_out.shape == host.shape


def test_relayout_round_trip_and_its_gradients_match_a_plain_scatter():
    rng = np.random.default_rng(0)
    mask = (rng.uniform(size=(4, 9)) < 0.6).astype(np.float32)
    mask[:, 0] = 1
    layout = packing.make_layout(jnp.asarray(packing.chunk_index(mask, groups=2)), 4, 9)
    x = jnp.asarray(rng.standard_normal((4, 9, 3)), jnp.float32)
    rows = packing.to_chunks(x, layout)  # (2, S, 3): every position of each row, then unused slots
    fill = jnp.asarray([0.5, -1.0, 2.0], jnp.float32)
    dense = packing.relayout(rows, fill, layout.dense_chunk, layout.chunk_dense).reshape(4, 9, 3)
    np.testing.assert_array_equal(np.asarray(dense), np.asarray(x))
    g = jnp.asarray(rng.standard_normal(rows.shape), jnp.float32)

    def reference(d, f):  # dense -> chunks by jnp indexing, whose gradient is jax's scatter-add
        table = jnp.concatenate([d.reshape(2, 18, 3), jnp.broadcast_to(f, (2, 1, 3))], axis=1)
        return jnp.take_along_axis(table, layout.chunk_dense[..., None], axis=1)

    def ours(d, f):
        return packing.relayout(d.reshape(2, 18, 3), f, layout.chunk_dense, layout.dense_chunk)

    np.testing.assert_array_equal(np.asarray(ours(x, fill)), np.asarray(reference(x, fill)))
    got = jax.grad(lambda d, f: jnp.sum(ours(d, f) * g), (0, 1))(x, fill)
    want = jax.grad(lambda d, f: jnp.sum(reference(d, f) * g), (0, 1))(x, fill)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("groups", [1, 2])
def test_chunk_scores_and_attend_equal_dense_products_with_their_gradients(groups):
    rng = np.random.default_rng(3)
    b, lb, k = 4, 70, 8
    mask = np.zeros((b, lb), np.float32)
    for r, n in enumerate([70, 10, 33, 41]):
        mask[r, :n] = 1
    valid = np.ones(b, np.float32)
    chunks = jnp.asarray(packing.chunk_index(mask, valid, groups))
    layout = packing.make_layout(chunks, b, lb)
    keys = jnp.asarray(rng.standard_normal((b, lb, k)), jnp.float32) * mask[..., None]
    bank = jnp.asarray(rng.standard_normal((b, lb, k)), jnp.float32) * mask[..., None]
    q = jnp.asarray(rng.standard_normal((b, k)), jnp.float32)
    probs = jax.nn.softmax(jnp.asarray(rng.standard_normal((b, lb, 2)), jnp.float32), axis=1) * mask[..., None]
    rows = packing.to_chunks(keys, layout)

    def ours(rows, q, probs):
        s = packing.chunk_scores(q, rows, layout)
        a = packing.chunk_attend(probs, packing.to_chunks(bank, layout), layout)
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
    np.testing.assert_allclose(np.asarray(g_ours[0]), np.asarray(packing.to_chunks(g_dense[0], layout)),
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
def test_tight_host_layout_gives_the_full_capacity_results(groups):
    """Outputs, loss, every gradient and BatchNorm statistic: features laid out on the host with a tight
    chunk index (1 or 2 groups) vs dense features and the index the model builds itself (one group, every
    chunk of every row)."""
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

    chunks = packing.chunk_index(mask, batch["valid"], groups)
    tight = dict(batch, chunks=chunks, image=packing.chunk_features(batch["image"], chunks),
                 audio=packing.chunk_features(batch["audio"], chunks))
    assert tight["image"].shape[:2] == (groups, chunks.shape[1] * packing.CHUNK)
    want, got = jax.device_get(run(batch)), jax.device_get(run(tight))
    for (path, w), g in zip(jax.tree_util.tree_leaves_with_path(want), jax.tree.leaves(got), strict=True):
        if np.issubdtype(np.asarray(w).dtype, np.integer):
            np.testing.assert_array_equal(g, w, err_msg=jax.tree_util.keystr(path))
        else:
            np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-6, err_msg=jax.tree_util.keystr(path))
