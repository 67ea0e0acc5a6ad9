"""`train(settings, record)`: upstream's training driver (docs/UPSTREAM.md §6) as a jitted, data-parallel JAX loop.

It takes the run's `l2l_jax.config.Settings` (the flags checked and built once by the program) and reads as
the recipe: set up (data, model, recipe, the jitted step, validation) -> the train state from the initial
weights, or restored from the newest checkpoint of the run directory -> for each epoch: for each batch a
step, log lines at print points -> end of the epoch: checkpoint, validation, the epoch's log lines and
record -> finish: final model directory and curves.

* Devices: one `Mesh` over every device of every process, batch on ``data``, state replicated and donated
  (`l2l_jax.parallel`). The global batch (``--batch_size``) and every random draw are independent of the
  device and process count.
* Host syncs: only at print points (every ``--print_freq`` iterations) and at the end of an epoch; the
  epoch sums (losses, accuracies, the first non-finite step) accumulate on the device.
* Checkpoints (`l2l_jax.runkit.checkpoints`): every ``--checkpoint_freq`` epochs (epoch 0 included) and
  after the last epoch, with a checksum of the state and the epoch's sums; a restarted run resumes from the
  newest one that restores (newer damaged ones are reported and moved aside) with the same state, the same
  next batch and the same random draws, so it ends exactly as an uninterrupted run. If a kill came between
  a checkpoint and its epoch's validation lines and record, the resumed run validates that epoch with the
  restored state and writes them first.
* The run directory is locked (`l2l_jax.runkit.lock`, process 0) from before any data is read to the end;
  a rerun whose checkpoints were made with other settings (or hold more epochs than ``--epochs``) is
  refused right after, unless ``--overwrite`` (`l2l_jax.training.rerun`).
* Outputs: `l2l_jax.training.log`; at the end ``model_final/``, a converted-model directory for
  ``l2l-eval --pretrained_model``.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from l2l_jax import model_dir as model_dirs
from l2l_jax import parallel, weights
from l2l_jax.config import Settings
from l2l_jax.data.source import open_split
from l2l_jax.errors import ConfigError, NonFiniteLossError
from l2l_jax.model import build_model
from l2l_jax.recipe import Recipe
from l2l_jax.runkit.checkpoints import CheckpointWriteError, RunCheckpoints
from l2l_jax.runkit.lock import lock_run
from l2l_jax.runkit.metrics import StorageWriteError
from l2l_jax.steps import TrainState, create_train_state, make_train_step
from l2l_jax.training.log import SUMS, RunLog
from l2l_jax.training.rerun import refuse_rerun
from l2l_jax.training.validation import Validation


# ------------------------------------------------------------------------------------------------ the run
def train(settings: Settings, record: Mapping[str, Any]) -> dict[str, Any]:
    """Run (or resume) a training run; returns a summary (epochs, final step, last validation, run dir).
    `record` is the resolved flags, written to the run's record as given (`RunLog.write_config`)."""
    opts = settings.run
    lock = lock_run(opts.run_dir)  # one run per directory, before any data is read
    try:
        refuse_rerun(settings)  # checkpoints of other settings, or more epochs than --epochs: refused now
        mesh = parallel.make_mesh()
        run_log = RunLog(opts.run_dir, main_process=parallel.is_main_process())
        for line in lock.warnings if lock is not None else ():
            run_log.warn(line)
        ckpts = None
        try:
            run_log.write_config(record)
            run = set_up(settings, mesh, run_log)
            ckpts = RunCheckpoints(run_log.run_dir, keep=opts.keep_checkpoints)
            state, first_epoch, redo = restore(run, ckpts, run_log)
            run_log.open_outputs(visualization=opts.visualization)
            last_val: dict[str, float] = {}
            if redo is not None:  # killed between a checkpoint and its epoch's record: write them now
                last_val = end_epoch(run, state, redo["epoch"], redo["sums"], redo["seconds"], ckpts, run_log,
                                     save=False)
            run_log.log.debug("Entering the training loop")
            for epoch in range(first_epoch, opts.epochs):
                state, host_sums, seconds = train_epoch(run, state, epoch, ckpts, run_log)
                last_val = end_epoch(run, state, epoch, host_sums, seconds, ckpts, run_log)
            return finish(run, state, last_val, run_log)
        finally:
            error = sys.exc_info()[1]
            try:
                if ckpts is not None:
                    ckpts.close()
                # on a bucket: the last writes of run.log and epoch.log, unless the storage has just failed
                run_log.close(write=not isinstance(error, (StorageWriteError, CheckpointWriteError)))
            except Exception:
                if error is None:  # else the run's own error is the one to report
                    raise
    finally:
        if lock is not None:
            lock.release()


