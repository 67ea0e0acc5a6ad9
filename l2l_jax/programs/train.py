"""`l2l-train`: train the Listen-to-Look preview policy with upstream's main.py flags (docs/UPSTREAM.md §6).

Upstream's published command (docs/UPSTREAM.md §1 "Published training command") with the program name
changed, plus --feature_root for the feature files' location:

    l2l-train --train_dataset_file /data/ActivityNet/train.pkl --test_dataset_file /data/ActivityNet/val.pkl \
      --feature_root /data/ActivityNet --batch_size 256 --warmup_epochs 0 --epochs 25 --lr 0.01 \
      --milestones 15 20 --momentum 0.9 --decode_threads 10 --scheduler --num_classes 200 \
      --weights_audioImageModel /data/ActivityNet/ImageAudioNet_ActivityNet.pth --checkpoint_freq 10 \
      --episode_length 10 --checkpoint_path ./checkpoints/exp --freeze_imageAudioNet --with_avgpool_ce_loss \
      --compute_mAP --mean_feature_as_start --subsample_factor 1 --with_replacement

or the same recipe from a config file, flags overriding it:

    l2l-train --config configs/activitynet.py --feature_root /data/ActivityNet \
      --train_dataset_file ... --test_dataset_file ... --weights_audioImageModel ... --workdir runs/exp

Running it again with the same run directory resumes from its newest checkpoint, exactly. Every flag:
``l2l-train --help`` (`l2l_jax.programs.flags`); they are checked (`l2l_jax.config.check`) and built into
typed settings once (`l2l_jax.config.settings`); what the program does with them: `l2l_jax.training`. An
input error (a flag, a file, weights, a non-finite loss) ends it with one line on stderr and exit status 2
(``--debug``: the traceback instead).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from l2l_jax import config, parallel
from l2l_jax.programs import flags as program_flags
from l2l_jax.training.loop import train

DESCRIPTION = "Train the Listen-to-Look preview policy (upstream's main.py flags)."


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point: parse the flags (upstream's plus ours) and train; returns the exit status."""

    def body() -> None:
        cfg = program_flags.resolve("train", argv, DESCRIPTION)
        parallel.init_distributed(cfg)  # before anything touches the devices
        config.check(cfg, "train")  # every flag problem, before any data is read or anything compiles
        train(config.settings(cfg, "train"), record=cfg)

    return program_flags.run_program("train", body, argv)


if __name__ == "__main__":
    sys.exit(main())
