"""VisualNet and AudioNet variables for `l2l-extract` and `l2l-distill`: from torchvision's ImageNet resnet18,
freshly drawn on the host, or with BatchNorm statistics calibrated on the data.

- `load_networks`: ``--weights_resnet18 PTH`` (read with the safe loader; a tensor holding NaN or infinity is
  refused before any work) gives VisualNet and the ImageNet-initialised AudioNet upstream builds (its new layers
  drawn from the seed); without weights both networks are drawn fresh (`fresh_variables`) and a
  `RandomWeightsWarning` says that such features are for testing only.
- `calibrate_batchnorm`: ``--calibrate_bn`` (random networks only): every BatchNorm's statistics from a
  train-mode pass over the first clips of the labels CSV, so random networks give features that vary with the
  content.
"""

from __future__ import annotations

import collections
import dataclasses
import warnings
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np

from l2l_jax.errors import ConfigError, WeightsError
from l2l_jax.integrity import tensor_checksum
from l2l_jax.torch_names import set_path
from l2l_jax.video import audio as A
from l2l_jax.video import convert as C
from l2l_jax.video import frames as F
from l2l_jax.video import networks as N
from l2l_jax.video.decode import MAX_SECONDS, DecodeError, decode_video
from l2l_jax.video.labels import Entry


class RandomWeightsWarning(UserWarning):
    """The networks are freshly initialised: their features are for testing only."""


@dataclasses.dataclass
class Networks:
    """VisualNet and AudioNet variables, and where they came from (for the report and the manifest)."""

    visual: dict
    audio: dict
    description: str
    weights_sha256: str | None  # tensor checksum of --weights_resnet18's state dict; None: random networks


def load_networks(weights_resnet18: str | None, seed: int) -> Networks:
    """The networks from ``--weights_resnet18`` (refused when a tensor is not finite, before any work) or
    freshly initialised from `seed` (with a `RandomWeightsWarning`)."""
    if weights_resnet18:
        if not Path(weights_resnet18).is_file():
            what = "is not a file" if Path(weights_resnet18).exists() else "no such file"
            raise ConfigError(f"--weights_resnet18 {weights_resnet18}: {what}")
        sd = C.read_resnet18(weights_resnet18)
        bad = [k for k, v in sd.items() if k not in C.RESNET18_HEAD and np.issubdtype(v.dtype, np.floating)
               and not np.isfinite(v).all()]
        if bad:
            raise WeightsError(f"--weights_resnet18 {weights_resnet18}: {len(bad)} tensor(s) hold NaN or infinity "
                               f"({', '.join(bad[:4])}{', ...' if len(bad) > 4 else ''}), which would make every "
                               "feature non-finite; use intact weights")
        what = f"--weights_resnet18 {weights_resnet18}"
        visual = C.visualnet_from_state_dict(sd, "torchvision", what=what)
        audio = C.audionet_from_resnet18(sd, seed, what=what)
        checksum = tensor_checksum({k: v for k, v in sd.items() if k not in C.RESNET18_HEAD})
        return Networks(visual, audio, f"ImageNet resnet18 from {weights_resnet18} (AudioNet's new layers: seed "
                        f"{seed})", checksum)
    warnings.warn("no --weights_resnet18: VisualNet and AudioNet are freshly initialised (seed "
                  f"{seed}); features from random networks are for testing only", RandomWeightsWarning,
                  stacklevel=2)
    visual = fresh_variables("visualnet", seed)
    audio = fresh_variables("audionet", seed + 1)
    return Networks(visual, audio, f"random (seed {seed}; testing only)", None)


def network_weights(weights_resnet18: str | None, seed: int) -> tuple[dict, dict, str]:
    """(VisualNet variables, AudioNet variables, description): `load_networks` as a tuple."""
    n = load_networks(weights_resnet18, seed)
    return n.visual, n.audio, n.description


