"""The embedded synthetic dataset (`l2l-synth`, default preset: 20 classes, 1200 train / 400 val videos).

    l2l-synth --out data/synth
    l2l-train --config configs/synthetic.py --workdir runs/synth --weights_audioImageModel DIR

Start from a fusion net + classifier (`--weights_audioImageModel`, e.g. the one `l2l-demo` fits, converts and
uses); nothing is frozen: the fusion net, classifier and policy train together (both losses), with upstream's
SGD recipe and a short schedule. What `l2l-demo --out runs/demo` (default preset, seed 0) printed on
2026-12-07 on a 2-core CPU shared with other jobs (load 2.6-5.3): the whole demo in 6 min 2 s; validation at
E = 10: policy (avgpool) mAP 0.7694 / accuracy 68.00%, 10 uniformly spaced clips 0.6729 / 59.25%, 10 random
clips 0.6414 / 59.00%, all clips averaged 0.6839 / 61.00% (chance 1/20 = 0.05).
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
        "epochs": 5,
        "lr": 0.01,
        "milestones": [4],
        "momentum": 0.9,
        "scheduler": True,
        "warmup_epochs": 1,
        "checkpoint_freq": 2,
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
