"""The pieces that must compute exactly what PyTorch computes (UPSTREAM.md sections 4 and 6).

- `TorchBatchNorm`: torch's BatchNorm (momentum 0.1, eps 1e-5, running variance from the *unbiased* batch
  variance), with per-row/per-position weights so that filler rows and bucket padding never enter the
  batch statistics.
- `WeightNormLSTMCell`: torch's LSTMCell under `weight_norm` on both weight matrices (g and v are the
  trained parameters; W = g * v / ||v|| row-wise, no epsilon).
- `interp_time`: `F.interpolate(mode="linear", align_corners=False)` along time, computed in float32 as
  torch's CPU kernel does, for a batch length that is a traced value.
- Bucket invariance: `tree_sum`, `position_sum`, `spread` and `padded_softmax` (with `l2l_jax.packing`)
  compute sums over the time axis (and over rows) so that appending zero positions (bucket padding) or
  zero-weight rows (filler rows) changes no bit of any value or gradient. XLA's own reductions and dot
  products round differently for different axis lengths, so plain `jnp.sum`/`einsum` would not do.
- Initialisers with upstream's distributions (section 6).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array

PRECISIONS = {"highest": jax.lax.Precision.HIGHEST, "high": jax.lax.Precision.HIGH,
              "default": jax.lax.Precision.DEFAULT}


def torch_uniform(bound: float):
    """U(-bound, bound): torch's default init of Linear/Conv biases (bound = 1/sqrt(fan_in))."""

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def normal(mean: float, std: float):
    """N(mean, std): upstream's `weights_init` for Linear/Conv weights and BatchNorm2d scales."""

    def init(key, shape, dtype=jnp.float32):
        return mean + std * jax.random.normal(key, shape, dtype)

    return init


