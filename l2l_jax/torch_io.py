"""Reading and writing upstream's ``.pth`` files safely.

Only ``torch.load(..., weights_only=True)`` is used, with ``argparse.Namespace`` as the one extra allowed
class (upstream saves its flags in the checkpoint). A file that needs any other Python object to unpickle is
refused and never executed; ``weights_only=False`` is never used.

torch itself is imported when a file is read or written (`_torch`), not with this module: the programs that
never touch a ``.pth`` file do not pay for it. A URL (``gs://...``, `l2l_jax.storage`) is read whole into memory
and loaded from there by the same safe loader; written, it is saved to memory and uploaded as one object.
"""

from __future__ import annotations

import argparse
import io
import os
import pickle
import re
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from l2l_jax import storage
from l2l_jax.errors import L2LError

if TYPE_CHECKING:
    import torch

ALLOWED_GLOBALS = [argparse.Namespace]


def _torch() -> ModuleType:
    """The torch module, imported on first use."""
    import torch

    return torch


class ConversionError(L2LError, ValueError):
    """A checkpoint that cannot be converted; the message says why and names the file."""


def _why_refused(message: str) -> str | None:
    """The forbidden global a weights-only load stopped at, if that is why it failed."""
    m = re.search(r"unsupported global:?\s*(?:GLOBAL\s+)?([\w.]+)", message, re.IGNORECASE)
    return m.group(1) if m else None


def load_torch_file(path: str | os.PathLike) -> Any:
    """``torch.load`` of ``path`` on the CPU with ``weights_only=True`` (plus ``argparse.Namespace``); a URL's
    object is read into memory first."""
    path = storage.path(path)
    try:
        if not path.exists():
            problem = storage.url_problem(path) if storage.is_url(path) else None
            raise ConversionError(f"{path}: {problem or 'no such file'}")
        if not path.is_file():
            raise ConversionError(f"{path} is not a file")
        source: Any = io.BytesIO(path.read_bytes()) if storage.is_url(path) else path
    except OSError as e:  # a bucket that refuses or does not answer
        raise ConversionError(f"{path}: cannot be read ({e.strerror or e})") from None
    torch = _torch()
    try:
        with torch.serialization.safe_globals(ALLOWED_GLOBALS):
            return torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        culprit = _why_refused(text)
        if culprit is not None:
            raise ConversionError(
                f"refusing to load {path}: unpickling it needs the Python object {culprit!r}, and loading "
                "arbitrary objects can run code. Only tensors, plain containers and argparse.Namespace are "
                "accepted (torch.load weights_only=True); nothing from the file was executed."
            ) from None
        detail = text.split("WeightsUnpickler error:")[-1].strip().splitlines()[0] if text else ""
        raise ConversionError(
            f"{path} is not a readable PyTorch checkpoint (corrupt, or not a weights-only torch.save file: {detail})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError) as e:
        raise ConversionError(
            f"{path} is not a readable PyTorch checkpoint (corrupt or truncated? {type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else 'unexpected end of file'})"
        ) from None


def state_dict_of(obj: Any, path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The state dict of a loaded checkpoint as numpy arrays, and the checkpoint's other entries.

    Accepts upstream's ``{"model": state_dict, "optimizer", "scheduler", "namespace", "epoch"}`` or a bare
    state dict (every value a tensor)."""
    torch = _torch()
    if not isinstance(obj, Mapping):
        raise ConversionError(f"{path} holds a {type(obj).__name__}, not a checkpoint dict or a state dict")
    if "model" in obj:
        sd, extras = obj["model"], {k: v for k, v in obj.items() if k != "model"}
        if not isinstance(sd, Mapping):
            raise ConversionError(f"{path}: its 'model' entry is a {type(sd).__name__}, not a state dict")
    elif obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        sd, extras = obj, {}
    else:
        keys = ", ".join(map(repr, list(obj)[:8]))
        raise ConversionError(f"{path} has no 'model' entry and is not a bare state dict (top-level keys: {keys})")
    if not sd:
        raise ConversionError(f"{path}: the state dict is empty")
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ConversionError(f"{path}: state-dict entries that are not tensors: {bad[:8]}")
    odd = [f"{k} ({_storage_kind(v)})" for k, v in sd.items() if _storage_kind(v) is not None]
    if odd:
        raise ConversionError(f"{path}: tensors stored in a form this program does not read: "
                              f"{', '.join(odd[:4])}{' ...' if len(odd) > 4 else ''}; save the state dict with "
                              "dense float32 tensors (tensor.to_dense().float()) and try again")
    return {str(k): v.detach().cpu().numpy().copy() for k, v in sd.items()}, extras


def _storage_kind(t: torch.Tensor) -> str | None:
    """Why numpy cannot hold `t` as it is (None: it can): a sparse or other non-strided layout, a dtype numpy
    lacks (bfloat16, float8, complex32, quantized), or no data (a meta tensor). Such tensors are refused, not
    converted: the strict checks compare dtypes as saved."""
    torch = _torch()
    if t.layout != torch.strided:
        return f"layout {str(t.layout).removeprefix('torch.')}"
    if t.is_quantized or t.device.type == "meta":
        return "quantized" if t.is_quantized else "meta tensor, no data"
    try:
        torch.empty(0, dtype=t.dtype).numpy()
    except (TypeError, RuntimeError):
        return f"dtype {str(t.dtype).removeprefix('torch.')}"
    return None


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """`load_torch_file` then `state_dict_of`."""
    return state_dict_of(load_torch_file(path), path)


def write_torch_file(path: str | os.PathLike, state_dict: Mapping[str, np.ndarray],
                     **extras: Any) -> storage.AnyPath:
    """``torch.save`` of ``{"model": OrderedDict of tensors (given order), **extras}``, atomically (a URL: saved
    to memory, then one upload)."""
    torch = _torch()
    model = OrderedDict((k, torch.from_numpy(np.array(v, copy=True))) for k, v in state_dict.items())
    if storage.is_url(path):
        buf = io.BytesIO()
        torch.save({"model": model, **extras}, buf)
        storage.write_bytes(path, buf.getvalue())
        return storage.path(path)
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save({"model": model, **extras}, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
