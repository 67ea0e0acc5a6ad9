"""The packed layout of a batch's clip positions: the key convolution runs on real clips only.

Upstream's collate pads every video of a batch to the batch length L with zero rows (UPSTREAM.md section 2),
and training draws L from U{200..500}, so for ActivityNet-length videos most of a batch's (B, L) positions
are zeros. Those positions never matter except through the key BatchNorm's statistics, where each counts as
a clip whose conv output is exactly the conv bias. So the 1x1 key conv (the largest matmul of a step) runs
on the *packed* positions only -- those with mask > 0 in rows with valid > 0 -- and the zero positions enter
the statistics as one row weighted by their count (`l2l_jax.nn.TorchBatchNorm`'s `implicit`).

A pack index is (G, N) int32: for each of G row groups (one per device, so every device packs its own rows and
the gather needs no communication) the flat positions ``row_in_group * Lb + t`` of its packed clips, then
-1 for the unused slots. N, the capacity, comes from the number of packed clips alone (`capacity`), never
from the bucket length, so padding a batch to a longer bucket changes no shape and no number.

Host side (numpy): `capacity`, `pack_index`. Device side (inside jit): `gather_packed`, `unpack`,
`device_pack_index` (the fallback when a batch carries no index: full capacity, as costly as dense).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

MIN_CAPACITY = 64


def capacity(count: int) -> int:
    """The slots for `count` packed clips: the smallest m * 2**e >= count with m in {4, 5, 6, 7} (at most 25%
    spare, a handful of distinct shapes, so few compilations), at least MIN_CAPACITY."""
    count = max(int(count), MIN_CAPACITY)
    e = max(count.bit_length() - 3, 0)
    m = -(-count // (1 << e))
    return m << e


def pack_index(mask: np.ndarray, valid: np.ndarray | None = None, groups: int = 1,
               slots: int | None = None) -> np.ndarray:
    """(G, N) int32 pack index of a host batch: per group of B/G consecutive rows, the flat positions of
    mask > 0 in rows with valid > 0, padded with -1. `slots` (N) defaults to `capacity` of the largest group."""
    mask = np.asarray(mask)
    b, lb = mask.shape
    if b % groups:
        raise ValueError(f"a batch of {b} rows does not split into {groups} pack groups")
    live = mask > 0
    if valid is not None:
        live &= (np.asarray(valid) > 0)[:, None]
    live = live.reshape(groups, -1)
    counts = live.sum(axis=1)
    n = capacity(int(counts.max())) if slots is None else int(slots)
    if counts.max() > n:
        raise ValueError(f"{int(counts.max())} packed clips do not fit in {n} slots")
    out = np.full((groups, n), -1, np.int32)
    for g in range(groups):
        pos = np.flatnonzero(live[g])
        out[g, : len(pos)] = pos
    return out


def device_pack_index(mask: Array, valid: Array) -> Array:
    """The pack index computed inside jit, one group, capacity B * Lb (no saving; for direct model calls)."""
    live = ((mask > 0) & (valid[:, None] > 0)).reshape(-1)
    (pos,) = jnp.nonzero(live, size=live.shape[0], fill_value=-1)
    return pos.astype(jnp.int32)[None, :]


def _grouped(x: Array, groups: int) -> Array:
    """(B, Lb, ...) -> (G, B/G * Lb, ...)."""
    return x.reshape(groups, -1, *x.shape[2:])


def gather_packed(x: Array, pack: Array) -> Array:
    """x (B, Lb, F) -> (G, N, F): the packed positions' rows, zero in unused slots. (No gradient is defined
    for x beyond jax's own: the features are data.)"""
    g = _grouped(x, pack.shape[0])
    rows = jnp.take_along_axis(g, jnp.maximum(pack, 0)[..., None], axis=1)
    return jnp.where((pack >= 0)[..., None], rows, jnp.zeros((), x.dtype))


def gather_weights(w: Array, pack: Array) -> Array:
    """w (B, Lb) -> (G, N): the packed positions' weights, zero in unused slots."""
    g = _grouped(w, pack.shape[0])
    return jnp.where(pack >= 0, jnp.take_along_axis(g, jnp.maximum(pack, 0), axis=1), jnp.zeros((), w.dtype))


def inverse_index(pack: Array, positions: int) -> Array:
    """(G, B/G * Lb) int32: the slot of each position, N for positions not packed."""
    groups, n = pack.shape
    slot = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), pack.shape)
    target = jnp.where(pack >= 0, pack, positions)  # out of range: dropped
    inv = jnp.full((groups, positions), n, jnp.int32)
    return inv.at[jnp.arange(groups)[:, None], target].set(slot, mode="drop")


@jax.custom_vjp
def unpack(rows: Array, fill: Array, pack: Array, inverse: Array) -> Array:
    """rows (G, N, K) back to (G, P, K), with `fill` (K,) at the positions that were not packed. The backward
    pass gathers the cotangent at the packed positions (a gather, not a scatter-add) and sums the rest into
    `fill`'s."""
    table = jnp.concatenate([rows, jnp.broadcast_to(fill, (rows.shape[0], 1, rows.shape[2]))], axis=1)
    return jnp.take_along_axis(table, inverse[..., None], axis=1)


def _unpack_fwd(rows, fill, pack, inverse):
    return unpack(rows, fill, pack, inverse), (pack, inverse)


def _unpack_bwd(res, g):
    pack, inverse = res
    n = pack.shape[1]
    d_rows = jnp.take_along_axis(g, jnp.maximum(pack, 0)[..., None], axis=1)
    d_rows = jnp.where((pack >= 0)[..., None], d_rows, jnp.zeros((), g.dtype))
    d_fill = jnp.sum(jnp.where((inverse == n)[..., None], g, jnp.zeros((), g.dtype)), axis=(0, 1))
    return d_rows, d_fill, None, None


unpack.defvjp(_unpack_fwd, _unpack_bwd)
