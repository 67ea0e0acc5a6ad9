"""The pieces that must compute exactly what PyTorch computes (UPSTREAM.md sections 4 and 6).

- `TorchBatchNorm`: torch's BatchNorm (momentum 0.1, eps 1e-5, running variance from the *unbiased* batch
  variance), with per-row/per-position weights so that filler rows and bucket padding never enter the
  batch statistics.
- `WeightNormLSTMCell`: torch's LSTMCell under `weight_norm` on both weight matrices (g and v are the
  trained parameters; W = g * v / ||v|| row-wise, no epsilon).
- `interp_time`: `F.interpolate(mode="linear", align_corners=False)` along time, computed in float32 as
  torch's CPU kernel does, for a batch length that is a traced value.
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
    """

    features: int
    scale_init_std: float = 0.0  # 0: scale starts at 1 (BatchNorm1d); 0.02: N(1, 0.02) (BatchNorm2d in upstream)
    momentum: float = 0.1
    eps: float = 1e-5

    @nn.compact
    def __call__(self, x: Array, weights: Array, train: bool) -> Array:
        scale_init = normal(1.0, self.scale_init_std) if self.scale_init_std else nn.initializers.ones
        scale = self.param("scale", scale_init, (self.features,))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((self.features,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((self.features,), jnp.float32))
        count = self.variable("batch_stats", "num_batches_tracked", lambda: jnp.zeros((), jnp.int32))
        if train:
            w = weights.astype(x.dtype)[..., None]
            axes = tuple(range(x.ndim - 1))
            n = jnp.sum(w)
            mean = jnp.sum(x * w, axis=axes) / n
            var = jnp.sum(jnp.square(x - mean) * w, axis=axes) / n
            if not self.is_initializing():
                ra_mean.value = (1.0 - self.momentum) * ra_mean.value + self.momentum * mean
                unbiased = var * (n / (n - 1.0))
                ra_var.value = (1.0 - self.momentum) * ra_var.value + self.momentum * unbiased
                count.value = count.value + 1
        else:
            mean, var = ra_mean.value, ra_var.value
        inv = jax.lax.rsqrt(var + self.eps)
        return (x - mean) * (inv * scale) + bias


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

    def weights(self) -> tuple[Array, Array]:
        """The effective (W_ih, W_hh), computed once per forward (constant across the episode)."""
        return weight_norm(self.weight_ih_g, self.weight_ih_v), weight_norm(self.weight_hh_g, self.weight_hh_v)

    def __call__(self, x: Array, h: Array, c: Array, w_ih: Array, w_hh: Array) -> tuple[Array, Array]:
        p = PRECISIONS[self.precision]
        gates = (jnp.dot(x, w_ih.T, precision=p) + self.bias_ih) + (jnp.dot(h, w_hh.T, precision=p) + self.bias_hh)
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
