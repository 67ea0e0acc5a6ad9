"""Checks that weights are what they claim to be: finite, and bit for bit what was written.

- `nonfinite_tensors`: the names of tensors holding NaN or infinity (refused at conversion and at load:
  a model with them evaluates to NaN probabilities and trains to a NaN loss).
- `tensor_checksum`: a SHA-256 over every tensor's name, dtype, shape and bytes, in name order. Converted
  model directories store it in ``meta.json`` and training checkpoints beside their state; loading recomputes
  it, so flipped bytes in a data file are an error, never silently different weights.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np


def named_tensors(tree: Any, prefix: str = "") -> dict[str, np.ndarray]:
    """Nested dicts of arrays -> {"a/b/c": array} (numpy), in sorted name order."""
    out: dict[str, np.ndarray] = {}
    if isinstance(tree, Mapping):
        for key in sorted(tree, key=str):
            out.update(named_tensors(tree[key], f"{prefix}{key}/"))
        return out
    if isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            out.update(named_tensors(v, f"{prefix}{i}/"))
        return out
    out[prefix.rstrip("/")] = np.asarray(tree)
    return out


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


__all__ = ["named_tensors", "nonfinite_tensors", "tensor_checksum"]
