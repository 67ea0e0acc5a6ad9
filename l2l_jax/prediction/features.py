"""The features `l2l-predict` feeds a trained policy: made exactly as `l2l-extract` made the training features.

The settings come from the training data's ``extract.json`` (`l2l_jax.video.manifest`): the networks' weights
(``--weights_resnet18`` file, ``--weights_imageaudionet`` folder, or random networks from a seed), frame size,
crop, precision, clip and audio settings, and the video model (the single-modality variant's features). Flags
may name the weights instead (a moved file); they must then be the very networks the record names: the
networks' variables are checked against its ``networks_sha256`` (and ``video_networks_sha256``). Random networks
whose BatchNorm statistics l2l-extract set from the data (``--calibrate_bn``) are reproduced from the same
videos and labels CSV (`calibration`: l2l-extract's VIDEOS and --labels), the result checked against the record
in the same way; so is a random video model the record says was calibrated (``video_calibration``,
`l2l_jax.video.video_calibrate`). What cannot be reproduced is refused with one line: ``--calibrate_bn`` without
those, and clip or audio settings of another package version.

Features are written by `l2l_jax.video.extract.extract` itself into a cache folder ``OUT/features/<settings>/``
(the settings' digest; its own ``extract.json``), one file set per video named by the SHA-256 of the video's
bytes, so a rerun (or another copy of the same file) decodes nothing and runs no network. `Clock` counts the
network batches and times the three stages.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax

from l2l_jax import numerics
from l2l_jax.errors import ConfigError
from l2l_jax.integrity import tensor_checksum
from l2l_jax.outputs import atomic_write_text
from l2l_jax.video.decode import MAX_SECONDS
from l2l_jax.video.distilled import load_distilled
from l2l_jax.video.extract import Extractor, Summary, extract
from l2l_jax.video.frames import FrameConfig
from l2l_jax.video.labels import Entry, parse_labels
from l2l_jax.video.manifest import FEATURE_KEYS, MANIFEST, manifest_differences, manifest_record, read_manifest
from l2l_jax.video.trunks import Networks, calibrate_batchnorm, load_networks
from l2l_jax.video.video_calibrate import calibrate_video_model, calibration_record
from l2l_jax.video.video_clips import ClipConfig, VideoModel, load_video_model

#: the cache's folder of feature sets, one per settings digest
CACHE_DIR = "features"
#: the digest of a video file: its bytes' SHA-256, this many hex digits name its feature files
NAME_DIGITS = 32
_CHUNK = 1 << 22


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    """How the features are made: the networks (``kind``: ``resnet18``, ``imageaudionet`` or ``random``, with
    ``weights`` the file or folder), the seed of fresh layers, frame settings, precision, the video model, and
    the ``extract.json`` it was read from (None: from the flags alone)."""

    kind: str
    weights: str | None
    seed: int
    frame_size: int
    crop: int
    precision: str
    video_model: str | None = None
    video_weights: str | None = None
    clips: ClipConfig = ClipConfig()
    manifest: Path | None = None
    recorded: dict | None = None
    calibration: tuple[str, str] | None = None  # (VIDEOS, labels CSV) of l2l-extract --calibrate_bn


@dataclasses.dataclass
class Clock:
    """Seconds per stage (decode: summed over the decoding threads) and the network batches run."""

    decode_s: float = 0.0
    networks_s: float = 0.0
    policy_s: float = 0.0
    compile_s: float = 0.0
    network_batches: int = 0


# ------------------------------------------------------------------------------------------------ the record


def find_manifest(roots: Sequence[str | os.PathLike]) -> tuple[Path, dict] | None:
    """The first ``ROOT/extract.json`` among `roots` (feature roots; a pickle's folder), read; None when none
    has one. A damaged one is a `ConfigError` naming it."""
    for root in roots:
        root = Path(root)
        if not (root / MANIFEST).is_file():
            continue
        try:
            record = read_manifest(root)
        except ConfigError:
            raise ConfigError(f"{root / MANIFEST}: unreadable or not an l2l-extract manifest, so how the training "
                              "features were made is unknown") from None
        if record is not None:
            return root / MANIFEST, record
    return None


def spec_from(found: tuple[Path, dict] | None, *, weights_resnet18: str | None = None,
              weights_imageaudionet: str | None = None, video_model: str | None = None,
              weights_video_model: str | None = None, precision: str | None = None, seed: int | None = None,
              frame_size: int | None = None, crop: int | None = None,
              calibration: tuple[str, str] | None = None) -> FeatureSpec:
    """The `FeatureSpec` of a recorded manifest (`find_manifest`), the flags naming what it lacks or where its
    weights moved to; without a manifest, the flags alone (l2l-extract's defaults otherwise)."""
    if weights_resnet18 and weights_imageaudionet:
        raise ConfigError("give one of --weights_resnet18 and --weights_imageaudionet")
    if found is None:
        if weights_video_model and not video_model:
            raise ConfigError("--weights_video_model needs --video_model (the network the weights are for)")
        kind = "resnet18" if weights_resnet18 else "imageaudionet" if weights_imageaudionet else "random"
        return FeatureSpec(kind, weights_resnet18 or weights_imageaudionet, 0 if seed is None else seed,
                           frame_size or FrameConfig.resize, crop or FrameConfig.crop,
                           precision or numerics.DEFAULT.name, video_model,
                           weights_video_model)
    path, rec = found
    if rec.get("calibrate_bn") and calibration is None:
        raise ConfigError(f"{path}: the features were made with --calibrate_bn (BatchNorm statistics from the "
                          "training videos); pass --calibration VIDEOS LABELS_CSV (what l2l-extract was given) to "
                          "reproduce those networks")
    for flag, given, key in (("--frame_size", frame_size, "frame_size"), ("--crop", crop, "crop"),
                             ("--network_seed", seed, "seed")):
        if given is not None and given != rec.get(key):
            raise ConfigError(f"{flag} {given}: {path} records {rec.get(key)}; features made otherwise are not "
                              "what the model was trained on")
    kind, weights = _recorded_weights(path, rec, weights_resnet18, weights_imageaudionet)
    arch = rec.get("video_model")
    if video_model and arch and video_model != arch:
        raise ConfigError(f"--video_model {video_model}: {path} records {arch}")
    arch = arch or video_model
    vweights = weights_video_model or rec.get("video_weights")
    if vweights and not Path(vweights).exists():
        raise ConfigError(f"{path} names the video model weights {vweights}, which are not there; pass "
                          "--weights_video_model with that file")
    fields = {f.name for f in dataclasses.fields(ClipConfig)}
    clips = ClipConfig(**{k: tuple(v) if isinstance(v, list) else v
                          for k, v in (rec.get("video_clips") or {}).items() if k in fields})
    return FeatureSpec(kind, weights, int(rec["seed"]), int(rec["frame_size"]), int(rec["crop"]),
                       precision or rec.get("precision") or numerics.DEFAULT.name, arch, vweights, clips, path, rec,
                       calibration if rec.get("calibrate_bn") else None)


def _recorded_weights(path: Path, rec: dict, resnet18: str | None, imageaudionet: str | None) -> tuple[str, str | None]:
    if resnet18 or imageaudionet:
        if rec.get("weights_sha256") is None and rec.get("weights") is None:
            raise ConfigError(f"{path}: the features were made with random networks (seed {rec.get('seed')}), not "
                              f"{'--weights_resnet18' if resnet18 else '--weights_imageaudionet'}")
        return ("resnet18", resnet18) if resnet18 else ("imageaudionet", imageaudionet)
    weights = rec.get("weights")
    if weights is None:
        return "random", None
    p = Path(weights)
    if not p.exists():
        raise ConfigError(f"{path} names the networks {weights}, which are not there; pass --weights_resnet18 FILE or "
                          "--weights_imageaudionet DIR with those weights")
    return ("imageaudionet", weights) if p.is_dir() else ("resnet18", weights)


# ------------------------------------------------------------------------------------------------ networks


@dataclasses.dataclass
class LoadedNetworks:
    """The networks of a `FeatureSpec`, checked against the record, and the record of this cache."""

    nets: Networks
    video: VideoModel | None
    record: dict

    @property
    def digest(self) -> str:
        """The settings' digest: what the feature values depend on (`manifest.FEATURE_KEYS`)."""
        text = json.dumps({k: self.record[k] for k in FEATURE_KEYS}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def load(spec: FeatureSpec) -> LoadedNetworks:
    """Loads the networks and checks them against the record: the same variables (`networks_sha256`), the same
    clip and audio settings; anything else is a `ConfigError` naming each difference."""
    if spec.kind == "imageaudionet":
        visual, audio, fusion, _ = load_distilled(spec.weights, "--weights_imageaudionet")
        nets = Networks(visual, audio, f"l2l-distill output {spec.weights}",
                        tensor_checksum({"visual": visual, "audio": audio, "fusion": fusion}))
    else:
        nets = load_networks(spec.weights if spec.kind == "resnet18" else None, spec.seed)
    video = load_video_model(spec.video_model, spec.video_weights, spec.seed) if spec.video_model else None
    video_clips = None  # the clips a random video model's statistics came from
    if spec.calibration is not None:
        videos, csv = spec.calibration
        kind = (spec.recorded or {}).get("label_kind") or "auto"
        entries = parse_labels(csv, None, kind).entries
        nets.visual, nets.audio, _ = calibrate_batchnorm(Path(videos), entries, nets.visual, nets.audio,
                                                         frame_size=spec.frame_size, crop=spec.crop)
        if video is not None and video.weights_sha256 is None and (spec.recorded or {}).get("video_calibration"):
            video, video_clips = calibrate_video_model(Path(videos), entries, video, spec.clips)
    vrec = None
    if video is not None:
        vrec = {"video_model": video.arch, "video_weights": str(Path(spec.video_weights).absolute())
                if spec.video_weights else None, "video_weights_sha256": video.weights_sha256,
                "video_networks_sha256": video.networks_sha256, "video_clips": spec.clips.record(),
                "video_calibration": None if video_clips is None else calibration_record(video_clips, spec.clips)}
    record = manifest_record(weights=str(Path(spec.weights).absolute()) if spec.weights else None,
                             weights_sha256=nets.weights_sha256, seed=spec.seed,
                             calibrate_bn=spec.calibration is not None,
                             networks_sha256=tensor_checksum({"visual": nets.visual, "audio": nets.audio}),
                             frame_size=spec.frame_size, crop=spec.crop, precision=spec.precision,
                             label_kind="int", classes=None, video=vrec)
    if spec.recorded is not None:
        keys = [k for k in FEATURE_KEYS if k != "precision"]
        diffs = manifest_differences(spec.recorded, json.loads(json.dumps(record)), keys)
        if diffs:
            raise ConfigError(f"{spec.manifest}: the training features were made otherwise: {'; '.join(diffs)}; "
                              "pass the networks that made them")
    return LoadedNetworks(nets, video, record)


def content_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


class _TimedVideo:
    """A `VideoExtractor` whose calls are timed and counted (the rest delegated)."""

    def __init__(self, inner: Any, clock: Clock):
        self._inner, self._clock = inner, clock

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __call__(self, clips):
        return _timed(self._inner, self._clock)(clips)


def _timed(fn: Any, clock: Clock) -> Any:
    def run(x):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn(x))
        clock.networks_s += time.perf_counter() - t0
        clock.network_batches += 1
        return out

    return run


def timed_extractor(loaded: LoadedNetworks, clock: Clock, *, batch_size: int, frame_size: int, crop: int,
                    precision: str, clips: ClipConfig) -> Extractor:
    """l2l-extract's `Extractor` for these networks, each network batch timed and counted in `clock`."""
    x = Extractor(loaded.nets.visual, loaded.nets.audio, batch_size=batch_size, frame_size=frame_size, crop=crop,
                  precision=precision, video_model=loaded.video, clip_cfg=clips)
    x.images, x.audio = _timed(x.images, clock), _timed(x.audio, clock)
    if x.video is not None:
        x.video = _TimedVideo(x.video, clock)
    return x


@dataclasses.dataclass
class Featurised:
    """Where each video's features are: `names[path]` (its digest) in `root`; `skipped[path]` a reason;
    `cached`: the paths whose features were already there; `lengths[name]`: clips; `silent`: no audio track."""

    root: Path
    names: dict[str, str]
    lengths: dict[str, int]
    skipped: dict[str, str]
    cached: set[str]
    silent: list[str]


def featurise(videos: Sequence[str], spec: FeatureSpec, loaded: LoadedNetworks, cache: Path, clock: Clock, *,
              batch_size: int = 64, workers: int = 4, progress: bool = True,
              max_seconds: float = MAX_SECONDS) -> Featurised:
    """Every video's features in ``cache/<settings digest>/`` (l2l-extract's layout and code), decoded and run
    through the networks only when not already there. A file that cannot be read is skipped with its reason,
    as l2l-extract skips it."""
    root = cache / loaded.digest
    names: dict[str, str] = {}
    skipped: dict[str, str] = {}
    entries: dict[str, Entry] = {}
    for v in videos:
        p = Path(v)
        if not p.is_file():
            skipped[v] = "no such file" if not p.exists() else "not a regular file"
            continue
        try:
            name = content_digest(p)[:NAME_DIGITS]
        except OSError as e:
            skipped[v] = f"cannot be read ({e.strerror or e})"
            continue
        names[v] = name
        entries.setdefault(name, Entry(video=str(p.absolute()), name=name, label=0, split="predict"))
    try:
        root.mkdir(parents=True, exist_ok=True)
        if not (root / MANIFEST).is_file():
            atomic_write_text(root / MANIFEST, json.dumps(loaded.record, indent=1) + "\n")
    except OSError as e:
        raise ConfigError(f"--out {cache}: cannot write the feature cache ({e.strerror or e})") from None
    summary = Summary()
    if entries:
        x = timed_extractor(loaded, clock, batch_size=batch_size, frame_size=spec.frame_size, crop=spec.crop,
                            precision=spec.precision, clips=spec.clips)
        summary = extract(Path("/"), list(entries.values()), root, x, workers=workers, progress=progress,
                          max_seconds=max_seconds)
        clock.decode_s += summary.decode_s
    by_path = {e.video: e.name for e in entries.values()}
    bad = {by_path[k]: reason for k, reason in summary.skipped.items() if k in by_path}
    resumed = {by_path[k] for k in summary.resumed if k in by_path}
    for v, name in list(names.items()):
        if name in bad:
            skipped[v] = bad[name]
            del names[v]
    silent = [v for v, n in names.items() if entries[n].video in summary.silent]
    return Featurised(root, names, dict(summary.lengths), skipped, {v for v, n in names.items() if n in resumed},
                      silent)


__all__ = ["CACHE_DIR", "Clock", "FeatureSpec", "Featurised", "LoadedNetworks", "content_digest", "featurise",
           "find_manifest", "load", "spec_from", "timed_extractor"]