# ------------------------------------------------------------------------------------------------ set-up
@dataclasses.dataclass
class Run:
    """What the loop works with, built once by `set_up`."""

    settings: Settings
    mesh: Any
    layout: str  # "dense" | "chunk": how batches reach the device
    loader: Any  # the training BatchLoader
    batches: Any  # its iterator over all epochs (checkpointed with the state)
    model: Any
    recipe: Recipe
    epoch_step: Any  # jitted (state, sums, batch) -> (state, sums, metrics)
    validation: Validation | None

    @property
    def n_it(self) -> int:
        """Iterations per epoch (upstream's N_it)."""
        return self.loader.batches_per_epoch

    def steps_before(self, epoch: int) -> int:
        """Optimizer steps taken before `epoch` began."""
        return (epoch - self.settings.run.start_epoch) * self.n_it

    def lr(self, step: int) -> float:
        """Learning rate of parameter group 0 after `step` steps (what upstream logs)."""
        return self.recipe.group_lrs(step)[0]


def set_up(settings: Settings, mesh: Any, run_log: RunLog) -> Run:
    """The data (splits checked, loaders), the model, the recipe, the jitted step and the validation."""
    t0 = time.time()
    data, opts = settings.data, settings.run
    options = data.split_options(progress=run_log.main)
    train_src = open_split(data.train_file, **options)
    val_src = open_split(data.test_file, **options) if data.test_file else None
    run_log.log.debug(f"Time to load paths: {time.time() - t0:.3f}")
    run_log.log.debug(f"Number of videos: {len(train_src)}")
    if val_src is not None:
        run_log.log.debug(f"Number of videos: {len(val_src)}")
    batch_size = settings.loader.batch_size
    if len(train_src) % batch_size == 1:
        raise ConfigError(f"{data.train_file}: {len(train_src)} videos leave a last batch of 1 video at "
                          f"--batch_size {batch_size}; BatchNorm cannot train on one row (upstream crashes, "
                          "quirk 17): change --batch_size")
    loader = settings.train_loader(train_src)
    model = build_model(settings.model, settings.variant)
    recipe = settings.recipe.build(loader.batches_per_epoch)
    rep = parallel.replicated(mesh)
    epoch_step = jax.jit(make_epoch_step(make_train_step(model, recipe)), donate_argnums=(0, 1),
                         out_shardings=(rep, rep, rep), compiler_options=parallel.compiler_options())
    batches = loader.iterator(num_epochs=opts.epochs - opts.start_epoch, start_epoch=opts.start_epoch)
    validation = Validation(settings, model, val_src, mesh) if val_src is not None else None
    return Run(settings=settings, mesh=mesh, layout=settings.layout, loader=loader, batches=batches, model=model,
               recipe=recipe, epoch_step=epoch_step, validation=validation)


