"""`l2l-distill`: train VisualNet + AudioNet + the fusion net + classifier end to end from video files.

    l2l-distill VIDEOS --labels CSV --out DIR [--objective distill|classify] [--teacher TDIR [--teacher_head F]]
                [--temperature 4] [--num_classes C] [--weights_resnet18 PTH | --init DIR] [--epochs 10]
                [--batch_size 64] [--optimizer adam|sgd] [--lr 1e-4] [--momentum 0.9] [--weight_decay 0]
                [--frame_size 256] [--crop 224] [--random_crop] [--flip] [--precision exact|fast] [--seed 0]
                [--train_split train] [--val_split val] [--cache CDIR] [--name NAME] [--keep_checkpoints 2]
                [--overwrite]

Upstream's features come from an image-audio network distilled from a video model (IMGAUD2VID) and then
fine-tuned; upstream released no code for either. This program does both stages:

- ``--objective distill``: the student (`l2l_jax.video.distill_step.Student`) learns the teacher's clip class
  probabilities (KL divergence at ``--temperature``). The teacher is given per video in upstream's layout
  (`l2l_jax.video.teacher`): logits, or features plus ``--teacher_head``.
- ``--objective classify``: cross entropy on the videos' labels (the labels CSV), e.g. after a distillation
  run (``--init`` that run's output: its classifier is kept when the class count matches, else drawn anew).

Input: the labels CSV of `l2l-extract` (``video,label[,split]``). Every video of ``--train_split`` and
``--val_split`` is decoded once into a clip cache (`l2l_jax.video.clip_cache`, default ``DIR/cache``): epochs
read memory maps, never decode again. A cache shared with other runs (``--cache``) gives this run the clips of
the videos its CSV lists, with the CSV's labels and splits, and nothing else; runs adding videos to one cache at
once take turns. Training uses the clips of ``--train_split``; after every epoch the clips of ``--val_split``
(default ``val``, when the CSV has it) are scored (top-1 agreement with the teacher, or accuracy).

Training: jitted, data-parallel over every device (state replicated, batch split over the mesh axis ``data``;
``--batch_size`` is the global batch, rounded up to a multiple of the device count); train-mode BatchNorm
statistics over the whole global batch; optax; a progress bar.

DIR is a run directory of `l2l_jax.runkit`, as l2l-train's and l2l-finetune's are: ``DIR/.lock`` keeps a
second run out while one writes there; checksummed checkpoints after every epoch (``DIR/checkpoints/<epoch>``,
the newest ``--keep_checkpoints``; a damaged newest one is reported, moved aside to
``checkpoints/corrupt-<epoch>-<time>`` and the previous one used); rerunning the same command resumes after
the newest with the same clip order and ends with the parameters of an uninterrupted run. ``DIR/settings.json``
records what the checkpoints depend on: ``--objective``, ``--optimizer``, ``--lr`` (``--momentum`` with SGD),
``--temperature`` (distill), ``--weight_decay``, ``--seed``, ``--batch_size``, ``--frame_size``, ``--crop``,
``--random_crop``, ``--flip``, ``--precision``, the training videos (and their labels, classify), the
student's class count, the teacher files of the training videos and ``--teacher_head`` (their SHA-256) and
the initial weights (``--init``'s file checksums, ``--weights_resnet18``'s SHA-256, or fresh). A rerun with
any of them changed, or with fewer ``--epochs`` than its checkpoints hold, is refused before any work with
one line naming each difference; ``--overwrite`` starts over (a new ``--out`` keeps the old run).

Writes, into DIR:

- ``ImageAudioNet_<name>.pth``: the fusion net + classifier in upstream's checkpoint format (what upstream's
  ``--weights_audioImageModel`` and l2l-train's take), and ``imageaudionet/``, the converted directory;
- ``visualnet.pth`` and ``audionet.pth``: the trained trunks as upstream's VisualNet / AudioNet state dicts
  (``{"model": state dict}``), which ``l2l-extract --weights_imageaudionet DIR`` loads with ``imageaudionet/``
  to write image, audio and imageAudio features;
- ``metrics.jsonl`` (one line per epoch) and ``distill.json`` (settings, clip counts, final metrics, and the
  SHA-256 of every file above, written last: `l2l_jax.video.distilled`, which the readers of DIR check).

Checked before any work (decoding, caching, compiling), each problem one line naming the flag and exit status
2: every number (counts and sizes bounded, ``--lr``, ``--momentum``, ``--weight_decay``, ``--temperature``
finite and in range, ``--seed`` in [0, 2**32)), a plain ``--name``, the split names (present in the CSV), the
teacher (``--teacher_head`` a linear head of at least one class; a teacher file of every video, each of the
same width, at least 1), ``--init`` (its files checked against its checksums) and the checkpoints in DIR
(made with this run's settings, above).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from l2l_jax import checks
from l2l_jax.errors import ConfigError
from l2l_jax.outputs import output_dir, writing
from l2l_jax.programs import flags
from l2l_jax.runkit.checkpoints import RunCheckpoints
from l2l_jax.runkit.metrics import MetricsFile
from l2l_jax.runkit.run import epochs_bar, open_run
from l2l_jax.video import distill as DL
from l2l_jax.video.clip_cache import ClipSelection, build_cache
from l2l_jax.video.distill_step import split_variables
from l2l_jax.video.distilled import REPORT_FILE, load_distilled, write_distilled, write_report
from l2l_jax.video.labels import Entry, read_labels
from l2l_jax.video.teacher import check_teacher, read_head, teacher_logits
from l2l_jax.video.trunks import RandomWeightsWarning

MAX_COUNT = 1 << 20  # --epochs, --num_classes
MAX_FRAME = 4096  # pixels: --frame_size, --crop
MAX_WORKERS = 256
MAX_KEEP = 1000  # --keep_checkpoints


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="l2l-distill", description=__doc__.split("\n\n")[1].strip(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("videos", help="folder holding the video files the labels CSV names")
    p.add_argument("--labels", required=True, help="CSV: video,label[,split] (as l2l-extract takes)")
    flags.add_common(p, "out", out={"required": True,
                                    "help": "output directory (weights, checkpoints, logs, the clip cache)"})
    p.add_argument("--objective", choices=["distill", "classify"], default="distill",
                   help="distill: KL to the teacher's clip probabilities; classify: cross entropy on the labels")
    p.add_argument("--teacher", default=None, help="folder of per-video teacher .npy files (logits or features)")
    p.add_argument("--teacher_head", default=None, help="linear head for teacher features (.npz weight/bias or .pth)")
    p.add_argument("--temperature", type=float, default=4.0, help="distillation temperature (default 4)")
    p.add_argument("--num_classes", type=int, default=None, help="classify: classes (default: largest label + 1)")
    p.add_argument("--weights_resnet18", default=None, help="ImageNet resnet18 .pth for both trunks")
    p.add_argument("--init", default=None, help="start from an l2l-distill output directory")
    p.add_argument("--epochs", type=int, default=10, help="passes over the training clips (default 10)")
    p.add_argument("--batch_size", type=int, default=64, help="clips per step, all devices (default 64)")
    p.add_argument("--optimizer", choices=["adam", "sgd"], default="adam", help="default adam")
    p.add_argument("--lr", type=float, default=1e-4, help="learning rate (default 1e-4)")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    p.add_argument("--weight_decay", type=float, default=0.0, help="L2 weight decay (default 0)")
    p.add_argument("--frame_size", type=int, default=256, help="cached frames: shorter side and square (256)")
    p.add_argument("--crop", type=int, default=224, help="crop fed to VisualNet (default 224)")
    p.add_argument("--random_crop", action="store_true", help="random crops in training (else the centre)")
    p.add_argument("--flip", action="store_true", help="random horizontal flips in training")
    flags.add_common(p, "precision")
    flags.add_common(p, "seed", seed={"help": "seed of fresh layers, clip order, crops (default 0)"})
    p.add_argument("--train_split", default="train", help="split trained on (default train)")
    p.add_argument("--val_split", default=None, help="split scored after every epoch (default val, if present)")
    p.add_argument("--cache", default=None, help="clip cache folder (default OUT/cache)")
    p.add_argument("--name", default=None, help="<name> of ImageAudioNet_<name>.pth (default: OUT's folder name)")
    p.add_argument("--keep_checkpoints", type=int, default=2, help="newest checkpoints kept (default 2)")
    p.add_argument("--overwrite", action="store_true",
                   help="start over: remove the checkpoints (and settings record) of an earlier run in --out")
    p.add_argument("--workers", type=int, default=4, help="decoding threads while caching (default 4)")
    p.add_argument("--no_progress", action="store_true", help="no progress bars")
    flags.add_common(p, "debug")
    return p


def check_args(args: argparse.Namespace) -> None:
    """Flag checks before anything is read or compiled (ConfigError naming the flag)."""
    if not Path(args.videos).is_dir():
        raise ConfigError(f"VIDEOS {args.videos}: not a directory")
    for flag, hi in (("epochs", MAX_COUNT), ("batch_size", checks.MAX_BATCH), ("frame_size", MAX_FRAME),
                     ("crop", MAX_FRAME), ("keep_checkpoints", MAX_KEEP), ("workers", MAX_WORKERS)):
        checks.count_in(f"--{flag}", getattr(args, flag), hi)
    if args.crop > args.frame_size:
        raise ConfigError(f"--crop {args.crop} is larger than --frame_size {args.frame_size}")
    checks.number_in("--lr", args.lr, 0.0, 10.0, lo_open=True, example="1e-4")
    checks.number_in("--temperature", args.temperature, 0.0, 100.0, lo_open=True, example="4")
    checks.number_in("--momentum", args.momentum, 0.0, 1.0, hi_open=True, example="0.9")
    checks.number_in("--weight_decay", args.weight_decay, 0.0, 1.0, hi_open=True, example="1e-4")
    checks.seed("--seed", args.seed)
    checks.plain_name("--name", args.name)
    if args.objective == "distill" and not args.teacher:
        raise ConfigError("--objective distill needs --teacher (a folder of per-video teacher .npy files)")
    if args.objective == "classify" and (args.teacher or args.teacher_head):
        raise ConfigError("--teacher and --teacher_head are for --objective distill")
    if args.teacher_head and not args.teacher:
        raise ConfigError("--teacher_head needs --teacher")
    if args.num_classes is not None and args.objective == "distill":
        raise ConfigError("--num_classes: a positive count, for --objective classify (distill takes the teacher's)")
    if args.num_classes is not None:
        checks.count_in("--num_classes", args.num_classes, MAX_COUNT)
    if args.teacher and not Path(args.teacher).is_dir():
        raise ConfigError(f"--teacher {args.teacher}: not a directory (a folder of per-video teacher .npy files)")
    if args.init and args.weights_resnet18:
        raise ConfigError("--init and --weights_resnet18 both give the trunks' weights; pass one")
    if args.init and not Path(args.init).is_dir():
        raise ConfigError(f"--init {args.init}: not a directory (the output folder of an earlier run)")
    if args.weights_resnet18 and not Path(args.weights_resnet18).is_file():
        raise ConfigError(f"--weights_resnet18 {args.weights_resnet18}: no such file")
    output_dir(args.out, "--out")
    if args.cache:
        output_dir(args.cache, "--cache")


@dataclasses.dataclass
class _Plan:
    """What the checks before any work found: the CSV's entries to use, the val split, the class count, the
    teacher's head and the ``--init`` networks."""

    entries: list[Entry]
    val_split: str
    num_classes: int
    head: tuple[np.ndarray, np.ndarray] | None
    init: tuple[dict, dict, dict, dict] | None
    trained: list[Entry]  # the videos of --train_split that are in VIDEOS


