"""`l2l-predict`: class probabilities and the previewed moments of unlabelled videos, from a trained model.

    l2l-predict VIDEO_OR_DIR... --model MODEL [--weights_resnet18 PTH | --weights_imageaudionet DIR]
                [--video_model ARCH --weights_video_model PTH] [--data ROOT] [--frame_size 256 --crop 224
                --network_seed 0] [--classes classes.json]
                [--calibration VIDEOS LABELS_CSV] [--top_k 5] [--out DIR] [--plot] [--precision exact|fast]
                [--batch_size N] [--network_batch_size 64] [--workers 4] [--episode_length E] [--mean_feature_as_start]
                [--with_replacement] [--feature_interpolate] [--subsample_factor S] [--feature_subsample]
                [--gt_feature_eval] [--seed 0] [--layout auto|dense|chunk] [--max_seconds S] [--no_progress]
                [--debug]

MODEL is what ``l2l-eval --pretrained_model`` takes (`l2l_jax.weights`: a training run directory, its
``model_final/``, a converted model or an upstream ``.pth``). The policy's settings (variant, E,
``--mean_feature_as_start``, ``--with_replacement``, interpolation, subsampling, width) come from the run's
``config.json`` (the run directory, or the folder above ``model_final/``), or a converted model's recorded
upstream flags; the flags above override them.

The features are made as ``l2l-extract`` made the training features (`l2l_jax.prediction.features`): the settings and
networks recorded in ``extract.json`` beside the run's training pickle (or in ``--data ROOT``); ``--weights_resnet18``
/ ``--weights_imageaudionet`` / ``--weights_video_model`` say where those weights are now (checked against the
record's checksums). Random networks calibrated on the training videos (l2l-extract ``--calibrate_bn``) are calibrated
again from ``--calibration VIDEOS LABELS_CSV`` (l2l-extract's arguments). Without any ``extract.json`` the flags name
the networks and l2l-extract's defaults apply (frame size 256, crop 224). A single-modality model reads the video
model's features (``--video_model``, or the record's).

For each video (a file, or every video file under a folder, sorted): the top-k classes (``--classes``, else the
record's class names, else indices) with the avgpool head's probabilities (what l2l-eval counts as the
prediction), for each step the seconds of the video the policy looked at (image and audio; 1 s clips), the start
clip (unless the model starts from the mean feature), the clip count; and the seconds spent decoding, in the
networks and in the policy. A table on screen; with ``--out DIR``: ``DIR/predictions.jsonl`` (one JSON line per
video; a skipped one with its reason), the feature cache ``DIR/features/`` (a rerun decodes nothing already
there: keyed by each file's SHA-256 and the settings), and with ``--plot`` ``DIR/timelines/<video>.png``.

Start clips (`l2l_jax.prediction.policy`): l2l-eval's draw, keyed by the video's content instead of its row in
a split, so a video's prediction does not depend on the other videos given. A video that cannot be read is
listed with its reason and skipped (l2l-extract's decoder and reasons); one without audio gets silence (noted).
A class list whose length is not the model's class count, and every other input problem, is one line and exit
status 2, before any video is decoded.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from l2l_jax import checks, config, numerics, storage, variants, weights
from l2l_jax.errors import ConfigError
from l2l_jax.outputs import output_dir, writing
from l2l_jax.prediction import features as FT
from l2l_jax.prediction import present
from l2l_jax.prediction.policy import Policy
from l2l_jax.programs import flags as program_flags
from l2l_jax.training.log import CONFIG_FILE
from l2l_jax.video.decode import MAX_SECONDS
from l2l_jax.video.extract import MAX_SEED
from l2l_jax.video.video_clips import VIDEO_DIR, VIDEO_MODELS

#: the policy's settings taken from the run (or a converted model's upstream flags) unless a flag overrides them
MODEL_KEYS = ("variant", "episode_length", "mean_feature_as_start", "with_replacement", "feature_interpolate",
              "subsample_factor", "feature_subsample", "embedding_size")
VIDEO_SUFFIXES = frozenset({".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv",
                            ".ts", ".3gp", ".ogv"})
JSONL = "predictions.jsonl"
TIMELINES = "timelines"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="l2l-predict", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("videos", nargs="+", help="video files, or folders searched for video files")
    p.add_argument("--model", required=True, help="a training run directory, a converted model or a .pth")
    p.add_argument("--weights_resnet18", default=None, help="the ImageNet resnet18 .pth the features were made with")
    p.add_argument("--weights_imageaudionet", default=None,
                   help="the l2l-distill output folder whose networks made the features")
    p.add_argument("--video_model", choices=VIDEO_MODELS, default=None, help="the video network (single variant)")
    p.add_argument("--weights_video_model", default=None, help="its torchvision state dict .pth")
    p.add_argument("--data", default=None, help="the l2l-extract output (extract.json) the model was trained on")
    p.add_argument("--calibration", nargs=2, metavar=("VIDEOS", "LABELS_CSV"), default=None,
                   help="features made with l2l-extract --calibrate_bn: the VIDEOS folder and --labels CSV it was "
                        "given (the BatchNorm statistics are computed again and checked against extract.json)")
    p.add_argument("--frame_size", type=int, default=None,
                   help="without an extract.json: l2l-extract's --frame_size (default 256); with one, as recorded")
    p.add_argument("--crop", type=int, default=None, help="likewise l2l-extract's --crop (default 224)")
    p.add_argument("--network_seed", type=int, default=None,
                   help="likewise l2l-extract's --seed: new layers of AudioNet, random networks (default 0)")
    p.add_argument("--classes", default=None, help="JSON list of class names (default: the record's, else indices)")
    p.add_argument("--top_k", type=int, default=5, help="classes shown per video (default 5)")
    program_flags.add_common(p, "out", out={"help": "JSON lines, feature cache and timelines go here"})
    p.add_argument("--plot", action="store_true", help="a timeline PNG per video in OUT/timelines")
    p.add_argument("--precision", choices=list(numerics.PRECISIONS), default=None,
                   help="networks and policy (default: the networks as recorded, the policy exact)")
    p.add_argument("--batch_size", type=int, default=16, help="videos per policy batch (default 16)")
    p.add_argument("--network_batch_size", type=int, default=64, help="clips per network batch (default 64)")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="decoding threads")
    for name in ("episode_length", "subsample_factor", "embedding_size"):
        p.add_argument(f"--{name}", type=int, default=None, help=f"override the model's --{name}")
    for name in ("mean_feature_as_start", "with_replacement", "feature_interpolate", "feature_subsample",
                 "gt_feature_eval"):
        p.add_argument(f"--{name}", action="store_const", const=True, default=None,
                       help=f"the model's --{name} (default: as trained)")
    p.add_argument("--variant", choices=list(variants.NAMES), default=None, help="the model's variant (a .pth)")
    program_flags.add_common(p, "seed", seed={"help": "seed of the start clip draws (default 0, as l2l-eval)"})
    program_flags.add_common(p, "layout")
    p.add_argument("--max_seconds", type=float, default=MAX_SECONDS, help="longer videos are skipped")
    p.add_argument("--no_progress", action="store_true", help="no progress bars")
    program_flags.add_common(p, "debug")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point of ``l2l-predict``; returns the exit status (2: an input error, one line)."""
    return program_flags.run_program("predict", lambda: _main(argv), argv)


