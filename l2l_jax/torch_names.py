"""Upstream state-dict names <-> our Flax variables: the one table of docs/DESIGN.md, as code.

`state_dict_keys(variant)` lists upstream's keys in upstream's `state_dict()` order (docs/UPSTREAM.md §4
and §5); `to_state_dict` and `from_state_dict` convert numpy arrays both ways, bit-exactly (only transposes
and dtype changes of integer counters). Models: every policy variant (its spec's `weight_table`,
`l2l_jax.variants`) and `variants.IMAGEAUDIONET` (fusion net + classifier, upstream's ImageAudioClassify
container).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import jax
import numpy as np

from l2l_jax.model import PreviewConfig, init_variables
from l2l_jax.variants import FUSION_CLASSIFIER, FUSION_WIDTH, IMAGEAUDIONET
from l2l_jax.variants import VARIANTS as VARIANTS_BY_NAME

# (kind, upstream module prefix, Flax module path) rows: each variant's own table (`l2l_jax.variants`), and the
# fusion net + classifier model.
_LAYOUTS = {IMAGEAUDIONET: FUSION_CLASSIFIER, **{v.name: v.weight_table for v in VARIANTS_BY_NAME.values()}}
VARIANTS = tuple(_LAYOUTS)

# torch's weight_norm re-registers weight_hh first, then weight_ih (docs/UPSTREAM.md §4).
_LSTM_KEYS = ("bias_ih", "bias_hh", "weight_hh_g", "weight_hh_v", "weight_ih_g", "weight_ih_v")
_BN_STATS = (("running_mean", "mean"), ("running_var", "var"), ("num_batches_tracked", "num_batches_tracked"))

# One entry: (upstream key, collection, Flax path, conversion) with conversion one of
# "T" (Linear weight <-> kernel), "conv" (Conv1x1 weight (O,I,1,1) <-> kernel (I,O)), "=" (as is), "count".
Entry = tuple[str, str, tuple[str, ...], str]


def _linear(prefix: str, path: tuple[str, ...]) -> Iterator[Entry]:
    yield f"{prefix}.weight", "params", path + ("kernel",), "T"
    yield f"{prefix}.bias", "params", path + ("bias",), "="


def _batchnorm(prefix: str, path: tuple[str, ...]) -> Iterator[Entry]:
    yield f"{prefix}.weight", "params", path + ("scale",), "="
    yield f"{prefix}.bias", "params", path + ("bias",), "="
    for torch_name, flax_name in _BN_STATS:
        yield f"{prefix}.{torch_name}", "batch_stats", path + (flax_name,), (
            "count" if flax_name == "num_batches_tracked" else "=")


def entries(variant: str) -> list[Entry]:
    """Every state-dict entry of a variant, in upstream's order."""
    if variant not in _LAYOUTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
    out: list[Entry] = []
    for kind, prefix, path in _LAYOUTS[variant]:
        if kind == "linear":
            out += _linear(prefix, path)
        elif kind == "query":
            out += _linear(f"{prefix}.0", path + ("fc1",))
            out += _batchnorm(f"{prefix}.1", path + ("bn",))
            out += _linear(f"{prefix}.3", path + ("fc2",))
        elif kind == "keyconv":
            out.append((f"{prefix}.0.weight", "params", path + ("conv", "kernel"), "conv"))
            out.append((f"{prefix}.0.bias", "params", path + ("conv", "bias"), "="))
            out += _batchnorm(f"{prefix}.1", path + ("bn",))
        else:  # lstm
            out += [(f"{prefix}.{name}", "params", path + (name,), "=") for name in _LSTM_KEYS]
    return out


def state_dict_keys(variant: str) -> list[str]:
    """Upstream's state-dict keys for a variant, in order."""
    return [key for key, *_ in entries(variant)]


def flax_paths(variant: str) -> list[str]:
    """"collection/module/.../name" of every Flax variable of a variant, in upstream's order."""
    return ["/".join((collection, *path)) for _, collection, path, _ in entries(variant)]


def get_path(tree: Mapping, path: tuple[str, ...]):
    """tree[path[0]][path[1]]... (a nested-dict lookup)."""
    for name in path:
        tree = tree[name]
    return tree


def set_path(tree: dict, path: tuple[str, ...], value) -> None:
    """Sets tree[path[0]][path[1]]... = value, creating the dicts on the way."""
    for name in path[:-1]:
        tree = tree.setdefault(name, {})
    tree[path[-1]] = value


def to_state_dict(variables: Mapping, variant: str) -> dict[str, np.ndarray]:
    """Flax variables -> upstream's state dict (numpy; float32 tensors, int64 counters), in upstream's order."""
    sd: dict[str, np.ndarray] = {}
    for key, collection, path, conv in entries(variant):
        x = np.asarray(get_path(variables[collection], path))
        if conv == "T":
            x = x.T
        elif conv == "conv":
            x = x.T[:, :, None, None]
        elif conv == "count":
            x = x.astype(np.int64)
        sd[key] = np.array(x, order="C")
    return sd


def from_state_dict(state_dict: Mapping[str, np.ndarray], variant: str) -> dict:
    """Upstream's state dict (exactly the variant's keys; the caller checks names and shapes) -> variables."""
    variables: dict = {"params": {}}
    for key, collection, path, conv in entries(variant):
        x = np.asarray(state_dict[key])
        if conv == "T":
            x = x.T
        elif conv == "conv":
            x = x[:, :, 0, 0].T
        elif conv == "count":
            x = x.astype(np.int32)
        set_path(variables.setdefault(collection, {}), path, np.array(x, order="C"))
    return variables


def expected_shapes(variant: str, num_classes: int, feature_dim: int = FUSION_WIDTH) -> dict[str, tuple[int, ...]]:
    """Upstream's tensor shapes for a variant (C classes, D-wide features), derived from the model itself."""
    cfg = PreviewConfig(num_classes=num_classes, feature_dim=feature_dim)
    tree = jax.eval_shape(lambda: init_variables(cfg, variant, jax.random.key(0)))
    shapes: dict[str, tuple[int, ...]] = {}
    for key, collection, path, conv in entries(variant):
        s = tuple(get_path(tree[collection], path).shape)
        shapes[key] = s[::-1] if conv == "T" else ((s[1], s[0], 1, 1) if conv == "conv" else s)
    return shapes
