"""The published ActivityNet recipe (docs/UPSTREAM.md §1 "Published training command"), two modalities.

    l2l-train --config configs/activitynet.py --train_dataset_file <root>/train.pkl \
        --test_dataset_file <root>/val.pkl --feature_root <root> \
        --weights_audioImageModel <root>/ImageAudioNet_ActivityNet.pth --workdir runs/activitynet

Equivalent to upstream's README command (batch 256, 25 epochs, lr 0.01 dropping x0.1 at epochs 15 and 20,
frozen fusion net, avgpool loss only, mean-feature start, no repeated clips, checkpoints at epochs 0, 10, 20
and the final one). Expected result: the paper's ActivityNet preview numbers (Listen to Look, CVPR 2020);
validation accuracy and mAP of the avgpool head per epoch in epoch.log. Not yet run here (no features on this
machine); record the numbers in BENCHMARKS.md when it is.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    """Upstream's published flags, named as in the cli table."""
    return ml_collections.ConfigDict({
        "variant": "two",
        "num_classes": 200,
        "batch_size": 256,
        "warmup_epochs": 0,
        "epochs": 25,
        "lr": 0.01,
        "milestones": [15, 20],
        "momentum": 0.9,
        "decode_threads": 10,
        "scheduler": True,
        "checkpoint_freq": 10,
        "episode_length": 10,
        "freeze_imageAudioNet": True,
        "with_avgpool_ce_loss": True,
        "compute_mAP": True,
        "mean_feature_as_start": True,
        "subsample_factor": 1,
        "with_replacement": True,
    })
