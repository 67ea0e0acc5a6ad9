"""The video model of ``l2l-extract --video_model``: 16-frame clips of every 1 s clip, torchvision's video
preprocessing, and a jitted torchvision video ResNet (`l2l_jax.video.video_networks`) giving each clip's
features and logits.

- **Sampling** (ours): clip k (``[k, k + 1)`` s of the video's time line, as `l2l_jax.video.decode` cuts it)
  takes ``frames`` (16) frames at ``k + j / 16`` s, j = 0..15: the frame shown at that time (the last decoded
  frame at or before it, 1 ms tolerance; a gap or a low frame rate repeats a frame, times past the last frame
  repeat it). `decode_with_clips` reads them in the same single pass over the file that gives the image
  frames and the audio (`DecodedVideo`).
- **Preprocessing**, torchvision's Kinetics evaluation transform as its video training preset applies it (the
  frames converted to float first): shorter side resized to ``resize`` (128; the longer side
  ``int(128 * long / short)``, torchvision's ``Resize`` rule: (128, 170) for 4:3 video, where torchvision's
  Kinetics transform fixes (128, 171)) with bilinear interpolation without antialiasing (torch's
  ``interpolate(mode="bilinear", align_corners=False, antialias=False)``, which torchvision's video transforms
  hard-code), a ``crop`` (112) centre crop (torchvision's offsets), values in [0, 1], normalised with
  Kinetics' mean (0.43216, 0.394666, 0.37645) and std (0.22803, 0.22145, 0.216989). Resizing and cropping
  happen in the decoding threads (`ResizeCrop`: two taps per output row and column, so a video's clips take
  (T, 16, 112, 112, 3) float32 of host memory, not its full-size frames); normalising runs inside the jitted
  forward (`VideoExtractor`).
- **Networks** (`load_video_model`): ``--weights_video_model PTH`` (a torchvision state dict of the chosen
  architecture, read weights-only by the reader ``--weights_resnet18`` uses; the class count from its ``fc``)
  or freshly drawn on the host from the seed (torchvision's init; a `RandomWeightsWarning`).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from l2l_jax import numerics, variants
from l2l_jax.errors import ConfigError, WeightsError
from l2l_jax.integrity import tensor_checksum
from l2l_jax.torch_names import set_path
from l2l_jax.video import convert as C
from l2l_jax.video import decode as D
from l2l_jax.video import video_convert as VC
from l2l_jax.video import video_networks as V
from l2l_jax.video.frames import center_crop_offsets, resized_size
from l2l_jax.video.trunks import RandomWeightsWarning

VIDEO_MODELS = ("r3d_18", "mc3_18", "r2plus1d_18")
KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)
#: the video model's clip features: the folder the single-modality variant reads (upstream's name for it)
VIDEO_DIR = variants.SINGLE.feature_dirs[0]
#: the video model's clip logits, one file per video: what ``l2l-distill --teacher`` reads
LOGITS_DIR = "video_logits"


@dataclasses.dataclass(frozen=True)
class ClipConfig:
    """How a 1 s clip becomes the video model's input (module docstring)."""

    frames: int = 16
    resize: int = 128  # the shorter side after resizing
    crop: int = 112
    mean: tuple[float, float, float] = KINETICS_MEAN
    std: tuple[float, float, float] = KINETICS_STD

    def __post_init__(self):
        if self.crop > self.resize or min(self.frames, self.crop) < 1:
            raise ValueError(f"clip settings frames {self.frames}, resize {self.resize}, crop {self.crop}: need "
                             "1 <= crop <= resize and at least one frame")

    def record(self) -> dict:
        """The settings as the manifest records them."""
        return {**dataclasses.asdict(self), "mean": list(self.mean), "std": list(self.std),
                "sampling": "frames evenly spaced in each 1 s clip, the frame shown at k + j / frames s",
                "resize_rule": "shorter side, bilinear, no antialias, float", "crop_rule": "centre"}