# ------------------------------------------------------------------------------------------------ the model


@dataclasses.dataclass
class Model:
    """The loaded model, its evaluation settings and where its training data lies."""

    settings: config.Settings
    loaded: weights.Weights
    run_config: dict | None


def _run_config(ref: weights.WeightsRef) -> dict | None:
    """The resolved flags of the training run MODEL belongs to (None: not a run's model)."""
    if storage.is_url(ref.path):
        return None
    base = Path(ref.path)
    for place in (base, base.parent) if ref.kind == "model_dir" else (base,):
        f = place / CONFIG_FILE
        if f.is_file():
            try:
                cfg = json.loads(f.read_text())
            except (OSError, ValueError) as e:
                raise ConfigError(f"--model: {f} is unreadable ({e})") from None
            if isinstance(cfg, dict) and "episode_length" in cfg:
                return cfg
    return None


def load_model(args: argparse.Namespace) -> Model:
    """MODEL loaded as l2l-eval loads --pretrained_model, with the settings it was trained with."""
    ref = weights.resolve(args.model, "--model")
    run_cfg = _run_config(ref)
    recorded: dict[str, Any] = {}
    if run_cfg is not None:
        recorded = {k: run_cfg[k] for k in MODEL_KEYS if k in run_cfg}
    variant = args.variant or recorded.get("variant") or variants.DEFAULT.name
    loaded = weights.load(ref, variant, "--model")
    meta = loaded.meta
    variant = meta.get("variant", variant)
    if run_cfg is None and isinstance(meta.get("upstream_args"), dict):
        recorded = {k: meta["upstream_args"][k] for k in MODEL_KEYS if k in meta["upstream_args"]}
    given = {k: getattr(args, k) for k in MODEL_KEYS if getattr(args, k, None) is not None}
    chosen = {**recorded, **given, "variant": variant, "num_classes": int(meta["num_classes"]),
              "pretrained_model": str(loaded.ref.where), "batch_size": args.batch_size, "seed": args.seed,
              "layout": args.layout, "precision": args.precision or numerics.DEFAULT.name,
              "gt_feature_eval": bool(args.gt_feature_eval)}
    if variants.get(variant).fixed_width is None:
        chosen["embedding_size"] = int(meta["feature_dim"])
    cfg = program_flags.resolve("eval", _argv(chosen))
    config.check(cfg, "eval")
    settings = config.settings(cfg, "eval")
    if meta["feature_dim"] != settings.model.feature_dim:
        raise ConfigError(f"--model {loaded.ref.where} takes {meta['feature_dim']}-wide features, the settings "
                          f"{settings.model.feature_dim}")
    return Model(settings, loaded, run_cfg)