def restore(run: Run, ckpts: RunCheckpoints, run_log: RunLog) -> tuple[TrainState, int, dict | None]:
    """The replicated train state from the initial weights (`weights.initial_variables`: fresh, then
    --weights_audioImageModel and --pretrained_model), replaced by the newest checkpoint of the run directory
    that restores if there is one (the loader's position too; newer ones that do not restore are reported
    and moved aside, `RunCheckpoints.restore_newest`); returns (state, first epoch to train, redo). `redo`
    is the restored epoch's {"epoch", "sums", "seconds"} when its record and validation were lost to a kill
    after its checkpoint (`RunLog.resumed`), else None."""
    variables = weights.initial_variables(run.settings, run_log.log)
    state = create_train_state(variables, run.recipe.optimizer(), run.settings.seed)
    state = parallel.replicate(state, run.mesh)
    first_epoch = run.settings.run.start_epoch
    redo = None
    restored = ckpts.restore_newest(state, run_log.warn, main_process=run_log.main)
    if restored is None:  # a fresh start: records and lines left by an attempt killed before its first checkpoint go
        run_log.resumed(first_epoch)
    else:
        state, progress, step = restored
        run_log.log.debug(f"Loading last checkpoint: {ckpts.directory / str(step)}")
        first_epoch = int(progress["next_epoch"])
        try:
            run.batches.set_state(progress["data"])
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise ConfigError(f"{ckpts.directory / str(step)}: its loader position ({progress['data']}) does not fit "
                              f"--train_dataset_file {run.settings.data.train_file} ({e}): resume with the run's "
                              "dataset and flags, or choose another --checkpoint_path") from None
        run_log.log.debug(f"Resuming after epoch {progress['epoch']} at step {int(parallel.to_host(state.step))}")
        sums, seconds = progress.get("sums"), progress.get("seconds")
        resumable = (isinstance(sums, Mapping) and all(isinstance(sums.get(k), (int, float)) for k in SUMS)
                     and isinstance(seconds, (int, float)))
        missing = run_log.resumed(first_epoch, int(progress["epoch"]) if resumable else None,
                                  validated=run.validation is not None)
        if jax.process_count() > 1:  # every process validates (collectives): process 0 decided
            missing = bool(multihost_utils.broadcast_one_to_all(np.int32(missing)))
        if missing:
            run_log.log.debug(f"Epoch {progress['epoch']}'s record and validation were not written before the run "
                              "stopped: writing them now")
            redo = {"epoch": int(progress["epoch"]), "sums": dict(progress["sums"]),
                    "seconds": float(progress["seconds"])}
    run_log.log.debug(f"Model: {type(run.model).__name__} ({run.settings.variant.name}), {jax.device_count()} "
                      f"device(s) ({jax.devices()[0].platform}), {jax.process_count()} process(es)")
    return state, first_epoch, redo


# ------------------------------------------------------------------------------------------------ the epoch
def make_epoch_step(train_step):
    """Wrap the train step so that the epoch's sums (`SUMS`: losses weighted by rows, correct counts, rows)
    and the first non-finite step accumulate on the device."""

    def step(state: TrainState, acc: dict, batch: dict):
        k = state.step
        state, m = train_step(state, batch)
        n = m["count"]
        finite = jnp.isfinite(m["loss"])
        new = {key: acc[key] + (m[key] * n if key in ("loss", "avgpool_ce", "lstm_ce") else m[key])
               for key in SUMS}
        new["first_bad"] = jnp.where((acc["first_bad"] < 0) & ~finite, k, acc["first_bad"])
        return state, new, m

    return step


def zero_sums() -> dict:
    return {**{k: jnp.zeros((), jnp.float32) for k in SUMS}, "first_bad": -jnp.ones((), jnp.int32)}


def train_epoch(run: Run, state: TrainState, epoch: int, ckpts: RunCheckpoints,
                run_log: RunLog) -> tuple[TrainState, dict, float]:
    """One epoch of steps, logging at print points; returns (state, the epoch sums on the host, seconds)."""
    print_freq, n_it = run.settings.run.print_freq, run.n_it
    sums = parallel.replicate(zero_sums(), run.mesh)
    run_log.epoch_start(epoch, n_it)
    for i in range(1, n_it + 1):
        batch = next(run.batches)
        videos = float(np.sum(batch["valid"])) * jax.process_count()
        batch = parallel.shard_batch(batch, run.mesh, run.layout)
        run_log.batch_on_device()
        state, sums, m = run.epoch_step(state, sums, batch)
        run_log.batch_stepped(videos)
        if i % print_freq == 0 or i == n_it:
            host_sums, host_m = parallel.to_host((sums, m))  # the print point: one sync
            check_finite(host_sums, epoch, n_it, ckpts, run_log)
            step = run.steps_before(epoch) + i
            run_log.print_point(epoch, i, n_it, step, run.lr(step), host_sums, host_m,
                                upstream=i % print_freq == 0)
    run_log.batches_done()
    host_sums = parallel.to_host(sums)
    check_finite(host_sums, epoch, n_it, ckpts, run_log)
    return state, host_sums, run_log.epoch_seconds()


