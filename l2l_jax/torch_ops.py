"""Layers that compute exactly what PyTorch computes (docs/UPSTREAM.md §4 and §6).

- `TorchBatchNorm`: torch's BatchNorm (momentum 0.1, eps 1e-5, running variance from the *unbiased* batch
  variance), with per-row/per-position weights so that filler rows and bucket padding never enter the
  batch statistics.
- `WeightNormLSTMCell`: torch's LSTMCell under `weight_norm` on both weight matrices (g and v are the
  trained parameters; W = g * v / ||v|| row-wise, no epsilon).
- `interp_time`: `F.interpolate(mode="linear", align_corners=False)` along time, computed in float32 as
  torch's CPU kernel does, for a batch length that is a traced value.
- `torch_dense` and the initialisers: upstream's initial distributions (docs/UPSTREAM.md §6).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from l2l_jax.exact import position_sum, spread
from l2l_jax.numerics import EXACT, Numerics

Array = jax.Array

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


def torch_dense(features: int, fan_in: int, name: str, numerics: Numerics, weight_std: float | None = 0.02):
    """A Linear layer with upstream's init: weight N(0, weight_std) (torch's default U(+-1/sqrt(fan_in)) when
    None), bias U(+-1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)
    kernel_init = normal(0.0, weight_std) if weight_std is not None else torch_uniform(bound)
    return nn.Dense(features, kernel_init=kernel_init, bias_init=torch_uniform(bound), name=name,
                    **numerics.dense_options())


class TorchBatchNorm(nn.Module):
    """BatchNorm over the last axis, numerically as torch's BatchNorm1d/2d.

    `weights` (shape `x.shape[:-1]`, 0 or 1) select the entries that count in the batch statistics
    (n = sum of weights); the others are normalised with the same statistics but never influence them.
    `implicit` = (count, row) adds `count` more entries equal to `row` (K,) to the statistics without
    materialising them (the key conv's zero positions, `l2l_jax.packing`); then the call returns
    (normalised x, normalised row). Without `implicit` the sums are `position_sum` trees (invariant to
    filler rows); with it, x is in the chunk layout, whose shape does not depend on the bucket, and plain sums do.
    Under numerics without exact sums (FAST) the statistics are one-pass float32 moments with plain sums
    (`Numerics.moments`), so a sharded batch costs one all-reduce, and x may be bfloat16.
    """

    features: int
    scale_init_std: float = 0.0  # 0: scale starts at 1 (BatchNorm1d); 0.02: N(1, 0.02) (BatchNorm2d in upstream)
    momentum: float = 0.1
    eps: float = 1e-5
    numerics: Numerics = EXACT

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
        numerics = self.numerics
        if not numerics.exact_sums:
            return self._plain(x, weights, train, implicit, scale, bias, ra_mean, ra_var, count)
        w = weights.astype(x.dtype)
        if train:
            counted = (w > 0)[..., None]
            if implicit is None:  # by position_sum/spread: bucket and filler invariant
                n = position_sum(w, lead)
                mean = position_sum(x, lead, counted) / n
                var = position_sum(jnp.square(x - spread(mean, w)), lead, counted) / n
            else:  # the chunk layout: plain sums over a shape that does not depend on the bucket
                n = jnp.sum(w) + implicit[0]
                mean, var = numerics.moments(x, tuple(range(lead)), counted, n, implicit)
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

    def _plain(self, x, weights, train, implicit, scale, bias, ra_mean, ra_var, count):
        """The statistics with plain reductions (numerics without exact sums): one-pass float32 moments of
        the counted entries, plus `implicit` rows; x may be bfloat16 (the result is float32)."""
        axes = tuple(range(x.ndim - 1))
        counted = (weights > 0)[..., None]
        if train:
            n = jnp.sum(weights.astype(jnp.float32)) + (0.0 if implicit is None else implicit[0])
            mean, var = self.numerics.moments(x, axes, counted, n, implicit)
            if not self.is_initializing():
                ra_mean.value = (1.0 - self.momentum) * ra_mean.value + self.momentum * mean
                ra_var.value = (1.0 - self.momentum) * ra_var.value + self.momentum * var * (n / (n - 1.0))
                count.value = count.value + 1
        else:
            mean, var = ra_mean.value, ra_var.value
        mul = jax.lax.rsqrt(var + self.eps) * scale
        add = bias - mean * mul
        out = x.astype(jnp.float32) * mul + add
        if implicit is not None:
            return out, implicit[1] * mul + add
        return out


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
    numerics: Numerics = EXACT

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
        gates = self.numerics.dot(jnp.concatenate([x, h], axis=-1), w) + (self.bias_ih + self.bias_hh)
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