def _argv(values: dict[str, Any]) -> list[str]:
    """l2l-eval's flags for these settings (`program_flags.resolve` builds the configuration as l2l-eval does)."""
    out: list[str] = []
    for k, v in values.items():
        if isinstance(v, bool):
            out += [f"--{k}"] if v else []
        elif isinstance(v, list | tuple):
            out += [f"--{k}", *map(str, v)]
        elif v is not None:
            out += [f"--{k}", str(v)]
    return out


def _data_roots(args: argparse.Namespace, model: Model) -> list[str]:
    """Where the training features' extract.json may be: --data, then the run's pickles' folders."""
    roots = [args.data] if args.data else []
    src = model.run_config or model.loaded.meta.get("upstream_args") or {}
    for key in ("train_dataset_file", "test_dataset_file"):
        path = src.get(key) if isinstance(src, dict) else None
        if isinstance(path, str) and path and not storage.is_url(path):
            roots.append(str(Path(path).parent))
    return roots


# ------------------------------------------------------------------------------------------------ inputs


def _check_flags(args: argparse.Namespace) -> None:
    for flag in ("top_k", "batch_size", "network_batch_size", "workers", "frame_size", "crop"):
        if getattr(args, flag) is not None:
            checks.count_in(f"--{flag}", getattr(args, flag), checks.MAX_BATCH)
    if args.frame_size and args.crop and args.crop > args.frame_size:
        raise ConfigError(f"--crop {args.crop} is larger than --frame_size {args.frame_size}")
    if args.network_seed is not None and not 0 <= args.network_seed <= MAX_SEED:
        raise ConfigError(f"--network_seed {args.network_seed}: must be between 0 and {MAX_SEED}")
    if args.plot and not args.out:
        raise ConfigError("--plot writes into --out: give --out DIR")
    if args.data and not Path(args.data).is_dir():
        raise ConfigError(f"--data {args.data}: not a directory")
    if args.out:
        output_dir(args.out, "--out")


def read_classes(path: str) -> list[str]:
    """``--classes``: a JSON list of class names."""
    try:
        names = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"--classes {path}: cannot read a JSON list of class names ({e})") from None
    if not isinstance(names, list) or not all(isinstance(n, str | int) for n in names):
        raise ConfigError(f"--classes {path}: not a JSON list of class names")
    return [str(n) for n in names]


def video_files(inputs: Sequence[str]) -> list[str]:
    """The files named, and the video files (by suffix) under the folders named, each folder's sorted."""
    out: list[str] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            out += sorted(str(f) for f in p.rglob("*") if f.suffix.lower() in VIDEO_SUFFIXES and f.is_file())
        else:
            out.append(item)
    return list(dict.fromkeys(out))


