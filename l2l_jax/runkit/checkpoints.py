"""Checksummed orbax checkpoints of one run directory: any train-state pytree plus a JSON progress item.

Layout: ``<run>/checkpoints/<step>/`` with two items, ``state`` (the pytree: params, BatchNorm statistics,
optimizer state, ...) and ``progress`` (JSON: ``data`` (the loader position, ``{}`` where the order follows
from the seed), ``epoch`` (just finished), ``next_epoch``, ``checksum``, and whatever else the trainer keeps).
``<step>`` is the trainer's count (l2l-train: optimizer steps; l2l-finetune, l2l-distill: epochs). orbax
writes into a temporary directory and renames it when complete, so a kill while saving leaves the previous
checkpoints intact; the newest ``keep`` are kept. A restored run continues exactly where it was saved.

Integrity: ``checksum`` is the `l2l_jax.integrity.tensor_checksum` of the whole state, written in the same
atomic rename. `restore` verifies it and refuses non-finite params or statistics. `restore_newest` reports
a checkpoint that does not restore (missing or truncated file, checksum mismatch, non-finite params), moves
it aside to ``checkpoints/corrupt-<step>-<time>`` (never deleted) and tries the next older one; if none
restores: `CheckpointError`, nothing moved. Tensors of other shapes than the run's model are a
`ConfigError` (other flags), not corruption. `restore_params` reads params on any device count.

Restores run inside `_drained_loops`: orbax gathers the array reads of a restore on a fresh event loop and
closes it when the first read fails; the other reads, left pending, printed "Exception ignored" tracebacks
when collected (their coroutines) or when TensorStore completed them (on the closed loop). The kit's loops
let the pending reads finish before closing.

A run directory may be a URL (``gs://bucket/run``): orbax and TensorStore write there directly. A bucket has no
rename: orbax then marks a complete checkpoint with a ``commit_success.txt`` written last, and a step folder
without it (a save cut off) is not a checkpoint (`has_run_checkpoints`, orbax's own step list). Moving a
damaged one aside copies its objects and removes the originals (`l2l_jax.storage.move_tree`). A save that the
storage refuses or does not answer is a `CheckpointError` naming the checkpoint (`save`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from l2l_jax import parallel, storage
from l2l_jax.errors import ConfigError, L2LError, WeightsError
from l2l_jax.integrity import leaf_names, nonfinite_tensors, tensor_checksum

CHECKPOINT_DIR = "checkpoints"
#: orbax's mark of a complete checkpoint where nothing can be renamed (a bucket), written last
COMMIT_FILE = "commit_success.txt"
#: keys every checkpoint's progress JSON must hold to be resumed from
PROGRESS_KEYS = ("data", "next_epoch", "epoch")
#: the state's parts whose shapes must match the run's model and whose values must be finite
MODEL_PARTS = ("params", "batch_stats")
#: seconds a failed restore's pending reads get to finish before they are cancelled
_DRAIN_SECONDS = 60.0


class CheckpointError(L2LError):
    """No checkpoint of a run directory restores (each is named with its reason)."""


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written to a bucket (refused or no answer); the previous ones stay."""


class BadCheckpoint(Exception):
    """One checkpoint does not restore: missing or damaged files, a checksum mismatch, non-finite params."""


# ------------------------------------------------------------------------------------------------ event loops
class _DrainingLoop(asyncio.SelectorEventLoop):
    """An event loop that, closed with tasks still pending (orbax's sibling reads of a read that failed), runs
    them to their end first (cancelled after `_DRAIN_SECONDS`) and retrieves every task's exception: the
    first failure has already been raised to the caller."""

    def __init__(self) -> None:
        super().__init__()
        self._tasks: list[asyncio.Task] = []

    def create_task(self, coro: Any, **kwargs: Any) -> asyncio.Task:
        task = super().create_task(coro, **kwargs)
        self._tasks.append(task)
        return task

    def close(self) -> None:
        if not self.is_closed() and not self.is_running():
            pending = [t for t in self._tasks if not t.done()]
            if pending:
                self.run_until_complete(_settle(pending))
            for t in self._tasks:
                if t.done() and not t.cancelled():
                    t.exception()  # retrieved: no "Task exception was never retrieved" when collected
            self._tasks.clear()
        super().close()


