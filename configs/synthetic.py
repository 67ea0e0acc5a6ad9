"""The embedded synthetic dataset (`l2l-synth`, default preset: 20 classes, 1200 train / 400 val videos).

    l2l-synth --out data/synth
    l2l-train --config configs/synthetic.py --workdir runs/synth

No fusion-net weights exist for synthetic data, so nothing is frozen: the fusion net, classifier and policy
train together (both losses), with upstream's SGD recipe and a short schedule. About 2 minutes per epoch on a
2-core CPU after compilation. Expected result after 15 epochs: see benchmarks/TRAIN_RESULTS.md (validation
avgpool accuracy and mAP well above chance, 1/20 = 0.05).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    """Settings for data/synth, named as in the cli table."""
    return ml_collections.ConfigDict({
        "variant": "two",
        "train_dataset_file": "data/synth/train.pkl",
        "test_dataset_file": "data/synth/val.pkl",
        "num_classes": 20,
        "batch_size": 64,
        "epochs": 15,
        "lr": 0.01,
        "milestones": [10, 13],
        "momentum": 0.9,
        "scheduler": True,
        "warmup_epochs": 1,
        "checkpoint_freq": 5,
        "episode_length": 10,
        "with_avgpool_ce_loss": True,
        "with_lstm_ce_loss": True,
        "compute_mAP": True,
        "mean_feature_as_start": True,
        "with_replacement": True,
        "decode_threads": 4,
        "print_freq": 5,
        "buckets": [32, 64, 128, 256, 512],
    })
