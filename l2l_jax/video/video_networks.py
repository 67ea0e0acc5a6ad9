"""torchvision's video ResNets (``torchvision.models.video``: r3d_18, mc3_18, r2plus1d_18) in Flax.

The published definition (torchvision's ``models/video/resnet.py``, "A Closer Look at Spatiotemporal
Convolutions for Action Recognition", Tran et al. 2018), reproduced:

- **stems**: ``BasicStem`` = Conv3d(3, 64, (3, 7, 7), stride (1, 2, 2), padding (1, 3, 3)), BatchNorm3d, ReLU;
  ``R2Plus1dStem`` = Conv3d(3, 45, (1, 7, 7), stride (1, 2, 2), padding (0, 3, 3)), BatchNorm3d, ReLU,
  Conv3d(45, 64, (3, 1, 1), padding (1, 0, 0)), BatchNorm3d, ReLU. No bias anywhere but in ``fc``.
- **convolution makers** (``conv_makers``, one per layer): ``"3d"`` (Conv3DSimple: 3x3x3, stride s on T, H, W),
  ``"no_temporal"`` (Conv3DNoTemporal: 1x3x3, stride (1, s, s)), ``"2plus1d"`` (Conv2Plus1D: a Sequential of
  Conv3d(in, mid, (1, 3, 3), stride (1, s, s)), BatchNorm3d(mid), ReLU, Conv3d(mid, out, (3, 1, 1), stride
  (s, 1, 1)), with mid = (in * out * 27) // (in * 9 + 3 * out) computed from the *block's* (inplanes, planes),
  the same mid for both of a BasicBlock's convolutions).
- **blocks**: ``BasicBlock`` (expansion 1): conv1 = Sequential(maker(inplanes, planes, stride), BN, ReLU),
  conv2 = Sequential(maker(planes, planes), BN), + residual, ReLU. ``Bottleneck`` (expansion 4): conv1 =
  Sequential(1x1x1, BN, ReLU), conv2 = Sequential(maker(planes, planes, stride), BN, ReLU), conv3 =
  Sequential(1x1x1 to 4 * planes, BN), + residual, ReLU.
- **layers**: layer1..layer4 of 64, 128, 256, 512 planes, strides 1, 2, 2, 2; the first block of a layer gets a
  ``downsample`` = Sequential(Conv3d 1x1x1 with the maker's downsample stride ((s, s, s), or (1, s, s) for
  "no_temporal"), BN) when the stride is not 1 or the width changes.
- **head**: mean over (T, H, W) (AdaptiveAvgPool3d(1)) -> features (B, 512 * expansion), ``fc`` Linear ->
  logits (B, num_classes); num_classes 400 (Kinetics-400) by default.

r3d_18: BasicBlock, "3d" x 4, (2, 2, 2, 2), BasicStem. mc3_18: BasicBlock, "3d" then "no_temporal" x 3,
(2, 2, 2, 2), BasicStem. r2plus1d_18: BasicBlock, "2plus1d" x 4, (2, 2, 2, 2), R2Plus1dStem. `r2plus1d`
builds the deeper R(2+1)D networks (same names, e.g. BasicBlock (3, 4, 6, 3) or Bottleneck (3, 4, 6, 3)).

Layout (ours): NTHWC. The networks take clips (B, T, H, W, 3) float32, already normalised (torchvision's video
models expect 112x112 frames, 16 of them for the Kinetics weights, normalised with mean (0.43216, 0.394666,
0.37645) and std (0.22803, 0.22145, 0.216989)); torch's NCTHW (B, 3, T, H, W) is ``x.transpose(0, 2, 3, 4, 1)``.

Variable names: torchvision's state-dict keys, dots becoming nesting (`l2l_jax.video.video_convert` holds the
table): ``stem.0.weight`` <-> ``params/stem/0/kernel`` (kT, kH, kW, in, out), BatchNorm3d ``stem.1.weight`` /
``bias`` <-> ``params/stem/1/scale`` / ``bias``, ``stem.1.running_mean`` / ``running_var`` /
``num_batches_tracked`` <-> ``batch_stats/stem/1/mean`` / ``var`` / ``num_batches_tracked``;
``layer2.0.conv1.0.0.weight`` (a Conv2Plus1D's spatial conv) <-> ``params/layer2/0/conv1/0/0/kernel``;
``layer2.0.downsample.0.weight`` <-> ``params/layer2/0/downsample/0/kernel``; ``fc.weight`` / ``fc.bias`` <->
``params/fc/kernel`` (in, out) / ``bias``.

BatchNorm: torch's BatchNorm3d (momentum 0.1, eps 1e-5), as `l2l_jax.video.networks.BatchNorm2d` (which
normalises over every axis but the last). ``train=False`` uses the running statistics (eval mode).

Computation (ours): on a CPU every Conv3d runs as one 2-D convolution (`conv3d_as_2d`: frames folded into the
batch for kT = 1, pixels laid in a line for kH = kW = 1, the kT time-shifted copies stacked on the channels
otherwise), the same sum over (kT, kH, kW, in) per output as the 3-D convolution: XLA:CPU hands 2-D
convolutions to YNNPACK (a ``ynn_fusion`` in the compiled program) but computes 3-D ones itself, about half as
fast. On GPUs and TPUs it stays XLA's 3-D convolution (`conv3d_for_platform`).

Numerics: ``EXACT`` (default) computes in float32 at `jax.lax.Precision.HIGHEST` (what the parity tests check);
``FAST`` folds each eval-mode BatchNorm3d into the convolution before it (kernel times the BatchNorm's scale,
then its shift added: `folds_batchnorm`) and runs the convolutions and ``fc`` on bfloat16 operands with float32
accumulation (BatchNorm, pooling and the outputs stay float32). The variables are the same in both.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from l2l_jax.numerics import EXACT, Numerics
from l2l_jax.video.networks import KAIMING_FAN_OUT, BatchNorm2d, normal

Array = jax.Array

BLOCKS = ("basic", "bottleneck")
EXPANSION = {"basic": 1, "bottleneck": 4}
CONV_MAKERS = ("3d", "no_temporal", "2plus1d")
STEMS = ("basic", "r2plus1d")
# (planes, stride) of layer1..layer4
LAYER_PLANES = ((64, 1), (128, 2), (256, 2), (512, 2))
NUM_CLASSES = 400  # Kinetics-400
R2PLUS1D_STEM_MID = 45
Triple = tuple[int, int, int]
Affine = tuple[jax.Array, jax.Array]  # (mul, add) per channel: a BatchNorm folded into a convolution


@dataclasses.dataclass(frozen=True)
class VideoResNetSpec:
    """The architecture arguments of torchvision's ``VideoResNet``: `block` ("basic" | "bottleneck"), one
    convolution maker per layer (`conv_makers`, each in `CONV_MAKERS`), blocks per layer (`layers`) and the
    `stem` ("basic" | "r2plus1d")."""

    block: str
    conv_makers: tuple[str, str, str, str]
    layers: tuple[int, int, int, int]
    stem: str

    def __post_init__(self) -> None:
        if self.block not in BLOCKS:
            raise ValueError(f"unknown block {self.block!r}; expected one of {BLOCKS}")
        if self.stem not in STEMS:
            raise ValueError(f"unknown stem {self.stem!r}; expected one of {STEMS}")
        if len(self.conv_makers) != 4 or any(m not in CONV_MAKERS for m in self.conv_makers):
            raise ValueError(f"conv_makers must be 4 of {CONV_MAKERS}; got {self.conv_makers}")
        if len(self.layers) != 4 or any(int(n) < 1 for n in self.layers):
            raise ValueError(f"layers must be 4 block counts >= 1; got {self.layers}")

    @property
    def feature_dim(self) -> int:
        """Width of the pooled features (fc's input): 512 * the block's expansion."""
        return LAYER_PLANES[-1][0] * EXPANSION[self.block]


ARCHS: dict[str, VideoResNetSpec] = {
    "r3d_18": VideoResNetSpec("basic", ("3d",) * 4, (2, 2, 2, 2), "basic"),
    "mc3_18": VideoResNetSpec("basic", ("3d",) + ("no_temporal",) * 3, (2, 2, 2, 2), "basic"),
    "r2plus1d_18": VideoResNetSpec("basic", ("2plus1d",) * 4, (2, 2, 2, 2), "r2plus1d"),
}


def spec_of(arch: str | VideoResNetSpec) -> VideoResNetSpec:
    """The spec of a named architecture (a key of `ARCHS`); a spec is returned as it is."""
    if isinstance(arch, VideoResNetSpec):
        return arch
    try:
        return ARCHS[arch]
    except (KeyError, TypeError):
        raise ValueError(f"unknown video network {arch!r}; expected one of {tuple(ARCHS)}") from None


def midplanes(inplanes: int, planes: int) -> int:
    """Conv2Plus1D's intermediate width: about the parameter count of a full 3x3x3 convolution."""
    return (inplanes * planes * 3 * 3 * 3) // (inplanes * 3 * 3 + 3 * planes)


def downsample_stride(maker: str, stride: int) -> Triple:
    """The downsample's (T, H, W) stride under a convolution maker (``get_downsample_stride``)."""
    return (1, stride, stride) if maker == "no_temporal" else (stride, stride, stride)


# torchvision's video init: Conv3d kaiming_normal_(fan_out, relu), BatchNorm3d 1 and 0, Linear N(0, 0.01) and 0.
FC_INIT = normal(0.0, 0.01)


def conv3d_as_2d(x: Array, kernel: Array, stride: Triple, padding: Triple, numerics: Numerics) -> Array:
    """torch's ``Conv3d(.., stride, padding, bias=False)`` on NTHWC `x` with `kernel` (kT, kH, kW, in, out),
    computed as one 2-D convolution (which XLA:CPU runs about twice as fast: module docstring):

    - kT = 1: the frames (every ``stride[0]``-th) folded into the batch, a (kH, kW) convolution;
    - kH = kW = 1 (no spatial padding): the pixels (every stride-th row and column) laid along one axis, a
      (kT, 1) convolution over (T, H * W);
    - otherwise: the kT time-shifted (zero-padded, strided) copies of `x` stacked along the channels, a
      (kH, kW) convolution with kT * in input channels over the folded frames.

    Each output is the same sum over (kT, kH, kW, in) as the 3-D convolution's, one convolution per call."""
    kt, kh, kw, cin, cout = kernel.shape
    (st, sh, sw), (pt, ph, pw) = stride, padding
    options = {"precision": numerics.conv_options()["precision"]}
    dtype = numerics.operand_dtype or jnp.float32
    x, kernel = x.astype(dtype), kernel.astype(dtype)
    dims = ("NHWC", "HWIO", "NHWC")
    n = x.shape[0]
    if kh == kw == 1 and kt > 1 and ph == pw == 0:
        x = x[:, :, ::sh, ::sw]
        _, t, h, w, _ = x.shape
        y = jax.lax.conv_general_dilated(x.reshape(n, t, h * w, cin), kernel.reshape(kt, 1, cin, cout), (st, 1),
                                         ((pt, pt), (0, 0)), dimension_numbers=dims, **options)
        return y.reshape(n, y.shape[1], h, w, cout)
    if kt > 1 or pt:
        x = jnp.pad(x, ((0, 0), (pt, pt), (0, 0), (0, 0), (0, 0)))
        t_out = (x.shape[1] - kt) // st + 1
        x = jnp.concatenate([x[:, k:k + st * (t_out - 1) + 1:st] for k in range(kt)], axis=-1)
        kernel = kernel.transpose(1, 2, 0, 3, 4).reshape(1, kh, kw, kt * cin, cout)
    elif st > 1:
        x = x[:, ::st]
    _, t, h, w, c = x.shape
    y = jax.lax.conv_general_dilated(x.reshape(n * t, h, w, c), kernel[0], (sh, sw), ((ph, ph), (pw, pw)),
                                     dimension_numbers=dims, **options)
    return y.reshape(n, t, *y.shape[1:])


def conv3d_native(x: Array, kernel: Array, stride: Triple, padding: Triple, numerics: Numerics) -> Array:
    """The same convolution as XLA's own 3-D convolution (NTHWC, kernel (kT, kH, kW, in, out))."""
    dtype = numerics.operand_dtype or jnp.float32
    return jax.lax.conv_general_dilated(x.astype(dtype), kernel.astype(dtype), stride, [(p, p) for p in padding],
                                        dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
                                        precision=numerics.conv_options()["precision"])


def conv3d_for_platform(x: Array, kernel: Array, stride: Triple, padding: Triple, numerics: Numerics) -> Array:
    """`conv3d_as_2d` where the program runs on a CPU, `conv3d_native` elsewhere (chosen when the program is
    lowered, `jax.lax.platform_dependent`): on a TPU the 2-D forms cost 3-14x the memory traffic of the 3-D
    convolution (benchmarks/aot.py, BENCHMARKS.md), on a CPU they run about twice as fast."""
    return jax.lax.platform_dependent(
        x, kernel, cpu=lambda a, k: conv3d_as_2d(a, k, stride, padding, numerics),
        default=lambda a, k: conv3d_native(a, k, stride, padding, numerics))


class Conv3d(nn.Module):
    """torch's ``Conv3d(.., kernel, stride, padding, bias=False)`` on NTHWC: variable ``kernel`` (kT, kH, kW,
    in, out) float32 (flax's ``nn.Conv`` names and init), computed by `conv3d_for_platform` under `numerics`."""

    features: int
    kernel_size: Triple
    stride: Triple
    padding: Triple
    numerics: Numerics = EXACT

    @nn.compact
    def __call__(self, x: Array, affine: Affine | None = None) -> Array:
        """The convolution of `x`; with ``affine=(mul, add)`` (per output channel, float32), ``conv(x) * mul +
        add`` computed as a convolution with the kernel times `mul`, plus `add` (float32)."""
        kernel = self.param("kernel", KAIMING_FAN_OUT, (*self.kernel_size, x.shape[-1], self.features), jnp.float32)
        if affine is None:
            return conv3d_for_platform(x, kernel, self.stride, self.padding, self.numerics)
        mul, add = affine
        return conv3d_for_platform(x, kernel * mul, self.stride, self.padding, self.numerics).astype(jnp.float32) + add


def conv3d(features: int, kernel: Triple, stride: Triple, padding: Triple, name: str,
           numerics: Numerics) -> Conv3d:
    """torch's ``Conv3d(.., kernel, stride, padding, bias=False)`` on NTHWC; kernel (kT, kH, kW, in, out)."""
    return Conv3d(features, kernel, stride, padding, numerics, name=name)


class BatchNorm3d(BatchNorm2d):
    """torch's BatchNorm3d on NTHWC input: `BatchNorm2d`'s computation (statistics over every axis but the
    channels), the same variables."""


def folds_batchnorm(numerics: Numerics, train: bool) -> bool:
    """Whether a BatchNorm3d after a convolution is folded into it (`batchnorm_affine`): in eval mode, under a
    policy without exact sums (``FAST``): folding saves a multiply per activation and changes the rounding."""
    return not train and not numerics.exact_sums


def batchnorm_affine(bn: BatchNorm3d, channels: int) -> Affine:
    """(mul, add), each (channels,) float32, with ``bn(x) == x * mul + add`` in eval mode (up to rounding): the
    module's own eval computation read off at 0 (add) and 1 (mul + add)."""
    at = bn(jnp.stack([jnp.zeros((channels,), jnp.float32), jnp.ones((channels,), jnp.float32)]), False)
    return at[1] - at[0], at[0]


def conv_bn(conv: Callable[[Array, Affine | None], Array], bn: BatchNorm3d, channels: int, x: Array, train: bool,
            numerics: Numerics) -> Array:
    """``bn(conv(x))``: the BatchNorm folded into the convolution where `folds_batchnorm` says so (`conv` takes
    ``(x, affine)``, as `Conv3d` does)."""
    if folds_batchnorm(numerics, train):
        return conv(x, batchnorm_affine(bn, channels))
    return bn(conv(x, None), train)


class Conv2Plus1D(nn.Module):
    """torchvision's Conv2Plus1D Sequential: ``0`` Conv3d (1, 3, 3) to `mid` (stride (1, s, s)), ``1``
    BatchNorm3d, ReLU, ``3`` Conv3d (3, 1, 1) to `planes` (stride (s, 1, 1))."""

    planes: int
    mid: int
    stride: int = 1
    numerics: Numerics = EXACT

    @nn.compact
    def __call__(self, x: Array, train: bool = False, affine: Affine | None = None) -> Array:
        """`affine` (a following BatchNorm's, `batchnorm_affine`) goes to the last convolution."""
        s, num = self.stride, self.numerics
        spatial = conv3d(self.mid, (1, 3, 3), (1, s, s), (0, 1, 1), "0", num)
        x = nn.relu(conv_bn(spatial, BatchNorm3d(numerics=num, name="1"), self.mid, x, train, num))
        return conv3d(self.planes, (3, 1, 1), (s, 1, 1), (1, 0, 0), "3", num)(x, affine)


def make_conv(maker: str, planes: int, mid: int, stride: int, name: str,
              numerics: Numerics) -> Callable[[Array, bool, Affine | None], Array]:
    """One convolution of a convolution maker, as a module named `name`, called as ``f(x, train, affine)``
    (`affine`: a following BatchNorm folded in, `Conv3d`)."""
    if maker == "2plus1d":
        mod = Conv2Plus1D(planes, mid, stride, numerics, name=name)
        return lambda x, train, affine: mod(x, train, affine)
    if maker == "3d":
        conv = conv3d(planes, (3, 3, 3), (stride,) * 3, (1, 1, 1), name, numerics)
    elif maker == "no_temporal":
        conv = conv3d(planes, (1, 3, 3), (1, stride, stride), (0, 1, 1), name, numerics)
    else:
        raise ValueError(f"unknown convolution maker {maker!r}; expected one of {CONV_MAKERS}")
    return lambda x, train, affine: conv(x, affine)


class ConvBN(nn.Module):
    """A block's ``convN`` Sequential: ``0`` a convolution (a maker's, or 1x1x1 with ``maker=None``), ``1``
    BatchNorm3d, then ReLU when `relu`."""

    planes: int
    maker: str | None
    mid: int = 0
    stride: int = 1
    relu: bool = True
    numerics: Numerics = EXACT

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        num = self.numerics
        if self.maker is None:
            conv = conv3d(self.planes, (1, 1, 1), (1, 1, 1), (0, 0, 0), "0", num)
        else:
            maker = make_conv(self.maker, self.planes, self.mid, self.stride, "0", num)

            def conv(x: Array, affine: Affine | None) -> Array:
                return maker(x, train, affine)
        x = conv_bn(conv, BatchNorm3d(numerics=num, name="1"), self.planes, x, train, num)
        return nn.relu(x) if self.relu else x


class Downsample3d(nn.Module):
    """torchvision's ``downsample`` Sequential: ``0`` Conv3d 1x1x1 (stride `stride`), ``1`` BatchNorm3d."""

    planes: int
    stride: Triple
    numerics: Numerics = EXACT

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        conv = conv3d(self.planes, (1, 1, 1), self.stride, (0, 0, 0), "0", self.numerics)
        return conv_bn(conv, BatchNorm3d(numerics=self.numerics, name="1"), self.planes, x, train, self.numerics)


class VideoBlock(nn.Module):
    """torchvision's video BasicBlock (``block="basic"``: conv1, conv2) or Bottleneck (``"bottleneck"``: conv1,
    conv2, conv3), + residual (``downsample`` when `downsample`), ReLU. `inplanes` sets Conv2Plus1D's width."""

    block: str
    maker: str
    inplanes: int
    planes: int
    stride: int = 1
    downsample: bool = False
    numerics: Numerics = EXACT

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        mid = midplanes(self.inplanes, self.planes)
        num = self.numerics
        if self.block == "basic":
            y = ConvBN(self.planes, self.maker, mid, self.stride, True, num, name="conv1")(x, train)
            y = ConvBN(self.planes, self.maker, mid, 1, False, num, name="conv2")(y, train)
        else:
            y = ConvBN(self.planes, None, 0, 1, True, num, name="conv1")(x, train)
            y = ConvBN(self.planes, self.maker, mid, self.stride, True, num, name="conv2")(y, train)
            y = ConvBN(self.planes * EXPANSION["bottleneck"], None, 0, 1, False, num, name="conv3")(y, train)
        residual = x
        if self.downsample:
            residual = Downsample3d(self.planes * EXPANSION[self.block], downsample_stride(self.maker, self.stride),
                                    num, name="downsample")(x, train)
        return nn.relu(y + residual.astype(y.dtype))


class VideoLayer(nn.Module):
    """torchvision's ``layerN`` of a VideoResNet: `blocks` blocks named ``0``, ``1``, ..."""

    block: str
    maker: str
    inplanes: int
    planes: int
    stride: int
    blocks: int
    numerics: Numerics = EXACT

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        out = self.planes * EXPANSION[self.block]
        inplanes = self.inplanes
        for i in range(self.blocks):
            stride = self.stride if i == 0 else 1
            down = i == 0 and (stride != 1 or inplanes != out)
            x = VideoBlock(self.block, self.maker, inplanes, self.planes, stride, down, self.numerics,
                           name=str(i))(x, train)
            inplanes = out
        return x


class Stem(nn.Module):
    """``BasicStem`` (``kind="basic"``: 0 conv, 1 BN, ReLU) or ``R2Plus1dStem`` (``"r2plus1d"``: 0 conv, 1 BN,
    ReLU, 3 conv, 4 BN, ReLU); -> 64 channels, H and W halved."""

    kind: str
    numerics: Numerics = EXACT

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        num = self.numerics
        if self.kind == "basic":
            conv = conv3d(64, (3, 7, 7), (1, 2, 2), (1, 3, 3), "0", num)
            return nn.relu(conv_bn(conv, BatchNorm3d(numerics=num, name="1"), 64, x, train, num))
        conv = conv3d(R2PLUS1D_STEM_MID, (1, 7, 7), (1, 2, 2), (0, 3, 3), "0", num)
        x = nn.relu(conv_bn(conv, BatchNorm3d(numerics=num, name="1"), R2PLUS1D_STEM_MID, x, train, num))
        conv = conv3d(64, (3, 1, 1), (1, 1, 1), (1, 0, 0), "3", num)
        return nn.relu(conv_bn(conv, BatchNorm3d(numerics=num, name="4"), 64, x, train, num))


class VideoResNet(nn.Module):
    """torchvision's VideoResNet on NTHWC clips (B, T, H, W, 3) float32 (normalised; module docstring).

    ``apply(variables, clips)`` -> logits (B, num_classes); ``apply(variables, clips, with_features=True)`` ->
    (features, logits), features the pooled (B, 512 * expansion) before ``fc``. Both float32."""

    spec: VideoResNetSpec
    num_classes: int = NUM_CLASSES
    numerics: Numerics = EXACT

    @nn.compact
    def __call__(self, clips: Array, train: bool = False, with_features: bool = False) -> Array | tuple[Array, Array]:
        if clips.ndim != 5 or clips.shape[-1] != 3:
            raise ValueError(f"VideoResNet takes NTHWC clips (B, T, H, W, 3); got shape {clips.shape}")
        spec, num = self.spec, self.numerics
        x = Stem(spec.stem, num, name="stem")(clips, train)
        inplanes = 64
        for i, ((planes, stride), maker, blocks) in enumerate(zip(LAYER_PLANES, spec.conv_makers, spec.layers,
                                                                   strict=True), start=1):
            x = VideoLayer(spec.block, maker, inplanes, planes, stride, blocks, num, name=f"layer{i}")(x, train)
            inplanes = planes * EXPANSION[spec.block]
        features = jnp.mean(x.astype(jnp.float32), axis=(1, 2, 3))
        logits = nn.Dense(self.num_classes, kernel_init=FC_INIT, bias_init=nn.initializers.zeros, name="fc",
                          **num.dense_options())(features).astype(jnp.float32)
        return (features, logits) if with_features else logits


def video_resnet(arch: str | VideoResNetSpec, num_classes: int = NUM_CLASSES,
                 numerics: Numerics = EXACT) -> VideoResNet:
    """A VideoResNet of a named architecture (`ARCHS`) or of a `VideoResNetSpec`."""
    return VideoResNet(spec_of(arch), num_classes, numerics)


def r3d_18(num_classes: int = NUM_CLASSES, numerics: Numerics = EXACT) -> VideoResNet:
    """R3D-18: BasicBlock, 3x3x3 convolutions everywhere, BasicStem."""
    return video_resnet("r3d_18", num_classes, numerics)


def mc3_18(num_classes: int = NUM_CLASSES, numerics: Numerics = EXACT) -> VideoResNet:
    """MC3-18: BasicBlock, 3x3x3 in layer1, 1x3x3 (no temporal) in layer2..layer4, BasicStem."""
    return video_resnet("mc3_18", num_classes, numerics)


def r2plus1d_18(num_classes: int = NUM_CLASSES, numerics: Numerics = EXACT) -> VideoResNet:
    """R(2+1)D-18: BasicBlock, Conv2Plus1D everywhere, R2Plus1dStem."""
    return video_resnet("r2plus1d_18", num_classes, numerics)


def r2plus1d(block: str = "basic", layers: tuple[int, int, int, int] = (2, 2, 2, 2), num_classes: int = NUM_CLASSES,
             numerics: Numerics = EXACT) -> VideoResNet:
    """An R(2+1)D of any depth under torchvision's names: `block` "basic" or "bottleneck", `layers` blocks per
    layer (e.g. (3, 4, 6, 3) for R(2+1)D-34 or, with "bottleneck", R(2+1)D-50), Conv2Plus1D and R2Plus1dStem."""
    return VideoResNet(VideoResNetSpec(block, ("2plus1d",) * 4, tuple(layers), "r2plus1d"), num_classes, numerics)


def init_variables(net: VideoResNet, seed: int | Array = 0) -> dict[str, Any]:
    """``net.init`` on a small dummy clip (1, 4, 32, 32, 3): the full variable tree (``params`` and
    ``batch_stats``), random with torchvision's init."""
    key = jax.random.key(seed) if isinstance(seed, int) else seed
    return net.init(key, jnp.zeros((1, 4, 32, 32, 3), jnp.float32))


__all__ = ["ARCHS", "BLOCKS", "CONV_MAKERS", "EXPANSION", "LAYER_PLANES", "NUM_CLASSES", "STEMS", "Affine",
           "BatchNorm3d", "Conv2Plus1D", "Conv3d", "ConvBN", "Downsample3d", "Stem", "VideoBlock", "VideoLayer",
           "VideoResNet", "VideoResNetSpec", "batchnorm_affine", "conv3d_as_2d", "conv3d_for_platform",
           "conv3d_native", "conv_bn", "downsample_stride",
           "folds_batchnorm", "init_variables", "mc3_18", "midplanes", "r2plus1d", "r2plus1d_18", "r3d_18",
           "spec_of", "video_resnet"]