def check_finite(host_sums: Mapping[str, Any], epoch: int, n_it: int, ckpts: RunCheckpoints,
                 run_log: RunLog) -> None:
    """Stop (`NonFiniteLossError`, nothing saved) at the first NaN or infinite loss."""
    bad = int(host_sums["first_bad"])
    if bad < 0 and math.isfinite(float(host_sums["loss"])):
        return
    last = ckpts.latest_step()
    where = f"the last good checkpoint is {ckpts.directory / str(last)}" if last is not None else "no checkpoint yet"
    if bad == 0:  # before any update: not the learning rate
        hint = ("The loss is non-finite before any update, from weights and features that were checked finite when "
                "read (NaN or infinite weights are refused by name when loaded): the forward pass overflows; check "
                "the scale of --pretrained_model / --weights_audioImageModel and of the input features.")
    else:
        hint = "Lower --lr or check the input features."
    msg = (f"non-finite training loss at step {bad} (epoch {epoch}, {n_it} iterations per epoch): stopping without "
           f"saving; {where}. {hint}")
    run_log.log.error(msg)
    raise NonFiniteLossError(msg)


def end_epoch(run: Run, state: TrainState, epoch: int, host_sums: Mapping[str, Any], seconds: float,
              ckpts: RunCheckpoints, run_log: RunLog, *, save: bool = True) -> dict[str, float]:
    """After an epoch: the checkpoint (every --checkpoint_freq epochs and after the last; before validation,
    as upstream; with the epoch's sums, so that a run killed before its record is written can write it on
    resume), the validation, the epoch's lines and record. Returns the validation's numbers ({} without a
    validation split). `save=False`: the lines and record of a restored checkpoint's epoch only."""
    opts = run.settings.run
    step = run.steps_before(epoch + 1)
    last = epoch == opts.epochs - 1
    if save and (epoch % opts.checkpoint_freq == 0 or last):
        run_log.log.info(f"Saving checkpoint to {ckpts.directory / str(step)}")
        ckpts.save(step, state, {"data": run.batches.get_state(), "next_epoch": epoch + 1, "epoch": epoch,
                                 "final": last, "sums": {k: float(host_sums[k]) for k in SUMS},
                                 "seconds": float(seconds)})
    if run.validation is None:
        run_log.epoch_end(epoch, step, run.lr(step), host_sums, seconds)
        return {}
    result = run.validation(state.variables)
    run_log.epoch_end(epoch, step, run.lr(step), host_sums, seconds, result, run.validation.lines(epoch, result))
    return result


# ------------------------------------------------------------------------------------------------ the end
def finish(run: Run, state: TrainState, last_val: dict[str, float], run_log: RunLog) -> dict[str, Any]:
    """A converted-model directory of the final weights (``model_final/``) and the training curves; returns
    the run's summary."""
    settings = run.settings
    summary = {"epochs": settings.run.epochs, "step": int(parallel.to_host(state.step)), "validation": last_val,
               "run_dir": str(run_log.run_dir)}
    variables = parallel.to_host(state.variables)  # every process (a collective if not replicated)
    if run_log.main:  # process 0 alone writes the model directory (save_model_dir is a one-process writer)
        meta = {"variant": settings.variant.name, "num_classes": settings.model.num_classes,
                "feature_dim": settings.model.feature_dim, "source": str(run_log.run_dir),
                "epoch": settings.run.epochs - 1,
                "precision": settings.numerics.name}  # trained in; evaluates in either
        model_dirs.save_model_dir(run_log.run_dir / "model_final", variables, meta, overwrite=True)
    run_log.write_curves()
    return summary


__all__ = ["Run", "end_epoch", "make_epoch_step", "restore", "set_up", "train", "train_epoch", "zero_sums"]
