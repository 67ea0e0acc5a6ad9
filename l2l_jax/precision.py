"""The two compute precisions of the policy's matrix products.

- ``exact`` (the default): float32 operands at `jax.lax.Precision.HIGHEST`, what upstream computes; every
  parity test runs in it, and nothing below changes a bit of it.
- ``fast``: bfloat16 operands with float32 accumulation (`preferred_element_type`), as GPU tensor cores and
  TPUs run fastest. Parameters, optimizer state, BatchNorm statistics, LSTM state, softmax and losses stay
  float32; only the operands of the large products (dense layers, LSTM gates, key conv, scores, attended
  features) are rounded to bfloat16, and the features themselves are kept in 16 bits.

Exact one-hot products (copying rows between layouts) stay at HIGHEST in both modes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array

PRECISIONS = ("exact", "fast")
HIGHEST = jax.lax.Precision.HIGHEST


def check(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: expected one of {PRECISIONS}")
    return precision


def feature_dtype(precision: str) -> Any:
    """The dtype features are held in on the device: float32 (exact) or bfloat16 (fast)."""
    return jnp.bfloat16 if check(precision) == "fast" else jnp.float32


def _fast_dot_general(lhs: Array, rhs: Array, dimension_numbers, precision=None, preferred_element_type=None):
    del precision, preferred_element_type  # always bfloat16 x bfloat16 -> float32
    return jax.lax.dot_general(lhs.astype(jnp.bfloat16), rhs.astype(jnp.bfloat16), dimension_numbers,
                               preferred_element_type=jnp.float32)


def dot_general(lhs: Array, rhs: Array, dimension_numbers, precision: str) -> Array:
    """`jax.lax.dot_general` in the given precision (float32 result)."""
    if check(precision) == "fast":
        return _fast_dot_general(lhs, rhs, dimension_numbers)
    return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=HIGHEST)


def dot(x: Array, y: Array, precision: str) -> Array:
    """x @ y over the last axis of x and the first of y."""
    return dot_general(x, y, (((x.ndim - 1,), (0,)), ((), ())), precision)


def einsum(spec: str, *operands: Array, precision: str) -> Array:
    """`jnp.einsum` in the given precision (float32 result)."""
    if check(precision) == "fast":
        ops = [o.astype(jnp.bfloat16) for o in operands]
        return jnp.einsum(spec, *ops, preferred_element_type=jnp.float32)
    return jnp.einsum(spec, *operands, precision=HIGHEST)


def dense_options(precision: str) -> dict[str, Callable | Any]:
    """Keyword arguments of `flax.linen.Dense` for the precision."""
    if check(precision) == "fast":
        return {"dot_general": _fast_dot_general}
    return {"precision": HIGHEST}


__all__ = ["PRECISIONS", "check", "dense_options", "dot", "dot_general", "einsum", "feature_dtype"]
