"""An embedded synthetic dataset in upstream's layout, for running everything without downloads (the library of
`l2l-synth`, whose program is `l2l_jax.programs.synth`).

`l2l-synth --out DIR [--preset tiny|default] [--seed N]` writes `DIR/train.pkl`, `DIR/val.pkl` (upstream's
`(feature_paths, labels)`, paths relative to DIR: `imageAudio_features/<name>.npy`), the per-video features
`image_features/`, `audio_features/`, `imageAudio_features/`, `r2plus1d152_features/` (each (T, 512), non-negative),
and `segments.json` (the ground truth below, to check where a policy looks). Same seed, same bytes.

Generative model (all vectors 512-wide; N = standard normal; features are ReLU of a pre-activation):
- Classes c = 0..C-1 fall into G groups of similar classes. Each group has an image prototype and an audio
  prototype; a class's image prototype shares `rho_image` of its variance with its group's (classes of a group
  are confusable), its audio prototype `rho_audio` (audio mostly tells the group, little about the class).
- S background scenes, each with an image and an audio prototype, shared by all classes; a class prefers 2
  scenes (a video draws one of them with probability `scene_affinity`, else any scene), so the background
  carries only weak evidence about the class.
- A video of class c has T ~ round(LogNormal(log(len_median), len_sigma)) clipped to [len_min, len_max] clips.
  Background pre-activation at clip t: scene prototype + slow drift (an AR(1) process, coefficient 0.9, on a
  rank-4 basis) + N * `noise`, separately for image and audio.
- One class-specific segment (two, with probability 1/2, when T >= 24) of 2-4 clips: inside it the image
  pre-activation adds `alpha` * the class's image prototype. The audio adds `beta` * env(t) * the class's
  audio prototype, env(t) = exp(-d^2 / (2 w^2)), d the distance from t to the segment, w = 1.5 * its length:
  audio announces the segment over a wider window than the image shows it, which is what a preview can use.
- Distractors: 1-`max_distractors` segments (T >= 12) that show, in the image only and equally strongly, another
  class of the same group; they are silent, so only the audio tells the true segment from a distractor.
- Consequently few clips carry the class: averaging 10 uniformly spaced clips dilutes or misses the segment and
  mixes in distractors, while the right 10 clips (the segments and the clips next to them) hold it. Measured
  on `default` (seed 0) with a logistic regression on the mean image+audio feature of 10 clips, val accuracy:
  uniformly spaced 0.60, random 0.61, all clips 0.67, the right 10 (segment clips, then nearest) 0.91;
  chance 0.05. The signals are weak per clip (alpha, beta << noise * sqrt(512)) so that they only add up
  over the clips that carry them.
- `imageAudio` = ReLU((image_pre + audio_pre) / sqrt 2) (a stand-in for the fusion net's output, which upstream
  never reads) and `r2plus1d152` = ReLU(0.8 image_pre + 0.4 audio_pre + 0.3 N) (the single variant's input).
Features are stored as float32 (`tiny`) or float16 (`default`, half the bytes; upstream converts to float32).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from l2l_jax import variants

from .index import write_index

WIDTH = 512
DIRS = variants.FEATURE_DIRS  # every folder the dataset has (the two variants' and the fused features')
IMAGE_DIR, AUDIO_DIR = variants.TWO.feature_dirs
(SINGLE_DIR,) = variants.SINGLE.feature_dirs


@dataclass(frozen=True)
class SynthConfig:
    """Knobs of the generative model (see the module docstring)."""

    num_classes: int = 20
    num_groups: int = 5
    num_scenes: int = 8
    num_train: int = 1200
    num_val: int = 400
    len_median: float = 28.0
    len_sigma: float = 0.9
    len_min: int = 3
    len_max: int = 480
    rho_image: float = 0.6
    rho_audio: float = 0.85
    scene_affinity: float = 0.5
    alpha: float = 0.3
    beta: float = 0.4
    max_distractors: int = 2
    noise: float = 1.0
    dtype: str = "float16"


PRESETS: dict[str, SynthConfig] = {
    "default": SynthConfig(),
    "tiny": SynthConfig(num_classes=6, num_groups=2, num_scenes=4, num_train=64, num_val=24, len_median=16.0,
                        len_sigma=0.8, len_max=260, dtype="float32"),
    # ActivityNet-sized: 200 classes, T ~ LogNormal(median 120, sigma 0.5) in [10, 700] (the benchmarks' data)
    "activitynet": SynthConfig(num_classes=200, num_groups=20, num_scenes=40, num_train=2048, num_val=1024,
                               len_median=120.0, len_sigma=0.5, len_min=10, len_max=700),
}


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True) * math.sqrt(x.shape[-1])


@dataclass
class _World:
    scene_img: np.ndarray
    scene_aud: np.ndarray
    class_img: np.ndarray
    class_aud: np.ndarray
    class_scenes: np.ndarray
    drift_img: np.ndarray
    drift_aud: np.ndarray


def _world(cfg: SynthConfig, seed: int) -> _World:
    rng = np.random.default_rng([seed, 0])
    n = lambda *s: rng.standard_normal(s)  # noqa: E731
    group_of = np.arange(cfg.num_classes) % cfg.num_groups
    g_img, g_aud = _unit(n(cfg.num_groups, WIDTH)), _unit(n(cfg.num_groups, WIDTH))
    class_img = _unit(math.sqrt(cfg.rho_image) * g_img[group_of]
                      + math.sqrt(1 - cfg.rho_image) * _unit(n(cfg.num_classes, WIDTH)))
    class_aud = _unit(math.sqrt(cfg.rho_audio) * g_aud[group_of]
                      + math.sqrt(1 - cfg.rho_audio) * _unit(n(cfg.num_classes, WIDTH)))
    class_scenes = np.stack([rng.choice(cfg.num_scenes, 2, replace=False) for _ in range(cfg.num_classes)])
    return _World(_unit(n(cfg.num_scenes, WIDTH)), _unit(n(cfg.num_scenes, WIDTH)), class_img, class_aud,
                  class_scenes, n(4, WIDTH) * 0.5, n(4, WIDTH) * 0.5)


def _drift(rng: np.random.Generator, T: int, basis: np.ndarray) -> np.ndarray:
    eps = rng.standard_normal((T, basis.shape[0]))
    z = np.empty_like(eps)
    z[0] = eps[0]
    for t in range(1, T):
        z[t] = 0.9 * z[t - 1] + math.sqrt(1 - 0.81) * eps[t]
    return z @ basis


def _place(rng: np.random.Generator, T: int, k: int, taken: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Up to k segments of 2-4 clips, at least 2 clips away from each other and from `taken`."""
    segs: list[tuple[int, int]] = []
    for _ in range(100):
        if len(segs) == k:
            break
        n = min(int(rng.integers(2, 5)), T)
        s = int(rng.integers(0, T - n + 1))
        if all(s + n + 2 <= a or b + 2 <= s for a, b in segs + taken):
            segs.append((s, s + n))
    return sorted(segs)


