"""`l2l-finetune`: fit upstream's ImageAudioNet (fusion net + classifier) on extracted clip features, and write
the imageAudio features the preview model's pickles name.

    l2l-finetune --data ROOT --num_classes C --out DIR [--epochs 10] [--lr 1e-3] [--batch_size 256]
                 [--clips_per_video 0] [--seed 0] [--name NAME] [--splits train val] [--feature_root DIR]
                 [--skip_bad_videos] [--overwrite] [--debug]

Upstream starts the preview policy from a released, fine-tuned image-audio network (``ImageAudioNet_*.pth``).
For features made by `l2l-extract` there is none; this fits one the same way the demo does: every clip of a
training video (``ROOT/train.pkl``, image_features/ + audio_features/) gets its video's label, and
`l2l_jax.model.ImageAudioClassifier` (cat(image, audio) -> fc1 -> ReLU -> fc2 -> classifier) is trained with
Adam on the clips' cross entropy, jitted and data-parallel (each batch split over all devices, ``P("data")``;
the batch size is rounded up to a multiple of the device count): `l2l_jax.video.finetune.fit_imageaudionet`,
the one fit of the project (the demo's too).

Writes

- ``DIR/ImageAudioNet_<name>.pth``: upstream's checkpoint format (``{"model": state dict, "epoch", "namespace"}``),
  what upstream's ``--weights_audioImageModel`` takes (``<name>`` defaults to ROOT's folder name);
- ``DIR/imageaudionet/``: the converted model directory (variant ``imageaudionet``) that l2l-train's
  ``--weights_audioImageModel`` accepts as well;
- ``ROOT/imageAudio_features/<video>.npy``: the fusion net's 512-wide output for every clip of every video of
  the ``--splits`` pickles (float32 (T, 512), written atomically), the files upstream's pickles point at;
- ``DIR/finetune.json``: settings, clip counts and the train (and val, when ``ROOT/val.pkl`` exists) clip
  accuracy;
- ``DIR/checkpoints/<epoch>/``, ``DIR/settings.json``: the run directory of `l2l_jax.runkit`, as l2l-train
  and l2l-distill keep theirs: checksummed checkpoints after every epoch (the newest two kept; a damaged
  newest one is reported, moved aside to ``checkpoints/corrupt-<epoch>-<time>`` and the previous one used),
  and the record of what they were fit on (the train pickle's SHA-256, a digest of its feature files'
  fingerprints, the flags that shape the fit: ``--num_classes``, ``--lr``, ``--batch_size``,
  ``--clips_per_video``, ``--seed``, ``--skip_bad_videos``). Rerunning the same command resumes after the
  newest checkpoint and ends with the same weights as an uninterrupted fit; a rerun into the same DIR on
  other data, with other settings or with fewer ``--epochs`` than done is refused before anything is
  written, naming each difference (``--overwrite`` starts the fit over, a new ``--out`` keeps the old one).

Everything is checked before any work: the flags (counts >= 1, a finite ``--lr`` in (0, 10], a seed in
[0, 2**32), a batch of at most 65536 clips, a plain ``--name``), the output paths (`l2l_jax.outputs`), every
split's features (validated; bad videos stop the program or, with ``--skip_bad_videos``, are left out), and
that the pickles' feature paths lie under ROOT (a copied ROOT needs ``--feature_root``, so the original is
never written into). One run writes into DIR at a
time (``DIR/.lock``, `l2l_jax.runkit.lock`). Parameters that become NaN or inf stop the fit (exit 2) and
are never checkpointed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from l2l_jax import checks
from l2l_jax.data.source import FileSource, open_split
from l2l_jax.errors import ConfigError
from l2l_jax.model_dir import is_model_dir, save_model_dir
from l2l_jax.outputs import atomic_write_text, output_dir, output_file, writing
from l2l_jax.programs import flags
from l2l_jax.pth_convert import export_checkpoint
from l2l_jax.runkit.checkpoints import CHECKPOINT_DIR
from l2l_jax.runkit.run import open_run
from l2l_jax.runkit.settings import SETTINGS_FILE
from l2l_jax.torch_io import write_torch_file
from l2l_jax.video.finetune import WIDTH, FusedFeatures, fit_imageaudionet, fit_settings, write_fused

MAX_COUNT = 1 << 20  # --num_classes, --epochs


def _checked_args(args: argparse.Namespace) -> None:
    """Every flag before anything is read: counts, a finite positive --lr, the seed's range, a plain --name."""
    for flag, hi in (("num_classes", MAX_COUNT), ("epochs", MAX_COUNT), ("batch_size", checks.MAX_BATCH)):
        value = getattr(args, flag)
        if value < 1:
            raise ConfigError(f"--{flag} {value}: must be at least 1")
        if value > hi:
            raise ConfigError(f"--{flag} {value}: at most {hi}" + (" clips per batch" if flag == "batch_size" else ""))
    if args.clips_per_video < 0:
        raise ConfigError(f"--clips_per_video {args.clips_per_video}: must be 0 (all clips) or more")
    checks.number_in("--lr", args.lr, 0.0, 10.0, lo_open=True, example="1e-3")
    checks.seed("--seed", args.seed)
    checks.plain_name("--name", args.name)
    for s in args.splits or []:
        if not s or s in (".", "..") or any(c in s for c in "/\\\0"):
            raise ConfigError(f"--splits {s!r}: name a split (train, val, ...: ROOT/<split>.pkl)")