def _entries(args: argparse.Namespace) -> tuple[list[Entry], str]:
    """The CSV's videos of ``--train_split`` and ``--val_split`` (both checked: present in the CSV; the
    default val split may be absent) and the val split's name."""
    entries, _ = read_labels(args.labels, None)
    present = sorted({e.split for e in entries})
    for flag, split in (("--train_split", args.train_split), ("--val_split", args.val_split)):
        if split is not None and split not in present:
            raise ConfigError(f"{flag} {split}: the labels CSV {args.labels} has no video in that split (its "
                              f"splits: {', '.join(present)})")
    val_split = args.val_split or "val"
    return [e for e in entries if e.split in (args.train_split, val_split)], val_split


def _plan(args: argparse.Namespace) -> _Plan:
    """Everything checked before any work: labels, splits, teacher, class count and --init."""
    entries, val_split = _entries(args)
    head = None
    present = [e for e in entries if (Path(args.videos) / e.video).is_file()]
    trained = [e for e in present if e.split == args.train_split]
    if args.objective == "distill":
        head = read_head(args.teacher_head) if args.teacher_head else None
        if not trained:
            raise ConfigError(f"--labels {args.labels}: no video of --train_split {args.train_split} is in VIDEOS "
                              f"{args.videos}")
        num_classes = check_teacher(args.teacher, [e.name for e in present], head)
    else:
        top = max(e.label for e in entries)
        num_classes = args.num_classes or top + 1
        if top >= num_classes:
            raise ConfigError(f"--num_classes {num_classes}: the labels go up to {top}")
    init = load_distilled(args.init, "--init") if args.init else None
    return _Plan(entries, val_split, num_classes, head, init, trained)