def make_video(cfg: SynthConfig, world: _World, label: int, rng: np.random.Generator) -> dict:
    """One video: its four feature arrays (float32) and its ground truth (length, scene, segments)."""
    T = int(np.clip(round(rng.lognormal(math.log(cfg.len_median), cfg.len_sigma)), cfg.len_min, cfg.len_max))
    if rng.random() < cfg.scene_affinity:
        scene = int(world.class_scenes[label, rng.integers(0, 2)])
    else:
        scene = int(rng.integers(0, cfg.num_scenes))
    img = world.scene_img[scene] + _drift(rng, T, world.drift_img) + cfg.noise * rng.standard_normal((T, WIDTH))
    aud = world.scene_aud[scene] + _drift(rng, T, world.drift_aud) + cfg.noise * rng.standard_normal((T, WIDTH))
    segs = _place(rng, T, 2 if T >= 24 and rng.random() < 0.5 else 1, [])
    n_distract = int(rng.integers(1, cfg.max_distractors + 1)) if T >= 12 else int(T >= 6 and rng.random() < 0.5)
    distract = _place(rng, T, n_distract if cfg.max_distractors else 0, segs)
    same_group = [c for c in range(label % cfg.num_groups, cfg.num_classes, cfg.num_groups) if c != label]
    distract_cls = [int(rng.choice(same_group)) if same_group else label for _ in distract]
    for (s, e), c in zip(distract, distract_cls, strict=True):
        img[s:e] += cfg.alpha * world.class_img[c]
    t = np.arange(T)
    env = np.zeros(T)
    for s, e in segs:
        img[s:e] += cfg.alpha * world.class_img[label]
        d = np.maximum(np.maximum(s - t, t - (e - 1)), 0)
        env = np.maximum(env, np.exp(-(d**2) / (2 * (1.5 * (e - s)) ** 2)))
    aud += cfg.beta * env[:, None] * world.class_aud[label]
    relu = lambda x: np.maximum(x, 0).astype(np.float32)  # noqa: E731
    feats = {
        IMAGE_DIR: relu(img),
        AUDIO_DIR: relu(aud),
        variants.TEMPLATE_DIR: relu((img + aud) / math.sqrt(2)),
        SINGLE_DIR: relu(0.8 * img + 0.4 * aud + 0.3 * rng.standard_normal((T, WIDTH))),
    }
    return {"features": feats, "length": T, "scene": scene, "segments": [list(x) for x in segs],
            "distractors": [[s, e, c] for (s, e), c in zip(distract, distract_cls, strict=True)]}


def generate(out: str | os.PathLike, *, preset: str = "default", seed: int = 0,
             config: SynthConfig | None = None, progress: bool = True) -> Path:
    """Write the dataset to `out`; returns the folder. `config` overrides the preset."""
    cfg = config if config is not None else PRESETS[preset]
    out = Path(out)
    for d in DIRS:
        (out / d).mkdir(parents=True, exist_ok=True)
    world = _world(cfg, seed)
    truth: dict = {"config": asdict(cfg), "seed": seed, "preset": preset}
    for split_id, (split, n) in enumerate((("train", cfg.num_train), ("val", cfg.num_val)), start=1):
        labels = np.random.default_rng([seed, split_id, 0]).permutation(np.arange(n) % cfg.num_classes)
        paths, videos = [], []
        for i in tqdm(range(n), desc=f"synth {split}", unit="video", disable=not progress, leave=False):
            name = f"v_{split}_{i:05d}"
            v = make_video(cfg, world, int(labels[i]), np.random.default_rng([seed, split_id, 1, i]))
            for d, x in v["features"].items():
                np.save(out / d / f"{name}.npy", x.astype(cfg.dtype))
            paths.append(f"{variants.TEMPLATE_DIR}/{name}.npy")
            videos.append({"name": name, "label": int(labels[i]), "length": v["length"], "scene": v["scene"],
                           "segments": v["segments"], "distractors": v["distractors"]})
        write_index(out / f"{split}.pkl", paths, labels.tolist())
        truth[split] = videos
    (out / "segments.json").write_text(json.dumps(truth))
    return out
