"""The dense layout: features as upstream's collate gives them, (B, Lb, F), one row per video.

The readable reference of every layout operation, and the natural layout on GPU/TPU, where the zero padding
of a batch costs little next to launch overheads and every product is one large matmul.

Bitwise bucket invariance (docs/DESIGN.md) holds here too: padding a batch to a longer bucket appends zero
positions to every row, and each sum over positions is built so that they change no bit:
- the key conv's kernel gradient and the attended features' gradients are products over fixed-shape chunks
  of CHUNK positions, summed by a tree over the chunks (`position_dense`, `key_scores`, `attend`);
- the key BatchNorm's statistics and the conv bias's gradient are `position_sum` trees (over time, then
  rows) of the counted positions (`l2l_jax.torch_ops.TorchBatchNorm`, `l2l_jax.exact.spread`).
That machinery is the EXACT numerics'. Under numerics without exact sums (FAST) every operation is the plain
one: one einsum over all positions for the scores, the attended features and the key conv (XLA's own
gradients), plain sums; on GPU/TPU each is one large product, and on a sharded batch one all-reduce.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from l2l_jax.exact import spread, tree_sum
from l2l_jax.layouts.chunk import CHUNK  # positions per fixed-shape product in `chunked_matvec` / `chunked_vecmat`
from l2l_jax.numerics import EXACT, Numerics

Array = jax.Array



def _chunked(x: Array) -> Array:
    """(B, Lb, ...) -> (B, n, CHUNK, ...), the position axis zero-padded to a multiple of CHUNK."""
    b, lb = x.shape[:2]
    n = -(-lb // CHUNK)
    pad = [(0, 0), (0, n * CHUNK - lb)] + [(0, 0)] * (x.ndim - 2)
    return jnp.pad(x, pad).reshape(b, n, CHUNK, *x.shape[2:])


def chunked_matvec(m: Array, v: Array, numerics: Numerics = EXACT) -> Array:
    """<v[b], m[b, t]> -> (B, Lb), one (CHUNK, F) matrix-vector product per row and chunk: the kernel's
    shape does not depend on Lb, so a position's value does not either."""
    b, lb, f = m.shape
    mc = _chunked(m)
    vb = jnp.broadcast_to(v[:, None, :], (b, mc.shape[1], f))
    out = numerics.dot_general(mc, vb, (((3,), (2,)), ((0, 1), (0, 1))))
    return out.reshape(b, -1)[:, :lb]


def chunked_vecmat(w: Array, m: Array, numerics: Numerics = EXACT) -> Array:
    """sum_t w[b, t] m[b, t, :] -> (B, F): a fixed-shape product per chunk, the chunks summed by `tree_sum`
    (appended zero positions or chunks change no bit)."""
    out = numerics.dot_general(_chunked(w), _chunked(m), (((2,), (2,)), ((0, 1), (0, 1))))
    return tree_sum(out, axis=1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def key_scores(query: Array, keys: Array, numerics: Numerics = EXACT) -> Array:
    """<query[b], keys[b, t]> -> (B, Lb) by `chunked_matvec`; the query's gradient is a `chunked_vecmat`."""
    return chunked_matvec(keys, query, numerics)


def _key_scores_fwd(query, keys, numerics):
    return key_scores(query, keys, numerics), (query, keys)


def _key_scores_bwd(numerics, res, g):
    query, keys = res
    return chunked_vecmat(g, keys, numerics), g[:, :, None] * query[:, None, :]


key_scores.defvjp(_key_scores_fwd, _key_scores_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def attend(probs: Array, bank: Array, numerics: Numerics = EXACT) -> Array:
    """sum_t probs[b, t] bank[b, t, :] -> (B, F) by `chunked_vecmat`; the probabilities' gradient,
    <g[b], bank[b, t]>, is a `chunked_matvec`."""
    return chunked_vecmat(probs, bank, numerics)


def _attend_fwd(probs, bank, numerics):
    return attend(probs, bank, numerics), (probs, bank)


def _attend_bwd(numerics, res, g):
    probs, bank = res
    d_bank = (probs[:, :, None] * g[:, None, :]).astype(bank.dtype)
    return chunked_matvec(bank, g, numerics), d_bank


attend.defvjp(_attend_fwd, _attend_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def position_dense(x: Array, kernel: Array, numerics: Numerics = EXACT) -> Array:
    """x (B, Lb, D) @ kernel (D, K), per position. The kernel's gradient, a sum of x^T g over all B*Lb
    positions, is computed per chunk of CHUNK positions (all rows at once) and summed by a tree over chunks."""
    return numerics.dot(x, kernel)


def _position_dense_fwd(x, kernel, numerics):
    return position_dense(x, kernel, numerics), (x, kernel)


def _position_dense_bwd(numerics, res, g):
    x, kernel = res
    partial = numerics.einsum("bncd,bnck->ndk", _chunked(x), _chunked(g))
    d_x = numerics.dot(g, kernel.T).astype(x.dtype)
    return d_x, tree_sum(partial, axis=0)


position_dense.defvjp(_position_dense_fwd, _position_dense_bwd)


class DenseLayout(NamedTuple):
    """The dense layout of a batch of `rows` rows padded to the bucket length `length` (Lb)."""

    rows: int
    length: int  # Lb
    numerics: Numerics = EXACT  # of the scores, attended features and key conv (`l2l_jax.numerics`)

    def features(self, x: Array) -> Array:
        return self.numerics.store(x)

    def from_dense(self, x: Array) -> Array:
        return x

    def to_dense(self, x: Array) -> Array:
        return x

    def bank_view(self, bank: Array) -> Array:
        return bank

    def key_view(self, keys: Array) -> Array:
        return keys

    def conv(self, x: Array, kernel: Array, bias: Array, weights: Array) -> Array:
        if not self.numerics.exact_sums:
            return self.numerics.dot(x, kernel) + bias
        return position_dense(x, kernel, self.numerics) + spread(bias, weights)

    def statistics(self, weights: Array, bias: Array) -> tuple[Array, None]:
        return weights, None

    def head(self, rows: Array, fill: Array | None, width: int) -> Array:
        return rows[:, :width]

    def pick(self, x: Array, idx: Array) -> Array:
        return jnp.take_along_axis(x, idx.astype(jnp.int32)[:, None, None], axis=1)[:, 0].astype(jnp.float32)

    def row_sums(self, x: Array) -> Array:
        return self.numerics.sum(x.astype(jnp.float32), axis=1)

    def scores(self, query: Array, keys: Array) -> Array:
        if not self.numerics.exact_sums:
            return self.numerics.einsum("blk,bk->bl", keys, query)
        return key_scores(query, keys, self.numerics)

    def attend(self, probs: Array, bank: Array) -> Array:
        if not self.numerics.exact_sums:
            return self.numerics.einsum("blj,blf->bjf", probs, bank)
        return jnp.stack([attend(probs[..., j], bank, self.numerics) for j in range(probs.shape[-1])], axis=1)