async def _settle(tasks: list[asyncio.Task]) -> None:
    _, late = await asyncio.wait(tasks, timeout=_DRAIN_SECONDS)
    for t in late:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class _DrainingPolicy(asyncio.DefaultEventLoopPolicy):
    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        return _DrainingLoop()


@contextlib.contextmanager
def _drained_loops() -> Iterator[None]:
    """Event loops created inside (orbax makes one per restore) drain their pending tasks when closed."""
    before = asyncio.get_event_loop_policy()
    if type(before) is not asyncio.DefaultEventLoopPolicy:  # someone else's policy: leave it alone
        yield
        return
    asyncio.set_event_loop_policy(_DrainingPolicy())
    try:
        yield
    finally:
        asyncio.set_event_loop_policy(before)


# ------------------------------------------------------------------------------------------------ helpers
def state_checksum(state: Any) -> str:
    """`tensor_checksum` of the whole state (host numpy; every process computes the same)."""
    return tensor_checksum(state)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _part(tree: Any, name: str) -> Any:
    """`tree[name]` or `tree.name` (a dict or a struct dataclass such as `TrainState`); None if absent."""
    return tree.get(name) if isinstance(tree, Mapping) else getattr(tree, name, None)


def _abstract(x: Any) -> Any:
    """A restore target leaf: a device array's shape, dtype and sharding; host values restore as numpy."""
    if isinstance(x, jax.Array):
        return ocp.utils.to_shape_dtype_struct(x)
    x = np.asarray(x)
    return np.empty(x.shape, x.dtype)


def _reason(e: BaseException) -> str:
    """One short line of an exception (TensorStore appends its whole spec: cut)."""
    text = " ".join(str(e).split()) or type(e).__name__
    for cut in (" See full TensorStore details", " [tensorstore_spec", " tensorstore_spec"):
        text = text.split(cut)[0]
    text = text if len(text) <= 240 else text[:237] + "..."
    return text if isinstance(e, BadCheckpoint) else f"{type(e).__name__}: {text}"


def _check_progress(progress: Any) -> None:
    if not isinstance(progress, Mapping) or any(k not in progress for k in PROGRESS_KEYS):
        raise BadCheckpoint(f"its progress JSON lacks {', '.join(PROGRESS_KEYS)}")
    if not (_is_int(progress["next_epoch"]) and _is_int(progress["epoch"]) and isinstance(progress["data"], Mapping)):
        raise BadCheckpoint("its progress JSON holds values of the wrong kind (next_epoch, epoch, data)")


def verify_state(host_state: Any, progress: Mapping[str, Any]) -> None:
    """`BadCheckpoint` if the restored state's checksum differs from the one saved with it (checkpoints
    written before checksums existed have none and pass), or its params or BatchNorm statistics hold NaN or
    infinity."""
    want = progress.get("checksum")
    if want is not None and state_checksum(host_state) != want:
        raise BadCheckpoint("the tensors' checksum does not match the one saved with them (damaged data file)")
    parts = {name: _part(host_state, name) for name in MODEL_PARTS}
    bad = nonfinite_tensors({k: v for k, v in parts.items() if v is not None})
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise BadCheckpoint(f"non-finite values in {', '.join(bad[:3])}{more}")


