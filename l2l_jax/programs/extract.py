"""`l2l-extract`: clip features from a folder of video files, in upstream's layout.

    l2l-extract VIDEOS --labels CSV --out ROOT [--label_kind auto|int|name] [--split train val]
                [--weights_resnet18 resnet18.pth] [--seed 0] [--batch_size 64] [--workers 4] [--frame_size 256]
                [--crop 224] [--max_seconds 10800] [--precision exact|fast] [--calibrate_bn] [--overwrite]
                [--video_model r3d_18|mc3_18|r2plus1d_18 [--weights_video_model PTH] [--video_size 128]
                [--video_crop 112]] [--debug]

For every video named in the labels CSV (a file under the VIDEOS folder): decode it (`l2l_jax.video.decode`:
each 1 s clip's first frame, RGB, and its mono 16 kHz audio), run the frames through
`frames.preprocess_frames` (shorter side resized to ``--frame_size``, centre crop ``--crop``, ImageNet
normalisation) + `VisualNet`, and the audio through `audio.log_mel_spectrogram` + `AudioNet`, and write

- ``ROOT/image_features/<name>.npy`` and ``ROOT/audio_features/<name>.npy``: float32 (T, 512), one row per clip;
- ``ROOT/<split>.pkl``: upstream's pickle ``(feature_paths, labels)``, each path
  ``ROOT/imageAudio_features/<name>.npy`` (absolute; the template the loaders replace with image_features /
  audio_features, and remap with ``--feature_root`` when ROOT moves); the imageAudio files themselves are written
  by `l2l-finetune`;
- ``ROOT/classes.json`` when the labels are class names (index = position in the sorted list of names);
- ``ROOT/extract.json``: how the features were made (the weights' tensor checksum, seed, ``--calibrate_bn``,
  the networks' checksum, frame size, crop, precision, clip and audio settings, label kind and class names,
  the video model, its weights' and variables' checksums and its clip settings, the package version).

Video model: ``--video_model r3d_18|mc3_18|r2plus1d_18`` (torchvision's video ResNets,
`l2l_jax.video.video_networks`) also runs each 1 s clip as 16 frames evenly spaced in it (taken in the same
decoding pass), resized (shorter side ``--video_size``, 128, bilinear without antialiasing), centre-cropped
(``--video_crop``, 112) and normalised with Kinetics' mean and std, as torchvision's video models expect
(`l2l_jax.video.video_clips`), and writes

- ``ROOT/r2plus1d152_features/<name>.npy``: float32 (T, 512), the pooled clip features: the folder the
  single-modality variant reads (``--variant single --embedding_size 512``, with the same pickles; the folder
  keeps upstream's name whatever network made it);
- ``ROOT/video_logits/<name>.npy``: float32 (T, C), the clip logits: a teacher folder for ``l2l-distill
  --teacher ROOT/video_logits``.

``--weights_video_model PTH`` is a torchvision state dict of that network (e.g. its Kinetics-400 weights; read
weights-only, strictly, C from its ``fc``; ``--calibrate_bn`` never touches it); without it the network is freshly
initialised from ``--seed`` with a warning (testing only), and ``--calibrate_bn`` sets its BatchNorm statistics from
the first clips of the CSV's videos too (`l2l_jax.video.video_calibrate`; recorded as ``video_calibration``, and
``video_networks_sha256`` is the calibrated network's).

The labels CSV (UTF-8, a BOM is ignored): ``video,label[,split]`` per line, with no header or exactly the
header ``video,label`` / ``video,label,split`` (a first line like ``filename,label`` is refused, never read as a
video). ``video`` is the file's path relative to VIDEOS (``a/b.mp4``; normalised, so ``./a/b.mp4`` is the same
video, and a line repeating a video with the same label and split is kept once; absolute paths and ``..`` are
refused); ``<name>`` is that path without its extension, ``/`` replaced by ``__`` (names must be unique).
``label``: with ``--label_kind int`` a class index (ASCII digits, >= 0), with ``name`` a class name (classes
numbered in sorted order); ``auto`` (default) takes int when every label is an index and name when no label
is a number, prints which, and refuses a mix (``2``, ``10``, ``-1``) naming the line. ``split``: the split the
video belongs to (``train``, ``val``, ...); without a split column every video goes to the single split
``--split`` names (default ``train``). ``--split`` restricts the splits written. Every problem in the CSV is
one line naming its line number, before anything is written.

Weights: ``--weights_resnet18 PTH`` (torchvision's ImageNet resnet18 state dict, read with the safe loader) gives
VisualNet and the ImageNet-initialised AudioNet upstream builds (its new layers drawn with ``--seed``). Without
it, both networks are freshly initialised from ``--seed`` and a warning says that such features are for testing
only; ``--calibrate_bn`` then sets their BatchNorm statistics from the data (`calibrate_batchnorm`), which
makes such features vary with the content (the demo uses it). ``--weights_imageaudionet DIR`` takes the trained
networks of an `l2l-distill` output folder instead (`l2l_jax.video.distilled`), after checking each of its files
against the SHA-256 its ``distill.json`` records (a folder whose files are not of one run is refused, naming the
file), and also writes ``ROOT/imageAudio_features/`` with its fusion net.

Speed: ``--workers`` threads decode videos (FFmpeg releases the GIL) ahead of the networks, which run jitted
and data-parallel (batches of ``--batch_size`` clips split over all devices, ``P("data")``); the device works on
one batch while the host decodes and fills the next. Frames of different sizes go into different batches
(one compilation per frame size); a last partial batch is padded.

Resumable: a video whose .npy files are all present and valid (float32 (T, 512), the logits (T, C), equal T,
finite) is not decoded again, provided ROOT's ``extract.json`` records the same settings. A rerun with other
settings (or into a ROOT holding features without a manifest) is refused naming every difference; ``--overwrite``
deletes the old feature files and extracts again. Every file is written atomically (temporary file +
``os.replace``, the umask's mode: `l2l_jax.outputs`). A video that cannot be read, holds less than one clip, is
longer than ``--max_seconds`` or has implausible timing (more than 4 clips per clip holding a frame of its own:
`l2l_jax.video.decode`) is listed at the end with its reason and left out of the pickles; a video without an audio
track gets silence (counted at the end). Flags, the labels CSV, the output paths (``--out``, its folders and
files) and the weights (readable, dense, finite) are checked before any work; each problem exits with one line and
status 2 (``--debug``: traceback).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from l2l_jax import checks, variants
from l2l_jax.data.collate import MIN_CLIPS
from l2l_jax.data.source import open_split
from l2l_jax.errors import ConfigError
from l2l_jax.integrity import tensor_checksum
from l2l_jax.outputs import atomic_write_text, output_dir, output_file, writing
from l2l_jax.programs import flags
from l2l_jax.video.decode import MAX_SECONDS
from l2l_jax.video.distilled import load_distilled
from l2l_jax.video.extract import MAX_SEED, WIDTH, Extractor, Summary, extract, write_pickle
from l2l_jax.video.finetune import FusedFeatures, write_fused
from l2l_jax.video.frames import FrameConfig
from l2l_jax.video.labels import LABEL_KINDS, Entry, describe_labels, parse_labels
from l2l_jax.video.manifest import (
    AUDIO_DIR,
    FEATURE_KEYS,
    IMAGE_DIR,
    LABEL_KEYS,
    MANIFEST,
    TEMPLATE_DIR,
    check_manifest,
    manifest_record,
    read_manifest,
    remove_features,
)
from l2l_jax.video.trunks import Networks, calibrate_batchnorm, load_networks
from l2l_jax.video.video_calibrate import calibrate_video_model, calibration_record
from l2l_jax.video.video_clips import LOGITS_DIR, VIDEO_DIR, VIDEO_MODELS, ClipConfig, VideoModel, load_video_model

MAX_WORKERS = 256
MAX_FRAME = 4096  # pixels: --frame_size and --crop


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="l2l-extract", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("videos", help="folder holding the video files the labels CSV names")
    p.add_argument("--labels", required=True, help="CSV: video,label[,split] (video relative to VIDEOS)")
    p.add_argument("--label_kind", choices=LABEL_KINDS, default="auto",
                   help="int: labels are class indices; name: class names, numbered in sorted order; auto "
                        "(default): int when every label is an integer >= 0, name when none is a number")
    flags.add_common(p, "out", out={"required": True,
                                    "help": "feature root ROOT (image_features/, audio_features/, <split>.pkl)"})
    p.add_argument("--split", nargs="+", default=None,
                   help="splits to write (default: all in the CSV; without a split column: the one split, train)")
    p.add_argument("--weights_resnet18", default=None, help="ImageNet resnet18 .pth (torchvision names)")
    p.add_argument("--weights_imageaudionet", default=None,
                   help="an l2l-distill output folder: its trained VisualNet and AudioNet, and its fusion net, "
                        "which also writes imageAudio_features/")
    flags.add_common(p, "seed", seed={"help": f"seed of new/fresh network layers, 0..{MAX_SEED} (default 0)"})
    p.add_argument("--batch_size", type=int, default=64, help="clips per network batch, all devices (default 64)")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="decoding threads (default min(8, CPUs))")
    p.add_argument("--frame_size", type=int, default=FrameConfig.resize,
                   help=f"shorter side after resizing (default {FrameConfig.resize})")
    p.add_argument("--crop", type=int, default=FrameConfig.crop, help=f"centre crop (default {FrameConfig.crop})")
    p.add_argument("--max_seconds", type=float, default=MAX_SECONDS,
                   help="longer videos are skipped with their reason (default 10800, 3 hours)")
    p.add_argument("--calibrate_bn", action="store_true",
                   help="random networks only: BatchNorm statistics from the first 64 clips of the CSV's videos "
                        "(and a random --video_model's from its first clips)")
    flags.add_common(p, "precision")
    p.add_argument("--video_model", choices=VIDEO_MODELS, default=None,
                   help="also a torchvision video network's clip features (r2plus1d152_features/, what --variant "
                        "single reads) and logits (video_logits/, an l2l-distill --teacher folder)")
    p.add_argument("--weights_video_model", default=None,
                   help="the --video_model's torchvision state dict .pth (e.g. Kinetics-400); default: random")
    p.add_argument("--video_size", type=int, default=128,
                   help="--video_model: shorter side of its frames after resizing (default 128)")
    p.add_argument("--video_crop", type=int, default=112, help="--video_model: centre crop (default 112)")
    p.add_argument("--overwrite", action="store_true",
                   help=f"--out holds features made with other settings ({MANIFEST}): delete them and extract again")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    flags.add_common(p, "debug")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point of ``l2l-extract``; returns the exit status (2: an input error, one line)."""
    return flags.run_program("extract", lambda: _main(argv), argv)