def _initial_variables(args: argparse.Namespace, plan: _Plan) -> tuple[dict, str]:
    """The student's starting variables (`DL.initial_variables`); a warning line for random trunks."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RandomWeightsWarning)
        variables, desc = DL.initial_variables(plan.num_classes, args.seed, weights_resnet18=args.weights_resnet18,
                                               init=plan.init, init_path=args.init or "")
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    return variables, desc


def _recorded(args: argparse.Namespace, plan: _Plan) -> dict[str, Any]:
    """What the checkpoints in DIR depend on (`l2l_jax.runkit.settings`): the flags of the optimizer, the
    objective and the data the steps see, and digests of the teacher files (and head) of the training videos,
    of the training videos themselves (their labels too, for classify) and of the initial weights."""
    settings: dict[str, Any] = {"objective": args.objective, "optimizer": args.optimizer, "lr": args.lr}
    if args.optimizer == "sgd":
        settings["momentum"] = args.momentum
    if args.objective == "distill":
        settings["temperature"] = args.temperature
    settings.update({k: getattr(args, k) for k in ("weight_decay", "seed", "batch_size", "frame_size", "crop",
                                                   "random_crop", "flip", "precision")})
    videos = hashlib.sha256(b"l2l-distill-videos:1")
    for e in sorted(plan.trained, key=lambda e: e.video):
        videos.update(f"{e.video}:{e.label if args.objective == 'classify' else ''};".encode())
    settings["training videos"] = videos.hexdigest()
    settings["student classes"] = plan.num_classes
    if args.objective == "distill":
        files = {e.name: Path(args.teacher) / f"{e.name}.npy" for e in sorted(plan.trained, key=lambda e: e.name)}
        settings["teacher files"] = DL.files_digest({**files, **({"--teacher_head": args.teacher_head}
                                                                 if args.teacher_head else {})}, "teacher")
    if args.init:  # the checksums of the folder's files (checked against them by _plan)
        report = json.loads((Path(args.init) / REPORT_FILE).read_text(encoding="utf-8"))
        text = json.dumps(report["files"], sort_keys=True)
        settings["initial weights"] = hashlib.sha256(f"l2l-distill-init:{text}".encode()).hexdigest()
    elif args.weights_resnet18:
        settings["initial weights"] = DL.files_digest({"--weights_resnet18": args.weights_resnet18}, "resnet18")
    else:
        settings["initial weights"] = "fresh"
    return settings


def _warn(line: str) -> None:
    print(f"warning: {line}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point of ``l2l-distill``; returns the exit status (2: an input error, one line)."""
    return flags.run_program("distill", lambda: _main(argv), argv)


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    check_args(args)
    out = Path(args.out).absolute()
    plan = _plan(args)
    with open_run(out, program="l2l-distill", settings=_recorded(args, plan), epochs=args.epochs,
                  overwrite=args.overwrite, keep=args.keep_checkpoints, warn=_warn,
                  model_flags="--num_classes (or the teacher's classes)") as ckpts:
        return _run(args, out, plan, ckpts)


