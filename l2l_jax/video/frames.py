"""Image preprocessing for `l2l_jax.video.networks.VisualNet`, in JAX (jit-able, batched).

Upstream never published how it chose or prepared the frames, so these settings are **ours**, each a field of
`FrameConfig`: one frame per 1 s clip (the clip's first frame: chosen by the caller); the shorter side resized
to 256 with bilinear interpolation (antialiased when shrinking, like PIL's ``Image.BILINEAR`` that torchvision's
``Resize(256)`` uses on PIL images; the longer side becomes ``int(256 * long / short)``, torchvision's rule);
a 224 x 224 centre crop (torchvision's ``CenterCrop`` offsets, ``int(round((size - 224) / 2))``); values
scaled to [0, 1] and normalised with ImageNet's mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225).

The pipeline it mirrors is torchvision's ``Compose([Resize(256), CenterCrop(224), ToTensor(),
Normalize(mean, std)])`` on a PIL image. Differences: the resize runs in float32 on [0, 1] values
(`jax.image.resize`, triangle kernel), while PIL resamples 8-bit images in two passes, rounding to 8 bits
after each; the results differ by about one 8-bit level at most (tests/test_video_networks.py bounds it).

Input: (N, H, W, 3) RGB frames of one video (uint8 0..255, or float in [0, 1]); output (N, 224, 224, 3)
float32, NHWC, what VisualNet takes.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class FrameConfig:
    """The frame preprocessing settings (ours; see the module docstring)."""

    resize: int = 256  # the shorter side after resizing
    crop: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    antialias: bool = True

    def __post_init__(self):
        if self.crop > self.resize:
            raise ValueError(f"crop {self.crop} is larger than the resized shorter side {self.resize}")


DEFAULT = FrameConfig()


def resized_size(height: int, width: int, size: int = DEFAULT.resize) -> tuple[int, int]:
    """(height, width) after resizing the shorter side to `size` (torchvision's ``Resize(size)`` rule)."""
    if height <= width:
        return size, int(size * width / height)
    return int(size * height / width), size


def center_crop_offsets(height: int, width: int, crop: int = DEFAULT.crop) -> tuple[int, int]:
    """(top, left) of torchvision's ``CenterCrop(crop)``."""
    return int(round((height - crop) / 2.0)), int(round((width - crop) / 2.0))


def preprocess_frames(frames: Array, cfg: FrameConfig = DEFAULT) -> Array:
    """(N, H, W, 3) RGB frames (uint8, or float in [0, 1]) -> (N, crop, crop, 3) float32, normalised.

    Jit-able with `cfg` static (``jax.jit(preprocess_frames, static_argnums=1)``); H and W are static shapes."""
    x = jnp.asarray(frames)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"preprocess_frames takes RGB frames (N, H, W, 3); got shape {x.shape}")
    x = x.astype(jnp.float32) / 255.0 if x.dtype == jnp.uint8 else x.astype(jnp.float32)
    n, h, w, _ = x.shape
    nh, nw = resized_size(h, w, cfg.resize)
    if (nh, nw) != (h, w):
        x = jax.image.resize(x, (n, nh, nw, 3), method="bilinear", antialias=cfg.antialias)
    top, left = center_crop_offsets(nh, nw, cfg.crop)
    x = x[:, top:top + cfg.crop, left:left + cfg.crop, :]
    return (x - jnp.asarray(cfg.mean, jnp.float32)) / jnp.asarray(cfg.std, jnp.float32)


def first_frame_indices(num_frames: int, fps: float, clip_seconds: float = 1.0) -> np.ndarray:
    """Index of each 1 s clip's first frame in a video of `num_frames` frames at `fps` (ours: one row per
    clip, clip k starting at k * clip_seconds): ``ceil(k * clip_seconds * fps)`` for every clip that starts
    before the video ends."""
    if fps <= 0 or clip_seconds <= 0:
        raise ValueError("fps and clip_seconds must be positive")
    duration = num_frames / fps
    starts = np.arange(int(np.ceil(duration / clip_seconds - 1e-9))) * clip_seconds
    idx = np.ceil(starts * fps - 1e-6).astype(np.int64)
    return idx[idx < num_frames]


__all__ = ["DEFAULT", "IMAGENET_MEAN", "IMAGENET_STD", "FrameConfig", "center_crop_offsets", "first_frame_indices",
           "preprocess_frames", "resized_size"]