DEFAULT = ClipConfig()


# ------------------------------------------------------------------------------------------------ preprocessing


def bilinear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i0, i1, lam) of torch's 1-D bilinear resize (``align_corners=False``, no antialias): output i is
    ``(1 - lam) * x[i0] + lam * x[i1]`` at the source index ``(i + 0.5) * n_in / n_out - 0.5``, clamped at 0
    and at the last input; computed in float32 as torch's CPU kernel computes it, the source index rounded once
    (a fused multiply-add: its rounding moves a weight by up to 1e-4 on large frames)."""
    scale = float(np.float32(n_in) / np.float32(n_out))
    src = np.maximum((scale * (np.arange(n_out) + 0.5) - 0.5).astype(np.float32), np.float32(0.0))
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    lam = np.clip(src - i0.astype(np.float32), 0.0, 1.0).astype(np.float32)
    return i0, np.minimum(i0 + 1, n_in - 1), lam


class ResizeCrop:
    """Frames of one size (H, W) -> the crop of their resized version, float32 in [0, 1] (module docstring).
    Only the rows and columns the crop needs are read (two taps each), so a large frame costs little more
    than its conversion to RGB."""

    def __init__(self, height: int, width: int, cfg: ClipConfig = DEFAULT):
        nh, nw = resized_size(height, width, cfg.resize)
        top, left = center_crop_offsets(nh, nw, cfg.crop)
        r0, r1, rl = (a[top:top + cfg.crop] for a in bilinear_taps(height, nh))
        c0, c1, cl = (a[left:left + cfg.crop] for a in bilinear_taps(width, nw))
        self.rows, self.cols = (r0, r1), (c0, c1)
        one = np.float32(1.0)
        self.row_w = ((one - rl)[:, None], rl[:, None])
        self.col_w = ((one - cl)[None, :, None], cl[None, :, None])

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 RGB -> (crop, crop, 3) float32 in [0, 1]."""
        h, w, _ = frame.shape
        flat = frame.reshape(h, w * 3)

        def rows(i):  # the needed rows only, then to [0, 1]
            return flat[i].astype(np.float32) / np.float32(255.0)

        x = rows(self.rows[0]) * self.row_w[0] + rows(self.rows[1]) * self.row_w[1]  # (crop, W * 3)
        x = x.reshape(len(x), w, 3)
        return x[:, self.cols[0]] * self.col_w[0] + x[:, self.cols[1]] * self.col_w[1]


def normalise(clips, cfg: ClipConfig = DEFAULT):
    """(..., 3) values in [0, 1] -> Kinetics-normalised (jnp; jit-able)."""
    return (clips - jnp.asarray(cfg.mean, jnp.float32)) / jnp.asarray(cfg.std, jnp.float32)


def preprocess_clip(frames: np.ndarray, cfg: ClipConfig = DEFAULT) -> np.ndarray:
    """(N, H, W, 3) uint8 RGB frames -> (N, crop, crop, 3) float32, resized, cropped and normalised: what the
    video model sees (`ResizeCrop` then `normalise`)."""
    rc = ResizeCrop(frames.shape[1], frames.shape[2], cfg)
    return np.asarray(normalise(np.stack([rc(f) for f in frames]), cfg))


# ------------------------------------------------------------------------------------------------ decoding


