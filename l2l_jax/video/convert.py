"""PyTorch state dicts (numpy) <-> Flax variables of `VisualNet` and `AudioNet`, strict and bit-exact.

Two namings of the same tensors (``naming``):

- ``"torchvision"``: torchvision's resnet18 names, as the ImageNet ``resnet18-*.pth`` has them: ``conv1.weight``,
  ``bn1.{weight,bias,running_mean,running_var,num_batches_tracked}``, ``layer1.0.conv1.weight``, ...,
  ``layer2.0.downsample.0.weight``, ``layer2.0.downsample.1.*``, ...; AudioNet adds ``freq_conv1x1.weight``
  (1, 3, 1, 1) and ``.bias`` (1,), and its ``conv1.weight`` is (64, 1, 7, 7). Reading a VisualNet from it
  ignores resnet18's ``fc.weight`` / ``fc.bias`` when present (VisualNet has no fc); writing never emits them.
- ``"upstream"``: the names of upstream's modules' own ``state_dict()``: the trunk is ``feature_extraction``
  (0 conv1, 1 bn1, 4..7 layer1..layer4: ``feature_extraction.4.0.conv1.weight``), and AudioNet registers its
  new conv1 twice, so its state dict holds ``conv1.weight`` *and* ``feature_extraction.0.weight`` (the same
  tensor; reading requires both, equal), then ``freq_conv1x1.*``.

Flax side: ``params/resnet/<torchvision path>/{kernel,scale,bias}`` and ``batch_stats/resnet/<path>/{mean,var,
num_batches_tracked}`` (`l2l_jax.video.networks`), plus AudioNet's ``params/freq_conv1x1``. Conv weights
(O, I, kh, kw) <-> kernels (kh, kw, I, O); ``num_batches_tracked`` int64 <-> int32 scalar; nothing else changes,
so both directions are bit-exact. `state_dict_keys` gives torch's order (its ``state_dict()`` order).

Reading is strict: every missing key, unexpected key, wrong shape and wrong dtype is listed in one
`l2l_jax.errors.WeightsError`; nothing is converted partially. A ``module.`` prefix on every key
(DataParallel) is removed first.

`audionet_from_resnet18` builds the ImageNet-initialised AudioNet upstream builds: everything from resnet18
except conv1 (new, 1 input channel) and ``freq_conv1x1`` (new), drawn by `networks.new_audio_layers(seed)`.
`read_resnet18` reads a user's ``.pth`` through the project's safe loader (``torch.load(weights_only=True)``,
`l2l_jax.torch_io.read_state_dict`); nothing is ever downloaded.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from l2l_jax.errors import WeightsError
from l2l_jax.pth_convert import strip_module_prefix
from l2l_jax.torch_io import ConversionError, load_torch_file, state_dict_of
from l2l_jax.torch_names import get_path, set_path
from l2l_jax.video.networks import AUDIO_FREQ_POSITIONS, RESNET18_LAYERS, new_audio_layers

NETS = ("visualnet", "audionet")
NAMINGS = ("torchvision", "upstream")
RESNET18_HEAD = ("fc.weight", "fc.bias")  # in resnet18 files; VisualNet and AudioNet have no fc
# upstream's feature_extraction Sequential: index -> torchvision child (2 relu and 3 maxpool hold nothing)
UPSTREAM_INDEX = {"conv1": 0, "bn1": 1, "layer1": 4, "layer2": 5, "layer3": 6, "layer4": 7}
_BN_STATS = (("running_mean", "mean"), ("running_var", "var"), ("num_batches_tracked", "num_batches_tracked"))

# One entry: (torch key, collection, Flax path, kind, torch shape); kind: "conv" (O,I,kh,kw) <-> (kh,kw,I,O),
# "=" as is, "count" int64 <-> int32.
Entry = tuple[str, str, tuple[str, ...], str, tuple[int, ...]]


def _conv(key: str, path: tuple[str, ...], shape: tuple[int, ...]) -> Iterator[Entry]:
    yield f"{key}.weight", "params", path + ("kernel",), "conv", shape


def _bn(key: str, path: tuple[str, ...], c: int) -> Iterator[Entry]:
    yield f"{key}.weight", "params", path + ("scale",), "=", (c,)
    yield f"{key}.bias", "params", path + ("bias",), "=", (c,)
    for torch_name, flax_name in _BN_STATS:
        kind = "count" if flax_name == "num_batches_tracked" else "="
        yield f"{key}.{torch_name}", "batch_stats", path + (flax_name,), kind, (() if kind == "count" else (c,))


def resnet18_entries(in_channels: int = 3) -> list[Entry]:
    """resnet18's trunk (conv1 .. layer4), torchvision names, in torchvision's state-dict order."""
    out: list[Entry] = []
    root = ("resnet",)
    out += _conv("conv1", root + ("conv1",), (64, in_channels, 7, 7))
    out += _bn("bn1", root + ("bn1",), 64)
    inplanes = 64
    for i, (planes, stride) in enumerate(RESNET18_LAYERS, start=1):
        for b in range(2):
            key, path = f"layer{i}.{b}", root + (f"layer{i}", str(b))
            cin = inplanes if b == 0 else planes
            out += _conv(f"{key}.conv1", path + ("conv1",), (planes, cin, 3, 3))
            out += _bn(f"{key}.bn1", path + ("bn1",), planes)
            out += _conv(f"{key}.conv2", path + ("conv2",), (planes, planes, 3, 3))
            out += _bn(f"{key}.bn2", path + ("bn2",), planes)
            if b == 0 and (stride != 1 or inplanes != planes):
                out += _conv(f"{key}.downsample.0", path + ("downsample", "0"), (planes, inplanes, 1, 1))
                out += _bn(f"{key}.downsample.1", path + ("downsample", "1"), planes)
        inplanes = planes
    return out


def _upstream_key(key: str) -> str:
    head, _, rest = key.partition(".")
    return f"feature_extraction.{UPSTREAM_INDEX[head]}.{rest}"


def entries(net: str, naming: str) -> list[Entry]:
    """Every tensor of `net` ("visualnet" or "audionet") under `naming`, in torch's state-dict order."""
    if net not in NETS:
        raise ValueError(f"unknown net {net!r}; expected one of {NETS}")
    if naming not in NAMINGS:
        raise ValueError(f"unknown naming {naming!r}; expected one of {NAMINGS}")
    trunk = resnet18_entries(3 if net == "visualnet" else 1)
    if naming == "upstream":
        trunk = [(_upstream_key(k), *rest) for k, *rest in trunk]
    if net == "visualnet":
        return trunk
    freq = [("freq_conv1x1.weight", "params", ("freq_conv1x1", "kernel"), "conv", (1, AUDIO_FREQ_POSITIONS, 1, 1)),
            ("freq_conv1x1.bias", "params", ("freq_conv1x1", "bias"), "=", (1,))]
    if naming == "upstream":  # AudioNet registers self.conv1 first, then feature_extraction (whose 0 is conv1)
        return [("conv1.weight", *trunk[0][1:])] + trunk + freq
    return trunk + freq


