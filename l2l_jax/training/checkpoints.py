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
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

CHECKPOINT_DIR = "checkpoints"


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
        """Write checkpoint `step` (blocking until it is complete and renamed into place)."""
        self.manager.save(int(step), args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                             progress=ocp.args.JsonSave(dict(progress))),
                          force=True)
        self.manager.wait_until_finished()

    def restore(self, target: Any, step: int | None = None) -> tuple[Any, dict[str, Any]]:
        """(state, progress) of checkpoint `step` (default: newest). `target` is a state of the same structure
        (its shardings are used for the restored arrays)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target)
        out = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                                 progress=ocp.args.JsonRestore()))
        return out["state"], dict(out["progress"])

    def restore_params(self, step: int | None = None) -> dict[str, Any]:
        """Only the `{"params", "batch_stats"}` of a checkpoint, as numpy (e.g. for `--pretrained_model`).

        The target is built from the checkpoint's metadata with numpy leaves, so orbax reads every array whole
        onto the host instead of onto the saving run's devices: independent of the device and process count of
        both runs."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        saved = self.manager.item_metadata(step)["state"]
        saved = getattr(saved, "tree", saved)
        # the whole state: StandardRestore cannot skip the optimizer state (no partial restore)
        target = jax.tree_util.tree_map(lambda m: np.empty(m.shape, m.dtype), saved)
        raw = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))["state"]
        return {"params": raw["params"], "batch_stats": raw["batch_stats"]}

    def close(self) -> None:
        self.manager.close()


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


__all__ = ["CHECKPOINT_DIR", "RunCheckpoints", "find_run_checkpoint", "has_run_checkpoints", "read_run_params"]
