"""`open_run`: a trainer's run directory in one call: locked, its settings checked (or started over with
``--overwrite``), its checkpoints opened; and `epochs_bar`, the progress bar of a run counted in epochs.

    with open_run(out, program="l2l-finetune", settings=..., epochs=args.epochs, overwrite=args.overwrite,
                  keep=2, model_flags="--num_classes", warn=print_warning) as ckpts:
        restored = ckpts.restore_newest(target, warn, main_process=parallel.is_main_process())
        ...
        ckpts.save(epoch + 1, state, {"data": {}, "epoch": epoch, "next_epoch": epoch + 1})
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from tqdm.auto import tqdm

from l2l_jax import parallel
from l2l_jax.runkit.checkpoints import RunCheckpoints
from l2l_jax.runkit.lock import lock_run, on_main_process
from l2l_jax.runkit.settings import SETTINGS_FILE, check_rerun


@contextlib.contextmanager
def open_run(run_dir: str | os.PathLike, *, program: str, settings: Mapping[str, Any], epochs: int | None,
             overwrite: bool = False, keep: int = 2, flag: str = "--out", model_flags: str = "--num_classes",
             warn: Callable[[str], None] = print, file: str = SETTINGS_FILE,
             info: Mapping[str, Any] | None = None) -> Iterator[RunCheckpoints]:
    """Lock `run_dir` (`lock_run`; a taken-over stale lock is reported through `warn`), refuse a rerun with
    other `settings` or more epochs done than `epochs` (`check_rerun`, process 0; all before any work), and
    yield its `RunCheckpoints`; closed and unlocked on the way out, also on errors."""
    lock = lock_run(run_dir, flag)
    try:
        for line in lock.warnings if lock is not None else ():
            warn(line)
        on_main_process(lambda: check_rerun(run_dir, settings, program=program, flag=flag, epochs=epochs,
                                            overwrite=overwrite, file=file, info=info),
                        f"{flag} {run_dir}: process 0 refused the run directory (see its message)")
        ckpts = RunCheckpoints(run_dir, keep=keep, flag=flag, model_flags=model_flags)
        try:
            yield ckpts
        finally:
            ckpts.close()
    finally:
        if lock is not None:
            lock.release()


def epochs_bar(epochs: int, done: int, per_epoch: int, *, desc: str, unit: str = "step", show: bool = True) -> Any:
    """A tqdm bar over a whole run of `epochs` epochs of `per_epoch` steps, `done` epochs already done (a
    resumed run starts where it stopped). Process 0 only draws it."""
    return tqdm(total=epochs * per_epoch, initial=min(done, epochs) * per_epoch, desc=desc, unit=unit,
                disable=not (show and parallel.is_main_process()))


__all__ = ["epochs_bar", "open_run"]