def state_dict_keys(net: str, naming: str) -> list[str]:
    """torch's state-dict keys of `net` under `naming`, in order."""
    return [e[0] for e in entries(net, naming)]


def expected_shapes(net: str, naming: str) -> dict[str, tuple[int, ...]]:
    """torch's tensor shapes of `net` under `naming`."""
    return {e[0]: e[4] for e in entries(net, naming)}


def flax_paths(net: str) -> list[str]:
    """``collection/module/.../name`` of every Flax variable of `net`, in torch's order."""
    return ["/".join((e[1], *e[2])) for e in entries(net, "torchvision")]


#: per conversion kind: (Flax -> torch axes, torch -> Flax axes) of conv kernels, and the counter dtypes
_CONV_AXES = ((3, 2, 0, 1), (2, 3, 1, 0))
_COUNT_DTYPES = (np.int64, np.int32)


def _convert(x: np.ndarray, kind: str, to_torch: bool) -> np.ndarray:
    """One tensor between layouts: conv kernels HWIO <-> OIHW, BatchNorm counters int32 <-> int64."""
    way = 0 if to_torch else 1
    if kind == "conv":
        x = x.transpose(_CONV_AXES[way])
    elif kind == "count":
        x = x.astype(_COUNT_DTYPES[way])
    return np.array(x, order="C")


def _to_torch(x: np.ndarray, kind: str) -> np.ndarray:
    return _convert(x, kind, to_torch=True)