def _check_flags(args: argparse.Namespace) -> None:
    """Every flag, before anything is read or written."""
    for flag, hi in (("batch_size", checks.MAX_BATCH), ("workers", MAX_WORKERS), ("frame_size", MAX_FRAME),
                     ("crop", MAX_FRAME), ("video_size", MAX_FRAME), ("video_crop", MAX_FRAME)):
        checks.count_in(f"--{flag}", getattr(args, flag), hi)
    if args.crop > args.frame_size:
        raise ConfigError(f"--crop {args.crop} is larger than --frame_size {args.frame_size}")
    if args.video_crop > args.video_size:
        raise ConfigError(f"--video_crop {args.video_crop} is larger than --video_size {args.video_size}")
    if args.weights_video_model and not args.video_model:
        raise ConfigError("--weights_video_model needs --video_model (the network the weights are for)")
    if not 0 <= args.seed <= MAX_SEED:
        raise ConfigError(f"--seed {args.seed}: must be between 0 and {MAX_SEED}")
    if not (math.isfinite(args.max_seconds) and args.max_seconds > 0):
        raise ConfigError(f"--max_seconds {args.max_seconds}: must be a positive number of seconds")
    if args.calibrate_bn and args.weights_resnet18:
        raise ConfigError("--calibrate_bn is for random networks; --weights_resnet18 keeps resnet18's statistics")
    if args.weights_imageaudionet and (args.weights_resnet18 or args.calibrate_bn):
        raise ConfigError("--weights_imageaudionet gives the trained networks; it takes neither --weights_resnet18 "
                          "nor --calibrate_bn")


