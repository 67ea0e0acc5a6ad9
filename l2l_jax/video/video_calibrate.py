"""``l2l-extract --calibrate_bn`` for a random ``--video_model``: every BatchNorm3d's running statistics from the
data, as `l2l_jax.video.trunks.calibrate_batchnorm` sets VisualNet's and AudioNet's.

A freshly initialised video ResNet normalises with running mean 0 and variance 1, which fit no real activations:
its pooled features are nearly the same for every clip. Calibrated, each BatchNorm3d normalises with the
statistics of the activations it sees on real clips, so the features vary with the content (a data-dependent
initialisation; the convolutions stay random).

- **Clips**: the video model's own clips (`video_clips.decode_with_clips`: 16 frames of each 1 s clip, resized
  and cropped as ``--video_size`` / ``--video_crop`` say, Kinetics-normalised) of the first decodable videos of
  the labels CSV, in its order, all clips of each until `clip_budget` clips (at most `MAX_CLIPS`, fewer for large
  crops, so the one pass stays within a few GB of host memory).
- **One pass**: a train-mode forward over those clips (every BatchNorm3d normalises with its batch's statistics,
  so each layer sees what it will see in eval mode once calibrated); each layer's running mean and variance
  become its batch's (torch's unbiased variance): the update starts from zero statistics and is divided by the
  momentum, so the result does not depend on the momentum's blend with the old values. ``num_batches_tracked``
  stays as it was.
- **Deterministic**: the same videos, CSV, settings and seed give the same variables (and checksum), so a
  resumed run and ``l2l-predict --calibration`` compute the same.

Weights read from ``--weights_video_model`` are never calibrated (`calibrate_video_model` refuses them).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np

from l2l_jax.errors import ConfigError
from l2l_jax.video import video_networks as V
from l2l_jax.video.decode import MAX_SECONDS, DecodeError
from l2l_jax.video.labels import Entry
from l2l_jax.video.video_clips import ClipConfig, VideoModel, decode_with_clips, normalise

#: clips of the calibration pass at most (as many as VisualNet's and AudioNet's calibration takes)
MAX_CLIPS = 64
#: frames x pixels of the calibration pass at most: 32 clips of 16 frames at 112 x 112 (torchvision's size)
PIXEL_BUDGET = 32 * 16 * 112 * 112


def clip_budget(cfg: ClipConfig, clips: int = MAX_CLIPS) -> int:
    """How many clips the calibration pass takes: `clips`, fewer when they would hold more than `PIXEL_BUDGET`
    frame pixels (at least one)."""
    return max(1, min(clips, PIXEL_BUDGET // (cfg.frames * cfg.crop * cfg.crop)))


def first_video_clips(videos: Path, entries: Sequence[Entry], clips: int, cfg: ClipConfig, *,
                      max_seconds: float = MAX_SECONDS) -> np.ndarray:
    """(N, frames, crop, crop, 3) float32 in [0, 1], N <= `clips`: the video model's clips of the first decodable
    videos of `entries`, in their order (a video that cannot be decoded is passed over)."""
    got: list[np.ndarray] = []
    n = 0
    for e in entries:
        if n >= clips:
            break
        try:
            _, c = decode_with_clips(videos / e.video, cfg, max_seconds=max_seconds)
        except DecodeError:
            continue
        got.append(c[:clips - n])
        n += len(got[-1])
    if not got:
        raise ConfigError("--calibrate_bn: none of the labelled videos could be decoded")
    return np.concatenate(got)


def batch_statistics(net: V.VideoResNet, variables: dict, x: np.ndarray) -> dict:
    """`variables` with every BatchNorm3d's running mean and variance := the statistics of its input in one
    train-mode pass over `x` (normalised clips): the momentum update from zero statistics, divided by the
    momentum. ``num_batches_tracked`` is kept."""
    m = V.BatchNorm3d.momentum
    zero = jax.tree_util.tree_map_with_path(
        lambda p, v: v if p[-1].key == "num_batches_tracked" else np.zeros_like(v), variables["batch_stats"])
    _, upd = jax.jit(lambda v, x: net.apply(v, x, train=True, mutable=["batch_stats"]))(
        {**variables, "batch_stats": zero}, x)

    def fix(path, new, old):
        if path[-1].key == "num_batches_tracked":
            return np.asarray(old)
        return (np.asarray(new, np.float64) / np.float64(np.float32(m))).astype(np.float32)

    return {**variables, "batch_stats": jax.tree_util.tree_map_with_path(fix, upd["batch_stats"],
                                                                          variables["batch_stats"])}


def calibrate_video_model(videos: Path, entries: Sequence[Entry], model: VideoModel, cfg: ClipConfig, *,
                          clips: int = MAX_CLIPS, max_seconds: float = MAX_SECONDS) -> tuple[VideoModel, int]:
    """A random `model` (no ``--weights_video_model``) with every BatchNorm3d's statistics from the first
    `clip_budget` clips of `entries`' videos (module docstring). Returns (the calibrated model, clips used);
    the input model is not changed."""
    if model.weights_sha256 is not None:
        raise ValueError("--calibrate_bn never changes the statistics of --weights_video_model's network")
    x = first_video_clips(videos, entries, clip_budget(cfg, clips), cfg, max_seconds=max_seconds)
    net = V.video_resnet(model.arch, model.num_classes)
    variables = batch_statistics(net, model.variables, np.asarray(normalise(x, cfg)))
    desc = f"{model.description}, BatchNorm statistics from {len(x)} clips"
    return dataclasses.replace(model, variables=variables, description=desc), len(x)


def calibration_record(clips: int, cfg: ClipConfig) -> dict:
    """What ``extract.json`` records of a calibrated video network (its ``video_calibration``)."""
    return {"clips": clips, "max_clips": clip_budget(cfg),
            "rule": "train-mode BatchNorm statistics of the first clips of the labels CSV's decodable videos"}


__all__ = ["MAX_CLIPS", "PIXEL_BUDGET", "batch_statistics", "calibrate_video_model", "calibration_record",
           "clip_budget", "first_video_clips"]
