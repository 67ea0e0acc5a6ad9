"""Feature layouts: where the policy's per-position work (key conv, key BatchNorm, scores, attended
features) happens on the device. The model asks a layout object for these operations and never looks at
shapes or device counts itself.

- ``dense`` (`DenseLayout`): the batch as upstream's collate gives it, (B, Lb, F). The readable reference;
  the natural choice on GPU/TPU.
- ``chunk`` (`ChunkLayout`): each row's real clips only, in chunks of 32 positions, one group of rows per
  device (`l2l_jax.layouts.chunk`). Skips the zero padding of a batch, which is most of it for
  ActivityNet-length videos; measurably faster on XLA:CPU (BENCHMARKS.md).

Both compute the same numbers to within float32 rounding, choose the same clips on the parity fixtures, and
are each bitwise invariant to bucket padding and filler rows. A batch says which layout it is in: the chunk
layout's batches carry their chunk index as ``chunks`` (written by the loader, `BatchLoader(chunk_groups=G)`);
batches without it are dense.

Every layout provides: ``features(x)`` (input features as float32 in the layout), ``from_dense``/``to_dense``,
``bank_view``, ``conv`` (the 1x1 key conv), ``statistics`` (the key BatchNorm's weights and implicit rows),
``head`` (keys of every row's first positions), ``pick``, ``row_sums``, ``scores`` and ``attend``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from l2l_jax.layouts.chunk import ChunkLayout, make_layout
from l2l_jax.layouts.dense import DenseLayout

LAYOUTS = ("auto", "dense", "chunk")
Layout = DenseLayout | ChunkLayout


def resolve(name: str, backend: str | None = None) -> str:
    """The layout a ``--layout`` value means on `backend` (default: jax's): ``auto`` is ``chunk`` on CPU,
    ``dense`` on GPU and TPU."""
    if name not in LAYOUTS:
        raise ValueError(f"unknown layout {name!r}: expected one of {LAYOUTS}")
    if name != "auto":
        return name
    return "chunk" if (backend or jax.default_backend()) == "cpu" else "dense"


def chunk_groups(layout: str) -> int | None:
    """The loader's chunk groups for a resolved layout: one per local device for ``chunk``, None (dense
    batches) for ``dense``."""
    return jax.local_device_count() if layout == "chunk" else None


def of_arrays(mask: jax.Array, chunks: jax.Array | None = None) -> Layout:
    """The layout of a batch with this mask (B, Lb): chunk when it carries a chunk index, else dense."""
    b, lb = mask.shape
    if chunks is None:
        return DenseLayout(b, lb)
    return make_layout(jnp.asarray(chunks), b, lb)


def of_batch(batch: Mapping[str, Any]) -> Layout:
    """The layout of a batch dict (inside jit): `of_arrays` of its ``mask`` and ``chunks``."""
    return of_arrays(batch["mask"], batch.get("chunks"))


__all__ = ["LAYOUTS", "ChunkLayout", "DenseLayout", "Layout", "chunk_groups", "of_arrays", "of_batch", "resolve"]
