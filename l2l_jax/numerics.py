"""The numerics policy: one object that decides how every number of a step is computed.

`--precision exact|fast` becomes a `Numerics` once (`l2l_jax.config.numerics`), and every module, layout and
network that computes receives it. It decides:

- **products**: operand dtype and precision of every matrix product (`dot`, `dot_general`, `einsum`,
  `dense_options`, `conv_options`);
- **storage**: the dtype in which features, keys and attention banks are held (`store`, `storage_dtype`);
- **reductions**: whether sums over positions and over the batch are the exactness kit's fixed halving trees
  with their custom gradients (`l2l_jax.exact`), or plain ``jnp.sum``/``mean`` that XLA partitions into one
  all-reduce (`sum`, `position_sum`, `spread`, `softmax`, `ties`);
- **BatchNorm**: torch's two-pass statistics through the trees, or one-pass float32 moments whose sums XLA
  can combine into one all-reduce (`moments`);
- **the episode loop**: a scan, or fully unrolled (`unroll_episode`): with E = 10 steps, unrolling removes the
  loop's per-step residual stores and loop-carried gradient accumulators, which is most of a GPU step's kernel
  launches and memory traffic.

Two policies exist:

- ``EXACT`` (the default): float32 operands at `jax.lax.Precision.HIGHEST`, float32 storage, every
  bucket-dependent sum a fixed tree, exact ties. What upstream computes; every parity test runs in it.
- ``FAST``: made for accelerators. bfloat16 operands with float32 accumulation; features, keys and banks
  stored in bfloat16; plain reductions everywhere (one all-reduce each on a sharded batch); no tie
  canonicalisation; the episode unrolled. Parameters, optimizer state, BatchNorm statistics, LSTM state,
  softmax and losses stay float32. It owes nothing to bitwise exactness and is judged by quality bounds
  (README, BENCHMARKS.md).

`Numerics` is a frozen dataclass: hashable, so it can be a Flax module attribute and a static argument.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from l2l_jax import exact

Array = jax.Array

HIGHEST = jax.lax.Precision.HIGHEST


@dataclasses.dataclass(frozen=True)
class Numerics:
    """How a step computes: see the module docstring. Build one with `get` (or use `EXACT` / `FAST`)."""

    name: str
    operand_dtype: Any  # of matrix-product operands: None = float32 at HIGHEST precision
    storage_dtype: Any  # of features, keys and attention banks on the device
    exact_sums: bool  # fixed halving trees, custom gradients and exact ties (`l2l_jax.exact`)
    unroll_episode: bool = False  # the E policy steps unrolled into straight-line code (`l2l_jax.model._scan`)

    @property
    def transfer_dtype(self) -> str | None:
        """The dtype the loader hands features to the device in: ``"float16"`` when this policy stores features
        in 16 bits (the step converts them to `storage_dtype`), else None (as stored on disk)."""
        return None if self.storage_dtype == jnp.float32 else "float16"

    # -- products -------------------------------------------------------------------------------------------
    def dot_general(self, lhs: Array, rhs: Array, dimension_numbers, precision=None,
                    preferred_element_type=None) -> Array:
        """`jax.lax.dot_general` under this policy (float32 result). The signature is flax's ``dot_general``
        (its `precision` and `preferred_element_type` are ignored: the policy decides)."""
        del precision, preferred_element_type
        if self.operand_dtype is None:
            return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=HIGHEST)
        return jax.lax.dot_general(lhs.astype(self.operand_dtype), rhs.astype(self.operand_dtype),
                                   dimension_numbers, preferred_element_type=jnp.float32)

    def dot(self, x: Array, y: Array) -> Array:
        """x @ y over the last axis of x and the first of y (float32 result)."""
        return self.dot_general(x, y, (((x.ndim - 1,), (0,)), ((), ())))

    def einsum(self, spec: str, *operands: Array) -> Array:
        """`jnp.einsum` under this policy (float32 result)."""
        if self.operand_dtype is None:
            return jnp.einsum(spec, *operands, precision=HIGHEST)
        ops = [o.astype(self.operand_dtype) for o in operands]
        return jnp.einsum(spec, *ops, preferred_element_type=jnp.float32)

    def dense_options(self) -> dict[str, Callable | Any]:
        """Keyword arguments of `flax.linen.Dense` (float32 parameters and result)."""
        if self.operand_dtype is None:
            return {"precision": HIGHEST}
        return {"dot_general": self.dot_general}

    def conv_options(self) -> dict[str, Any]:
        """Keyword arguments of `flax.linen.Conv`: computation dtype and precision (float32 parameters)."""
        if self.operand_dtype is None:
            return {"dtype": jnp.float32, "param_dtype": jnp.float32, "precision": HIGHEST}
        return {"dtype": self.operand_dtype, "param_dtype": jnp.float32, "precision": None}

    # -- storage --------------------------------------------------------------------------------------------
    def store(self, x: Array) -> Array:
        """x in the storage dtype of features, keys and banks."""
        return jnp.asarray(x).astype(self.storage_dtype)

    # -- reductions -----------------------------------------------------------------------------------------
    def sum(self, x: Array, axis: int = -1, where: Array | None = None) -> Array:
        """Float32 sum over one axis: a fixed halving tree (exact) or ``jnp.sum`` (fast)."""
        if self.exact_sums:
            return exact.tree_sum(x, axis, where)
        if where is not None:
            x = jnp.where(where, x, jnp.zeros((), x.dtype))
        return jnp.sum(x, axis=axis, dtype=jnp.float32)

    def position_sum(self, x: Array, lead: int, where: Array | None = None) -> Array:
        """Float32 sum over the `lead` leading axes (rows, then time)."""
        if self.exact_sums:
            return exact.position_sum(x, lead, where)
        if where is not None:
            x = jnp.where(where, x, jnp.zeros((), x.dtype))
        return jnp.sum(x, axis=tuple(range(lead)), dtype=jnp.float32)

    def spread(self, v: Array, weights: Array) -> Array:
        """v (F,) broadcast over the positions `weights` (shape ``weights.shape + (F,)``); in exact its
        gradient sums over the counted positions by trees (`l2l_jax.exact.spread`)."""
        if self.exact_sums:
            return exact.spread(v, weights)
        return jnp.broadcast_to(v, weights.shape + v.shape)

    def softmax(self, x: Array) -> Array:
        """Softmax over the last axis (-inf entries get probability 0)."""
        if self.exact_sums:
            return exact.padded_softmax(x)
        return jax.nn.softmax(x, axis=-1)

    def ties(self, head: Array | None) -> Array | None:
        """The tie map of every row's first key rows (exact, `l2l_jax.exact.tie_map`), or None (fast: no
        tie canonicalisation, since bfloat16 products need not keep ties anyway)."""
        if not self.exact_sums or head is None:
            return None
        return exact.tie_map(head)

    def canonical(self, scores: Array, ties: Array | None) -> Array:
        """Scores with exact ties restored (`l2l_jax.exact.canonical_scores`); unchanged without a tie map."""
        return scores if ties is None else exact.canonical_scores(scores, ties)

    def moments(self, x: Array, axes: tuple[int, ...], counted: Array | None = None,
                n: Array | None = None, extra: tuple[Array, Array] | None = None) -> tuple[Array, Array]:
        """(mean, biased variance) of x over `axes` in float32, with plain reductions: two passes (exact:
        torch's order) or one pass, E[x^2] - E[x]^2 (fast: both sums in one sweep, so on a sharded batch XLA
        combines them into one all-reduce). `counted` (broadcastable to x) selects the entries that count and
        `n` is their number (default: all entries); `extra` = (count, row) enters `count` more entries equal
        to `row` without materialising them (`n` includes them)."""
        count, row = (0.0, 0.0) if extra is None else extra
        x = x.astype(jnp.float32)
        zero = jnp.zeros((), jnp.float32)
        if n is None:
            n = jnp.float32(1)
            for a in axes:
                n = n * x.shape[a]
        keep = (lambda y: y) if counted is None else (lambda y: jnp.where(counted, y, zero))
        if self.exact_sums or self.operand_dtype is None:
            if extra is None:
                mean = jnp.sum(keep(x), axis=axes) / n
                return mean, jnp.sum(keep(jnp.square(x - mean)), axis=axes) / n
            mean = (jnp.sum(keep(x), axis=axes) + count * row) / n
            return mean, (jnp.sum(keep(jnp.square(x - mean)), axis=axes) + count * jnp.square(row - mean)) / n
        s1, s2 = jnp.sum(keep(x), axis=axes), jnp.sum(keep(jnp.square(x)), axis=axes)
        if extra is not None:
            s1, s2 = s1 + count * row, s2 + count * jnp.square(row)
        mean = s1 / n
        return mean, jnp.maximum(s2 / n - jnp.square(mean), zero)


EXACT = Numerics("exact", operand_dtype=None, storage_dtype=jnp.float32, exact_sums=True)
FAST = Numerics("fast", operand_dtype=jnp.bfloat16, storage_dtype=jnp.bfloat16, exact_sums=False,
                unroll_episode=True)

POLICIES: dict[str, Numerics] = {n.name: n for n in (EXACT, FAST)}
#: the names `--precision` accepts, in the order help texts list them
PRECISIONS = tuple(POLICIES)
#: the policy of a run that names none
DEFAULT = EXACT


def get(precision: str | Numerics | None) -> Numerics:
    """The policy of a ``--precision`` value (None: exact); a `Numerics` is returned as it is."""
    if isinstance(precision, Numerics):
        return precision
    if precision is None:
        return DEFAULT
    try:
        return POLICIES[precision]
    except (KeyError, TypeError):
        raise ValueError(f"unknown precision {precision!r}: expected one of {PRECISIONS}") from None


def for_backend(policy: Numerics, backend: str) -> Numerics:
    """The policy as it runs on `backend` ("cpu", "gpu", "tpu"): on a CPU, where a kernel launch costs little
    and an unrolled episode only makes the program larger (measured 2-3x slower per step), the episode
    stays a loop; elsewhere the policy is unchanged."""
    if policy.unroll_episode and backend == "cpu":
        return dataclasses.replace(policy, unroll_episode=False)
    return policy


__all__ = ["DEFAULT", "EXACT", "FAST", "PRECISIONS", "POLICIES", "Numerics", "for_backend", "get"]