def _check_outputs(root: Path, splits: Iterable[str], class_names: bool, video: bool = False) -> None:
    """--out and every path this run writes in it can take what goes there (nothing is created yet)."""
    advice = "move it away or choose another --out"
    output_dir(root, "--out")
    for d in (IMAGE_DIR, AUDIO_DIR, *((VIDEO_DIR, LOGITS_DIR) if video else ())):
        output_dir(root / d, "--out", advice=advice)
    names = [MANIFEST, *(f"{s}.pkl" for s in sorted(set(splits)))] + (["classes.json"] if class_names else [])
    for name in names:
        output_file(root / name, "--out", advice=advice)


def _distilled(path: str) -> tuple[Networks, dict, dict]:
    """``--weights_imageaudionet``: (the trained trunks as `Networks`, fusion net variables, its meta), the
    folder's files checked against the checksums its report records."""
    visual, audio, fusion, meta = load_distilled(path, "--weights_imageaudionet")
    checksum = tensor_checksum({"visual": visual, "audio": audio, "fusion": fusion})
    return Networks(visual, audio, f"l2l-distill output {path}", checksum), fusion, meta


def _write_fused(root: Path, written: dict[str, int], entries: list[Entry], fusion: dict, meta: dict,
                 progress: bool) -> None:
    """The distilled fusion net's imageAudio features: the files the pickles name."""
    classes = int(meta["num_classes"])
    fused = FusedFeatures(fusion, classes)
    for split, n in written.items():
        if n:
            source = open_split(root / f"{split}.pkl", variant=variants.TWO.name, num_classes=max(
                classes, 1 + max(e.label for e in entries)), width=WIDTH, cache=False, progress=progress)
            write_fused(source, fused, progress=progress)


