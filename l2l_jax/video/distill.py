"""`l2l-distill`: train VisualNet + AudioNet + the fusion net + classifier end to end from video files.

    l2l-distill VIDEOS --labels CSV --out DIR [--objective distill|classify] [--teacher TDIR [--teacher_head F]]
                [--temperature 4] [--num_classes C] [--weights_resnet18 PTH | --init DIR] [--epochs 10]
                [--batch_size 64] [--optimizer adam|sgd] [--lr 1e-4] [--momentum 0.9] [--weight_decay 0]
                [--frame_size 256] [--crop 224] [--random_crop] [--flip] [--precision exact|fast] [--seed 0]
                [--train_split train] [--val_split val] [--cache CDIR] [--name NAME] [--keep_checkpoints 2]

Upstream's features come from an image-audio network distilled from a video model (IMGAUD2VID) and then
fine-tuned; upstream released no code for either. This program does both stages:

- ``--objective distill``: the student (`l2l_jax.video.distill_step.Student`) learns the teacher's clip class
  probabilities (KL divergence at ``--temperature``). The teacher is given per video in upstream's layout
  (`l2l_jax.video.teacher`): logits, or features plus ``--teacher_head``.
- ``--objective classify``: cross entropy on the videos' labels (the labels CSV), e.g. after a distillation
  run (``--init`` that run's output: its classifier is kept when the class count matches, else drawn anew).

Input: the labels CSV of `l2l-extract` (``video,label[,split]``). Every video is decoded once into a clip cache
(`l2l_jax.video.clip_cache`, default ``DIR/cache``): epochs read memory maps, never decode again. Training
uses the clips of ``--train_split``; after every epoch the clips of ``--val_split`` (when the CSV has it) are
scored (top-1 agreement with the teacher, or accuracy).

Training: jitted, data-parallel over every device (state replicated, batch split over the mesh axis ``data``;
``--batch_size`` is the global batch, rounded up to a multiple of the device count); train-mode BatchNorm
statistics over the whole global batch; optax; a progress bar. Checkpoints (orbax, ``DIR/checkpoints/<epoch>``,
the newest ``--keep_checkpoints``) after every epoch; rerunning the same command resumes after the newest with
the same clip order. ``DIR/.lock`` keeps a second run out of DIR while one writes there.

Writes, into DIR:

- ``ImageAudioNet_<name>.pth``: the fusion net + classifier in upstream's checkpoint format (what upstream's
  ``--weights_audioImageModel`` and l2l-train's take), and ``imageaudionet/``, the converted directory;
- ``visualnet.pth`` and ``audionet.pth``: the trained trunks as upstream's VisualNet / AudioNet state dicts
  (``{"model": state dict}``), which ``l2l-extract --weights_imageaudionet DIR`` loads with ``imageaudionet/``
  to write image, audio and imageAudio features;
- ``metrics.jsonl`` (one line per epoch) and ``distill.json`` (settings, clip counts, final metrics).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import dataclasses
import json
import os
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from l2l_jax.errors import ConfigError
from l2l_jax.video.distill_step import abstract_train_step  # noqa: F401  (the entry point benchmarks/aot.py uses)

VISUAL_FILE, AUDIO_FILE, FUSION_DIR = "visualnet.pth", "audionet.pth", "imageaudionet"


def load_distilled(path: str | os.PathLike) -> tuple[dict, dict, dict, dict]:
    """An `l2l-distill` output directory -> (VisualNet variables, AudioNet variables, ImageAudioClassifier
    variables, its meta): ``visualnet.pth`` and ``audionet.pth`` read weights-only and strictly,
    ``imageaudionet/`` checked against its checksum."""
    from l2l_jax.errors import WeightsError
    from l2l_jax.model_dir import load_model_dir
    from l2l_jax.video import convert as C

    root = Path(path)
    missing = [n for n in (VISUAL_FILE, AUDIO_FILE, FUSION_DIR) if not (root / n).exists()]
    if missing:
        raise WeightsError(f"{root}: not an l2l-distill output (no {', '.join(missing)})")
    from l2l_jax.torch_io import read_state_dict

    visual = C.visualnet_from_state_dict(read_state_dict(root / VISUAL_FILE)[0], what=str(root / VISUAL_FILE))
    audio = C.audionet_from_state_dict(read_state_dict(root / AUDIO_FILE)[0], what=str(root / AUDIO_FILE))
    fusion, meta = load_model_dir(root / FUSION_DIR)
    if meta.get("variant") != "imageaudionet":
        raise WeightsError(f"{root / FUSION_DIR}: variant {meta.get('variant')!r}, expected imageaudionet")
    return visual, audio, fusion, meta


def write_outputs(out: Path, variables: dict, num_classes: int, name: str, meta: dict[str, Any]) -> dict[str, Path]:
    """The trained student -> ``visualnet.pth``, ``audionet.pth``, ``ImageAudioNet_<name>.pth`` and
    ``imageaudionet/`` in `out` (every file written atomically)."""
    from l2l_jax.model_dir import save_model_dir
    from l2l_jax.pth_convert import export_checkpoint
    from l2l_jax.torch_io import write_torch_file
    from l2l_jax.video import convert as C
    from l2l_jax.video.distill_step import split_variables

    visual, audio, fusion = split_variables(variables)
    paths = {"visualnet": write_torch_file(out / VISUAL_FILE, C.visualnet_to_state_dict(visual, "upstream")),
             "audionet": write_torch_file(out / AUDIO_FILE, C.audionet_to_state_dict(audio, "upstream"))}
    fmeta = {"variant": "imageaudionet", "num_classes": num_classes, "feature_dim": 512, **meta}
    ckpt = export_checkpoint(fusion, fmeta)
    paths["pth"] = write_torch_file(out / f"ImageAudioNet_{name}.pth", ckpt.pop("model"), **ckpt)
    paths["imageaudionet"] = save_model_dir(out / FUSION_DIR, fusion, fmeta, overwrite=True)
    return paths


def initial_variables(args: argparse.Namespace, num_classes: int) -> tuple[dict, str]:
    """The student's starting variables and a description: ``--init`` (an l2l-distill output),
    ``--weights_resnet18`` (ImageNet trunks) or fresh (with a warning)."""
    from l2l_jax.video.distill_step import student_variables
    from l2l_jax.video.extract import RandomWeightsWarning, network_weights

    if args.init:
        visual, audio, fusion, meta = load_distilled(args.init)
        if int(meta["num_classes"]) != num_classes:  # new classes: keep the fusion net, draw a new classifier
            fresh = student_variables(num_classes, args.seed, visual=visual, audio=audio)
            fresh["params"]["imageaudio"]["net_imageAudio"] = fusion["params"]["net_imageAudio"]
            return fresh, f"--init {args.init} (classifier drawn anew for {num_classes} classes)"
        return student_variables(num_classes, args.seed, visual=visual, audio=audio, imageaudio=fusion), \
            f"--init {args.init}"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RandomWeightsWarning)
        visual, audio, desc = network_weights(args.weights_resnet18, args.seed)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    return student_variables(num_classes, args.seed, visual=visual, audio=audio), desc


class _Batches:
    """Host batches of one epoch, read (and cropped) one ahead in a thread while the device trains."""

    def __init__(self, cache, rows: np.ndarray, targets: np.ndarray, batch_size: int, crop: int,
                 rng: np.random.Generator | None, flip: bool):
        self.cache, self.rows, self.targets = cache, rows, targets
        self.b, self.crop, self.rng, self.flip = batch_size, crop, rng, flip

    def __len__(self) -> int:
        return max(1, len(self.rows) // self.b)

    def _read(self, k: int) -> dict:
        rows = self.rows[k * self.b:(k + 1) * self.b]
        if len(rows) < self.b:  # fewer clips than one batch: repeat them to fill it
            rows = np.resize(rows, self.b)
        out = self.cache.batch(rows, self.crop, self.rng, flip=self.flip)
        out["target"] = np.asarray(self.targets[rows])
        return out

    def __iter__(self):
        with cf.ThreadPoolExecutor(1, thread_name_prefix="l2l-batches") as pool:
            nxt = pool.submit(self._read, 0)
            for k in range(len(self)):
                batch = nxt.result()
                if k + 1 < len(self):
                    nxt = pool.submit(self._read, k + 1)
                yield batch


def evaluate(cache, rows: np.ndarray, targets: np.ndarray, variables, eval_step, mesh, batch_size: int, crop: int,
             objective: str) -> float:
    """Top-1 agreement with the teacher (distill) or accuracy (classify) over `rows`, centre crops, eval mode."""
    from l2l_jax import parallel

    hits = 0
    for s in range(0, len(rows), batch_size):
        part = rows[s:s + batch_size]
        b = cache.batch(np.resize(part, batch_size), crop)
        out = eval_step(variables, *(parallel.shard_batch({"f": b["frames"], "m": b["logmel"]}, mesh).values()))
        pred = np.asarray(out["logits"]).argmax(-1)[:len(part)]
        want = np.asarray(targets[part])
        want = want.argmax(-1) if objective == "distill" else want
        hits += int((pred == want).sum())
    return hits / max(len(rows), 1)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="l2l-distill", description=__doc__.split("\n\n")[1].strip(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("videos", help="folder holding the video files the labels CSV names")
    p.add_argument("--labels", required=True, help="CSV: video,label[,split] (as l2l-extract takes)")
    p.add_argument("--out", required=True, help="output directory (weights, checkpoints, logs, the clip cache)")
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
    p.add_argument("--precision", choices=["exact", "fast"], default="exact",
                   help="exact: float32 convolutions; fast: bfloat16 operands (GPU/TPU)")
    p.add_argument("--seed", type=int, default=0, help="seed of fresh layers, clip order, crops (default 0)")
    p.add_argument("--train_split", default="train", help="split trained on (default train)")
    p.add_argument("--val_split", default="val", help="split scored after every epoch (default val, if present)")
    p.add_argument("--cache", default=None, help="clip cache folder (default OUT/cache)")
    p.add_argument("--name", default=None, help="<name> of ImageAudioNet_<name>.pth (default: OUT's folder name)")
    p.add_argument("--keep_checkpoints", type=int, default=2, help="newest checkpoints kept (default 2)")
    p.add_argument("--workers", type=int, default=4, help="decoding threads while caching (default 4)")
    p.add_argument("--no_progress", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true", help="traceback instead of a one-line error")
    return p


def check_args(args: argparse.Namespace) -> None:
    """Flag checks before anything is read or compiled (ConfigError naming the flag)."""
    from l2l_jax.outputs import output_dir

    if not Path(args.videos).is_dir():
        raise ConfigError(f"VIDEOS {args.videos}: not a directory")
    for flag in ("epochs", "batch_size", "frame_size", "crop", "keep_checkpoints", "workers"):
        if getattr(args, flag) < 1:
            raise ConfigError(f"--{flag} must be at least 1, not {getattr(args, flag)}")
    if args.crop > args.frame_size:
        raise ConfigError(f"--crop {args.crop} is larger than --frame_size {args.frame_size}")
    if not (args.lr > 0 and np.isfinite(args.lr)):
        raise ConfigError(f"--lr must be a positive number, not {args.lr}")
    if not (args.temperature > 0 and np.isfinite(args.temperature)):
        raise ConfigError(f"--temperature must be a positive number, not {args.temperature}")
    if args.weight_decay < 0 or args.momentum < 0:
        raise ConfigError("--weight_decay and --momentum must be >= 0")
    if args.objective == "distill" and not args.teacher:
        raise ConfigError("--objective distill needs --teacher (a folder of per-video teacher .npy files)")
    if args.objective == "classify" and (args.teacher or args.teacher_head):
        raise ConfigError("--teacher and --teacher_head are for --objective distill")
    if args.teacher_head and not args.teacher:
        raise ConfigError("--teacher_head needs --teacher")
    if args.num_classes is not None and (args.num_classes < 1 or args.objective == "distill"):
        raise ConfigError("--num_classes: a positive count, for --objective classify (distill takes the teacher's)")
    if args.init and args.weights_resnet18:
        raise ConfigError("--init and --weights_resnet18 both give the trunks' weights; pass one")
    if args.init and not Path(args.init).is_dir():
        raise ConfigError(f"--init {args.init}: not a directory (an l2l-distill output)")
    if args.weights_resnet18 and not Path(args.weights_resnet18).is_file():
        raise ConfigError(f"--weights_resnet18 {args.weights_resnet18}: no such file")
    output_dir(args.out, "--out")
    if args.cache:
        output_dir(args.cache, "--cache")


def main(argv: Sequence[str] | None = None) -> int:
    from l2l_jax.programs.flags import run_program

    return run_program("distill", lambda: _main(argv), argv)


def _main(argv: Sequence[str] | None) -> int:
    from l2l_jax.training.lock import RunLock

    args = build_parser().parse_args(argv)
    check_args(args)
    out = Path(args.out).absolute()
    lock = RunLock(out)
    try:
        lock.acquire()
    except ConfigError as e:
        raise ConfigError(str(e).replace("--checkpoint_path", "--out")) from None
    try:
        for w in lock.warnings:
            print(f"warning: {w.replace('--checkpoint_path', '--out')}", file=sys.stderr)
        return _run(args, out)
    finally:
        lock.release()


def _targets(args: argparse.Namespace, cache, out: Path) -> tuple[np.ndarray, int]:
    """(per-clip targets, class count): the teacher's logits (``--objective distill``, cached in DIR) or the
    videos' labels (``classify``)."""
    if args.objective == "distill":
        from l2l_jax.video.teacher import read_head, teacher_logits

        head = read_head(args.teacher_head) if args.teacher_head else None
        targets = teacher_logits(args.teacher, [v.name for v in cache.videos], [v.clips for v in cache.videos],
                                 out / "teacher_logits.npy", head)
        return targets, targets.shape[1]
    targets = cache.labels()
    num_classes = args.num_classes or int(targets.max()) + 1
    if targets.max() >= num_classes:
        raise ConfigError(f"--num_classes {num_classes}: the labels go up to {int(targets.max())}")
    return targets, num_classes


