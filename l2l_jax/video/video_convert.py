"""torchvision video ResNet state dicts (numpy) <-> Flax variables of `video_networks.VideoResNet`, strict and
bit-exact.

torch side: the keys of torchvision's ``VideoResNet.state_dict()`` (r3d_18, mc3_18, r2plus1d_18 and the deeper
R(2+1)D networks under the same names), in that order: ``stem.*``, ``layer1.0.conv1.0.weight`` (or, for
Conv2Plus1D, ``layer1.0.conv1.0.0.weight``, ``layer1.0.conv1.0.1.*``, ``layer1.0.conv1.0.3.weight``),
``layer1.0.conv1.1.*`` (BatchNorm3d), ..., ``layer2.0.downsample.{0,1}.*``, ..., ``fc.weight``, ``fc.bias``.

Flax side (`l2l_jax.video.video_networks`): ``params/<torch path>/{kernel,scale,bias}`` and
``batch_stats/<torch path>/{mean,var,num_batches_tracked}``. Conv3d weights (O, I, kT, kH, kW) <-> kernels
(kT, kH, kW, I, O); ``fc.weight`` (C, F) <-> ``fc/kernel`` (F, C); ``num_batches_tracked`` int64 <-> int32
scalar; nothing else changes, so both directions are bit-exact.

Reading is strict (`l2l_jax.video.convert.check_state_dict`): every missing key, unexpected key, wrong shape
and wrong dtype is listed in one `l2l_jax.errors.WeightsError`; nothing is converted partially. A ``module.``
prefix on every key (DataParallel) is removed first. The number of classes is ``num_classes`` (400, Kinetics-400,
unless given): a file with another ``fc`` is refused by shape.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from l2l_jax.errors import WeightsError
from l2l_jax.pth_convert import strip_module_prefix
from l2l_jax.torch_names import get_path, set_path
from l2l_jax.video.convert import check_state_dict
from l2l_jax.video.video_networks import (
    EXPANSION,
    LAYER_PLANES,
    NUM_CLASSES,
    R2PLUS1D_STEM_MID,
    VideoResNetSpec,
    midplanes,
    spec_of,
)

_BN_STATS = (("running_mean", "mean"), ("running_var", "var"), ("num_batches_tracked", "num_batches_tracked"))

# One entry: (torch key, collection, Flax path, kind, torch shape); kind: "conv" (O,I,kT,kH,kW) <-> (kT,kH,kW,I,O),
# "linear" (out, in) <-> (in, out), "=" as is, "count" int64 <-> int32.
Entry = tuple[str, str, tuple[str, ...], str, tuple[int, ...]]


def _conv(key: str, shape: tuple[int, ...]) -> Iterator[Entry]:
    yield f"{key}.weight", "params", (*key.split("."), "kernel"), "conv", shape


def _bn(key: str, c: int) -> Iterator[Entry]:
    path = tuple(key.split("."))
    yield f"{key}.weight", "params", path + ("scale",), "=", (c,)
    yield f"{key}.bias", "params", path + ("bias",), "=", (c,)
    for torch_name, flax_name in _BN_STATS:
        kind = "count" if flax_name == "num_batches_tracked" else "="
        yield f"{key}.{torch_name}", "batch_stats", path + (flax_name,), kind, (() if kind == "count" else (c,))


def _maker(key: str, maker: str, cin: int, cout: int, mid: int) -> Iterator[Entry]:
    """The tensors of one convolution maker's module at `key`."""
    if maker == "2plus1d":
        yield from _conv(f"{key}.0", (mid, cin, 1, 3, 3))
        yield from _bn(f"{key}.1", mid)
        yield from _conv(f"{key}.3", (cout, mid, 3, 1, 1))
    elif maker == "3d":
        yield from _conv(key, (cout, cin, 3, 3, 3))
    else:
        yield from _conv(key, (cout, cin, 1, 3, 3))