def _from_torch(x: np.ndarray, kind: str) -> np.ndarray:
    return _convert(x, kind, to_torch=False)


def to_state_dict(variables: Mapping, net: str, naming: str) -> dict[str, np.ndarray]:
    """Flax variables of `net` -> torch state dict (numpy: float32 tensors, int64 counters), torch's order."""
    sd: dict[str, np.ndarray] = {}
    for key, collection, path, kind, shape in entries(net, naming):
        try:
            x = np.asarray(get_path(variables[collection], path))
        except (KeyError, TypeError):
            raise WeightsError(f"{net} variables have no {'/'.join((collection, *path))}") from None
        sd[key] = _to_torch(x, kind)
        if sd[key].shape != shape:
            raise WeightsError(f"{net} variable {'/'.join((collection, *path))} has shape {x.shape}; "
                               f"{key} must be {shape}")
    return sd


def detect_naming(sd: Mapping[str, Any]) -> str:
    """"upstream" if any key starts with ``feature_extraction.``, else "torchvision"."""
    return "upstream" if any(k.startswith("feature_extraction.") for k in sd) else "torchvision"


def check_state_dict(sd: Mapping[str, Any], expected: Mapping[str, tuple[int, ...]], what: str,
                     ignored: tuple[str, ...] = ()) -> None:
    """Raises one `WeightsError` listing every missing, unexpected, mis-shaped and mis-typed tensor.

    `ignored` keys may be present or not and are not checked."""
    problems = []
    missing = [k for k in expected if k not in sd]
    extra = [k for k in sd if k not in expected and k not in ignored]
    if missing:
        problems.append(f"missing ({len(missing)}): {', '.join(missing)}")
    if extra:
        problems.append(f"unexpected ({len(extra)}): {', '.join(extra)}")
    for key, shape in expected.items():
        if key not in sd:
            continue
        x = sd[key]
        got = tuple(np.shape(x))
        dtype = np.asarray(x).dtype
        if got != shape:
            problems.append(f"{key}: shape {got}, expected {shape}")
        if key.endswith("num_batches_tracked"):
            if not np.issubdtype(dtype, np.integer):
                problems.append(f"{key}: dtype {dtype}, expected an integer counter")
        elif not np.issubdtype(dtype, np.floating):
            problems.append(f"{key}: dtype {dtype}, expected floating point")
    if problems:
        raise WeightsError(f"{what} does not fit: " + "; ".join(problems))


def from_state_dict(sd: Mapping[str, Any], net: str, naming: str = "auto", *, what: str = "state dict") -> dict:
    """torch state dict of `net` (numpy or anything `np.asarray` takes) -> Flax variables (numpy, float32).

    `naming` "auto" picks "upstream" when a key starts with ``feature_extraction.``. Strict (module
    docstring); `what` names the source in the error (a file name)."""
    sd = strip_module_prefix(sd)
    naming = detect_naming(sd) if naming == "auto" else naming
    ens = entries(net, naming)
    ignored = RESNET18_HEAD if naming == "torchvision" else ()
    check_state_dict(sd, {e[0]: e[4] for e in ens}, f"{what} ({net}, {naming} names)", ignored)
    if net == "audionet" and naming == "upstream":
        a, b = np.asarray(sd["conv1.weight"]), np.asarray(sd["feature_extraction.0.weight"])
        if not np.array_equal(a, b):
            raise WeightsError(f"{what} (audionet, upstream names) does not fit: conv1.weight and "
                               "feature_extraction.0.weight differ, but upstream's AudioNet holds one tensor "
                               "under both names")
    variables: dict = {"params": {}, "batch_stats": {}}
    for key, collection, path, kind, _ in ens:
        x = np.asarray(sd[key])
        x = x.astype(np.float32) if kind != "count" else x
        set_path(variables[collection], path, _from_torch(x, kind))
    return variables


def visualnet_from_state_dict(sd: Mapping[str, Any], naming: str = "auto", *, what: str = "state dict") -> dict:
    """VisualNet's variables from a resnet18 state dict (torchvision names, ``fc.*`` ignored) or from
    upstream's VisualNet state dict (``feature_extraction.*``)."""
    return from_state_dict(sd, "visualnet", naming, what=what)