@dataclasses.dataclass
class _Trainer:
    """The jitted steps over the device mesh, the (replicated) train state and the global batch size."""

    mesh: Any
    batch_size: int  # global: a multiple of the device count
    state: Any
    step: Any
    eval_step: Any
    init_desc: str


def _trainer(args: argparse.Namespace, num_classes: int) -> _Trainer:
    """The student, its optimizer and initial variables, replicated over every device, and the jitted steps."""
    from l2l_jax import numerics, parallel
    from l2l_jax.video import distill_step as S

    mesh = parallel.make_mesh()
    ndev = mesh.devices.size
    batch_size = -(-args.batch_size // ndev) * ndev
    policy = numerics.get(args.precision)
    model = S.Student(num_classes, policy)
    tx = S.make_optimizer(args.optimizer, args.lr, args.momentum, args.weight_decay)
    variables, init_desc = initial_variables(args, num_classes)
    state = parallel.replicate(S.init_state(variables, tx), mesh)
    step = S.jit_train_step(S.train_step_fn(model, tx, args.objective, args.temperature), mesh)
    eval_step = S.jit_eval_step(S.eval_step_fn(model), mesh)
    return _Trainer(mesh, batch_size, state, step, eval_step, init_desc)


def _resume(ckpts, trainer: _Trainer, out: Path) -> int:
    """Epochs already done: the newest checkpoint in ``DIR/checkpoints`` (restored into `trainer`), else 0."""
    import orbax.checkpoint as ocp

    from l2l_jax import parallel

    if ckpts.latest_step() is None:
        return 0
    done = int(ckpts.latest_step())
    try:
        restored = ckpts.restore(done, args=ocp.args.StandardRestore(parallel.to_host(trainer.state)))
    except Exception as e:  # orbax raises many types for a damaged or foreign checkpoint
        raise ConfigError(f"--out {out}: its checkpoint {done} does not restore ({type(e).__name__}); another "
                          "run's settings or a damaged file: use another --out or delete checkpoints/") from None
    trainer.state = parallel.replicate(restored, trainer.mesh)
    print(f"resumed after epoch {done} from {out / 'checkpoints'}")
    return done


def _train_epoch(args: argparse.Namespace, epoch: int, trainer: _Trainer, cache, train_rows: np.ndarray,
                 targets: np.ndarray, bar, out: Path) -> dict[str, Any]:
    """One pass over the train clips (seeded order and augmentation); returns the epoch's metrics. A loss that
    is not finite stops the run."""
    from l2l_jax import parallel

    rng = np.random.default_rng([args.seed, epoch])
    order = rng.permutation(train_rows)
    aug = rng if args.random_crop or args.flip else None
    batch_size = trainer.batch_size
    batches = _Batches(cache, order, targets, batch_size, args.crop, aug, args.flip)
    t0 = time.perf_counter()
    loss_sum, hits, seen = 0.0, 0, 0
    for batch in batches:
        trainer.state, m = trainer.step(trainer.state, parallel.shard_batch(batch, trainer.mesh))
        loss = float(m["loss"])
        if not np.isfinite(loss):
            from l2l_jax.errors import NonFiniteLossError

            raise NonFiniteLossError(f"l2l-distill: the loss became {loss} in epoch {epoch + 1}; lower --lr "
                                     f"(last good checkpoint: {out / 'checkpoints'})")
        loss_sum += loss * batch_size
        hits += int(m["hits"])
        seen += batch_size
        bar.update(1)
        bar.set_postfix(epoch=epoch + 1, loss=f"{loss:.3f}")
    seconds = time.perf_counter() - t0
    return {"epoch": epoch + 1, "loss": loss_sum / seen, "train_top1": hits / seen, "seconds": seconds,
            "clips_per_s": seen / seconds}


def _end_epoch(args: argparse.Namespace, epoch: int, state, last: dict[str, Any], ckpts, out: Path, bar) -> None:
    """After an epoch: its checkpoint, its line in ``metrics.jsonl`` and on the terminal."""
    import orbax.checkpoint as ocp

    ckpts.save(epoch + 1, args=ocp.args.StandardSave(state))
    ckpts.wait_until_finished()
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps(last) + "\n")
    bar.write(f"epoch {epoch + 1}: loss {last['loss']:.4f}, train top-1 {last['train_top1']:.3f}"
              + (f", {args.val_split} top-1 {last['val_top1']:.3f}" if "val_top1" in last else "")
              + f" ({last['clips_per_s']:.1f} clips/s)")