def _video_record(model: VideoModel | None, weights: str | None, cfg: ClipConfig,
                  calibrated: int | None = None) -> dict | None:
    """The manifest's video model keys (None without ``--video_model``); `calibrated`: the clips
    ``--calibrate_bn`` took its BatchNorm statistics from (None: not calibrated)."""
    if model is None:
        return None
    return {"video_model": model.arch, "video_weights": str(Path(weights).absolute()) if weights else None,
            "video_weights_sha256": model.weights_sha256, "video_networks_sha256": model.networks_sha256,
            "video_clips": cfg.record(),
            "video_calibration": None if calibrated is None else calibration_record(calibrated, cfg)}


def _prepare_root(root: Path, record: dict, stale: bool, relabel: bool, old: dict | None) -> None:
    """Inside `writing`: the feature folders, ``--overwrite``'s deletion, the manifest (or a note)."""
    if stale:
        n = remove_features(root)
        if n:
            print(f"--overwrite: deleted {n} feature file(s) made with other settings in {root}")
    if stale or relabel or old is None:
        atomic_write_text(root / MANIFEST, json.dumps(record, indent=1) + "\n")
    elif old.get("package_version") != record["package_version"]:
        print(f"note: the features in {root} were started by l2l-jax {old.get('package_version')}; this is "
              f"{record['package_version']}")


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    _check_flags(args)
    videos, root = Path(args.videos), Path(args.out).absolute()
    if not videos.is_dir():
        raise ConfigError(f"VIDEOS {videos}: not a directory")
    table = parse_labels(args.labels, args.split, args.label_kind)
    entries, class_names = table.entries, table.class_names
    _check_outputs(root, (e.split for e in entries), class_names is not None, video=bool(args.video_model))
    print(describe_labels(table))
    distilled = _distilled(args.weights_imageaudionet) if args.weights_imageaudionet else None
    nets = distilled[0] if distilled else load_networks(args.weights_resnet18, args.seed)
    clip_cfg = ClipConfig(resize=args.video_size, crop=args.video_crop)
    video_model = (load_video_model(args.video_model, args.weights_video_model, args.seed)
                   if args.video_model else None)
    weights = args.weights_resnet18 or args.weights_imageaudionet
    record = manifest_record(weights=str(Path(weights).absolute()) if weights else None,
                             weights_sha256=nets.weights_sha256, seed=args.seed, calibrate_bn=args.calibrate_bn,
                             networks_sha256="", frame_size=args.frame_size, crop=args.crop,
                             precision=args.precision, label_kind=table.kind, classes=class_names,
                             video=_video_record(video_model, args.weights_video_model, clip_cfg))
    # the settings first (nothing decoded yet), then the networks themselves (after --calibrate_bn)
    late = ["networks_sha256", "video_networks_sha256", "video_calibration"]
    early = [k for k in FEATURE_KEYS if k not in late]
    stale = check_manifest(root, record, early, overwrite=args.overwrite)
    relabel = check_manifest(root, record, LABEL_KEYS, overwrite=args.overwrite)
    desc = nets.description
    if args.calibrate_bn:
        nets.visual, nets.audio, n = calibrate_batchnorm(videos, entries, nets.visual, nets.audio,
                                                         frame_size=args.frame_size, crop=args.crop,
                                                         max_seconds=args.max_seconds)
        desc += f", BatchNorm statistics from {n} clips"
        if video_model is not None and video_model.weights_sha256 is None:  # a random video network only
            video_model, n = calibrate_video_model(videos, entries, video_model, clip_cfg,
                                                   max_seconds=args.max_seconds)
            record.update(_video_record(video_model, None, clip_cfg, calibrated=n))
    record["networks_sha256"] = tensor_checksum({"visual": nets.visual, "audio": nets.audio})
    stale = check_manifest(root, record, late, overwrite=args.overwrite) or stale
    old = read_manifest(root) if not (stale or relabel) else None
    try:
        for d in (IMAGE_DIR, AUDIO_DIR, *((VIDEO_DIR, LOGITS_DIR) if video_model else ())):
            (root / d).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--out {root}: cannot create ({e.strerror or e})") from None
    with writing(root, "--out"):  # a disk that fills up mid-way is one line too
        _prepare_root(root, record, stale, relabel, old)
        extractor = Extractor(nets.visual, nets.audio, batch_size=args.batch_size, frame_size=args.frame_size,
                              crop=args.crop, precision=args.precision, video_model=video_model, clip_cfg=clip_cfg)
        summary = extract(videos, entries, root, extractor, workers=args.workers, progress=not args.no_progress,
                          max_seconds=args.max_seconds)
        if class_names is not None:
            atomic_write_text(root / "classes.json", json.dumps(class_names, indent=1))
        written: dict[str, int] = {}
        for split in sorted({e.split for e in entries}):
            rows = [e for e in entries if e.split == split and e.name in summary.lengths]
            write_pickle(root / f"{split}.pkl", [str(root / TEMPLATE_DIR / f"{e.name}.npy") for e in rows],
                         [e.label for e in rows])
            written[split] = len(rows)
        if distilled:
            _write_fused(root, written, entries, distilled[1], distilled[2], not args.no_progress)
    if video_model is not None:
        desc += f"; video model: {video_model.description}"
    _report(summary, root, written, desc)
    return 0


def _report(summary: Summary, root: Path, written: dict[str, int], weights_desc: str) -> None:
    s = summary
    rate = s.clips / s.wall_s if s.wall_s > 0 else 0.0
    print(f"extracted {len(s.extracted)} videos ({s.clips} clips, {rate:.1f} clips/s) in {s.wall_s:.1f} s; "
          f"already done: {len(s.resumed)}; weights: {weights_desc}")
    if s.silent:
        print(f"{len(s.silent)} video(s) without an audio track got silence: {', '.join(s.silent)}")
    if s.skipped:
        print(f"skipped {len(s.skipped)} video(s):")
        for video, reason in s.skipped.items():
            print(f"  {video}: {reason}")
    for split, n in written.items():
        print(f"wrote {root / (split + '.pkl')}: {n} videos")
    short = sum(1 for t in s.lengths.values() if t < MIN_CLIPS)
    if short:
        print(f"note: {short} video(s) have fewer than {MIN_CLIPS} clips; l2l-train and l2l-eval need a video of at "
              f"least {MIN_CLIPS} clips in every batch (upstream's collate)")


if __name__ == "__main__":
    sys.exit(main())