def visualnet_to_state_dict(variables: Mapping, naming: str = "torchvision") -> dict[str, np.ndarray]:
    """VisualNet's variables -> a resnet18 state dict without fc (torchvision) or upstream's VisualNet one."""
    return to_state_dict(variables, "visualnet", naming)


def audionet_from_state_dict(sd: Mapping[str, Any], naming: str = "auto", *, what: str = "state dict") -> dict:
    """AudioNet's variables from a full AudioNet state dict (upstream's or torchvision-style names)."""
    return from_state_dict(sd, "audionet", naming, what=what)


def audionet_to_state_dict(variables: Mapping, naming: str = "upstream") -> dict[str, np.ndarray]:
    """AudioNet's variables -> upstream's AudioNet state dict (default) or the torchvision-style one."""
    return to_state_dict(variables, "audionet", naming)


def audionet_from_resnet18(resnet18: Mapping[str, Any], seed: int = 0, *, what: str = "state dict") -> dict:
    """The ImageNet-initialised AudioNet upstream builds: bn1 and layer1..layer4 from a resnet18 state dict
    (torchvision names; its 3-channel ``conv1.weight`` and ``fc.*`` are ignored when present), conv1 and
    ``freq_conv1x1`` new, drawn by `networks.new_audio_layers(seed)`. Strict on everything it takes."""
    sd = strip_module_prefix(resnet18)
    taken = [e for e in resnet18_entries(3) if e[0] != "conv1.weight"]
    check_state_dict(sd, {e[0]: e[4] for e in taken}, f"{what} (resnet18 for AudioNet)",
                     ignored=RESNET18_HEAD + ("conv1.weight",))
    variables: dict = {"params": {}, "batch_stats": {}}
    for key, collection, path, kind, _ in taken:
        x = np.asarray(sd[key])
        set_path(variables[collection], path, _from_torch(x.astype(np.float32) if kind != "count" else x, kind))
    new = new_audio_layers(seed)
    variables["params"]["resnet"]["conv1"] = {"kernel": np.asarray(new["conv1"]["kernel"])}
    variables["params"]["freq_conv1x1"] = {k: np.asarray(v) for k, v in new["freq_conv1x1"].items()}
    return variables


def _plain_tensors(obj: Any, path: str | os.PathLike) -> Any:
    """The loaded checkpoint with its bfloat16 tensors as float32 (exact: every bfloat16 is a float32), so
    numpy can take them; a sparse or quantized tensor is a ``ConversionError`` naming it (save dense float
    weights instead)."""
    import torch

    def plain(key: str, v: Any) -> Any:
        if not isinstance(v, torch.Tensor):
            return v
        if v.layout != torch.strided:
            raise ConversionError(f"{path}: tensor {key!r} is stored as {v.layout} (sparse); save dense weights "
                                  "(tensor.to_dense()) and pass that file")
        if v.is_quantized or v.dtype in (torch.complex64, torch.complex128):
            raise ConversionError(f"{path}: tensor {key!r} has dtype {v.dtype}; save float32 weights and pass that "
                                  "file")
        return v.float() if v.dtype == torch.bfloat16 else v

    if not isinstance(obj, Mapping):
        return obj
    out = {k: plain(str(k), v) for k, v in obj.items()}
    if isinstance(out.get("model"), Mapping):
        out["model"] = {k: plain(str(k), v) for k, v in out["model"].items()}
    return out


def read_resnet18(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A resnet18 state dict (numpy) from a ``.pth`` (a bare state dict, or ``{"model": state dict}``), read by
    `l2l_jax.torch_io` (``weights_only=True``; raises its ``ConversionError``, an L2LError), bfloat16 tensors
    as float32, ``module.`` prefix removed. Checked when converted."""
    sd, _ = state_dict_of(_plain_tensors(load_torch_file(path), path), path)
    return strip_module_prefix(sd)


__all__ = ["NAMINGS", "NETS", "audionet_from_resnet18", "audionet_from_state_dict", "audionet_to_state_dict",
           "check_state_dict", "detect_naming", "entries", "expected_shapes", "flax_paths", "from_state_dict",
           "read_resnet18", "resnet18_entries", "state_dict_keys", "to_state_dict",
           "visualnet_from_state_dict", "visualnet_to_state_dict"]
