"""The extraction manifest ``ROOT/extract.json``: what it records about how the features in ROOT were made,
how a rerun's settings are compared with it, and the refusal that names every difference.

A rerun into the same ROOT resumes only when the manifest records the same settings; otherwise it is refused
(or, with ``--overwrite``, the old feature files are deleted: `remove_features`). The feature folders the
manifest speaks for are the two-modality variant's (`IMAGE_DIR`, `AUDIO_DIR`), the fused features'
(`TEMPLATE_DIR`), as `l2l_jax.variants` names them, and the ``--video_model``'s clip features (`VIDEO_DIR`, the
single-modality variant's folder) and logits (`LOGITS_DIR`). Without ``--video_model`` its keys are recorded as
null, so a manifest written before they existed reads as one without a video model; ``video_calibration`` (how
``--calibrate_bn`` set a random video network's BatchNorm statistics) is null too when it was not calibrated.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path

from l2l_jax import __version__, variants
from l2l_jax.errors import ConfigError, first_line
from l2l_jax.video import audio as A
from l2l_jax.video.video_clips import LOGITS_DIR, VIDEO_DIR

IMAGE_DIR, AUDIO_DIR = variants.TWO.feature_dirs
TEMPLATE_DIR = variants.TEMPLATE_DIR
MANIFEST = "extract.json"
MANIFEST_FORMAT = "l2l-extract features"
# what the feature values depend on (a difference means the old files are not what this run would write)
FEATURE_KEYS = ("weights_sha256", "seed", "calibrate_bn", "networks_sha256", "frame_size", "crop", "precision",
                "clip_seconds", "sample_rate", "log_mel", "video_model", "video_weights_sha256",
                "video_networks_sha256", "video_clips", "video_calibration")
#: the --video_model keys (null without one; ``video_calibration`` null unless --calibrate_bn calibrated it)
VIDEO_KEYS = ("video_model", "video_weights", "video_weights_sha256", "video_networks_sha256", "video_clips",
              "video_calibration")
# what the pickles' labels depend on
LABEL_KEYS = ("label_kind", "classes")
#: the folders of feature files the manifest speaks for (`remove_features` deletes their files)
FEATURE_DIRS = (IMAGE_DIR, AUDIO_DIR, TEMPLATE_DIR, VIDEO_DIR, LOGITS_DIR)


def manifest_record(*, weights: str | None, weights_sha256: str | None, seed: int, calibrate_bn: bool,
                    networks_sha256: str, frame_size: int, crop: int, precision: str, label_kind: str,
                    classes: list[str] | None, video: dict | None = None) -> dict:
    """What ``ROOT/extract.json`` records: how the features in ROOT were made (and the package version).
    `video`: the `VIDEO_KEYS` of a ``--video_model`` run (None: all null)."""
    video = video or {}
    unknown = set(video) - set(VIDEO_KEYS)
    if unknown:
        raise ValueError(f"unknown video manifest keys {sorted(unknown)}")
    return {"format": MANIFEST_FORMAT, "package_version": __version__, "weights": weights,
            "weights_sha256": weights_sha256, "seed": seed, "calibrate_bn": calibrate_bn,
            "networks_sha256": networks_sha256, "frame_size": frame_size, "crop": crop, "precision": precision,
            "clip_seconds": 1.0, "sample_rate": A.DEFAULT.sample_rate,
            "log_mel": json.loads(json.dumps(dataclasses.asdict(A.DEFAULT))), "label_kind": label_kind,
            "classes": classes, **{k: video.get(k) for k in VIDEO_KEYS}}


_NAMES = {"weights_sha256": "--weights_resnet18 (tensor checksum)", "seed": "--seed", "calibrate_bn": "--calibrate_bn",
          "networks_sha256": "the networks' variables", "frame_size": "--frame_size", "crop": "--crop",
          "precision": "--precision", "clip_seconds": "clip length", "sample_rate": "audio sample rate",
          "log_mel": "log-mel settings", "label_kind": "label kind", "classes": "class names",
          "video_model": "--video_model", "video_weights_sha256": "--weights_video_model (tensor checksum)",
          "video_networks_sha256": "the video network's variables",
          "video_clips": "video clip settings (--video_size, --video_crop, frames, normalisation)",
          "video_calibration": "the video network's BatchNorm calibration (--calibrate_bn)"}


def _shown(key: str, value) -> str:
    if value is None:
        return {"weights_sha256": "none (random networks)",
                "video_weights_sha256": "none (random network)"}.get(key, "none")
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items() if not isinstance(v, str | list))
    if key.endswith("sha256"):
        return str(value)[:12]
    if isinstance(value, list):
        return ",".join(map(str, value[:6])) + (",..." if len(value) > 6 else "")
    return str(value)


def read_manifest(root: Path) -> dict | None:
    """``ROOT/extract.json`` (None when absent); a damaged one is a `ConfigError`."""
    path = root / MANIFEST
    if not os.path.lexists(path):
        return None
    try:
        if not path.is_file() or path.stat().st_size > 1 << 20:
            raise ValueError("not a small regular file")
        record = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(record, dict) or record.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"not an {MANIFEST_FORMAT} manifest")
    except (OSError, ValueError) as e:
        raise ConfigError(f"--out {root}: {MANIFEST} is unreadable ({first_line(e)}), so how the features there "
                          "were made is unknown; pass --overwrite to extract them all again, or choose another "
                          "--out") from None
    return record


def manifest_differences(old: dict, new: dict, keys: Sequence[str]) -> list[str]:
    """``--seed 0 (now 1)``-style lines for every key in `keys` whose value differs."""
    return [f"{_NAMES[k]} {_shown(k, old.get(k))} (now {_shown(k, new[k])})" for k in keys if old.get(k) != new[k]]


def _old_features(root: Path) -> list[Path]:
    return [p for d in FEATURE_DIRS if (root / d).is_dir()
            for p in (root / d).iterdir() if p.suffix == ".npy" or p.name.endswith(".tmp")]


def check_manifest(root: Path, new: dict, keys: Sequence[str], *, overwrite: bool) -> bool:
    """Compares ``ROOT/extract.json`` with `new` on `keys`. Returns True when the features in ROOT are stale
    (made otherwise, or by an unknown run) and ``--overwrite`` was given; without it that is a `ConfigError`
    naming every difference. Returns False when ROOT's features (if any) were made as `new` says."""
    try:
        old = read_manifest(root)
    except ConfigError:
        if overwrite:
            return True
        raise
    if old is None:
        if not _old_features(root):
            return False
        if overwrite:
            return True
        raise ConfigError(f"--out {root} holds features but no {MANIFEST}, so how they were made is unknown; pass "
                          "--overwrite to extract them all again, or choose another --out")
    diffs = manifest_differences(old, new, keys)
    if not diffs:
        return False
    if overwrite or not _old_features(root):  # no feature file yet: nothing made otherwise to keep apart
        return True
    raise ConfigError(f"--out {root} holds features made with other settings: {'; '.join(diffs)}; pass --overwrite "
                      "to extract them all again with these settings, or choose another --out")


def remove_features(root: Path) -> int:
    """Deletes the feature files (and leftover temporary files) of ROOT's image, audio, imageAudio and video
    model folders (``--overwrite`` of features made otherwise). Returns how many."""
    old = _old_features(root)
    for p in old:
        p.unlink(missing_ok=True)
    return len(old)


__all__ = ["AUDIO_DIR", "FEATURE_DIRS", "FEATURE_KEYS", "IMAGE_DIR", "LABEL_KEYS", "LOGITS_DIR", "MANIFEST",
           "MANIFEST_FORMAT", "TEMPLATE_DIR", "VIDEO_DIR", "VIDEO_KEYS", "check_manifest", "manifest_differences",
           "manifest_record", "read_manifest", "remove_features"]