# ------------------------------------------------------------------------------------------------ the checkpoints
class RunCheckpoints:
    """Save/restore the state and progress of one run directory. `flag` names the directory in messages
    (l2l-train: ``--checkpoint_path``, the video trainers: ``--out``); `model_flags`, the flags that shape the
    model (named when a checkpoint's tensors have other shapes)."""

    def __init__(self, run_dir: str | os.PathLike, keep: int = 3, *, flag: str = "--checkpoint_path",
                 model_flags: str = "--num_classes, --variant, --embedding_size"):
        if keep < 1:
            raise ValueError(f"keep_checkpoints must be >= 1, got {keep}")
        self.directory = storage.absolute(run_dir) / CHECKPOINT_DIR
        storage.forget_listings(self.directory)
        self.flag, self.model_flags = flag, model_flags
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False)
        handlers = {"state": ocp.StandardCheckpointHandler(), "progress": ocp.JsonCheckpointHandler()}
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

    def latest_step(self) -> int | None:
        """The step of the newest complete checkpoint, or None."""
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        """The steps of the complete checkpoints, oldest first."""
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: Any, progress: Mapping[str, Any]) -> None:
        """Write checkpoint `step` (blocking until it is complete and renamed into place), with the state's
        checksum in its progress JSON."""
        progress = {**progress, "checksum": state_checksum(parallel.to_host(state))}
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), progress=ocp.args.JsonSave(progress))
        if not storage.is_url(self.directory):
            with _drained_loops():
                self.manager.save(int(step), args=args, force=True)
                self.manager.wait_until_finished()
            return
        try:  # a bucket that refuses the write (403) or does not answer: one line, the last good one named
            with _drained_loops():
                self.manager.save(int(step), args=args, force=True)
                self.manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001 (TensorStore, gcsfs and aiohttp raise many kinds)
            last = [s for s in self.all_steps_quietly() if s != int(step)]
            where = f"the last complete one is {self.directory / str(last[-1])}" if last else "no complete one yet"
            raise CheckpointWriteError(f"{self.flag} {self.directory.parent}: checkpoint {self.directory / str(step)} "
                                  f"could not be written ({_reason(e)}); {where}") from None

    def all_steps_quietly(self) -> list[int]:
        """`all_steps` read afresh from the storage; [] if it does not answer."""
        try:
            storage.forget_listings(self.directory)
            self.manager.reload()
            return self.all_steps()
        except Exception:  # noqa: BLE001
            return []

    def _restore(self, step: int, target: Any) -> dict[str, Any]:
        """orbax's restore of both items into `target` (abstract arrays or numpy), `BadCheckpoint` if it fails."""
        args = ocp.args.Composite(state=ocp.args.StandardRestore(target), progress=ocp.args.JsonRestore())
        try:
            with _drained_loops():
                return self.manager.restore(step, args=args)
        except Exception as e:  # noqa: BLE001 (orbax and tensorstore raise many kinds for damaged files)
            raise BadCheckpoint(_reason(e)) from e

    def restore(self, target: Any, step: int | None = None) -> tuple[Any, dict[str, Any]]:
        """(state, progress) of checkpoint `step` (default: newest), verified (`BadCheckpoint` if it does not
        restore). `target` is a state of the same structure: its device arrays' shardings are used for the
        restored arrays, its host (numpy) leaves restore as numpy."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        self._check_shapes(step, target)
        out = self._restore(step, jax.tree_util.tree_map(_abstract, target))
        progress = out["progress"]
        _check_progress(progress)
        verify_state(parallel.to_host(out["state"]), progress)
        return out["state"], dict(progress)

    def progress(self, step: int | None = None) -> dict[str, Any] | None:
        """The progress JSON of checkpoint `step` (default: newest) without its state; None if there is none or
        it does not read (the state is not verified: `restore` does that)."""
        step = self.latest_step() if step is None else step
        if step is None:
            return None
        try:
            with _drained_loops():
                out = self.manager.restore(step, args=ocp.args.Composite(progress=ocp.args.JsonRestore()))
            _check_progress(out["progress"])
        except Exception:  # noqa: BLE001
            return None
        return dict(out["progress"])

    def epochs_done(self) -> int | None:
        """``next_epoch`` of the newest checkpoint whose progress reads (the epochs it holds), else None."""
        for step in reversed(self.all_steps()):
            progress = self.progress(step)
            if progress is not None:
                return int(progress["next_epoch"])
        return None

    def restore_newest(self, target: Any, warn: Callable[[str], None],
                       main_process: bool = True) -> tuple[Any, dict[str, Any], int] | None:
        """Resume: (state, progress, step) of the newest checkpoint that restores, None if there is none.
        Each newer one that does not restore is reported through `warn` (one line: step, reason, where it
        went) and moved aside to ``corrupt-<step>-<time>`` (by the main process) once a good one is found;
        if none restores, `CheckpointError` naming every step and reason (nothing is moved)."""
        steps = sorted(self.manager.all_steps(), reverse=True)
        if not steps:
            return None
        bad: list[tuple[int, str]] = []
        for step in steps:
            try:
                state, progress = self.restore(target, step)
            except BadCheckpoint as e:
                bad.append((step, str(e)))
                continue
            stamp = time.strftime("%Y%m%dT%H%M%S")
            for s, why in bad:
                aside = self.directory / f"corrupt-{s}-{stamp}"
                warn(f"checkpoint {self.directory / str(s)} (step {s}) does not restore: {why}; moved aside to "
                     f"{aside.name}, resuming from step {step}")
            if bad:
                self._move_aside([s for s, _ in bad], stamp, main_process)
            return state, progress, step
        listed = "; ".join(f"step {s}: {why}" for s, why in bad)
        raise CheckpointError(f"{self.directory}: no checkpoint restores ({listed}). Move the damaged checkpoints "
                              f"out of the way (or choose another {self.flag}) to start afresh")

    def _move_aside(self, steps: list[int], stamp: str, main_process: bool) -> None:
        _sync("l2l_jax: checkpoints restored")
        if main_process:
            for s in steps:
                src, dst = self.directory / str(s), self.directory / f"corrupt-{s}-{stamp}"
                try:
                    storage.move_tree(src, dst)  # a bucket: copy then remove
                except OSError as e:
                    raise CheckpointError(f"{src}: does not restore and cannot be moved aside ({e}); move it out "
                                          "of the checkpoints directory") from None
        _sync("l2l_jax: checkpoints moved aside")
        storage.forget_listings(self.directory)
        self.manager.reload()

    def _saved_tree(self, step: int) -> Any:
        try:
            with _drained_loops():
                saved = self.manager.item_metadata(step)["state"]
        except Exception as e:  # noqa: BLE001
            raise BadCheckpoint(f"its metadata does not read ({_reason(e)})") from e
        saved = getattr(saved, "tree", saved)
        if not isinstance(saved, Mapping) or "params" not in saved:
            raise BadCheckpoint("its metadata holds no params")
        return saved

    def _check_shapes(self, step: int, target: Any) -> None:
        """A checkpoint of another model (other `model_flags`) is the user's flags at fault: `ConfigError`
        naming the first tensor that differs."""
        saved = self._saved_tree(step)
        for part in MODEL_PARTS:
            want_part = _part(target, part)
            if want_part is None and part != "params":
                continue
            have = {k: tuple(m.shape) for k, m in leaf_names(saved.get(part, {})).items()}
            want = {k: tuple(np.shape(x)) for k, x in leaf_names(want_part or {}).items()}
            if have != want:
                diff = sorted(set(have.items()) ^ set(want.items()))
                name = diff[0][0]
                raise ConfigError(f"{self.directory / str(step)}: the checkpoint's {part}/{name} has shape "
                                  f"{have.get(name, 'none')}, this run's model {want.get(name, 'none')}: the run "
                                  f"directory holds another model (other {self.model_flags}?); use the run's "
                                  f"flags or another {self.flag}")

    def restore_params(self, step: int | None = None) -> dict[str, Any]:
        """Only the model parts (`MODEL_PARTS` present: ``params``, ``batch_stats``) of a checkpoint, as numpy
        (e.g. for ``--pretrained_model``). The target is built from the checkpoint's metadata with numpy
        leaves, so orbax reads every array whole onto the host: any device and process count."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        where = self.directory / str(step)
        try:
            saved = self._saved_tree(step)
            # the whole state: StandardRestore cannot skip the optimizer state (no partial restore)
            out = self._restore(step, jax.tree_util.tree_map(lambda m: np.empty(m.shape, m.dtype), saved))
            raw = out["state"]
            verify_state(raw, out["progress"] if isinstance(out["progress"], Mapping) else {})
        except BadCheckpoint as e:
            raise WeightsError(f"{where}: the checkpoint does not restore: {e}") from None
        return {part: raw[part] for part in MODEL_PARTS if part in raw}

    def close(self) -> None:
        self.manager.close()