def _settings(args: argparse.Namespace) -> DL.TrainSettings:
    return DL.TrainSettings(objective=args.objective, temperature=args.temperature, optimizer=args.optimizer,
                            lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
                            batch_size=args.batch_size, crop=args.crop, random_crop=args.random_crop,
                            flip=args.flip, precision=args.precision, seed=args.seed)


def _targets(args: argparse.Namespace, clips: ClipSelection, plan: _Plan, out: Path) -> np.ndarray:
    """Per local clip: the teacher's logits (``--objective distill``, cached in DIR) or the video's label."""
    if args.objective == "distill":
        return teacher_logits(args.teacher, [v.name for v in clips.videos], [v.clips for v in clips.videos],
                              out / "teacher_logits.npy", plan.head)
    return clips.labels()


def _end_epoch(args: argparse.Namespace, epoch: int, trainer: DL.Trainer, last: dict[str, Any],
               ckpts: RunCheckpoints, metrics: MetricsFile, bar) -> None:
    """After an epoch: its line in ``metrics.jsonl`` (dropped on resume if the checkpoint is not written),
    its checkpoint, its line on the terminal."""
    metrics.write(last)
    DL.save_epoch(ckpts, epoch, trainer, last)
    bar.write(f"epoch {epoch + 1}: loss {last['loss']:.4f}, train top-1 {last['train_top1']:.3f}"
              + (f", {args.val_split or 'val'} top-1 {last['val_top1']:.3f}" if "val_top1" in last else "")
              + f" ({last['clips_per_s']:.1f} clips/s)")


