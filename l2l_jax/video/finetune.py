"""`l2l-finetune`: fit upstream's ImageAudioNet (fusion net + classifier) on extracted clip features, and write
the imageAudio features the preview model's pickles name.

    l2l-finetune --data ROOT --num_classes C --out DIR [--epochs 10] [--lr 1e-3] [--batch_size 256]
                 [--clips_per_video 0] [--seed 0] [--name NAME] [--splits train val] [--debug]

Upstream starts the preview policy from a released, fine-tuned image-audio network (``ImageAudioNet_*.pth``).
For features made by `l2l-extract` there is none; this fits one the same way the demo does: every clip of a
training video (``ROOT/train.pkl``, image_features/ + audio_features/) gets its video's label, and
`l2l_jax.model.ImageAudioClassifier` (cat(image, audio) -> fc1 -> ReLU -> fc2 -> classifier) is trained with
Adam on the clips' cross entropy, jitted and data-parallel (each batch split over all devices, ``P("data")``;
the batch size is rounded up to a multiple of the device count). `fit_imageaudionet` is the one fit of the
project (`l2l_jax.pretrain` re-exports it for the demo).

Writes

- ``DIR/ImageAudioNet_<name>.pth``: upstream's checkpoint format (``{"model": state dict, "epoch", "namespace"}``),
  what upstream's ``--weights_audioImageModel`` takes (``<name>`` defaults to ROOT's folder name);
- ``DIR/imageaudionet/``: the converted model directory (variant ``imageaudionet``) that l2l-train's
  ``--weights_audioImageModel`` accepts as well;
- ``ROOT/imageAudio_features/<video>.npy``: the fusion net's 512-wide output for every clip of every video of
  the ``--splits`` pickles (float32 (T, 512), written atomically), the files upstream's pickles point at;
- ``DIR/finetune.json``: settings, clip counts and the train (and val, when ``ROOT/val.pkl`` exists) clip
  accuracy;
- ``DIR/checkpoints/<epoch>/``: orbax checkpoints after every epoch (the newest two kept); rerunning the same
  command resumes after the newest, as l2l-train does, and ends with the same weights as an uninterrupted fit.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from tqdm.auto import tqdm

from l2l_jax.data.source import FeatureSource
from l2l_jax.errors import ConfigError
from l2l_jax.model import ImageAudioClassifier, PreviewConfig, init_variables
from l2l_jax.recipe import cross_entropy

WIDTH = 512


def sample_clips(source: FeatureSource, clips_per_video: int | None, seed: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Up to `clips_per_video` random clips of every video (None or 0: all, in a random order):
    (image (N, 512), audio (N, 512), labels (N,))."""
    if len(source.keys) != 2:
        raise ValueError("the fusion net needs the two-modality (image + audio) features")
    rng = np.random.default_rng(seed)
    images, audios, labels = [], [], []
    for i in range(len(source)):
        image, audio = source.read(i)
        rows = rng.permutation(len(image))[:clips_per_video or None]
        images.append(np.asarray(image[rows], np.float32))
        audios.append(np.asarray(audio[rows], np.float32))
        labels.append(np.full(len(rows), source.labels[i], np.int32))
    return np.concatenate(images), np.concatenate(audios), np.concatenate(labels)


def _mesh_shardings(devices=None):
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    devices = list(devices if devices is not None else jax.devices())
    mesh = Mesh(np.array(devices), ("data",))
    return len(devices), NamedSharding(mesh, P("data")), NamedSharding(mesh, P())