def _sync(name: str) -> None:
    """A barrier of every process (nothing on one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def complete_steps(run_dir: str | os.PathLike) -> list[int]:
    """The steps of `run_dir`'s complete checkpoints, oldest first, from its listing alone (no orbax manager,
    so no barrier: one process may ask). Locally a step's folder is complete once renamed into place; on a
    bucket it holds orbax's commit file."""
    d = storage.path(run_dir) / CHECKPOINT_DIR
    storage.forget_listings(d)
    if not d.is_dir():
        return []
    url = storage.is_url(d)
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit() and (not url or (p / COMMIT_FILE).exists()))


def has_run_checkpoints(run_dir: str | os.PathLike) -> bool:
    """Whether `run_dir` holds at least one complete checkpoint (on a bucket: with orbax's commit file)."""
    return bool(complete_steps(run_dir))


def epochs_done(run_dir: str | os.PathLike) -> int | None:
    """``next_epoch`` of the newest complete checkpoint of `run_dir` whose progress JSON reads, else None. Read
    as a plain file (orbax's JSON item ``progress/metadata``), so that process 0 alone may ask while the others
    wait: an orbax manager would wait for them at its barriers."""
    d = storage.path(run_dir) / CHECKPOINT_DIR
    for step in reversed(complete_steps(run_dir)):
        try:
            progress = json.loads((d / str(step) / "progress" / "metadata").read_text())
            _check_progress(progress)
        except Exception:  # noqa: BLE001 (missing, unreadable or damaged: the next older one)
            continue
        return int(progress["next_epoch"])
    return None