def torch_dense(features: int, fan_in: int, name: str, precision: str, weight_std: float | None = 0.02):
    """A Linear layer with upstream's init: weight N(0, weight_std) (torch's default U(+-1/sqrt(fan_in)) when
    None), bias U(+-1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)
    kernel_init = normal(0.0, weight_std) if weight_std is not None else torch_uniform(bound)
    return nn.Dense(features, kernel_init=kernel_init, bias_init=torch_uniform(bound),
                    precision=PRECISIONS[precision], name=name)


class TorchBatchNorm(nn.Module):
    """BatchNorm over the last axis, numerically as torch's BatchNorm1d/2d.

    `weights` (shape `x.shape[:-1]`, 0 or 1) select the entries that count in the batch statistics
    (n = sum of weights); the others are normalised with the same statistics but never influence them.
    `implicit` = (count, row) adds `count` more entries equal to `row` (K,) to the statistics without
    materialising them (the key conv's zero positions, `l2l_jax.packing`); then the call returns
    (normalised x, normalised row). Without `implicit` the sums are `position_sum` trees (invariant to
    filler rows); with it, x is in the chunk layout, whose shape does not depend on the bucket, and plain sums do.
    """

    features: int
    scale_init_std: float = 0.0  # 0: scale starts at 1 (BatchNorm1d); 0.02: N(1, 0.02) (BatchNorm2d in upstream)
    momentum: float = 0.1
    eps: float = 1e-5

    @nn.compact
    def __call__(self, x: Array, weights: Array, train: bool,
                 implicit: tuple[Array, Array] | None = None) -> Array | tuple[Array, Array]:
        scale_init = normal(1.0, self.scale_init_std) if self.scale_init_std else nn.initializers.ones
        scale = self.param("scale", scale_init, (self.features,))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((self.features,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((self.features,), jnp.float32))
        count = self.variable("batch_stats", "num_batches_tracked", lambda: jnp.zeros((), jnp.int32))
        lead = x.ndim - 1
        w = weights.astype(x.dtype)
        if train:
            counted = (w > 0)[..., None]
            if implicit is None:  # by position_sum/spread: bucket and filler invariant
                n = position_sum(w, lead)
                mean = position_sum(x, lead, counted) / n
                var = position_sum(jnp.square(x - spread(mean, w)), lead, counted) / n
            else:
                extra, row = implicit
                axes = tuple(range(lead))
                zero = jnp.zeros((), x.dtype)
                n = jnp.sum(w) + extra
                mean = (jnp.sum(jnp.where(counted, x, zero), axis=axes) + extra * row) / n
                dev = jnp.where(counted, jnp.square(x - mean), zero)
                var = (jnp.sum(dev, axis=axes) + extra * jnp.square(row - mean)) / n
            if not self.is_initializing():
                ra_mean.value = (1.0 - self.momentum) * ra_mean.value + self.momentum * mean
                unbiased = var * (n / (n - 1.0))
                ra_var.value = (1.0 - self.momentum) * ra_var.value + self.momentum * unbiased
                count.value = count.value + 1
        else:
            mean, var = ra_mean.value, ra_var.value
        inv = jax.lax.rsqrt(var + self.eps)
        if implicit is not None:
            return (x - mean) * (inv * scale) + bias, (implicit[1] - mean) * (inv * scale) + bias
        return (x - spread(mean, w)) * spread(inv * scale, w) + spread(bias, w)


def weight_norm(g: Array, v: Array) -> Array:
    """torch.nn.utils.weight_norm with dim=0: each row of v scaled to norm g (no epsilon)."""
    return v * (g / jnp.sqrt(jnp.sum(jnp.square(v), axis=1, keepdims=True)))


class WeightNormLSTMCell(nn.Module):
    """torch.nn.LSTMCell (gates i, f, g, o) with weight-normalised input and hidden weights.

    Parameters keep torch's layout and names (`weight_ih_g (4H,1)`, `weight_ih_v (4H,in)`, ...). At init
    v ~ U(+-1/sqrt(H)), g = the row norms of v (so W = v), biases 0, as upstream builds it.
    """

    input_size: int
    hidden_size: int = 1024
    precision: str = "highest"

    def setup(self):
        h4, bound = 4 * self.hidden_size, 1.0 / math.sqrt(self.hidden_size)
        self.weight_ih_v = self.param("weight_ih_v", torch_uniform(bound), (h4, self.input_size))
        self.weight_ih_g = self.param("weight_ih_g", lambda _: _row_norms(self.weight_ih_v))
        self.weight_hh_v = self.param("weight_hh_v", torch_uniform(bound), (h4, self.hidden_size))
        self.weight_hh_g = self.param("weight_hh_g", lambda _: _row_norms(self.weight_hh_v))
        self.bias_ih = self.param("bias_ih", nn.initializers.zeros, (h4,))
        self.bias_hh = self.param("bias_hh", nn.initializers.zeros, (h4,))

    def weights(self) -> Array:
        """The effective [W_ih | W_hh] transposed, (in + H, 4H), computed once per forward (constant across
        the episode): one product per step over cat(x, h) instead of two smaller ones."""
        w_ih = weight_norm(self.weight_ih_g, self.weight_ih_v)
        w_hh = weight_norm(self.weight_hh_g, self.weight_hh_v)
        return jnp.concatenate([w_ih, w_hh], axis=1).T

    def __call__(self, x: Array, h: Array, c: Array, w: Array) -> tuple[Array, Array]:
        p = PRECISIONS[self.precision]
        gates = jnp.dot(jnp.concatenate([x, h], axis=-1), w, precision=p) + (self.bias_ih + self.bias_hh)
        i, f, g, o = jnp.split(gates, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return h, c


def _row_norms(v: Array) -> Array:
    return jnp.sqrt(jnp.sum(jnp.square(v), axis=1, keepdims=True))


def interp_time(x: Array, length: Array, subsample: int) -> Array:
    """Linear interpolation of x[:, ::subsample] (ceil(L/s) rows) back to L rows (align_corners=False).

    x is (B, Lb, F) with Lb >= L = `length` (a traced int). Rows >= L of the result are unspecified (the
    caller multiplies by the mask). Float32 arithmetic follows torch's CPU kernel: scale = L'/L,
    src = max(0, scale*(j+0.5)-0.5), i0 = floor(src), i1 = min(i0+1, L'-1), out = x0*(1-lam) + x1*lam.
    """
    lb = x.shape[1]
    length = jnp.asarray(length, jnp.int32)
    short = (length + subsample - 1) // subsample
    scale = short.astype(jnp.float32) / length.astype(jnp.float32)
    j = jnp.arange(lb, dtype=jnp.float32)
    src = jnp.maximum(scale * (j + jnp.float32(0.5)) - jnp.float32(0.5), jnp.float32(0.0))
    i0 = jnp.floor(src).astype(jnp.int32)
    i1 = jnp.where(i0 < short - 1, i0 + 1, i0)
    lam = jnp.clip(src - i0.astype(jnp.float32), 0.0, 1.0)
    r0 = jnp.minimum(i0 * subsample, lb - 1)
    r1 = jnp.minimum(i1 * subsample, lb - 1)
    x0 = jnp.take(x, r0, axis=1)
    x1 = jnp.take(x, r1, axis=1)
    return x0 * (1.0 - lam)[None, :, None] + x1 * lam[None, :, None]



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
    first copy wins the argmax as upstream's does (UPSTREAM.md section 4). Computed once per batch."""
    w = min(TIE_WINDOW, rows.shape[1])
    bits = jax.lax.bitcast_convert_type(rows[:, :w], jnp.int32)
    same = jnp.all(bits[:, :, None, :] == bits[:, None, :, :], axis=-1)  # (B, W, W)
    return jnp.argmax(same, axis=-1).astype(jnp.int32)


def canonical_scores(s: Array, ties: Array) -> Array:
    """Scores (B, Lb) whose first positions are replaced by those of their first identical copy (`tie_map`)."""
    w = ties.shape[1]
    return jnp.concatenate([jnp.take_along_axis(s[:, :w], ties, axis=1), s[:, w:]], axis=1)
