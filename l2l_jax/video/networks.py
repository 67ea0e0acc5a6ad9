"""The image and audio networks that turn raw clips into upstream's 512-wide clip features.

Upstream's `models/networks.py` defines them (its main scripts never use them; the released features were
made with them or with networks like them):

- `VisualNet`: torchvision's ``resnet18`` without its last two children (avgpool, fc), then
  ``adaptive_avg_pool2d(1, 1)`` -> (B, 512). Input: an RGB image.
- `AudioNet`: a new ``Conv2d(1, 64, 7, stride=1, padding=3, bias=False)`` in place of resnet18's conv1, then
  resnet18's bn1, relu, maxpool, layer1..layer4 on a one-channel spectrogram (B, 1, T, F); the trunk output
  (B, 512, T', F') is permuted so that the F' = 3 frequency positions are channels, ``freq_conv1x1 =
  Conv2d(3, 1, 1x1)`` (with bias) mixes them, it is permuted back and ``adaptive_max_pool2d(1, 1)`` takes the
  maximum over time -> (B, 512). F' = ceil(F / 16), so F must be 33..48 (our default 40 mel bins).
- New layers start from upstream's ``weights_init``: Conv/Linear weight N(0, 0.02), BatchNorm2d weight
  N(1, 0.02) and bias 0. ``weights_init`` does not touch Conv biases, so ``freq_conv1x1.bias`` keeps torch's
  default U(+-1/sqrt(fan_in)) = U(+-1/sqrt(3)) (upstream's code; docs/UPSTREAM.md §6). Everything else starts
  from ImageNet resnet18 weights (`l2l_jax.video.convert`).

Layout (ours): NHWC. `VisualNet` takes (B, H, W, 3) float32, already normalised (`l2l_jax.video.frames`);
upstream's NCHW (B, 3, H, W) is ``x.transpose(0, 2, 3, 1)``. `AudioNet` takes (B, T, F) or (B, T, F, 1), time
first (`l2l_jax.video.audio` returns (B, T, F)); upstream's (B, 1, T, F) is ``x[:, 0]``.

Variable names (ours, documented; they map 1:1 to torch's names, `l2l_jax.video.convert` holds the table):
the resnet18 trunk is the submodule ``resnet`` of both networks and its variables carry torchvision's resnet18
names, dots becoming nesting: ``conv1.weight`` <-> ``params/resnet/conv1/kernel``, ``bn1.weight`` / ``.bias``
<-> ``params/resnet/bn1/scale`` / ``bias``, ``bn1.running_mean`` / ``running_var`` / ``num_batches_tracked``
<-> ``batch_stats/resnet/bn1/mean`` / ``var`` / ``num_batches_tracked``, ``layer2.0.downsample.0.weight``
<-> ``params/resnet/layer2/0/downsample/0/kernel``, and so on. AudioNet's new first convolution is the trunk's
``conv1`` (kernel (7, 7, 1, 64)); its ``freq_conv1x1`` is ``params/freq_conv1x1/kernel`` (1, 1, 3, 1) and
``bias`` (1,). Upstream wraps the trunk as ``feature_extraction`` (a Sequential: 0 conv1, 1 bn1, 2 relu,
3 maxpool, 4..7 layer1..layer4), and AudioNet registers its conv1 twice (``conv1`` and
``feature_extraction.0``); convert reads and writes those names too.

BatchNorm: torch's BatchNorm2d (momentum 0.1, eps 1e-5). ``train=False`` normalises with the running
statistics (eval mode); ``train=True`` with the batch's biased statistics, and updates the running ones with the
unbiased variance as torch does (call ``apply(..., mutable=["batch_stats"])``).

Numerics: every network takes the run's `l2l_jax.numerics.Numerics` (``numerics=``). ``EXACT`` (default) computes
in float32 at `jax.lax.Precision.HIGHEST` with torch's two-pass BatchNorm statistics (what the parity tests
check); ``FAST`` runs the convolutions on bfloat16 operands and takes one-pass BatchNorm moments (BatchNorm,
pooling and the outputs stay float32).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from l2l_jax.numerics import EXACT, Numerics

Array = jax.Array

FEATURE_DIM = 512
AUDIO_FREQ_POSITIONS = 3  # F' that freq_conv1x1 expects: F = 33..48 input bins
# (planes, stride of the first block) of layer1..layer4; two BasicBlocks each.
RESNET18_LAYERS = ((64, 1), (128, 2), (256, 2), (512, 2))


def normal(mean: float, std: float) -> Callable:
    """N(mean, std^2) (upstream's ``weights_init`` draws)."""

    def init(key, shape, dtype=jnp.float32):
        return mean + std * jax.random.normal(key, shape, dtype)

    return init


def uniform(bound: float) -> Callable:
    """U(-bound, bound) (torch's default bias init, bound = 1/sqrt(fan_in))."""

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


# torchvision's resnet init for the trunk's convolutions: kaiming_normal_(mode="fan_out", nonlinearity="relu").
KAIMING_FAN_OUT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def conv(features: int, kernel: int, stride: int, padding: int, name: str, numerics: Numerics,
         kernel_init: Callable = KAIMING_FAN_OUT, use_bias: bool = False) -> nn.Conv:
    """torch's ``Conv2d(.., kernel, stride, padding)`` on NHWC; kernel (k, k, in, out)."""
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=((padding, padding),) * 2,
                   use_bias=use_bias, kernel_init=kernel_init, name=name, **numerics.conv_options())


