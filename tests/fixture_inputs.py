"""Regenerates the seeded inputs of the parity fixtures in `tests/fixtures/` (numpy only).

The fixture files store seeds; upstream was run on arrays drawn from numpy's PCG64 generator
seeded as described in `tests/fixtures/PROVENANCE.md`.  The draws below reproduce those arrays
bit for bit, so tests can feed our model exactly what upstream saw.
"""

from __future__ import annotations

import hashlib
import json
import math
from functools import cache
from pathlib import Path

import numpy as np

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def read_json(rel: str):
    """A fixture JSON file, by its path relative to tests/fixtures."""
    return json.loads((FIXTURES / rel).read_text())


def read_npz(rel: str) -> dict[str, np.ndarray]:
    with np.load(FIXTURES / rel, allow_pickle=False) as z:
        return {name: z[name] for name in z.files}


def clip_features(seed: int, length: int, width: int = 512) -> np.ndarray:
    """One video's features [length, width]: ReLU of a standard normal, doubled (float32)."""
    gen = np.random.default_rng([seed, length, width])
    draw = gen.standard_normal((length, width), dtype=np.float32)
    return (np.maximum(draw, 0.0).astype(np.float32) * np.float32(2.0)).astype(np.float32)


def _entry(seed: int, position: int, key: str, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    if dtype == "int64":  # num_batches_tracked
        return np.full(shape, position + 3, dtype=np.int64)
    gen = np.random.default_rng([seed, position])
    last = key.split(".")[-1]
    if last in ("running_var",) or last.endswith("_g"):
        return gen.uniform(0.5, 1.5, shape).astype(np.float32)
    if last == "running_mean":
        return (0.1 * gen.standard_normal(shape)).astype(np.float32)
    if len(shape) <= 1:
        if last == "weight":  # a 1-D weight is a BatchNorm scale
            return gen.uniform(0.8, 1.2, shape).astype(np.float32)
        return (0.05 * gen.standard_normal(shape)).astype(np.float32)
    fan_in = math.prod(shape[1:])
    return (gen.standard_normal(shape) / math.sqrt(fan_in)).astype(np.float32)


@cache
def _manifest(rel: str) -> tuple:
    return tuple((k, tuple(s), d) for k, s, d in read_json(rel))


def manifest_state_dict(manifest_rel: str, seed: int) -> dict[str, np.ndarray]:
    """Upstream's state dict (names, order, shapes, dtypes) with the fixture's seeded values."""
    return {k: _entry(seed, i, k, s, d) for i, (k, s, d) in enumerate(_manifest(manifest_rel))}


def case_weights(case: dict) -> dict[str, np.ndarray]:
    """The state dict of a fixture case, with the case's `scales` applied."""
    sd = manifest_state_dict(case["manifest"], case["model_seed"])
    for key, factor in case.get("scales", {}).items():
        sd[key] = (sd[key] * np.float32(factor)).astype(np.float32)
    return sd


def fingerprint(x) -> list[float]:
    """[sum, sum|x|, l2, <x, probe>] in float64, as the fixtures record them."""
    v = np.asarray(x, dtype=np.float64).reshape(-1)
    probe = np.random.default_rng([7, v.size]).standard_normal(v.size)
    return [float(v.sum()), float(np.abs(v).sum()), float(np.sqrt(np.dot(v, v))), float(v @ probe)]


def array_sha256(x: np.ndarray) -> str:
    """The fixtures' identity of an array: dtype string, shape and C-order bytes."""
    x = np.ascontiguousarray(x)
    digest = hashlib.sha256(f"{x.dtype.str}{x.shape}".encode())
    digest.update(x.tobytes())
    return digest.hexdigest()


def eval_collate(videos: list[tuple[np.ndarray, ...]]) -> tuple[list[np.ndarray], np.ndarray]:
    """Upstream's evaluation collate for the two-modality root (pad to the longest, repeat the last clip
    of videos shorter than 10, mask ones up to max(10, length)). Returns the padded arrays and the mask."""
    L = max(v[0].shape[0] for v in videos)
    arrays = []
    for m in range(len(videos[0])):
        out = np.zeros((len(videos), L, videos[0][m].shape[1]), np.float32)
        for b, v in enumerate(videos):
            n = v[m].shape[0]
            out[b, :n] = v[m]
            out[b, n:10] = v[m][n - 1]
        arrays.append(out)
    mask = np.zeros((len(videos), L), np.float32)
    for b, v in enumerate(videos):
        mask[b, : max(10, v[0].shape[0])] = 1.0
    return arrays, mask


def single_eval_collate(videos: list[np.ndarray], randint_values: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """The single variant's evaluation collate, with the random fill copies upstream drew (in call order)."""
    (padded,), mask = eval_collate([(v,) for v in videos])
    draws = iter(randint_values)
    for b, v in enumerate(videos):
        n = v.shape[0]
        for p in range(n, 10):
            padded[b, p] = v[next(draws)]
    return padded, mask


def train_collate(videos: list[tuple[np.ndarray, ...]], randint_values: list[int], single: bool = False):
    """Upstream's training collate with the random draws it recorded (in call order): the window L
    (capped at the longest video), one crop start per longer video, then (single variant) the fill copies.
    Returns (arrays, mask, L)."""
    draws = iter(randint_values)
    longest = max(v[0].shape[0] for v in videos)
    L = min(next(draws), longest)
    arrays = [np.zeros((len(videos), L, v.shape[1]), np.float32) for v in videos[0]]
    for b, video in enumerate(videos):
        n = video[0].shape[0]
        start = next(draws) if n > L else 0
        for out, x in zip(arrays, video, strict=True):
            rows = x[start:start + L]
            out[b, : rows.shape[0]] = rows
    for b, video in enumerate(videos):
        n = video[0].shape[0]
        for p in range(n, 10):
            src = next(draws) if single else n - 1
            for out, x in zip(arrays, video, strict=True):
                out[b, p] = x[src]
    mask = np.zeros((len(videos), L), np.float32)
    for b, video in enumerate(videos):
        mask[b, : max(10, video[0].shape[0])] = 1.0
    return arrays, mask, L


LAYOUTS = ("dense", "chunk")


def in_layout(layout: str, features: list[np.ndarray], mask: np.ndarray, valid: np.ndarray | None = None,
              groups: int = 1):
    """Dense host features of a batch in the named layout: (features, layout object for the model call).
    ``chunk`` lays the batch out as the loader does (`l2l_jax.layouts.chunk`), ``dense`` leaves it."""
    import jax.numpy as jnp

    from l2l_jax import layouts
    from l2l_jax.layouts import chunk

    mask = np.asarray(mask)
    if layout == "dense":
        return [np.asarray(x) for x in features], layouts.of_arrays(jnp.asarray(mask))
    chunks = chunk.chunk_index(mask, valid, groups)
    return [chunk.chunk_features(np.asarray(x), chunks) for x in features], layouts.of_arrays(jnp.asarray(mask),
                                                                                               chunks)
