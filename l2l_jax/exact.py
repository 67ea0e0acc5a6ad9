"""Bitwise exactness: sums that padding cannot change, and exact ties.

Two promises of the policy rest on this module (docs/DESIGN.md, "Bitwise bucket invariance and ties"):
- padding a batch to a longer length bucket, or appending filler rows, changes no bit of any value or
  gradient: `tree_sum`, `position_sum`, `spread` and `padded_softmax` build every sum whose length depends on
  the bucket (or on the row count) from fixed halving trees, and route gradients through the same trees;
- bitwise-identical key rows get bitwise-identical scores, so the argmax picks the first copy as upstream's
  does (docs/UPSTREAM.md §4): `tie_map` and `canonical_scores`.
XLA's own reductions and dot products round differently for different axis lengths, so plain
`jnp.sum`/`einsum` would not do.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

# -- bucket invariance ------------------------------------------------------------------------------------
# Every sum whose length depends on the bucket length Lb (or on the number of filler rows) is a fixed
# halving tree over the axis padded with zeros to a power of two. Appending zeros to such an axis changes no
# bit: the padded length becomes a larger power of two, whose first halvings add exact zeros, after which
# the tree is the one of the shorter length. Two details make that hold in XLA's CPU code:
# - the summands pass through a `where` on a data-dependent condition first: otherwise LLVM contracts the
#   multiply that produces a summand with the tree's first add into one FMA, and whether it can depends on
#   whether the axis needed padding (a padded summand is a select, not a multiply);
# - gradients of broadcasts (whose transposes are sums) go through the same trees via custom VJPs.


@jax.custom_jvp
def _no_contract(x: Array) -> Array:
    """`where(x != 0, x, 0)`: the value of x exactly (NaN and inf included), but a select rather than the
    multiply that produced it, so LLVM cannot fuse that multiply into a following add. Its derivative is the
    identity (also at x == 0), written as a select for the same reason."""
    zero = jnp.zeros((), x.dtype)
    return jnp.where(x != zero, x, zero)


@_no_contract.defjvp
def _no_contract_jvp(primals, tangents):
    x, t = primals[0], tangents[0]
    # the identity for every non-NaN x, again as a select (it blocks the contraction in the backward pass)
    return _no_contract(x), jnp.where(x == x, t, jnp.zeros((), t.dtype))


def tree_sum(x: Array, axis: int = -1, where: Array | None = None) -> Array:
    """Sum over `axis` by a fixed halving tree (bitwise invariant to appended zeros). `where` (broadcastable
    to x) zeroes the entries where it is False. The summands first pass through `_no_contract`, which keeps
    LLVM from contracting the multiply that produced them into the tree's first add (see the section
    comment)."""
    if where is not None:
        x = jnp.where(where, x, jnp.zeros((), x.dtype))
    x = _no_contract(x)
    axis = axis % x.ndim
    n = x.shape[axis]
    size = 1 << max(n - 1, 0).bit_length()
    if size != n:
        pad = [(0, 0)] * x.ndim
        pad[axis] = (0, size - n)
        x = jnp.pad(x, pad)
    while size > 1:
        size //= 2
        x = jax.lax.slice_in_dim(x, 0, size, axis=axis) + jax.lax.slice_in_dim(x, size, 2 * size, axis=axis)
    return jnp.squeeze(x, axis)


def gradient_sum(x: Array, axis: int = -1) -> Array:
    """A sum for objectives that are only differentiated: its derivative is bitwise `tree_sum`'s (each
    summand gets the cotangent through the same `_no_contract` select), but its value is XLA's own
    reduction, so over a device-sharded axis it is one all-reduce instead of a tree of point-to-point
    transfers. (XLA:CPU sends every collective-permute of a multi-process run on one gloo slot: two such
    trees that may run at the same time can pair the wrong messages.)"""
    return jnp.sum(_no_contract(x), axis=axis)


def position_sum(x: Array, lead: int, where: Array | None = None) -> Array:
    """Sum over the `lead` leading axes (rows, then time), innermost first, each by `tree_sum`; `where`
    selects the entries that count (the others must be zero or are zeroed)."""
    if where is not None:
        x = jnp.where(where, x, jnp.zeros((), x.dtype))
    for axis in reversed(range(lead)):
        x = tree_sum(x, axis)
    return x


@jax.custom_vjp
def spread(v: Array, weights: Array) -> Array:
    """v (F,) broadcast to `weights.shape + (F,)`. Its gradient sums the cotangent over the positions with
    weight > 0 by `position_sum`: exact wherever the cotangent is zero at the others (filler rows never reach
    the loss)."""
    return jnp.broadcast_to(v, weights.shape + v.shape)


def _spread_fwd(v, weights):
    return spread(v, weights), weights


def _spread_bwd(weights, g):
    return position_sum(g, weights.ndim, (weights > 0)[..., None]), jnp.zeros_like(weights)


spread.defvjp(_spread_fwd, _spread_bwd)


@jax.custom_vjp
def padded_softmax(x: Array) -> Array:
    """Softmax over the last axis whose value and gradient are bitwise independent of appended -inf
    entries (bucket padding); both sums (the normaliser, and <g, p> of the backward pass) are tree sums."""
    return _padded_softmax_fwd(x)[0]


def _padded_softmax_fwd(x):
    e = jnp.exp(x - jnp.max(x, axis=-1, keepdims=True))
    p = e / tree_sum(e, where=x > -jnp.inf)[..., None]
    return p, p


def _padded_softmax_bwd(p, g):
    return (p * (g - tree_sum(g * p, where=p > 0)[..., None]),)


padded_softmax.defvjp(_padded_softmax_fwd, _padded_softmax_bwd)


TIE_WINDOW = 10  # upstream's collate fills positions len..9 with copies of earlier rows: the only exact ties


def tie_map(rows: Array) -> Array:
    """For each of the first TIE_WINDOW positions of each row of `rows` (B, Lb, F), the first position among
    them holding a bitwise-identical vector (B, W) int32. A matmul need not give identical vectors identical
    dot products; gathering the scores through this map (`canonical_scores`) restores exact ties, so the
    first copy wins the argmax as upstream's does (docs/UPSTREAM.md §4). Computed once per batch."""
    w = min(TIE_WINDOW, rows.shape[1])
    bits = jax.lax.bitcast_convert_type(rows[:, :w], jnp.int32)
    same = jnp.all(bits[:, :, None, :] == bits[:, None, :, :], axis=-1)  # (B, W, W)
    return jnp.argmax(same, axis=-1).astype(jnp.int32)


def canonical_scores(s: Array, ties: Array) -> Array:
    """Scores (B, Lb) whose first positions are replaced by those of their first identical copy (`tie_map`)."""
    w = ties.shape[1]
    return jnp.concatenate([jnp.take_along_axis(s[:, :w], ties, axis=1), s[:, w:]], axis=1)
