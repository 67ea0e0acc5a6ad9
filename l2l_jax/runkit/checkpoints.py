"""Training-run checkpoints: orbax `CheckpointManager` over the whole `TrainState` plus the loader position.

Layout: ``<checkpoint_path>/checkpoints/<step>/`` with two items, ``state`` (the `TrainState` pytree: params,
BatchNorm statistics, optimizer state, step, RNG) and ``progress`` (JSON: the grain iterator state, the next
epoch, the epoch just finished, whether it is the final checkpoint). ``<step>`` is the number of optimizer steps
taken. orbax writes into a temporary directory and renames it when complete, so a run killed while saving
leaves the previous checkpoints intact and the partial one is ignored. The newest ``keep`` are kept.

Unlike upstream (which reruns from ``--start_epoch`` with a restored schedule, docs/UPSTREAM.md §6 "Resume"), a
restored run continues exactly where the checkpoint was taken: same step, same next batch, same draws.

`restore_params` (``--pretrained_model`` of `l2l-train` and `l2l-eval`) reads the variables as host numpy arrays,
so a checkpoint saved by a run on any number of devices or processes loads on any other.

Integrity: every checkpoint's ``progress`` JSON carries ``checksum``, the `l2l_jax.integrity.tensor_checksum` of
the whole train state (params, BatchNorm statistics, optimizer state, step, RNG; tensors named by their path),
written in the same atomic rename as the state. `restore` (resume) and `restore_params` verify it and refuse
non-finite params or statistics. On resume a checkpoint that does not restore (a missing or truncated file, a
checksum mismatch, non-finite params) is reported, moved aside to ``checkpoints/corrupt-<step>-<time>`` (out of
the manager's sight, never deleted) and the next older one is tried; if none restores the run stops with a
`CheckpointError` and moves nothing. A checkpoint whose tensors have other shapes than the run's model (other
flags) is a `ConfigError`, not corruption.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from l2l_jax.errors import ConfigError, L2LError, WeightsError
from l2l_jax.integrity import leaf_names, nonfinite_tensors, tensor_checksum

CHECKPOINT_DIR = "checkpoints"
#: keys every training checkpoint's progress JSON must hold to be resumed from
PROGRESS_KEYS = ("data", "next_epoch", "epoch")


class CheckpointError(L2LError):
    """No checkpoint of a run directory restores (each is named with its reason)."""


class BadCheckpoint(Exception):
    """One checkpoint does not restore: missing or damaged files, a checksum mismatch, non-finite params."""


def state_checksum(state: Any) -> str:
    """`tensor_checksum` of the whole train state (host numpy; every process computes the same)."""
    return tensor_checksum(state)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _reason(e: BaseException) -> str:
    """One short line of an exception (TensorStore appends its whole spec: cut)."""
    text = " ".join(str(e).split()) or type(e).__name__
    for cut in (" See full TensorStore details", " [tensorstore_spec", " tensorstore_spec"):
        text = text.split(cut)[0]
    text = text if len(text) <= 240 else text[:237] + "..."
    return text if isinstance(e, BadCheckpoint) else f"{type(e).__name__}: {text}"


class RunCheckpoints:
    """Save/restore the training state and progress of one run directory."""

    def __init__(self, run_dir: str | os.PathLike, keep: int = 3):
        if keep < 1:
            raise ValueError(f"keep_checkpoints must be >= 1, got {keep}")
        self.directory = Path(run_dir).absolute() / CHECKPOINT_DIR
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False)
        handlers = {"state": ocp.StandardCheckpointHandler(), "progress": ocp.JsonCheckpointHandler()}
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

    def latest_step(self) -> int | None:
        """The step of the newest complete checkpoint, or None."""
        return self.manager.latest_step()

    def save(self, step: int, state: Any, progress: Mapping[str, Any]) -> None:
        """Write checkpoint `step` (blocking until it is complete and renamed into place), with the state's
        checksum in its progress JSON."""
        from l2l_jax import parallel

        progress = {**progress, "checksum": state_checksum(parallel.to_host(state))}
        self.manager.save(int(step), args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                             progress=ocp.args.JsonSave(progress)),
                          force=True)
        self.manager.wait_until_finished()

    def restore(self, target: Any, step: int | None = None) -> tuple[Any, dict[str, Any]]:
        """(state, progress) of checkpoint `step` (default: newest), verified (`BadCheckpoint` if it does not
        restore). `target` is a state of the same structure (its shardings are used for the restored
        arrays)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        self._check_shapes(step, target)
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target)
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                                     progress=ocp.args.JsonRestore()))
        except Exception as e:  # noqa: BLE001 (orbax and tensorstore raise many kinds for damaged files)
            raise BadCheckpoint(_reason(e)) from e
        progress = out["progress"]
        if not isinstance(progress, Mapping) or any(k not in progress for k in PROGRESS_KEYS):
            raise BadCheckpoint(f"its progress JSON lacks {', '.join(PROGRESS_KEYS)}")
        if not (_is_int(progress["next_epoch"]) and _is_int(progress["epoch"])
                and isinstance(progress["data"], Mapping)):
            raise BadCheckpoint("its progress JSON holds values of the wrong kind (next_epoch, epoch, data)")
        from l2l_jax import parallel

        verify_state(parallel.to_host(out["state"]), progress)
        return out["state"], dict(progress)

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
                              "out of the way (or choose another --checkpoint_path) to start afresh")

    def _move_aside(self, steps: list[int], stamp: str, main_process: bool) -> None:
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("l2l_jax: checkpoints restored")
        if main_process:
            for s in steps:
                src, dst = self.directory / str(s), self.directory / f"corrupt-{s}-{stamp}"
                try:
                    os.rename(src, dst)
                except OSError as e:
                    raise CheckpointError(f"{src}: does not restore and cannot be moved aside ({e}); move it out "
                                          "of the checkpoints directory") from None
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("l2l_jax: checkpoints moved aside")
        self.manager.reload()

    def _saved_tree(self, step: int) -> Any:
        try:
            saved = self.manager.item_metadata(step)["state"]
        except Exception as e:  # noqa: BLE001
            raise BadCheckpoint(f"its metadata does not read ({_reason(e)})") from e
        saved = getattr(saved, "tree", saved)
        if not isinstance(saved, Mapping) or "params" not in saved:
            raise BadCheckpoint("its metadata holds no params")
        return saved

    def _check_shapes(self, step: int, target: Any) -> None:
        """A checkpoint of another model (other --num_classes, --variant, ...) is the user's flags at fault:
        `ConfigError` naming the first tensor that differs."""
        saved = self._saved_tree(step)
        for part in ("params", "batch_stats"):
            have = {k: tuple(m.shape) for k, m in leaf_names(saved.get(part, {})).items()}
            want = {k: tuple(np.shape(x)) for k, x in leaf_names(getattr(target, part)).items()}
            if have != want:
                diff = sorted(set(have.items()) ^ set(want.items()))
                name = diff[0][0]
                raise ConfigError(f"{self.directory / str(step)}: the checkpoint's {part}/{name} has shape "
                                  f"{have.get(name, 'none')}, this run's model {want.get(name, 'none')}: the run "
                                  "directory holds another model (other --num_classes, --variant, "
                                  "--embedding_size?); use the run's flags or another --checkpoint_path")

    def restore_params(self, step: int | None = None) -> dict[str, Any]:
        """Only the `{"params", "batch_stats"}` of a checkpoint, as numpy (e.g. for `--pretrained_model`).

        The target is built from the checkpoint's metadata with numpy leaves, so orbax reads every array whole
        onto the host instead of onto the saving run's devices: independent of the device and process count of
        both runs."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        where = self.directory / str(step)
        try:
            saved = self._saved_tree(step)
            # the whole state: StandardRestore cannot skip the optimizer state (no partial restore)
            target = jax.tree_util.tree_map(lambda m: np.empty(m.shape, m.dtype), saved)
            try:
                out = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                                                         progress=ocp.args.JsonRestore()))
            except Exception as e:  # noqa: BLE001
                raise BadCheckpoint(_reason(e)) from e
            raw = out["state"]
            verify_state(raw, out["progress"] if isinstance(out["progress"], Mapping) else {})
        except BadCheckpoint as e:
            raise WeightsError(f"{where}: the checkpoint does not restore: {e}") from None
        return {"params": raw["params"], "batch_stats": raw["batch_stats"]}

    def close(self) -> None:
        self.manager.close()


def verify_state(host_state: Any, progress: Mapping[str, Any]) -> None:
    """`BadCheckpoint` if the restored state's checksum differs from the one saved with it (checkpoints
    written before checksums existed have none and pass), or its params or BatchNorm statistics hold NaN or
    infinity."""
    want = progress.get("checksum")
    if want is not None and state_checksum(host_state) != want:
        raise BadCheckpoint("the tensors' checksum does not match the one saved with them (damaged data file)")
    params = host_state["params"] if isinstance(host_state, Mapping) else host_state.params
    stats = host_state["batch_stats"] if isinstance(host_state, Mapping) else host_state.batch_stats
    bad = nonfinite_tensors({"params": params, "batch_stats": stats})
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise BadCheckpoint(f"non-finite values in {', '.join(bad[:3])}{more}")


def has_run_checkpoints(run_dir: str | os.PathLike) -> bool:
    """Whether `run_dir` holds at least one complete training checkpoint."""
    d = Path(run_dir) / CHECKPOINT_DIR
    return d.is_dir() and any(p.name.isdigit() for p in d.iterdir())


def find_run_checkpoint(path: str | os.PathLike) -> tuple[Path, int | None] | None:
    """``(run directory, step)`` when `path` is a training run directory, its ``checkpoints/`` (step None: the
    newest) or one step's directory ``checkpoints/<step>`` (that step); None otherwise."""
    p = Path(path).absolute()
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


__all__ = ["CHECKPOINT_DIR", "BadCheckpoint", "CheckpointError", "RunCheckpoints", "find_run_checkpoint",
           "has_run_checkpoints", "read_run_params", "state_checksum", "verify_state"]
