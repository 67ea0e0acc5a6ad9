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

The attention works on a second packed layout, *chunks*: each row's positions up to its last packed one, in
chunks of CHUNK positions (`chunk_index`, (G, C) flat chunk ids). Scores and attended features are computed
chunk by chunk with fixed-shape products (`chunk_scores`, `chunk_attend`), and everything of width Lb only
(scores, probabilities, masks) stays dense. Moving between layouts is `relayout`, a gather whose backward
pass is a gather too.

Host side (numpy): `capacity`, `pack_index`, `chunk_index`. Device side (inside jit): `gather_packed`,
`make_layout`, `to_chunks`, `chunk_scores`, `chunk_attend`, and `device_pack_index`/`device_chunk_index`
(the fallback when a batch carries no index: full capacity, as costly as dense).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

MIN_CAPACITY = 64
CHUNK = 32  # positions per chunk of the attention layout
MIN_CHUNKS = 8


def capacity(count: int, minimum: int = MIN_CAPACITY) -> int:
    """The slots for `count` packed clips: the smallest m * 2**e >= count with m in {4, 5, 6, 7} (at most 25%
    spare, a handful of distinct shapes, so few compilations), at least `minimum`."""
    count = max(int(count), minimum)
    e = max(count.bit_length() - 3, 0)
    m = -(-count // (1 << e))
    return m << e


def _live(mask: np.ndarray, valid: np.ndarray | None, groups: int) -> np.ndarray:
    """(B, Lb) bool: mask > 0 in rows with valid > 0; checks that the rows split into `groups`."""
    mask = np.asarray(mask)
    if mask.shape[0] % groups:
        raise ValueError(f"a batch of {mask.shape[0]} rows does not split into {groups} pack groups")
    live = mask > 0
    if valid is not None:
        live &= (np.asarray(valid) > 0)[:, None]
    return live


def _padded(lists: list[np.ndarray], slots: int | None, minimum: int, what: str) -> np.ndarray:
    """One row per group: the group's ids, then -1 up to `slots` (default: `capacity` of the longest)."""
    most = max(len(x) for x in lists)
    n = capacity(most, minimum) if slots is None else int(slots)
    if most > n:
        raise ValueError(f"{most} {what} do not fit in {n} slots")
    out = np.full((len(lists), n), -1, np.int32)
    for g, x in enumerate(lists):
        out[g, : len(x)] = x
    return out


def pack_index(mask: np.ndarray, valid: np.ndarray | None = None, groups: int = 1,
               slots: int | None = None) -> np.ndarray:
    """(G, N) int32 pack index of a host batch: per group of B/G consecutive rows, the flat positions of
    mask > 0 in rows with valid > 0, padded with -1. `slots` (N) defaults to `capacity` of the largest group."""
    live = _live(mask, valid, groups).reshape(groups, -1)
    return _padded([np.flatnonzero(g) for g in live], slots, MIN_CAPACITY, "packed clips")


def chunk_index(mask: np.ndarray, valid: np.ndarray | None = None, groups: int = 1,
                slots: int | None = None) -> np.ndarray:
    """(G, C) int32 chunk index of a host batch: per group of B/G rows, the flat ids ``row_in_group * n + j``
    (n = ceil(Lb / CHUNK)) of the CHUNK-position chunks that hold a packed position (up to each valid row's
    last mask > 0), row by row, padded with -1. `slots` (C) defaults to `capacity` of the largest group."""
    live = _live(mask, valid, groups)
    b, lb = live.shape
    ends = np.where(live.any(axis=1), lb - np.argmax(live[:, ::-1], axis=1), 0)
    per_row = -(-ends // CHUNK)
    n, rows = -(-lb // CHUNK), b // groups
    ids = [np.concatenate([r * n + np.arange(per_row[g * rows + r]) for r in range(rows)]).astype(np.int32)
           for g in range(groups)]
    return _padded(ids, slots, MIN_CHUNKS, "chunks")


def device_pack_index(mask: Array, valid: Array) -> Array:
    """The pack index computed inside jit, one group, capacity B * Lb (no saving; for direct model calls)."""
    live = ((mask > 0) & (valid[:, None] > 0)).reshape(-1)
    (pos,) = jnp.nonzero(live, size=live.shape[0], fill_value=-1)
    return pos.astype(jnp.int32)[None, :]


def device_chunk_index(valid: Array, lb: int, groups: int) -> Array:
    """The chunk index computed inside jit: every chunk of every valid row (no saving)."""
    n = -(-lb // CHUNK)
    rows = valid.shape[0] // groups
    ids = jnp.arange(rows * n, dtype=jnp.int32)[None, :]
    row_valid = jnp.repeat(valid.reshape(groups, rows) > 0, n, axis=1)
    return jnp.where(row_valid, ids, -1)


def _grouped(x: Array, groups: int) -> Array:
    """(B, Lb, ...) -> (G, B/G * Lb, ...)."""
    return x.reshape(groups, -1, *x.shape[2:])


def gather_packed(x: Array, pack: Array) -> Array:
    """x (B, Lb, ...) -> (G, N, ...): the packed positions' entries, zero in unused slots. (No gradient is
    defined for x beyond jax's own: features are data, weights are constants.)"""
    g = _grouped(x, pack.shape[0])
    src = jnp.where(pack >= 0, pack, g.shape[1])
    return take_slots(g, jnp.zeros(x.shape[2:], x.dtype), src)


def inverse_index(pack: Array, positions: int) -> Array:
    """(G, B/G * Lb) int32: the slot of each position, N for positions not packed."""
    groups, n = pack.shape
    slot = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), pack.shape)
    target = jnp.where(pack >= 0, pack, positions)  # out of range: dropped
    inv = jnp.full((groups, positions), n, jnp.int32)
    return inv.at[jnp.arange(groups)[:, None], target].set(slot, mode="drop")


@jax.custom_vjp
def relayout(values: Array, fill: Array, src: Array, dest: Array) -> Array:
    """values (G, M, ...) -> (G, S, ...): ``out[g, s] = values[g, src[g, s]]``, and `fill` (shape ``...``)
    where src == M.
    `dest` (G, M) is the inverse: the output position of each value slot (S if it is not used); a slot is
    used at most once. The backward pass is therefore a gather too (no scatter-add), and `fill` gets the
    sum of the cotangent over the positions it fills."""
    return take_slots(values, fill, src)


def take_slots(values: Array, fill: Array, src: Array) -> Array:
    """The forward of `relayout` (for values that need no gradient)."""
    g, m = values.shape[:2]
    tail = values.shape[2:]
    table = jnp.concatenate([values, jnp.broadcast_to(fill, (g, 1, *tail)).astype(values.dtype)], axis=1)
    return jnp.take_along_axis(table, src.reshape(*src.shape, *(1,) * len(tail)), axis=1)


def _relayout_fwd(values, fill, src, dest):
    return relayout(values, fill, src, dest), (src, dest)


def _relayout_bwd(res, g):
    src, dest = res
    tail = g.shape[2:]
    zero = jnp.zeros((), g.dtype)
    d_values = take_slots(g, zero, dest)
    at_fill = (src == dest.shape[1]).reshape(*src.shape, *(1,) * len(tail))
    return d_values, jnp.sum(jnp.where(at_fill, g, zero), axis=(0, 1)), None, None


relayout.defvjp(_relayout_fwd, _relayout_bwd)


class Layout(NamedTuple):
    """The index maps of one batch (built once per batch by `make_layout`; G groups, R = B/G rows each,
    P = R * Lb dense positions, N pack slots, C chunks of CHUNK positions, S = C * CHUNK chunk positions)."""

    groups: int
    rows: int
    length: int  # Lb
    pack: Array  # (G, N): pack slot -> dense position, -1 if unused
    inverse: Array  # (G, P): dense position -> pack slot, N if not packed
    chunk_src: Array  # (G, S): chunk position -> pack slot, N if none
    pack_dest: Array  # (G, N): pack slot -> chunk position, S if unused
    chunk_dense: Array  # (G, S): chunk position -> dense position, P if none
    dense_chunk: Array  # (G, P): dense position -> chunk position, S if outside every chunk
    owner: Array  # (G, R, C) float32: one-hot, the row of each chunk (0 for unused chunks)


def make_layout(pack: Array, chunks: Array, batch: int, length: int) -> Layout:
    """The `Layout` of a batch of `batch` rows and bucket length `length` from its pack and chunk indices."""
    groups, n = pack.shape
    rows, p, s = batch // groups, (batch // groups) * length, chunks.shape[1] * CHUNK
    per_row = -(-length // CHUNK)
    inverse = inverse_index(pack, p)
    live = chunks >= 0
    row = jnp.where(live, chunks // per_row, 0)
    t = jnp.where(live, chunks % per_row, 0)[..., None] * CHUNK + jnp.arange(CHUNK, dtype=jnp.int32)
    ok = live[..., None] & (t < length)
    chunk_dense = jnp.where(ok, row[..., None] * length + t, p).reshape(groups, s)
    g_idx = jnp.arange(groups)[:, None]
    dense_chunk = jnp.full((groups, p), s, jnp.int32).at[g_idx, chunk_dense].set(
        jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), (groups, s)), mode="drop")
    chunk_src = jnp.take_along_axis(jnp.pad(inverse, ((0, 0), (0, 1)), constant_values=n), chunk_dense, axis=1)
    pack_dest = jnp.take_along_axis(jnp.pad(dense_chunk, ((0, 0), (0, 1)), constant_values=s),
                                    jnp.where(pack >= 0, pack, p), axis=1)
    owner = ((row[:, None, :] == jnp.arange(rows)[None, :, None]) & live[:, None, :]).astype(jnp.float32)
    return Layout(groups, rows, length, pack, inverse, chunk_src, pack_dest, chunk_dense, dense_chunk, owner)


def to_chunks(rows: Array, fill: Array, layout: Layout) -> Array:
    """Packed rows (G, N, K) (+ `fill` elsewhere) -> the chunk layout (G, C, CHUNK, K), differentiably."""
    out = relayout(rows, fill, layout.chunk_src, layout.pack_dest)
    return out.reshape(layout.groups, -1, CHUNK, rows.shape[-1])


def head(rows: Array, fill: Array, layout: Layout, width: int) -> Array:
    """The first `width` positions of every row, (B, width, K), from packed rows (no gradient)."""
    src = layout.inverse.reshape(layout.groups, layout.rows, layout.length)[:, :, :width]
    out = take_slots(rows, fill, src.reshape(layout.groups, -1))
    return out.reshape(layout.groups * layout.rows, width, rows.shape[-1])


def dense_to_chunks(x: Array, layout: Layout) -> Array:
    """A dense (B, Lb, F) array of data (zero outside the chunks; no gradient) -> (G, C, CHUNK, F)."""
    g = _grouped(x, layout.groups)
    out = take_slots(g, jnp.zeros((), x.dtype), layout.chunk_dense)
    return out.reshape(layout.groups, -1, CHUNK, x.shape[-1])


def chunk_scores(query: Array, keys: Array, layout: Layout) -> Array:
    """<query[b], key at (b, t)> -> (B, Lb), computed on the chunks only (0 at positions outside them, which
    are masked). Every chunk is a fixed-shape (CHUNK, K) matrix-vector product, so a position's score does
    not depend on Lb; the rows' queries are copied to their chunks by an exact one-hot product."""
    hi = jax.lax.Precision.HIGHEST
    q = query.reshape(layout.groups, layout.rows, -1)
    q_c = jnp.einsum("grc,grk->gck", layout.owner, q, precision=hi)
    s = jnp.einsum("gclk,gck->gcl", keys, q_c, precision=hi).reshape(layout.groups, -1)
    dense = relayout(s, jnp.zeros((), s.dtype), layout.dense_chunk, layout.chunk_dense)
    return dense.reshape(layout.groups * layout.rows, layout.length)


def chunk_attend(probs: Array, bank: Array, layout: Layout) -> Array:
    """sum_t probs[b, t, j] bank[b, t, :] -> (B, J, F) for probs (B, Lb, J) that are 0 outside the chunks
    and a bank in the chunk layout (G, C, CHUNK, F): fixed-shape products per chunk, summed per row by an
    exact one-hot product whose shape does not depend on Lb."""
    hi = jax.lax.Precision.HIGHEST
    j = probs.shape[-1]
    p = relayout(_grouped(probs, layout.groups), jnp.zeros((j,), probs.dtype), layout.chunk_dense,
                 layout.dense_chunk).reshape(layout.groups, -1, CHUNK, j)
    part = jnp.einsum("gclj,gclf->gcjf", p, bank, precision=hi)
    out = jnp.einsum("grc,gcjf->grjf", layout.owner, part, precision=hi)
    return out.reshape(layout.groups * layout.rows, j, bank.shape[-1])
