"""Devices for training and evaluation: one `Mesh` with a `data` axis, batch sharding, multi-host start-up.

The global batch is split along its first axis over every device of every process (`P('data')`); the train
state is replicated (`P()`). Each process feeds only its own slice of the global batch (its rows
``[process_index * B/P, (process_index+1) * B/P)``), and `shard_batch` assembles the global array with
`jax.make_array_from_process_local_data`, so the global batch, and therefore the results, do not depend on
how many devices or processes there are. Scalars in a batch (``length``) are replicated.

Multi-host: `init_distributed` calls `jax.distributed.initialize` when a coordinator is configured, from the
config (``coordinator_address``, ``num_processes``, ``process_id``) or the environment
(``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``; on clusters that jax detects itself,
e.g. SLURM or TPU pods, ``L2L_DISTRIBUTED=1`` asks for auto-detection). The triple is all or nothing, and
start-up is bounded by ``coordinator_timeout`` (``--coordinator_timeout``, default 300 s): the other processes
first wait, in Python, for the coordinator's port to accept a connection, then jax's handshake (every
process joins) runs in a thread that the program stops waiting for at the deadline. Either way the program
ends with one line naming the address (a `ConfigError`, exit status 2), never with jax's own abort, whose
deadline is set later.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import socket
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from l2l_jax.errors import ConfigError
from l2l_jax.layouts import chunk

DATA = "data"

#: Seconds `init_distributed` waits, by default, for the coordinator to answer and for every process to join
#: (``--coordinator_timeout``).
COORDINATOR_TIMEOUT = 300.0
#: The multi-host triple: flag (config key) -> environment variable that stands in for it.
_TRIPLE = {"coordinator_address": "JAX_COORDINATOR_ADDRESS", "num_processes": "JAX_NUM_PROCESSES",
           "process_id": "JAX_PROCESS_ID"}
#: jax's own start-up deadline is set this much later than ours: when it passes, jax ends the process from C++
#: (an abort with a stack dump), so ours must always come first.
_JAX_GRACE_S = 120

_initialized = False
_exit_status: int | None = None  # set while jax's start-up still runs in a thread: the status to exit with


def init_distributed(cfg: Mapping[str, Any] | None = None) -> bool:
    """Start jax's multi-process runtime if a coordinator is configured; returns whether it was started.

    Must run before anything touches the devices. Flags win over the environment; a single process (no
    coordinator, or ``num_processes == 1``) is left alone. Safe to call twice. The triple
    (``coordinator_address``, ``num_processes``, ``process_id``) is all or nothing. Start-up ends within
    ``coordinator_timeout`` seconds (default `COORDINATOR_TIMEOUT`): a coordinator that does not answer or a
    process that does not join in time is a `ConfigError` naming the address (`_start_within`).
    """
    global _initialized
    if _initialized:
        return True
    cfg = cfg or {}
    given = {}
    for key, env in _TRIPLE.items():
        value = cfg.get(key) if hasattr(cfg, "get") else None
        if value is not None:
            given[key] = (value, f"--{key}")
        elif os.environ.get(env):
            given[key] = (os.environ[env], env)
    timeout = _timeout(cfg.get("coordinator_timeout") if hasattr(cfg, "get") else None)
    if not given:
        if os.environ.get("L2L_DISTRIBUTED") == "1":  # a cluster jax detects itself (SLURM, TPU pods, ...)
            _start_within(timeout, "the coordinator jax detects", initialization_timeout=int(timeout) + _JAX_GRACE_S)
            _initialized = True
        return _initialized
    missing = [f"--{key}" for key in _TRIPLE if key not in given]
    if missing:
        have = " and ".join(name for _, name in given.values())
        raise ConfigError(f"multi-host: {have} without {' and '.join(missing)}: give all three "
                          "(--coordinator_address HOST:PORT of process 0, --num_processes N, --process_id I) "
                          "or none")
    (address, address_from), (num, num_from), (pid, pid_from) = (given[key] for key in _TRIPLE)
    num, pid = _integer(num, num_from), _integer(pid, pid_from)
    if num < 1:
        raise ConfigError(f"multi-host: {num_from} {num}: must be at least 1")
    if not 0 <= pid < num:
        raise ConfigError(f"multi-host: {pid_from} {pid} is outside [0, {num})")
    host, port = _host_port(str(address), address_from)
    if num == 1:
        return False
    deadline = time.monotonic() + timeout
    if pid != 0:  # process 0 serves the coordinator; the others first wait, in Python, for its port to open
        _wait_for_port(host, port, deadline, f"{address_from} {address}", timeout)
    _start_within(deadline - time.monotonic(), f"{address_from} {address}", limit=timeout,
                 coordinator_address=str(address), num_processes=num, process_id=pid,
                 initialization_timeout=int(timeout) + _JAX_GRACE_S)
    _initialized = True
    return True


def _timeout(value: Any) -> float:
    timeout = COORDINATOR_TIMEOUT if value is None else value
    try:
        timeout = float(timeout)
    except (TypeError, ValueError):
        raise ConfigError(f"--coordinator_timeout {value}: not a number of seconds") from None
    if not timeout > 0:
        raise ConfigError(f"--coordinator_timeout {value}: must be more than 0 seconds")
    return timeout


def _integer(value: Any, name: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"multi-host: {name} {value}: not a whole number") from None


def _host_port(address: str, name: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"multi-host: {name} {address}: not HOST:PORT (e.g. 10.0.0.1:1234, the address of "
                          "process 0)")
    return host.strip("[]"), int(port)


def _wait_for_port(host: str, port: int, deadline: float, what: str, timeout: float) -> None:
    """Tries a TCP connection to the coordinator until it is accepted or `deadline` passes (`ConfigError`)."""
    last = "no answer"
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise ConfigError(f"multi-host: {what}: the coordinator did not answer within {timeout:g} s "
                              f"(--coordinator_timeout; last try: {last}); start process 0 first, check the "
                              "address and that the port is open")
        try:
            with socket.create_connection((host, port), timeout=min(left, 5.0)):
                return
        except OSError as e:
            last = e.strerror or str(e) or type(e).__name__
        time.sleep(min(0.5, max(deadline - time.monotonic(), 0)))


def _start_within(seconds: float, what: str, limit: float | None = None, **kwargs: Any) -> None:
    """``jax.distributed.initialize(**kwargs)`` that ends within `seconds`: a `ConfigError` naming `what` (and
    `limit`, the --coordinator_timeout, default `seconds`) if it has not returned by then, or if it fails.

    jax's start-up blocks in C++ and, at its own deadline, ends the whole process with an abort; so it runs in
    a thread (it releases the GIL), jax's deadline (``initialization_timeout`` in `kwargs`) is set later than
    ours, and a program that gives up on it leaves with `os._exit` at interpreter exit (status 2), before jax
    could abort it.
    """
    global _exit_status
    timeout = seconds if limit is None else limit
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            jax.distributed.initialize(**kwargs)
            outcome.append(None)
        except BaseException as e:  # handed to the waiting thread
            outcome.append(e)

    _exit_status = 2
    atexit.register(_leave_now)
    thread = threading.Thread(target=run, name="l2l-distributed-start", daemon=True)
    thread.start()
    try:
        thread.join(max(seconds, 0.0))
    except KeyboardInterrupt:
        _exit_status = 130
        raise
    if not outcome:
        procs = kwargs.get("num_processes")
        raise ConfigError(f"multi-host: {what}: not every process joined within {timeout:g} s "
                          f"(--coordinator_timeout); start all {procs or 'the'} processes with the same "
                          "--coordinator_address and --num_processes, each with its own --process_id")
    _exit_status = None
    atexit.unregister(_leave_now)
    if outcome[0] is not None:
        reason = (str(outcome[0]).strip().splitlines() or [type(outcome[0]).__name__])[0]
        raise ConfigError(f"multi-host: {what}: could not start ({reason})") from outcome[0]


def _leave_now() -> None:
    """At interpreter exit while jax's start-up still blocks in its thread: exit now, before it aborts."""
    if _exit_status is None:
        return
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(_exit_status)


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
    "COORDINATOR_TIMEOUT",
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
