"""The chunk layout of a batch's clip positions: the policy works on real clips only.

Upstream's collate pads every video of a batch to the batch length L with zero rows (docs/UPSTREAM.md §2),
and training draws L from U{200..500}, so for ActivityNet-length videos most of a batch's (B, L) positions
are zeros. Those positions never matter except through the key BatchNorm's statistics, where each counts as
a clip whose conv output is exactly the conv bias (`l2l_jax.torch_ops.TorchBatchNorm`'s `implicit` row).

So the policy works on *chunks*: each valid row's positions up to its last one with mask > 0, cut into
chunks of CHUNK positions. A chunk index is (G, C) int32: for each of G row groups (one per device, so every
device lays out its own rows and nothing crosses devices) the flat ids ``row_in_group * n + j``
(n = ceil(Lb / CHUNK)) of its chunks, row by row, then -1 for unused slots. C, the capacity, comes from the
number of chunks alone (`capacity`), never from the bucket length, so padding a batch to a longer bucket
changes no shape and no number. Features in the chunk layout are (G, S, F), S = C * CHUNK; a row's chunks hold its
first positions in order, so building the layout on the host is one contiguous copy per video
(`chunk_features`). The key conv, its BatchNorm, the scores and the attended features all run on chunks;
everything of width Lb only (scores, probabilities, masks) stays dense, and `relayout` moves it between
layouts (a gather whose backward pass is a gather too).

Host side (numpy): `capacity`, `chunk_index`, `chunk_features`, `lay_out`. Device side (inside jit):
`make_layout` and the `ChunkLayout` it returns, whose methods are the layout interface of `l2l_jax.layouts`
(`to_chunks`, `to_dense`, `pick`, `row_sums`, `head`, `chunk_scores`, `chunk_attend` underneath).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from l2l_jax import variants
from l2l_jax.numerics import EXACT, Numerics

Array = jax.Array

CHUNK = 32  # positions per chunk: of the chunk layout, and of the dense layout's fixed-shape products
MIN_CHUNKS = 8


def capacity(count: int, minimum: int = MIN_CHUNKS) -> int:
    """The slots for `count` chunks: the smallest m * 2**e >= count with m in {4, 5, 6, 7} (at most 25%
    spare, a handful of distinct shapes, so few compilations), at least `minimum`."""
    count = max(int(count), minimum)
    e = max(count.bit_length() - 3, 0)
    m = -(-count // (1 << e))
    return m << e


def _live(mask: np.ndarray, valid: np.ndarray | None, groups: int) -> np.ndarray:
    """(B, Lb) bool: mask > 0 in rows with valid > 0; checks that the rows split into `groups`."""
    mask = np.asarray(mask)
    if mask.shape[0] % groups:
        raise ValueError(f"a batch of {mask.shape[0]} rows does not split into {groups} chunk groups")
    live = mask > 0
    if valid is not None:
        live &= (np.asarray(valid) > 0)[:, None]
    return live


def chunk_index(mask: np.ndarray, valid: np.ndarray | None = None, groups: int = 1, *,
                full: bool = False) -> np.ndarray:
    """(G, C) int32 chunk index of a host batch: per group of B/G rows, the flat ids ``row_in_group * n + j``
    (n = ceil(Lb / CHUNK)) of the CHUNK-position chunks that hold a position with mask > 0 (up to each valid
    row's last mask > 0), row by row, padded with -1. C is `capacity` of the largest group, or with `full`
    every chunk of every row, B/G * n: the shape all processes of a multi-process run agree on without
    talking."""
    live = _live(mask, valid, groups)
    b, lb = live.shape
    ends = np.where(live.any(axis=1), lb - np.argmax(live[:, ::-1], axis=1), 0)
    per_row = -(-ends // CHUNK)
    n, rows = -(-lb // CHUNK), b // groups
    ids = [np.concatenate([r * n + np.arange(per_row[g * rows + r]) for r in range(rows)]).astype(np.int32)
           for g in range(groups)]
    slots = max(rows * n, MIN_CHUNKS) if full else capacity(max(len(x) for x in ids))
    out = np.full((groups, slots), -1, np.int32)
    for g, x in enumerate(ids):
        out[g, : len(x)] = x
    return out


def row_spans(chunks: np.ndarray, batch: int, length: int) -> np.ndarray:
    """(B, 3) int64 (group, start, stop) of each row's positions in the chunk layout of `chunks` (host):
    its chunks are consecutive and hold its first positions in order; (g, 0, 0) for a row without chunks."""
    groups = chunks.shape[0]
    rows, per_row = batch // groups, -(-length // CHUNK)
    spans = np.zeros((batch, 3), np.int64)
    spans[:, 0] = np.arange(batch) // rows
    for g in range(groups):
        ids = chunks[g][chunks[g] >= 0]
        if not len(ids):
            continue  # a group of filler rows
        row = g * rows + ids // per_row
        first = np.flatnonzero(np.r_[True, row[1:] != row[:-1]])
        count = np.diff(np.r_[first, len(ids)])
        spans[row[first], 1] = first * CHUNK
        spans[row[first], 2] = (first + count) * CHUNK
    return spans


def chunk_features(x: np.ndarray, chunks: np.ndarray) -> np.ndarray:
    """Dense host features (B, Lb, F) -> the chunk layout (G, S, F) of `chunks` (`chunk_index`): one
    contiguous copy per row (zeros past Lb and in unused slots). The device computes the same with
    `to_chunks`; the batch loader writes this layout directly (`BatchLoader(chunk_groups=...)`)."""
    x = np.asarray(x)
    b, lb, f = x.shape
    out = np.zeros((chunks.shape[0], chunks.shape[1] * CHUNK, f), x.dtype)
    for r, (g, a, z) in enumerate(row_spans(chunks, b, lb)):
        n = min(z - a, lb)
        out[g, a: a + n] = x[r, :n]
    return out


def lay_out(batch: Mapping[str, Any], groups: int, *, full: bool = False) -> dict[str, Any]:
    """A dense host batch -> the same batch in the chunk layout: its chunk index as ``chunks`` (`groups`
    groups, one per local device, so each device lays out its own rows; `full` as in `chunk_index`) and
    every feature array laid out (`chunk_features`)."""
    batch = dict(batch)
    chunks = chunk_index(batch["mask"], batch.get("valid"), groups, full=full)
    batch["chunks"] = chunks
    for key in variants.FEATURE_KEYS:
        if key in batch:
            batch[key] = chunk_features(batch[key], chunks)
    return batch


def _grouped(x: Array, groups: int) -> Array:
    """(B, Lb, ...) -> (G, B/G * Lb, ...)."""
    return x.reshape(groups, -1, *x.shape[2:])


@jax.custom_vjp
def relayout(values: Array, fill: Array, src: Array, dest: Array) -> Array:
    """values (G, M, ...) -> (G, S, ...): ``out[g, s] = values[g, src[g, s]]``, and `fill` (shape ``...``)
    where src == M.
    `dest` (G, M) is the inverse: the output position of each value slot (S if it is not used); a slot is
    used at most once. The backward pass is therefore a gather too (no scatter-add), and `fill` gets the
    sum of the cotangent over the positions it fills."""
    return take_slots(values, fill, src)


def take_slots(values: Array, fill: Array, src: Array) -> Array:
    """The forward of `relayout` (for values that need no gradient). A clamped gather and a select: no copy
    of `values` with the fill appended (XLA:CPU materialises such a table)."""
    m = values.shape[1]
    idx = src.reshape(*src.shape, *(1,) * (values.ndim - 2))
    out = jnp.take_along_axis(values, jnp.minimum(idx, m - 1), axis=1, mode="promise_in_bounds")
    return jnp.where(idx < m, out, jnp.asarray(fill, values.dtype))


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


class ChunkLayout(NamedTuple):
    """The chunk layout of one batch: its index maps (built once per batch by `make_layout`; G groups,
    R = B/G rows each, P = R * Lb dense positions, C chunks of CHUNK positions, S = C * CHUNK chunk
    positions), and the layout operations the policy calls (`l2l_jax.layouts`)."""

    groups: int
    rows: int
    length: int  # Lb
    chunk_dense: Array  # (G, S): chunk position -> dense position, P if none
    dense_chunk: Array  # (G, P): dense position -> chunk position, S if outside every chunk
    owner: Array  # (G, R, C) float32: one-hot, the row of each chunk (0 for unused chunks)
    numerics: Numerics = EXACT  # of the scores, attended features and key conv (`l2l_jax.numerics`)

    def features(self, x: Array) -> Array:
        return as_chunks(x, self)

    def from_dense(self, x: Array) -> Array:
        return to_chunks(x, self)

    def to_dense(self, x: Array) -> Array:
        return to_dense(x, self)

    def bank_view(self, bank: Array) -> Array:
        if not self.numerics.exact_sums:  # chunk by chunk, the shape every step's product reads
            return self.key_view(bank)
        # the scan reads the banks 2-D, as the key convs do: XLA:CPU then converts float16 features once
        return bank.reshape(-1, bank.shape[-1])

    def key_view(self, keys: Array) -> Array:
        if not self.numerics.exact_sums:  # (G, C, CHUNK, K): one shape for the keys and their gradient
            return keys.reshape(self.groups, -1, CHUNK, keys.shape[-1])
        return keys

    def conv(self, x: Array, kernel: Array, bias: Array, weights: Array) -> Array:
        # exactly what flax's nn.Dense computes, on the chunk positions only
        y = self.numerics.dot(x, kernel)
        return y + jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))

    def statistics(self, weights: Array, bias: Array) -> tuple[Array, tuple[Array, Array]]:
        # the counted positions outside the chunks hold zero features: each is a conv output equal to the
        # bias, entered as one row weighted by their count (exact: integer counts in float32)
        w = to_chunks(weights, self)
        return w, (jnp.sum(weights) - jnp.sum(w), bias)

    def head(self, rows: Array, fill: Array | None, width: int) -> Array:
        return head(rows, fill, self, width)

    def pick(self, x: Array, idx: Array) -> Array:
        return pick(x, self, idx).astype(jnp.float32)

    def row_sums(self, x: Array) -> Array:
        return row_sums(x, self)

    def scores(self, query: Array, keys: Array) -> Array:
        return chunk_scores(query, keys, self)

    def attend(self, probs: Array, bank: Array) -> Array:
        return chunk_attend(probs, bank, self)


def make_layout(chunks: Array, batch: int, length: int) -> ChunkLayout:
    """The `ChunkLayout` of a batch of `batch` rows and bucket length `length` from its chunk index."""
    groups = chunks.shape[0]
    rows, p, s = batch // groups, (batch // groups) * length, chunks.shape[1] * CHUNK
    per_row = -(-length // CHUNK)
    live = chunks >= 0
    row = jnp.where(live, chunks // per_row, 0)
    t = jnp.where(live, chunks % per_row, 0)[..., None] * CHUNK + jnp.arange(CHUNK, dtype=jnp.int32)
    ok = live[..., None] & (t < length)
    chunk_dense = jnp.where(ok, row[..., None] * length + t, p).reshape(groups, s)
    g_idx = jnp.arange(groups)[:, None]
    dense_chunk = jnp.full((groups, p), s, jnp.int32).at[g_idx, chunk_dense].set(
        jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), (groups, s)), mode="drop")
    owner = ((row[:, None, :] == jnp.arange(rows)[None, :, None]) & live[:, None, :]).astype(jnp.float32)
    # computed once: without the barrier XLA fuses this index arithmetic into every consumer, per element
    chunk_dense, dense_chunk, owner = jax.lax.optimization_barrier((chunk_dense, dense_chunk, owner))
    return ChunkLayout(groups, rows, length, chunk_dense, dense_chunk, owner)


def as_chunks(x: Array, layout: ChunkLayout) -> Array:
    """Features in the chunk layout (G, S, F), float32 (bfloat16 in fast precision): dense (B, Lb, F)
    features are laid out here;
    features that arrive laid out (`chunk_features`, by the loader or `lay_out`) pass through. (When
    B == G, one row per group, and S == Lb, the two layouts hold the same numbers, so the shape test is
    safe.) Positions outside the mask must hold zero features, as upstream's collate writes."""
    if x.shape[:2] == (layout.groups * layout.rows, layout.length):
        x = to_chunks(x, layout)
    return layout.numerics.store(x)


def to_chunks(x: Array, layout: ChunkLayout) -> Array:
    """Dense data (B, Lb, ...) (no gradient) -> the chunk layout (G, S, ...), zero at positions past Lb."""
    return take_slots(_grouped(x, layout.groups), jnp.zeros((), x.dtype), layout.chunk_dense)


def to_dense(x: Array, layout: ChunkLayout) -> Array:
    """Chunk-layout data (G, S, ...) (no gradient) -> dense (B, Lb, ...), zero outside every chunk."""
    out = take_slots(x, jnp.zeros((), x.dtype), layout.dense_chunk)
    return out.reshape(layout.groups * layout.rows, layout.length, *x.shape[2:])


def pick(x: Array, layout: ChunkLayout, idx: Array) -> Array:
    """Chunk-layout data (G, S, F) at position idx[b] of each row b -> (B, F) (zero outside the chunks)."""
    idx = idx.astype(jnp.int32).reshape(layout.groups, layout.rows)
    dense = idx + jnp.arange(layout.rows, dtype=jnp.int32) * layout.length
    src = jnp.take_along_axis(layout.dense_chunk, dense, axis=1)
    return take_slots(x, jnp.zeros((), x.dtype), src).reshape(-1, x.shape[-1])


def row_sums(x: Array, layout: ChunkLayout) -> Array:
    """Sum over each row's positions of chunk-layout data (G, S, F) -> (B, F): per chunk, then per row by
    a one-hot product whose shape does not depend on Lb (exact at HIGHEST precision; under FAST numerics
    with float32 accumulation of bfloat16 partial sums)."""
    part = jnp.sum(x.astype(jnp.float32).reshape(layout.groups, -1, CHUNK, x.shape[-1]), axis=2)
    out = _owner_sum("grc,gcf->grf", layout, part)
    return out.reshape(-1, x.shape[-1])


def head(rows: Array, fill: Array, layout: ChunkLayout, width: int) -> Array:
    """The first `width` positions of every row, (B, width, K), from chunk-layout rows (G, S, K); `fill`
    where a position is in no chunk (no gradient)."""
    src = layout.dense_chunk.reshape(layout.groups, layout.rows, layout.length)[:, :, :width]
    out = take_slots(rows, fill, src.reshape(layout.groups, -1))
    return out.reshape(layout.groups * layout.rows, width, rows.shape[-1])


def chunk_scores(query: Array, keys: Array, layout: ChunkLayout) -> Array:
    """<query[b], key at (b, t)> -> (B, Lb) for keys in the chunk layout (G, S, K), computed on the chunks
    only (0 at positions outside them, which are masked). Every chunk is a fixed-shape (CHUNK, K)
    matrix-vector product, so a position's score does not depend on Lb; the rows' queries are copied to
    their chunks by an exact one-hot product."""
    q = query.reshape(layout.groups, layout.rows, -1)
    q_c = _owner_sum("grc,grk->gck", layout, q)
    keys = keys.reshape(layout.groups, -1, CHUNK, keys.shape[-1])
    s = layout.numerics.einsum("gclk,gck->gcl", keys, q_c).reshape(layout.groups, -1)
    dense = relayout(s, jnp.zeros((), s.dtype), layout.dense_chunk, layout.chunk_dense)
    return dense.reshape(layout.groups * layout.rows, layout.length)


def chunk_attend(probs: Array, bank: Array, layout: ChunkLayout) -> Array:
    """sum_t probs[b, t, j] bank[b, t, :] -> (B, J, F) for probs (B, Lb, J) that are 0 outside the chunks
    and a bank in the chunk layout (G, S, F): fixed-shape products per chunk, summed per row by an
    exact one-hot product whose shape does not depend on Lb."""
    j = probs.shape[-1]
    p = relayout(_grouped(probs, layout.groups), jnp.zeros((j,), probs.dtype), layout.chunk_dense,
                 layout.dense_chunk).reshape(layout.groups, -1, CHUNK, j)
    bank = bank.reshape(layout.groups, -1, CHUNK, bank.shape[-1])
    part = layout.numerics.einsum("gclj,gclf->gcjf", p, bank)
    out = _owner_sum("grc,gcjf->grjf", layout, part)
    return out.reshape(layout.groups * layout.rows, j, bank.shape[-1])


def _owner_sum(spec: str, layout: ChunkLayout, x: Array) -> Array:
    """A product with the one-hot chunk owners (`ChunkLayout.owner`) that copies or sums rows between chunks
    and rows: exact at HIGHEST precision under EXACT numerics; under FAST with the policy's operands (bfloat16
    values are copied exactly; sums accumulate in float32)."""
    if layout.numerics.exact_sums:
        return jnp.einsum(spec, layout.owner, x, precision=jax.lax.Precision.HIGHEST)
    return layout.numerics.einsum(spec, layout.owner, x)