def entries(arch: str | VideoResNetSpec, num_classes: int = NUM_CLASSES) -> list[Entry]:
    """Every tensor of a VideoResNet (a name of `video_networks.ARCHS` or a spec), torchvision's state-dict
    order."""
    spec = spec_of(arch)
    out: list[Entry] = []
    if spec.stem == "basic":
        out += _conv("stem.0", (64, 3, 3, 7, 7))
        out += _bn("stem.1", 64)
    else:
        out += _conv("stem.0", (R2PLUS1D_STEM_MID, 3, 1, 7, 7))
        out += _bn("stem.1", R2PLUS1D_STEM_MID)
        out += _conv("stem.3", (64, R2PLUS1D_STEM_MID, 3, 1, 1))
        out += _bn("stem.4", 64)
    expansion = EXPANSION[spec.block]
    inplanes = 64
    for i, ((planes, stride), maker, blocks) in enumerate(zip(LAYER_PLANES, spec.conv_makers, spec.layers,
                                                               strict=True), start=1):
        width = planes * expansion
        for b in range(blocks):
            key = f"layer{i}.{b}"
            mid = midplanes(inplanes, planes)
            if spec.block == "basic":
                out += _maker(f"{key}.conv1.0", maker, inplanes, planes, mid)
                out += _bn(f"{key}.conv1.1", planes)
                out += _maker(f"{key}.conv2.0", maker, planes, planes, mid)
                out += _bn(f"{key}.conv2.1", planes)
            else:
                out += _conv(f"{key}.conv1.0", (planes, inplanes, 1, 1, 1))
                out += _bn(f"{key}.conv1.1", planes)
                out += _maker(f"{key}.conv2.0", maker, planes, planes, mid)
                out += _bn(f"{key}.conv2.1", planes)
                out += _conv(f"{key}.conv3.0", (width, planes, 1, 1, 1))
                out += _bn(f"{key}.conv3.1", width)
            if b == 0 and (stride != 1 or inplanes != width):
                out += _conv(f"{key}.downsample.0", (width, inplanes, 1, 1, 1))
                out += _bn(f"{key}.downsample.1", width)
            inplanes = width
    out.append(("fc.weight", "params", ("fc", "kernel"), "linear", (num_classes, spec.feature_dim)))
    out.append(("fc.bias", "params", ("fc", "bias"), "=", (num_classes,)))
    return out


def state_dict_keys(arch: str | VideoResNetSpec, num_classes: int = NUM_CLASSES) -> list[str]:
    """torchvision's state-dict keys of `arch`, in order."""
    return [e[0] for e in entries(arch, num_classes)]


def expected_shapes(arch: str | VideoResNetSpec, num_classes: int = NUM_CLASSES) -> dict[str, tuple[int, ...]]:
    """torchvision's tensor shapes of `arch` (in state-dict order)."""
    return {e[0]: e[4] for e in entries(arch, num_classes)}


def flax_paths(arch: str | VideoResNetSpec, num_classes: int = NUM_CLASSES) -> list[str]:
    """``collection/module/.../name`` of every Flax variable of `arch`, in torch's order."""
    return ["/".join((e[1], *e[2])) for e in entries(arch, num_classes)]


def _convert(x: np.ndarray, kind: str, to_torch: bool) -> np.ndarray:
    """One tensor between layouts: conv kernels (kT,kH,kW,I,O) <-> (O,I,kT,kH,kW), Linear kernels transposed,
    BatchNorm counters int32 <-> int64."""
    if kind == "conv":
        x = x.transpose((4, 3, 0, 1, 2) if to_torch else (2, 3, 4, 1, 0))
    elif kind == "linear":
        x = x.T
    elif kind == "count":
        x = x.astype(np.int64 if to_torch else np.int32)
    return np.array(x, order="C")


def to_state_dict(variables: Mapping, arch: str | VideoResNetSpec,
                  num_classes: int = NUM_CLASSES) -> dict[str, np.ndarray]:
    """Flax variables of `arch` -> torchvision state dict (numpy: float32 tensors, int64 counters), its order."""
    sd: dict[str, np.ndarray] = {}
    for key, collection, path, kind, shape in entries(arch, num_classes):
        where = "/".join((collection, *path))
        try:
            x = np.asarray(get_path(variables[collection], path))
        except (KeyError, TypeError):
            raise WeightsError(f"video network variables have no {where}") from None
        sd[key] = _convert(x, kind, to_torch=True)
        if sd[key].shape != shape:
            raise WeightsError(f"video network variable {where} has shape {x.shape}; {key} must be {shape}")
    return sd


def check(sd: Mapping[str, Any], arch: str | VideoResNetSpec, num_classes: int = NUM_CLASSES, *,
          what: str = "state dict") -> None:
    """Raises one `WeightsError` naming `what` and listing every missing, unexpected, mis-shaped and mis-typed
    tensor of a torchvision state dict of `arch` (after removing a ``module.`` prefix)."""
    name = arch if isinstance(arch, str) else "VideoResNet"
    check_state_dict(strip_module_prefix(sd), expected_shapes(arch, num_classes), f"{what} ({name})")


def from_state_dict(sd: Mapping[str, Any], arch: str | VideoResNetSpec, num_classes: int = NUM_CLASSES, *,
                    what: str = "state dict") -> dict:
    """A torchvision state dict of `arch` (numpy, or anything `np.asarray` takes) -> Flax variables (numpy,
    float32 tensors, int32 counters). Strict (module docstring); `what` names the source in the error."""
    sd = strip_module_prefix(sd)
    ens = entries(arch, num_classes)
    name = arch if isinstance(arch, str) else "VideoResNet"
    check_state_dict(sd, {e[0]: e[4] for e in ens}, f"{what} ({name})")
    variables: dict = {"params": {}, "batch_stats": {}}
    for key, collection, path, kind, _ in ens:
        x = np.asarray(sd[key])
        x = x.astype(np.float32) if kind != "count" else x
        set_path(variables[collection], path, _convert(x, kind, to_torch=False))
    return variables


__all__ = ["check", "entries", "expected_shapes", "flax_paths", "from_state_dict", "state_dict_keys",
           "to_state_dict"]