def _print_summary(args: argparse.Namespace, out: Path, clips: ClipSelection, paths: dict[str, Path],
                   last: dict[str, Any], done: int, train_clips: int) -> None:
    """The run's last lines: skipped videos, the last epoch's scores, the files written."""
    what = "agreement with the teacher" if args.objective == "distill" else "accuracy"
    if clips.skipped:
        print(f"skipped {len(clips.skipped)} video(s): " + "; ".join(f"{k}: {v}" for k, v in clips.skipped.items()))
    if last:
        print(f"trained {args.epochs - done} epoch(s) on {train_clips} clips; last epoch: train {what} "
              f"{last['train_top1']:.3f}" + (f", {args.val_split or 'val'} {what} {last['val_top1']:.3f}"
                                               if "val_top1" in last else ""))
    print(f"wrote {paths['pth']}, {paths['imageaudionet']} and the trunks {paths['visualnet'].name}, "
          f"{paths['audionet'].name} in {out} (l2l-extract --weights_imageaudionet {out})")


def _train(args: argparse.Namespace, out: Path, trainer: DL.Trainer, clips: ClipSelection, rows: dict[str, Any],
           targets: np.ndarray, ckpts: RunCheckpoints) -> tuple[dict[str, Any], int, float]:
    """The epochs not yet done (resumed after the newest checkpoint that restores): (last epoch's metrics,
    epochs done before, training seconds)."""
    settings = _settings(args)
    done = DL.resume(ckpts, trainer, _warn)
    if done:
        print(f"resumed after epoch {done} from {ckpts.directory}")
    metrics = MetricsFile(out)
    metrics.keep(lambda r: isinstance(r.get("epoch"), int) and r["epoch"] <= done)  # each epoch's line once
    ndev = trainer.mesh.devices.size
    per_epoch = max(1, len(rows["train"]) // trainer.batch_size)
    bar = epochs_bar(args.epochs, done, per_epoch, desc=f"l2l-distill ({args.objective}, {ndev} "
                     f"device{'s' if ndev > 1 else ''})", show=not args.no_progress)

    def on_step(loss: float) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}")

    last: dict[str, Any] = {}
    train_s = 0.0
    metrics.open()
    try:
        for epoch in range(done, args.epochs):
            last = DL.train_epoch(settings, epoch, trainer, clips, rows["train"], targets, out, on_step)
            train_s += last["seconds"]
            if len(rows["val"]):
                variables_now = {"params": trainer.state["params"], "batch_stats": trainer.state["batch_stats"]}
                last["val_top1"] = DL.evaluate(clips, rows["val"], targets, variables_now, trainer.eval_step,
                                               trainer.mesh, trainer.batch_size, args.crop, args.objective)
            _end_epoch(args, epoch, trainer, last, ckpts, metrics, bar)
    finally:
        metrics.close()
        bar.close()
    return last, done, train_s