# ------------------------------------------------------------------------------------------------ the run


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    _check_flags(args)
    model = load_model(args)
    found = FT.find_manifest(_data_roots(args, model))
    if found is None and not (args.weights_resnet18 or args.weights_imageaudionet):
        raise ConfigError(f"--model {args.model}: no extract.json found beside its training data (looked in: "
                          f"{', '.join(_data_roots(args, model)) or 'nowhere recorded'}); pass --data ROOT (the "
                          "l2l-extract output it was trained on) or the networks (--weights_resnet18 / "
                          "--weights_imageaudionet)")
    classes = read_classes(args.classes) if args.classes else (found[1].get("classes") if found else None)
    num_classes = model.settings.model.num_classes
    if classes is not None and len(classes) != num_classes:
        where = f"--classes {args.classes}" if args.classes else f"{found[0]} (its class names)"
        raise ConfigError(f"{where}: {len(classes)} classes, but --model {args.model} has {num_classes}")
    spec = FT.spec_from(found, weights_resnet18=args.weights_resnet18,
                        weights_imageaudionet=args.weights_imageaudionet, video_model=args.video_model,
                        weights_video_model=args.weights_video_model, precision=args.precision,
                        seed=args.network_seed, frame_size=args.frame_size, crop=args.crop,
                        calibration=tuple(args.calibration) if args.calibration else None)
    variant = model.settings.variant
    if VIDEO_DIR in variant.feature_dirs and not spec.video_model:
        raise ConfigError(f"--model {args.model} is a {variant.title} model: it reads the video model's features; "
                          "give --video_model (and --weights_video_model), or --data with an extract.json that "
                          "records them")
    videos = video_files(args.videos)
    if not videos:
        raise ConfigError(f"no video files in {' '.join(args.videos)}")
    loaded_nets = FT.load(spec)
    if found is not None and spec.precision != found[1].get("precision"):
        print(f"note: features in {spec.precision} precision; the training features were made in "
              f"{found[1].get('precision')}")
    with tempfile.TemporaryDirectory(prefix="l2l-predict-") as tmp:
        out = Path(args.out) if args.out else None
        cache = (out if out else Path(tmp)) / FT.CACHE_DIR
        with writing(out or tmp, "--out"):
            records, clock = predict(videos, spec, loaded_nets, model, cache, classes, args)
            print(present.table(records, args.top_k))
            done = [r for r in records if "skipped" not in r]
            print(f"{len(done)} video(s), {sum(r['num_clips'] for r in done)} clips; skipped {len(records) - len(done)}"
                  f"; seconds: decode {clock.decode_s:.2f} (summed over threads), networks {clock.networks_s:.2f} "
                  f"({clock.network_batches} batches), policy {clock.policy_s:.2f} (+ {clock.compile_s:.2f} "
                  "compiling)")
            if out:
                present.write_jsonl(out / JSONL, records)
                print(f"wrote {out / JSONL}")
                if args.plot:
                    (out / TIMELINES).mkdir(exist_ok=True)
                    for r in done:
                        present.plot(out / TIMELINES / f"{_stem(r)}.png", r, variant.name)
                    print(f"wrote {len(done)} timeline(s) to {out / TIMELINES}")
    return 0


def _stem(rec: dict) -> str:
    return f"{Path(rec['video']).stem}-{rec['sha256_prefix'][:8]}"


def predict(videos: Sequence[str], spec: FT.FeatureSpec, nets: FT.LoadedNetworks, model: Model, cache: Path,
            classes: list[str] | None, args: argparse.Namespace) -> tuple[list[dict], FT.Clock]:
    """Features (cached), the policy, and one record per video (in the order given)."""
    clock = FT.Clock()
    feats = FT.featurise(videos, spec, nets, cache, clock, batch_size=args.network_batch_size,
                         workers=args.workers, progress=not args.no_progress, max_seconds=args.max_seconds)
    names = list(dict.fromkeys(feats.names.values()))
    outputs = {}
    if names:
        policy = Policy(model.settings, model.loaded.variables)
        lengths = [feats.lengths[n] for n in names]
        res = policy.run(feats.root, names, lengths, clock, progress=not args.no_progress)
        outputs = dict(zip(names, res.rows, strict=True))
    fresh_clips = sum(feats.lengths[n] for v, n in feats.names.items() if v not in feats.cached) or 1
    all_clips = sum(feats.lengths[n] for n in feats.names.values()) or 1
    records = []
    for v in videos:
        if v in feats.skipped:
            records.append(present.skipped_record(v, feats.skipped[v]))
            continue
        n = feats.names[v]
        t = feats.lengths[n]
        share = 0.0 if v in feats.cached else t / fresh_clips
        timing = {"decode": clock.decode_s * share, "networks": clock.networks_s * share,
                  "policy": clock.policy_s * t / all_clips}
        records.append(present.record(v, n, t, outputs[n], model.settings.variant.name, classes, top_k=args.top_k,
                                      subsample=model.settings.loader.subsample,
                                      mean_start=model.settings.model.mean_feature_as_start, timing=timing,
                                      cached=v in feats.cached, silent=v in feats.silent))
    return records, clock


if __name__ == "__main__":
    sys.exit(main())