class BatchNorm2d(nn.Module):
    """torch's BatchNorm2d over the last (channel) axis of NHWC input; computed in float32.

    Variables: ``params/scale``, ``params/bias``; ``batch_stats/mean``, ``var`` (start 0 and 1) and
    ``num_batches_tracked`` (int32 scalar; torch's int64)."""

    momentum: float = 0.1
    eps: float = 1e-5
    scale_init: Callable = nn.initializers.ones
    numerics: Numerics = EXACT

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        c = x.shape[-1]
        scale = self.param("scale", self.scale_init, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
        count = self.variable("batch_stats", "num_batches_tracked", lambda: jnp.zeros((), jnp.int32))
        x = x.astype(jnp.float32)
        if train:
            n = math.prod(x.shape[:-1])
            mean, var = self.numerics.moments(x, tuple(range(x.ndim - 1)))
            if not self.is_initializing():
                unbiased = var * (n / max(n - 1, 1))
                ra_mean.value = (1.0 - self.momentum) * ra_mean.value + self.momentum * mean
                ra_var.value = (1.0 - self.momentum) * ra_var.value + self.momentum * unbiased
                count.value = count.value + 1
        else:
            mean, var = ra_mean.value, ra_var.value
        return (x - mean) * (scale * jax.lax.rsqrt(var + self.eps)) + bias


class Downsample(nn.Module):
    """torchvision's ``downsample`` Sequential: ``0`` conv1x1 (stride, no bias), ``1`` BatchNorm2d."""

    planes: int
    stride: int
    numerics: Numerics = EXACT

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        x = conv(self.planes, 1, self.stride, 0, "0", self.numerics)(x)
        return BatchNorm2d(numerics=self.numerics, name="1")(x, train)


class BasicBlock(nn.Module):
    """torchvision's BasicBlock: conv1 (3x3, stride), bn1, relu, conv2 (3x3), bn2, + identity or downsample,
    relu."""

    planes: int
    stride: int = 1
    numerics: Numerics = EXACT

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        identity = x
        y = conv(self.planes, 3, self.stride, 1, "conv1", self.numerics)(x)
        y = nn.relu(BatchNorm2d(numerics=self.numerics, name="bn1")(y, train))
        y = conv(self.planes, 3, 1, 1, "conv2", self.numerics)(y)
        y = BatchNorm2d(numerics=self.numerics, name="bn2")(y, train)
        if self.stride != 1 or x.shape[-1] != self.planes:
            identity = Downsample(self.planes, self.stride, self.numerics, name="downsample")(x, train)
        return nn.relu(y + identity.astype(y.dtype))


class ResLayer(nn.Module):
    """torchvision's ``layerN``: BasicBlocks named ``0``, ``1``, ..."""

    planes: int
    stride: int
    blocks: int = 2
    numerics: Numerics = EXACT

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        for i in range(self.blocks):
            x = BasicBlock(self.planes, self.stride if i == 0 else 1, self.numerics, name=str(i))(x, train)
        return x


class ResNet18Trunk(nn.Module):
    """resnet18 up to layer4 (no avgpool, no fc) on NHWC input (B, H, W, C_in) -> (B, H', W', 512).

    conv1 (7x7, ``conv1_stride``, padding 3, no bias; C_in from the input), bn1, relu, maxpool (3, stride 2,
    padding 1), layer1..layer4. ``conv1_stride`` is 2 in resnet18 (VisualNet) and 1 in AudioNet, whose conv1
    is new (``conv1_init``). Spatial sizes: H' = ceil(H / 32) for stride 2, ceil(H / 16) for stride 1."""

    conv1_stride: int = 2
    conv1_init: Callable = KAIMING_FAN_OUT
    numerics: Numerics = EXACT

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        x = conv(64, 7, self.conv1_stride, 3, "conv1", self.numerics, kernel_init=self.conv1_init)(x)
        x = nn.relu(BatchNorm2d(numerics=self.numerics, name="bn1")(x, train))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for i, (planes, stride) in enumerate(RESNET18_LAYERS, start=1):
            x = ResLayer(planes, stride, 2, self.numerics, name=f"layer{i}")(x, train)
        return x.astype(jnp.float32)


class VisualNet(nn.Module):
    """Upstream's VisualNet: resnet18 trunk (submodule ``resnet``), spatial average -> (B, 512).

    Input (B, H, W, 3) float32, normalised with ImageNet's mean and std (`l2l_jax.video.frames`)."""

    numerics: Numerics = EXACT

    @nn.compact
    def __call__(self, images: Array, train: bool = False) -> Array:
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"VisualNet takes NHWC images (B, H, W, 3); got shape {images.shape}")
        x = ResNet18Trunk(conv1_stride=2, numerics=self.numerics, name="resnet")(images, train)
        return jnp.mean(x, axis=(1, 2))