@dataclasses.dataclass
class _ClipTrack(D._VideoTrack):
    """`decode`'s video track that also keeps, for every sample time ``i / frames_per_clip`` (in clips), the
    resized and cropped frame shown then."""

    cfg: ClipConfig = DEFAULT
    samples: list[np.ndarray] = dataclasses.field(default_factory=list)
    held: object = None  # the last decoded frame (PyAV), shown from its time on
    held_array: np.ndarray | None = None  # its preprocessed version, once a sample took it
    resize_crop: Callable | None = None

    def add(self, frame) -> None:
        super().add(frame)  # timing, the image frames, the --max_seconds refusal
        self.fill_until(self.prev_t)
        if (frame.width, frame.height) != self.size:
            frame = frame.reformat(width=self.size[0], height=self.size[1])
        self.held, self.held_array = frame, None

    def fill_until(self, t: float) -> None:
        """Every sample time before `t` (less the tolerance) takes the frame shown then (the held one)."""
        step = self.clip_seconds / self.cfg.frames
        while self.held is not None and len(self.samples) * step < t - D.TIME_TOLERANCE:
            if self.held_array is None:
                if self.resize_crop is None:
                    self.resize_crop = ResizeCrop(self.size[1], self.size[0], self.cfg)
                self.held_array = self.resize_crop(self.held.to_ndarray(format="rgb24"))
            self.samples.append(self.held_array)

    def clips(self, num_clips: int) -> np.ndarray:
        """(num_clips, frames, crop, crop, 3) float32 in [0, 1]: the frames after the last one repeat it."""
        self.fill_until(num_clips * self.clip_seconds)
        n = num_clips * self.cfg.frames
        return np.stack(self.samples[:n]).reshape(num_clips, self.cfg.frames, self.cfg.crop, self.cfg.crop, 3)


def decode_with_clips(path: str | os.PathLike, cfg: ClipConfig = DEFAULT, *, clip_seconds: float = 1.0,
                      sample_rate: int = 16000, threads: bool = True,
                      max_seconds: float = D.MAX_SECONDS) -> tuple[D.DecodedVideo, np.ndarray]:
    """`decode.decode_video` (the same frames, audio, clip count and refusals) and, from the same pass, the
    video model's clips (T, frames, crop, crop, 3) float32 in [0, 1] (module docstring)."""
    decoded, video, num_clips = D.decode_with_track(path, clip_seconds=clip_seconds, sample_rate=sample_rate,
                                                    threads=threads, max_seconds=max_seconds,
                                                    track=functools.partial(_ClipTrack, cfg=cfg))
    return decoded, video.clips(num_clips)


# ------------------------------------------------------------------------------------------------ networks


@dataclasses.dataclass
class VideoModel:
    """A video network's variables and where they came from (for the report and the manifest)."""

    arch: str
    variables: dict
    num_classes: int
    description: str
    weights_sha256: str | None  # tensor checksum of --weights_video_model's state dict; None: random

    @property
    def networks_sha256(self) -> str:
        return tensor_checksum(self.variables)


def fresh_video_variables(arch: str, seed: int, num_classes: int = V.NUM_CLASSES) -> dict:
    """Freshly initialised variables of `arch`, drawn on the host with numpy (``video_networks.init_variables``
    compiles a forward pass, tens of seconds on a CPU), as torchvision initialises a VideoResNet: convolutions
    ``kaiming_normal_(mode="fan_out")`` (N(0, 2 / (out * kT * kH * kW))), BatchNorm scale 1, bias 0, running mean
    0, var 1, ``fc`` N(0, 0.01²) and bias 0. Seeded; a stream of its own (not VisualNet's or AudioNet's)."""
    rng = np.random.default_rng([2, seed])
    variables: dict = {"params": {}, "batch_stats": {}}
    for key, collection, path, kind, shape in VC.entries(arch, num_classes):
        if kind == "conv":
            o, i, kt, kh, kw = shape
            value = rng.standard_normal((kt, kh, kw, i, o)) * np.sqrt(2.0 / (o * kt * kh * kw))
        elif kind == "linear":
            value = rng.standard_normal(shape[::-1]) * 0.01
        elif kind == "count":
            value = np.zeros((), np.int32)
        elif key.endswith(("weight", "running_var")):
            value = np.ones(shape)
        else:
            value = np.zeros(shape)
        set_path(variables[collection], path, value if kind == "count" else value.astype(np.float32))
    return variables