def fit_imageaudionet(source: FeatureSource, num_classes: int, *, epochs: int = 4, batch_size: int = 256,
                      learning_rate: float = 1e-3, clips_per_video: int | None = 32, seed: int = 0,
                      progress: bool = True, devices=None,
                      checkpoint_dir: str | Path | None = None) -> tuple[dict, dict]:
    """Fit the fusion net + classifier on clip labels; returns (variables, {"train_clip_acc": ..., "clips": N}).

    Adam, `epochs` passes over the sampled clips in a seeded random order, ragged tail dropped (one compiled
    shape); each batch is split over `devices` (default all) and the parameters replicated. With
    `checkpoint_dir`, an orbax checkpoint (parameters, optimizer state, last accuracy) is written after every
    epoch, as l2l-train does, and a rerun resumes after the newest one with the same clip order, so it ends
    with the parameters an uninterrupted fit gives."""
    image, audio, labels = sample_clips(source, clips_per_video, seed)
    ndev, data, replicated = _mesh_shardings(devices)
    batch_size = -(-batch_size // ndev) * ndev
    model = ImageAudioClassifier(num_classes)
    variables = init_variables(PreviewConfig(num_classes=num_classes), "imageaudionet", jax.random.key(seed))
    tx = optax.adam(learning_rate)
    params = jax.device_put(variables["params"], replicated)
    opt_state = jax.device_put(tx.init(variables["params"]), replicated)

    @jax.jit
    def step(params, opt_state, xi, xa, y):
        def loss_fn(p):
            _, logits = model.apply({"params": p}, xi, xa)
            return cross_entropy(logits, y), logits

        (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        hits = jnp.sum(jnp.argmax(logits, -1) == y)
        return optax.apply_updates(params, updates), opt_state, loss, hits

    rng = np.random.default_rng(seed + 1)
    n = len(labels)
    per_epoch = max(1, n // batch_size)  # drop the ragged tail: one compiled shape
    acc = 0.0
    ckpts, done = _open_checkpoints(checkpoint_dir), 0
    if ckpts is not None and ckpts.latest_step() is not None:
        done = int(ckpts.latest_step())
        target = {"params": jax.device_get(params), "opt_state": jax.device_get(opt_state),
                  "acc": np.zeros((), np.float32)}
        state = ckpts.restore(done, args=ocp.args.StandardRestore(target))
        params = jax.device_put(state["params"], replicated)
        opt_state = jax.device_put(state["opt_state"], replicated)
        acc = float(state["acc"])
    bar = tqdm(total=epochs * per_epoch, initial=min(done, epochs) * per_epoch, desc="fit fusion net",
               unit="batch", disable=not progress)
    for epoch in range(epochs):
        order = rng.permutation(n)  # drawn for finished epochs too: a resumed fit sees the same order
        if epoch < done:
            continue
        hits_sum, seen = 0, 0
        for k in range(per_epoch):
            rows = order[k * batch_size:(k + 1) * batch_size]
            if len(rows) < batch_size:  # fewer clips than one batch: repeat them to fill it
                rows = np.resize(rows, batch_size)
            xi, xa, y = (jax.device_put(a[rows], data) for a in (image, audio, labels))
            params, opt_state, loss, hits = step(params, opt_state, xi, xa, y)
            hits_sum += int(hits)
            seen += len(rows)
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss):.3f}")
        acc = hits_sum / max(seen, 1)
        if ckpts is not None:
            ckpts.save(epoch + 1, args=ocp.args.StandardSave(
                {"params": params, "opt_state": opt_state, "acc": np.asarray(acc, np.float32)}))
    bar.close()
    if ckpts is not None:
        ckpts.wait_until_finished()
        ckpts.close()
    return {"params": jax.device_get(params)}, {"train_clip_acc": acc, "clips": int(n), "resumed_after": done}


def _open_checkpoints(directory: str | Path | None) -> ocp.CheckpointManager | None:
    """The fit's orbax checkpoints (the newest two kept, written atomically), or None."""
    if directory is None:
        return None
    options = ocp.CheckpointManagerOptions(max_to_keep=2, create=True)
    return ocp.CheckpointManager(Path(directory).absolute(), options=options)


class FusedFeatures:
    """The fitted ImageAudioClassifier applied to clip features in fixed-size, data-parallel batches:
    `__call__(image, audio)` -> (fused (N, 512), logits (N, C)) as numpy."""

    def __init__(self, variables: dict, num_classes: int, *, batch_size: int = 1024, devices=None):
        ndev, self.data, replicated = _mesh_shardings(devices)
        self.batch_size = -(-batch_size // ndev) * ndev
        model = ImageAudioClassifier(num_classes)
        self.variables = jax.device_put({"params": variables["params"]}, replicated)
        self._apply = jax.jit(model.apply)

    def __call__(self, image: np.ndarray, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n, b = len(image), self.batch_size
        fused, logits = [], []
        for s in range(0, n, b):
            xi, xa = (np.asarray(x[s:s + b], np.float32) for x in (image, audio))
            m = len(xi)
            if m < b:
                pad = np.zeros((b - m, xi.shape[1]), np.float32)
                xi, xa = np.concatenate([xi, pad]), np.concatenate([xa, pad])
            f, lg = self._apply(self.variables, jax.device_put(xi, self.data), jax.device_put(xa, self.data))
            fused.append(np.asarray(f)[:m])
            logits.append(np.asarray(lg)[:m])
        return np.concatenate(fused), np.concatenate(logits)


def write_fused(pickle_path: Path, fused: FusedFeatures, *, progress: bool = True) -> dict:
    """Write ``imageAudio_features/<video>.npy`` for every video of `pickle_path` (image and audio features
    read through the validated loader); returns {"videos", "clips", "clip_acc"}."""
    from l2l_jax.data import load_index
    from l2l_jax.video.extract import atomic_save

    index = load_index(pickle_path, variant="two")
    hits = clips = 0
    for template, (image_path, audio_path), label in tqdm(
            list(zip(index.templates, index.paths, index.labels, strict=True)), desc=f"fused {pickle_path.name}",
            unit="video", disable=not progress):
        image = np.load(image_path, allow_pickle=False)
        audio = np.load(audio_path, allow_pickle=False)
        f, logits = fused(image, audio)
        out = Path(template)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_save(out, f.astype(np.float32))
        hits += int(np.sum(np.argmax(logits, -1) == label))
        clips += len(f)
    return {"videos": len(index), "clips": clips, "clip_acc": hits / max(clips, 1)}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="l2l-finetune", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="feature root made by l2l-extract (train.pkl, image_features/, ...)")
    p.add_argument("--num_classes", type=int, required=True, help="number of classes C")
    p.add_argument("--out", required=True, help="output directory for the .pth and the converted model")
    p.add_argument("--epochs", type=int, default=10, help="passes over the training clips (default 10)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    p.add_argument("--batch_size", type=int, default=256, help="clips per batch, all devices (default 256)")
    p.add_argument("--clips_per_video", type=int, default=0, help="clips used per training video (0: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initialisation, clip sampling and order")
    p.add_argument("--name", default=None, help="<name> of ImageAudioNet_<name>.pth (default: ROOT's folder name)")
    p.add_argument("--splits", nargs="+", default=None,
                   help="pickles whose videos get imageAudio features (default: train and val, those present)")
    p.add_argument("--no_progress", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true", help="traceback instead of a one-line error")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from l2l_jax.cli import run_program

    return run_program("finetune", lambda: _main(argv), argv)


def _main(argv: Sequence[str] | None) -> int:
    from convert.core import export_checkpoint
    from convert.torch_io import write_torch_file
    from l2l_jax.data import open_split
    from l2l_jax.model_dir import save_model_dir

    args = build_parser().parse_args(argv)
    root, out = Path(args.data).absolute(), Path(args.out).absolute()
    train_pkl = root / "train.pkl"
    if not train_pkl.is_file():
        raise ConfigError(f"--data {root}: no train.pkl (make it with l2l-extract)")
    for flag in ("num_classes", "epochs", "batch_size"):
        if getattr(args, flag) < 1:
            raise ConfigError(f"--{flag} must be at least 1, not {getattr(args, flag)}")
    if args.clips_per_video < 0:
        raise ConfigError(f"--clips_per_video must be >= 0, not {args.clips_per_video}")
    splits = args.splits or [s for s in ("train", "val") if (root / f"{s}.pkl").is_file()]
    for s in splits:
        if not (root / f"{s}.pkl").is_file():
            raise ConfigError(f"--splits {s}: no {root / (s + '.pkl')}")
    name = args.name or root.name
    progress = not args.no_progress
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    source = open_split(train_pkl, variant="two", num_classes=args.num_classes, width=WIDTH, progress=progress)
    variables, info = fit_imageaudionet(source, args.num_classes, epochs=args.epochs, batch_size=args.batch_size,
                                        learning_rate=args.lr, clips_per_video=args.clips_per_video or None,
                                        seed=args.seed, progress=progress, checkpoint_dir=out / "checkpoints")
    if info["resumed_after"]:
        print(f"resumed after epoch {info['resumed_after']} from {out / 'checkpoints'}")
    fit_s = time.perf_counter() - t0
    meta = {"variant": "imageaudionet", "num_classes": args.num_classes, "feature_dim": WIDTH,
            "source": f"l2l-finetune on {train_pkl}", "train_clip_acc": info["train_clip_acc"]}
    out.mkdir(parents=True, exist_ok=True)
    ckpt = export_checkpoint(variables, meta)
    pth = write_torch_file(out / f"ImageAudioNet_{name}.pth", ckpt.pop("model"), **ckpt)
    model_dir = save_model_dir(out / "imageaudionet", variables, meta, overwrite=True)
    fused = FusedFeatures(variables, args.num_classes)
    written = {s: write_fused(root / f"{s}.pkl", fused, progress=progress) for s in splits}
    report = {"data": str(root), "num_classes": args.num_classes, "epochs": args.epochs, "lr": args.lr,
              "batch_size": args.batch_size, "clips_per_video": args.clips_per_video, "seed": args.seed,
              "train_clips": info["clips"], "train_clip_acc_last_epoch": info["train_clip_acc"],
              "fit_seconds": fit_s, "pth": str(pth), "model_dir": str(model_dir), "fused": written}
    (out / "finetune.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"fit {info['clips']} clips, {args.epochs} epochs in {fit_s:.1f} s: train clip accuracy (last epoch) "
          f"{info['train_clip_acc']:.3f}")
    for s, w in written.items():
        print(f"{s}: {w['videos']} videos, {w['clips']} clips -> {root / 'imageAudio_features'}; "
              f"clip accuracy {w['clip_acc']:.3f}")
    print(f"wrote {pth} and {model_dir} (--weights_audioImageModel takes either)")
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["FusedFeatures", "fit_imageaudionet", "main", "sample_clips", "write_fused"]
