"""Checks that weights are what they claim to be: finite, and bit for bit what was written.

- `nonfinite_tensors`: the names of tensors holding NaN or infinity (refused at conversion and at load:
  a model with them evaluates to NaN probabilities and trains to a NaN loss).
- `tensor_checksum`: a SHA-256 over every tensor's name, dtype, shape and bytes, in name order. Converted
  model directories store it in ``meta.json`` and training checkpoints beside their state; loading recomputes
  it, so flipped bytes in a data file are an error, never silently different weights.
"""

from __future__ import annotations

import hashlib
from typing import Any

import jax
import numpy as np


def _key_name(key: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def leaf_names(tree: Any) -> dict[str, Any]:
    """{"params/a/b": leaf} of any pytree (dicts, lists, dataclasses such as the train state, namedtuples),
    named by path, in name order; leaves as they are."""
    named = {"/".join(_key_name(k) for k in path): x for path, x in jax.tree_util.tree_leaves_with_path(tree)}
    return dict(sorted(named.items()))


def named_tensors(tree: Any) -> dict[str, np.ndarray]:
    """`leaf_names` as numpy arrays."""
    return {name: np.asarray(x) for name, x in leaf_names(tree).items()}


def nonfinite_tensors(tree: Any) -> list[str]:
    """Names of the floating-point tensors of `tree` that hold NaN or +-inf."""
    return [name for name, x in named_tensors(tree).items()
            if np.issubdtype(x.dtype, np.floating) and not np.all(np.isfinite(x))]


def tensor_checksum(tree: Any) -> str:
    """SHA-256 (hex) of every tensor's name, dtype, shape and little-endian bytes, in name order."""
    h = hashlib.sha256()
    for name, x in named_tensors(tree).items():
        x = np.ascontiguousarray(x)
        h.update(f"{name}|{x.dtype.newbyteorder('<').str}|{x.shape}|".encode())
        h.update(x.astype(x.dtype.newbyteorder("<"), copy=False).tobytes())
    return h.hexdigest()


__all__ = ["leaf_names", "named_tensors", "nonfinite_tensors", "tensor_checksum"]
