"""Devices for training and evaluation: one `Mesh` with a `data` axis, batch sharding, multi-host start-up.

The global batch is split along its first axis over every device of every process (`P('data')`); the train
state is replicated (`P()`). Each process feeds only its own slice of the global batch (its rows
``[process_index * B/P, (process_index+1) * B/P)``), and `shard_batch` assembles the global array with
`jax.make_array_from_process_local_data`, so the global batch, and therefore the results, do not depend on
how many devices or processes there are. Scalars in a batch (``length``) are replicated.

Multi-host: `init_distributed` calls `jax.distributed.initialize` when a coordinator is configured, from the
config (``coordinator_address``, ``num_processes``, ``process_id``) or the environment
(``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``; on clusters that jax detects itself,
e.g. SLURM or TPU pods, ``L2L_DISTRIBUTED=1`` asks for auto-detection).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from l2l_jax.errors import ConfigError

DATA = "data"

_initialized = False


def init_distributed(cfg: Mapping[str, Any] | None = None) -> bool:
    """Start jax's multi-process runtime if a coordinator is configured; returns whether it was started.

    Must run before anything touches the devices. Flags win over the environment; a single process (no
    coordinator, or ``num_processes == 1``) is left alone. Safe to call twice.
    """
    global _initialized
    if _initialized:
        return True
    cfg = cfg or {}

    def pick(key: str, env: str, cast=str):
        value = cfg.get(key) if hasattr(cfg, "get") else None
        if value is None and os.environ.get(env):
            value = cast(os.environ[env])
        return value

    address = pick("coordinator_address", "JAX_COORDINATOR_ADDRESS")
    num = pick("num_processes", "JAX_NUM_PROCESSES", int)
    pid = pick("process_id", "JAX_PROCESS_ID", int)
    if address is None:
        if os.environ.get("L2L_DISTRIBUTED") == "1":
            jax.distributed.initialize()
            _initialized = True
        return _initialized
    if num is None or pid is None:
        raise ConfigError("multi-host: --coordinator_address needs --num_processes and --process_id "
                         "(or JAX_NUM_PROCESSES / JAX_PROCESS_ID)")
    if num == 1:
        return False
    if not 0 <= pid < num:
        raise ConfigError(f"multi-host: --process_id {pid} is outside [0, {num})")
    jax.distributed.initialize(coordinator_address=address, num_processes=num, process_id=pid)
    _initialized = True
    return True


def make_mesh(devices: list | None = None) -> Mesh:
    """A 1-D mesh over all devices (of all processes) with the axis `data`."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA,))


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of batch arrays: first axis split over `data`."""
    return NamedSharding(mesh, P(DATA))


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding of the state and of scalars: a full copy on every device."""
    return NamedSharding(mesh, P())


def local_batch_size(global_batch: int, mesh: Mesh | None = None) -> int:
    """Rows of the global batch that this process feeds. The global batch must split evenly over the
    devices (so the per-device shards have equal size)."""
    n_dev = mesh.devices.size if mesh is not None else jax.device_count()
    if global_batch % n_dev:
        raise ValueError(f"batch size {global_batch} does not split over {n_dev} devices; "
                         f"use a multiple of {n_dev}")
    return global_batch // jax.process_count()


def shard_batch(batch: Mapping[str, Any], mesh: Mesh, layout: str = "dense") -> dict[str, jax.Array]:
    """A host-local batch (this process's rows, numpy) -> global arrays: arrays with a batch axis on
    `P('data')`, 0-d values (``length``) replicated. With ``layout="chunk"`` a dense batch is laid out in
    chunks first, one group per local device (`l2l_jax.layouts.chunk.lay_out`); a batch the loader already
    laid out (it carries ``chunks``) must have one group per local device."""
    from l2l_jax.layouts import chunk

    groups = mesh.devices.size // jax.process_count()
    if "chunks" in batch:
        if np.shape(batch["chunks"])[0] != groups:
            raise ValueError(f"the batch is laid out in {np.shape(batch['chunks'])[0]} chunk groups, but this "
                             f"process feeds {groups} devices: make the loader with chunk_groups={groups}")
    elif layout == "chunk" and "mask" in batch:
        batch = chunk.lay_out(batch, groups, full=jax.process_count() > 1)
    out = {}
    dsh, rep = data_sharding(mesh), replicated(mesh)
    for key, value in batch.items():
        value = np.asarray(value)
        if value.ndim == 0:
            out[key] = jax.make_array_from_process_local_data(rep, value, ())
        else:
            global_shape = (value.shape[0] * jax.process_count(), *value.shape[1:])
            out[key] = jax.make_array_from_process_local_data(dsh, value, global_shape)
    return out


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Put a pytree (numpy or jax arrays, identical on every process) on every device of the mesh."""
    sharding = replicated(mesh)

    def put(x):
        x = np.asarray(x) if not isinstance(x, jax.Array) else x
        if jax.process_count() == 1:
            return jax.device_put(x, sharding)
        return jax.make_array_from_process_local_data(sharding, np.asarray(x), np.shape(x))

    return jax.tree_util.tree_map(put, tree)


def to_host(tree: Any) -> Any:
    """Fetch a pytree of replicated or fully addressable arrays to numpy (works in every process)."""

    def get(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            if x.sharding.is_fully_replicated:
                return np.asarray(x.addressable_data(0))
            from jax.experimental import multihost_utils
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    return jax.tree_util.tree_map(get, tree)


#: XLA:CPU's YNNPACK reduce fusions run a multiply-then-sum over (N, 512) about 15x slower than XLA's own
#: loops (the BatchNorm gradients of the key conv took ~70 ms each at batch 64); keep only its dot fusions.
CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


@functools.cache
def compiler_options() -> dict[str, str]:
    """Options for `jax.jit` of the train and eval steps: `CPU_COMPILER_OPTIONS` on a CPU backend whose XLA
    accepts them (checked once on a tiny function), else none."""
    if jax.default_backend() != "cpu":
        return {}
    try:
        jax.jit(lambda x: x + 1, compiler_options=CPU_COMPILER_OPTIONS).lower(np.float32(0)).compile()
    except Exception:  # an XLA without the option: keep its defaults
        return {}
    return dict(CPU_COMPILER_OPTIONS)


def is_main_process() -> bool:
    """Process 0 writes logs, metrics and plots."""
    return jax.process_index() == 0


__all__ = [
    "DATA",
    "compiler_options",
    "data_sharding",
    "init_distributed",
    "is_main_process",
    "local_batch_size",
    "make_mesh",
    "replicate",
    "replicated",
    "shard_batch",
    "to_host",
]