def _print_summary(args: argparse.Namespace, out: Path, cache, paths: dict[str, Path], last: dict[str, Any],
                   done: int, train_clips: int) -> None:
    """The run's last lines: skipped videos, the last epoch's scores, the files written."""
    what = "agreement with the teacher" if args.objective == "distill" else "accuracy"
    if cache.skipped:
        print(f"skipped {len(cache.skipped)} video(s): " + "; ".join(f"{k}: {v}" for k, v in cache.skipped.items()))
    if last:
        print(f"trained {args.epochs - done} epoch(s) on {train_clips} clips; last epoch: train {what} "
              f"{last['train_top1']:.3f}" + (f", {args.val_split} {what} {last['val_top1']:.3f}"
                                               if "val_top1" in last else ""))
    print(f"wrote {paths['pth']}, {paths['imageaudionet']} and the trunks {paths['visualnet'].name}, "
          f"{paths['audionet'].name} in {out} (l2l-extract --weights_imageaudionet {out})")


def _run(args: argparse.Namespace, out: Path) -> int:
    """The program once DIR is locked: clip cache, targets, training (resumed), outputs, report."""
    import orbax.checkpoint as ocp
    from tqdm.auto import tqdm

    from l2l_jax import parallel
    from l2l_jax.outputs import atomic_write_text
    from l2l_jax.video.clip_cache import build_cache
    from l2l_jax.video.extract import read_labels

    progress = not args.no_progress
    t_start = time.perf_counter()
    entries, _ = read_labels(args.labels, None)
    cache = build_cache(Path(args.videos), entries, Path(args.cache).absolute() if args.cache else out / "cache",
                        frame_size=args.frame_size, workers=args.workers, progress=progress)
    train_rows = cache.rows(args.train_split)
    val_rows = cache.rows(args.val_split)
    if len(train_rows) == 0:
        raise ConfigError(f"--labels {args.labels}: no decodable video in --train_split {args.train_split}")
    targets, num_classes = _targets(args, cache, out)
    trainer = _trainer(args, num_classes)
    ndev, batch_size = trainer.mesh.devices.size, trainer.batch_size

    ckpts = ocp.CheckpointManager((out / "checkpoints").absolute(), options=ocp.CheckpointManagerOptions(
        max_to_keep=args.keep_checkpoints, create=True))
    done = _resume(ckpts, trainer, out)
    per_epoch = max(1, len(train_rows) // batch_size)
    bar = tqdm(total=args.epochs * per_epoch, initial=min(done, args.epochs) * per_epoch, unit="step",
               desc=f"l2l-distill ({args.objective}, {ndev} device{'s' if ndev > 1 else ''})", disable=not progress)
    last: dict[str, Any] = {}
    train_s = 0.0
    for epoch in range(done, args.epochs):
        last = _train_epoch(args, epoch, trainer, cache, train_rows, targets, bar, out)
        train_s += last["seconds"]
        if len(val_rows):
            state = trainer.state
            variables_now = {"params": state["params"], "batch_stats": state["batch_stats"]}
            last["val_top1"] = evaluate(cache, val_rows, targets, variables_now, trainer.eval_step, trainer.mesh,
                                        batch_size, args.crop, args.objective)
        _end_epoch(args, epoch, trainer.state, last, ckpts, out, bar)
    bar.close()
    ckpts.close()
    state = trainer.state
    host = parallel.to_host({"params": state["params"], "batch_stats": state["batch_stats"]})
    name = args.name or out.name
    paths = write_outputs(out, host, num_classes, name, {"source": f"l2l-distill --objective {args.objective} on "
                                                                   f"{args.labels}"})
    report = {"objective": args.objective, "num_classes": num_classes, "init": trainer.init_desc, "devices": ndev,
              "batch_size": batch_size, "epochs": args.epochs, "resumed_after": done,
              "train_clips": int(len(train_rows)), "val_clips": int(len(val_rows)), "last_epoch": last,
              "train_seconds": train_s, "total_seconds": time.perf_counter() - t_start,
              "skipped_videos": cache.skipped, "outputs": {k: str(v) for k, v in paths.items()},
              "settings": {k: v for k, v in vars(args).items() if k not in ("debug", "no_progress")}}
    atomic_write_text(out / "distill.json", json.dumps(report, indent=1) + "\n")
    _print_summary(args, out, cache, paths, last, done, len(train_rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["abstract_train_step", "build_parser", "evaluate", "initial_variables", "load_distilled", "main",
           "write_outputs"]