def fresh_variables(net: str, seed: int) -> dict:
    """Freshly initialised variables of `net` ("visualnet" or "audionet"), drawn on the host with numpy (no
    compilation; ``networks.init_variables`` compiles a forward pass, tens of seconds on a CPU): the trunk's
    convolutions as torchvision's resnet init (``kaiming_normal_(mode="fan_out")``: N(0, 2 / (k * k * out))),
    BatchNorm scale 1, bias 0, running mean 0, var 1; AudioNet's new layers as upstream draws them
    (`networks.new_audio_layers`). Seeded: the same seed gives the same values."""
    rng = np.random.default_rng(seed)
    variables: dict = {"params": {}, "batch_stats": {}}
    for key, collection, path, kind, shape in C.entries(net, "torchvision"):
        if kind == "conv":
            o, i, kh, kw = shape
            value = (rng.standard_normal((kh, kw, i, o)) * np.sqrt(2.0 / (kh * kw * o))).astype(np.float32)
        elif kind == "count":
            value = np.zeros((), np.int32)
        elif key.endswith(("weight", "running_var")):
            value = np.ones(shape, np.float32)
        else:
            value = np.zeros(shape, np.float32)
        set_path(variables[collection], path, value)
    if net == "audionet":
        new = N.new_audio_layers(seed)
        variables["params"]["resnet"]["conv1"] = {"kernel": np.asarray(new["conv1"]["kernel"])}
        variables["params"]["freq_conv1x1"] = {k: np.asarray(v) for k, v in new["freq_conv1x1"].items()}
    return variables


def _first_clips(videos: Path, entries: Sequence[Entry], clips: int, max_seconds: float
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(frames, waveforms) of up to `clips` clips of the first decodable videos of `entries`, in their order;
    the frames of the most common frame size only."""
    frames_by_shape: dict[tuple, list] = collections.defaultdict(list)
    waves = []
    for e in entries:
        if len(waves) >= clips:
            break
        try:
            v = decode_video(videos / e.video, max_seconds=max_seconds)
        except DecodeError:
            continue
        frames_by_shape[v.frames.shape[1:]].append(v.frames)
        waves.append(v.audio)
    if not waves:
        raise ConfigError("--calibrate_bn: none of the labelled videos could be decoded")
    shape = max(frames_by_shape, key=lambda k: sum(len(f) for f in frames_by_shape[k]))
    return np.concatenate(frames_by_shape[shape])[:clips], np.concatenate(waves)[:clips]


def _calibrated(net, variables: dict, x: np.ndarray) -> dict:
    """`variables` with every BatchNorm's running statistics := the batch statistics of `x` (train mode)."""
    m = N.BatchNorm2d.momentum
    _, upd = jax.jit(lambda v, x: net.apply(v, x, train=True, mutable=["batch_stats"]))(variables, x)

    def fix(path, new, old):
        name = path[-1].key
        if name == "num_batches_tracked":
            return np.asarray(old)
        return np.asarray((np.asarray(new) - (1.0 - m) * np.asarray(old)) / m, np.float32)

    stats = jax.tree_util.tree_map_with_path(fix, upd["batch_stats"], variables["batch_stats"])
    return {**variables, "batch_stats": stats}


def calibrate_batchnorm(videos: Path, entries: Sequence[Entry], visual: dict, audio: dict, *, frame_size: int,
                        crop: int, clips: int = 64, max_seconds: float = MAX_SECONDS) -> tuple[dict, dict, int]:
    """``--calibrate_bn`` (random networks only): every BatchNorm's running mean and variance := the statistics
    of a train-mode forward pass over the clips of the first videos of the labels CSV (in its order, up to
    `clips` clips; deterministic, so a resumed run computes the same). A data-dependent initialisation: random
    networks whose normalisation fits the data give features that vary with the content instead of a large
    constant. Returns (visual, audio, clips used)."""
    frames, wave = _first_clips(videos, entries, clips, max_seconds)
    cfg = F.FrameConfig(resize=frame_size, crop=crop)
    visual = _calibrated(N.VisualNet(), visual, np.asarray(F.preprocess_frames(frames, cfg)))
    audio = _calibrated(N.AudioNet(), audio, np.asarray(A.log_mel_spectrogram(wave)))
    return visual, audio, len(wave)


__all__ = ["Networks", "RandomWeightsWarning", "calibrate_batchnorm", "fresh_variables", "load_networks",
           "network_weights"]