class AudioNet(nn.Module):
    """Upstream's AudioNet: new conv1 + resnet18's bn1..layer4 (submodule ``resnet``), ``freq_conv1x1`` over the
    3 frequency positions, maximum over time -> (B, 512).

    Input (B, T, F) or (B, T, F, 1) float32: a (log-mel) spectrogram, time first, F in 33..48
    (`l2l_jax.video.audio`). New layers start as upstream's: conv1 weight N(0, 0.02), freq_conv1x1 weight
    N(0, 0.02), bias U(+-1/sqrt(3))."""

    numerics: Numerics = EXACT

    @nn.compact
    def __call__(self, spectrogram: Array, train: bool = False) -> Array:
        x = spectrogram[..., None] if spectrogram.ndim == 3 else spectrogram
        if x.ndim != 4 or x.shape[-1] != 1:
            raise ValueError(f"AudioNet takes spectrograms (B, T, F) or (B, T, F, 1); got shape {spectrogram.shape}")
        freq = -(-x.shape[2] // 16)
        if freq != AUDIO_FREQ_POSITIONS:
            raise ValueError(f"AudioNet needs 33..48 frequency bins (they reduce to the {AUDIO_FREQ_POSITIONS} "
                             f"positions freq_conv1x1 mixes); got F = {x.shape[2]}, which reduces to {freq}")
        x = ResNet18Trunk(conv1_stride=1, conv1_init=normal(0.0, 0.02), numerics=self.numerics,
                          name="resnet")(x, train)  # (B, T', 3, 512)
        x = jnp.swapaxes(x, 2, 3)  # (B, T', 512, 3): the frequency positions are the channels
        x = nn.Conv(1, (1, 1), kernel_init=normal(0.0, 0.02),
                    bias_init=uniform(1.0 / math.sqrt(AUDIO_FREQ_POSITIONS)), precision=jax.lax.Precision.HIGHEST,
                    name="freq_conv1x1")(x)[..., 0]  # (B, T', 512)
        return jnp.max(x, axis=1)


def new_audio_layers(seed: int | Array = 0) -> dict[str, Any]:
    """AudioNet's two new layers drawn as upstream draws them, seeded (the same seed gives the same values):
    ``{"conv1": {"kernel": (7, 7, 1, 64) ~ N(0, 0.02)}, "freq_conv1x1": {"kernel": (1, 1, 3, 1) ~ N(0, 0.02),
    "bias": (1,) ~ U(+-1/sqrt(3))}}``, float32 jax arrays (Flax layouts)."""
    key = jax.random.key(seed) if isinstance(seed, int) else seed
    k_conv, k_freq, k_bias = jax.random.split(key, 3)
    return {
        "conv1": {"kernel": normal(0.0, 0.02)(k_conv, (7, 7, 1, 64))},
        "freq_conv1x1": {"kernel": normal(0.0, 0.02)(k_freq, (1, 1, AUDIO_FREQ_POSITIONS, 1)),
                         "bias": uniform(1.0 / math.sqrt(AUDIO_FREQ_POSITIONS))(k_bias, (1,))},
    }


def init_variables(net: nn.Module, seed: int | Array = 0) -> dict[str, Any]:
    """``net.init`` on a small dummy input ((1, 32, 32, 3) images or a (1, 16, 40) spectrogram): the full
    variable tree (``params`` and ``batch_stats``), random (torchvision's init for the trunk)."""
    key = jax.random.key(seed) if isinstance(seed, int) else seed
    if isinstance(net, AudioNet):
        dummy = jnp.zeros((1, 16, 40), jnp.float32)
    elif isinstance(net, VisualNet):
        dummy = jnp.zeros((1, 32, 32, 3), jnp.float32)
    else:
        raise TypeError(f"init_variables takes a VisualNet or an AudioNet, not {type(net).__name__}")
    return net.init(key, dummy)


__all__ = ["AUDIO_FREQ_POSITIONS", "FEATURE_DIM", "AudioNet", "BasicBlock", "BatchNorm2d",
           "Downsample", "ResLayer", "ResNet18Trunk", "VisualNet", "init_variables", "new_audio_layers"]
