"""What the checkpoints of an `l2l-train` run directory depend on, recorded and checked on every rerun through
the run directory kit (`l2l_jax.runkit.settings`).

`recorded_settings` names the settings that change what the checkpoints mean: the recipe (``--lr``,
``--momentum``, ``--weight_decay``, ``--milestones``, ``--scheduler``, ``--warmup_epochs``, the loss switches
and weights, ``--freeze_imageAudioNet``, ``--gt_feature_eval``), ``--seed``, ``--batch_size``, the model
(``--num_classes``, ``--variant``, ``--embedding_size``, ``--episode_length``, ``--with_replacement``,
``--mean_feature_as_start``, ``--feature_interpolate``, ``--subsample_factor``, ``--feature_subsample``),
``--precision``, ``--start_epoch`` and the training split (``--train_dataset_file``, its absolute path or URL). What
only says how the run goes (``--epochs``, ``--checkpoint_freq``, ``--print_freq``, ``--layout``,
``--buckets``, threads, ``--visualization``, ...) is not recorded: changing it resumes as before.

`refuse_rerun`, called by the loop right after the run directory is locked and before any data is read,
refuses a rerun whose recorded settings differ (one line naming each difference) or whose ``--epochs`` are
fewer than its checkpoints hold, unless ``--overwrite``, which removes the old checkpoints and starts over.
"""

from __future__ import annotations

from typing import Any

from l2l_jax import storage
from l2l_jax.config import Settings
from l2l_jax.runkit.lock import on_main_process
from l2l_jax.runkit.settings import check_rerun

PROGRAM = "l2l-train"
FLAG = "--checkpoint_path"


def recorded_settings(settings: Settings) -> dict[str, Any]:
    """The settings a run directory's checkpoints depend on, by flag name (see the module docstring)."""
    recipe, model = settings.recipe, settings.model
    return {
        "lr": recipe.lr, "momentum": recipe.momentum, "weight_decay": recipe.weight_decay, "seed": settings.seed,
        "milestones": list(recipe.milestones), "scheduler": recipe.scheduler, "warmup_epochs": recipe.warmup_epochs,
        "batch_size": settings.loader.batch_size, "num_classes": model.num_classes, "variant": settings.variant.name,
        "embedding_size": model.feature_dim, "episode_length": model.episode_length,
        "with_avgpool_ce_loss": recipe.with_avgpool_ce_loss, "with_lstm_ce_loss": recipe.with_lstm_ce_loss,
        **dict(recipe.loss_weights), "freeze_imageAudioNet": recipe.freeze, "gt_feature_eval": settings.hard,
        "with_replacement": model.with_replacement, "mean_feature_as_start": model.mean_feature_as_start,
        "feature_interpolate": model.feature_interpolate, "subsample_factor": model.subsample_factor,
        "feature_subsample": settings.loader.subsample > 1, "precision": settings.numerics.name,
        "start_epoch": settings.run.start_epoch,
        "train_dataset_file": storage.display(settings.data.train_file),
    }


def refuse_rerun(settings: Settings) -> None:
    """Process 0, under the run lock: the run directory's checkpoints were made with these settings and hold
    at most ``--epochs`` epochs (else a `ConfigError` naming each difference), or ``--overwrite`` removes
    them; then the settings are recorded (`l2l_jax.runkit.settings.check_rerun`)."""
    opts = settings.run
    on_main_process(lambda: check_rerun(opts.run_dir, recorded_settings(settings), program=PROGRAM, flag=FLAG,
                                        epochs=opts.epochs, overwrite=opts.overwrite),
                    f"{FLAG} {opts.run_dir}: process 0 refused the run directory (see its message)")


__all__ = ["FLAG", "PROGRAM", "recorded_settings", "refuse_rerun"]