def find_run_checkpoint(path: str | os.PathLike) -> tuple[storage.AnyPath, int | None] | None:
    """``(run directory, step)`` when `path` is a run directory, its ``checkpoints/`` (step None: the newest)
    or one step's directory ``checkpoints/<step>`` (that step); None otherwise."""
    p = storage.absolute(path)
    if has_run_checkpoints(p):
        return p, None
    if p.name == CHECKPOINT_DIR and has_run_checkpoints(p.parent):
        return p.parent, None
    if p.name.isdigit() and p.parent.name == CHECKPOINT_DIR and has_run_checkpoints(p.parent.parent):
        return p.parent.parent, int(p.name)
    return None


def read_run_params(run_dir: str | os.PathLike, step: int | None = None) -> tuple[dict[str, Any], int]:
    """``({"params", "batch_stats"} as numpy, step)`` of checkpoint `step` (default: newest) of a run directory,
    on any device count (`RunCheckpoints.restore_params`)."""
    ckpts = RunCheckpoints(run_dir)
    try:
        step = ckpts.latest_step() if step is None else step
        return ckpts.restore_params(step), step
    finally:
        ckpts.close()


__all__ = ["CHECKPOINT_DIR", "COMMIT_FILE", "MODEL_PARTS", "PROGRESS_KEYS", "BadCheckpoint", "CheckpointError",
           "CheckpointWriteError", "RunCheckpoints", "complete_steps", "epochs_done", "find_run_checkpoint",
           "has_run_checkpoints", "read_run_params", "state_checksum", "verify_state"]