def load_video_model(arch: str, weights: str | None, seed: int) -> VideoModel:
    """``--video_model arch`` from ``--weights_video_model`` (torchvision's names, strict; the class count from
    its ``fc``; refused when a tensor is not finite, before any work) or freshly initialised from `seed` (with a
    `RandomWeightsWarning`)."""
    if arch not in VIDEO_MODELS:
        raise ConfigError(f"--video_model {arch}: expected one of {', '.join(VIDEO_MODELS)}")
    if not weights:
        warnings.warn(f"no --weights_video_model: {arch} is freshly initialised (seed {seed}); features and logits "
                      "from a random network are for testing only", RandomWeightsWarning, stacklevel=2)
        return VideoModel(arch, fresh_video_variables(arch, seed), V.NUM_CLASSES,
                          f"{arch} random (seed {seed}; testing only)", None)
    what = f"--weights_video_model {weights}"
    if not Path(weights).is_file():
        raise ConfigError(f"{what}: {'is not a file' if Path(weights).exists() else 'no such file'}")
    sd = C.read_resnet18(weights)  # the safe reader of --weights_resnet18: weights-only, any torchvision net
    fc = sd.get("fc.weight")
    num_classes = int(fc.shape[0]) if fc is not None and np.ndim(fc) == 2 and fc.shape[0] >= 1 else V.NUM_CLASSES
    variables = VC.from_state_dict(sd, arch, num_classes, what=what)
    bad = [k for k, v in sd.items() if np.issubdtype(np.asarray(v).dtype, np.floating) and not np.isfinite(v).all()]
    if bad:
        raise WeightsError(f"{what}: {len(bad)} tensor(s) hold NaN or infinity ({', '.join(bad[:4])}"
                           f"{', ...' if len(bad) > 4 else ''}); use intact weights")
    return VideoModel(arch, variables, num_classes, f"{arch} from {weights} ({num_classes} classes)",
                      tensor_checksum(sd))


def video_forward(arch: str, num_classes: int, precision: str, cfg: ClipConfig = DEFAULT) -> Callable:
    """The (not yet jitted) forward of ``l2l-extract --video_model``: (variables, clips in [0, 1]) -> (features,
    logits), normalising inside (what `VideoExtractor` jits and ``benchmarks/aot.py`` compiles)."""
    net = V.video_resnet(arch, num_classes, numerics.get(precision))

    def forward(variables, clips):
        return net.apply(variables, normalise(clips, cfg), with_features=True)

    return forward


class VideoExtractor:
    """A video network, jitted and data-parallel over `jax.devices()`: `__call__(clips)` takes a host batch of
    exactly `batch_size` clips (B, frames, crop, crop, 3) in [0, 1] and returns device arrays (features
    (B, 512), logits (B, num_classes)); normalisation runs inside the jitted forward."""

    def __init__(self, model: VideoModel, *, batch_size: int, cfg: ClipConfig = DEFAULT,
                 precision: str = numerics.DEFAULT.name, devices=None):
        devices = list(devices if devices is not None else jax.devices())
        n = len(devices)
        self.batch_size = -(-batch_size // n) * n
        self.cfg = cfg
        mesh = Mesh(np.array(devices), ("data",))
        self.data = NamedSharding(mesh, P("data"))
        self.variables = jax.device_put(model.variables, NamedSharding(mesh, P()))
        self.num_classes = model.num_classes
        forward = video_forward(model.arch, model.num_classes, precision, cfg)
        self._forward = jax.jit(forward, out_shardings=(self.data, self.data))

    def __call__(self, clips: np.ndarray) -> tuple[jax.Array, jax.Array]:
        return self._forward(self.variables, jax.device_put(clips, self.data))


__all__ = ["DEFAULT", "KINETICS_MEAN", "KINETICS_STD", "LOGITS_DIR", "VIDEO_DIR", "VIDEO_MODELS", "ClipConfig",
           "ResizeCrop", "VideoExtractor", "VideoModel", "bilinear_taps", "decode_with_clips",
           "fresh_video_variables", "load_video_model", "normalise", "preprocess_clip", "video_forward"]