def _run(args: argparse.Namespace, out: Path, plan: _Plan, ckpts: RunCheckpoints) -> int:
    """The program once DIR is locked and its settings checked: clip cache, targets, training (resumed),
    outputs, report."""
    t_start = time.perf_counter()
    variables, init_desc = _initial_variables(args, plan)
    cache_dir = Path(args.cache).absolute() if args.cache else out / "cache"
    with writing(cache_dir, "--cache" if args.cache else "--out"):
        clips = build_cache(Path(args.videos), plan.entries, cache_dir, frame_size=args.frame_size,
                            workers=args.workers, progress=not args.no_progress,
                            note=lambda text: print(f"note: {text}", file=sys.stderr))
    rows = {"train": clips.split_rows(args.train_split), "val": clips.split_rows(plan.val_split)}
    if len(rows["train"]) == 0:
        raise ConfigError(f"--labels {args.labels}: no decodable video in --train_split {args.train_split}")
    with writing(out / "teacher_logits.npy", "--out"):
        targets = _targets(args, clips, plan, out)
    trainer = DL.make_trainer(plan.num_classes, _settings(args), variables)
    last, done, train_s = _train(args, out, trainer, clips, rows, targets, ckpts)
    visual, audio, fusion = split_variables(DL.host_variables(trainer))
    with writing(out, "--out"):
        paths = write_distilled(out, visual, audio, fusion, plan.num_classes, args.name or out.name,
                                {"source": f"l2l-distill --objective {args.objective} on {args.labels}"})
    ndev = trainer.mesh.devices.size
    settings = {k: v for k, v in vars(args).items() if k not in ("debug", "no_progress")}
    report = {"objective": args.objective, "num_classes": plan.num_classes, "init": init_desc,
              "devices": ndev, "batch_size": trainer.batch_size, "epochs": args.epochs, "resumed_after": done,
              "train_clips": int(len(rows["train"])), "val_clips": int(len(rows["val"])), "last_epoch": last,
              "train_seconds": train_s, "total_seconds": time.perf_counter() - t_start,
              "skipped_videos": clips.skipped, "outputs": {k: str(v) for k, v in paths.items()},
              "settings": {**settings, "val_split": plan.val_split}}
    with writing(out / "distill.json", "--out"):
        write_report(out, report, paths)
    _print_summary(args, out, clips, paths, last, done, len(rows["train"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