def _check_outputs(out: Path, pth: Path, sources: dict[str, FileSource], root: Path, feature_root: str | None) -> None:
    """Every output path can take what will be written, and every fused feature file lies under the feature
    root that is named: ROOT, or --feature_root."""
    output_dir(out, "--out")
    away = "move it away or choose another --out"
    output_dir(out / CHECKPOINT_DIR, "--out", advice=away)
    output_file(out / "finetune.json", "--out", advice=away)
    output_file(out / SETTINGS_FILE, "--out", advice=away)
    output_file(pth, "--out", advice=f"{away} (or --name)")
    model = out / "imageaudionet"
    if model.exists() and not is_model_dir(model):
        raise ConfigError(f"--out {out}: {model} exists and is not a model directory; {away}")
    output_dir(model.parent, "--out")
    flag = f"--feature_root {Path(feature_root).absolute()}:" if feature_root is not None else f"--data {root}:"
    parents: set[Path] = set()
    for split, source in sources.items():
        for template in source.index.templates:
            target = Path(template).absolute()
            if feature_root is None and not target.is_relative_to(root):
                raise ConfigError(
                    f"--data {root}: {split}.pkl names features under {target.parent.parent}, not under {root} (a "
                    f"copied or moved folder?); pass --feature_root {root} to use the features beside the pickles "
                    f"(or --feature_root {target.parent.parent} to write into that folder)")
            if target.parent not in parents:
                output_dir(target.parent, flag, advice="move it away or choose another --feature_root")
                parents.add(target.parent)
            output_file(target, flag, advice="move it away or choose another --feature_root")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="l2l-finetune", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="feature root made by l2l-extract (train.pkl, image_features/, ...)")
    p.add_argument("--num_classes", type=int, required=True, help="number of classes C")
    flags.add_common(p, "out", out={"required": True, "help": "output directory for the .pth and the converted model"})
    p.add_argument("--epochs", type=int, default=10, help="passes over the training clips (default 10)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    p.add_argument("--batch_size", type=int, default=256, help="clips per batch, all devices (default 256)")
    p.add_argument("--clips_per_video", type=int, default=0, help="clips used per training video (0: all)")
    flags.add_common(p, "seed", seed={"help": "seed of the initialisation, clip sampling and order"})
    p.add_argument("--name", default=None, help="<name> of ImageAudioNet_<name>.pth (default: ROOT's folder name)")
    p.add_argument("--splits", nargs="+", default=None,
                   help="pickles whose videos get imageAudio features (default: train and val, those present)")
    p.add_argument("--feature_root", default=None,
                   help="replace every feature path's prefix (before imageAudio_features) with this directory "
                        "(a copied or moved ROOT); the fused features are written there")
    p.add_argument("--skip_bad_videos", action="store_true",
                   help="leave out videos whose feature files fail validation instead of stopping")
    p.add_argument("--overwrite", action="store_true",
                   help="start over: remove the checkpoints (and settings record) of an earlier fit in --out")
    p.add_argument("--no_progress", action="store_true", help="no progress bars")
    flags.add_common(p, "debug")
    return p


def _warn(line: str) -> None:
    print(f"l2l-finetune: warning: {line}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point of ``l2l-finetune``; returns the exit status (2: an input error, one line)."""
    return flags.run_program("finetune", lambda: _main(argv), argv)


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    _checked_args(args)
    root, out = Path(args.data).absolute(), Path(args.out).absolute()
    train_pkl = root / "train.pkl"
    if not train_pkl.is_file():
        raise ConfigError(f"--data {root}: no train.pkl (make it with l2l-extract)")
    splits = args.splits or [s for s in ("train", "val") if (root / f"{s}.pkl").is_file()]
    for s in splits:
        if not (root / f"{s}.pkl").is_file():
            raise ConfigError(f"--splits {s}: no {root / (s + '.pkl')}")
    if args.feature_root is not None and not Path(args.feature_root).is_dir():
        raise ConfigError(f"--feature_root {args.feature_root}: no such directory")
    name = args.name or root.name
    pth = out / f"ImageAudioNet_{name}.pth"
    progress = not args.no_progress
    opened = {s: open_split(root / f"{s}.pkl", variant="two", num_classes=args.num_classes, width=WIDTH,
                            feature_root=args.feature_root, skip_bad_videos=args.skip_bad_videos, packed=False,
                            progress=progress)
              for s in dict.fromkeys(["train", *splits])}
    source = opened["train"]
    if len(source) == 0:
        raise ConfigError(f"--data {root}: train.pkl has no usable video")
    _check_outputs(out, pth, {s: opened[s] for s in splits}, root, args.feature_root)
    settings, facts = fit_settings(train_pkl, source, vars(args))
    with open_run(out, program="l2l-finetune", settings=settings, epochs=args.epochs, overwrite=args.overwrite,
                  keep=2, model_flags="--num_classes", warn=_warn, info=facts) as ckpts:
        t0 = time.perf_counter()
        with writing(out / CHECKPOINT_DIR, "--out"):
            variables, info = fit_imageaudionet(source, args.num_classes, epochs=args.epochs,
                                                batch_size=args.batch_size, learning_rate=args.lr,
                                                clips_per_video=args.clips_per_video or None, seed=args.seed,
                                                progress=progress, checkpoints=ckpts, warn=_warn)
        if info["resumed_after"]:
            print(f"resumed after epoch {info['resumed_after']} from {out / CHECKPOINT_DIR}")
        fit_s = time.perf_counter() - t0
        meta = {"variant": "imageaudionet", "num_classes": args.num_classes, "feature_dim": WIDTH,
                "source": f"l2l-finetune on {train_pkl}", "train_clip_acc": info["train_clip_acc"]}
        ckpt = export_checkpoint(variables, meta)
        with writing(pth, "--out"):
            pth = write_torch_file(pth, ckpt.pop("model"), **ckpt)
        with writing(out / "imageaudionet", "--out"):
            model_dir = save_model_dir(out / "imageaudionet", variables, meta, overwrite=True)
        fused = FusedFeatures(variables, args.num_classes)
        written = {}
        fused_dir = Path(args.feature_root or root).absolute() / "imageAudio_features"
        for s in splits:
            with writing(fused_dir, "--feature_root" if args.feature_root else "--data"):
                written[s] = write_fused(opened[s], fused, progress=progress)
        report = {"data": str(root), "feature_root": args.feature_root, "num_classes": args.num_classes,
                  "epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size,
                  "clips_per_video": args.clips_per_video, "seed": args.seed, "train_clips": info["clips"],
                  "train_videos": len(source), "train_clip_acc_last_epoch": info["train_clip_acc"],
                  "fit_seconds": fit_s, "pth": str(pth), "model_dir": str(model_dir), "fused": written}
        with writing(out / "finetune.json", "--out"):
            atomic_write_text(out / "finetune.json", json.dumps(report, indent=1) + "\n")
    print(f"fit {info['clips']} clips, {args.epochs} epochs in {fit_s:.1f} s: train clip accuracy (last epoch) "
          f"{info['train_clip_acc']:.3f}")
    for s, w in written.items():
        print(f"{s}: {w['videos']} videos, {w['clips']} clips -> imageAudio_features; clip accuracy "
              f"{w['clip_acc']:.3f}")
    print(f"wrote {pth} and {model_dir} (--weights_audioImageModel takes either)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
