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
  command resumes after the newest, as l2l-train does, and ends with the same weights as an uninterrupted fit;
- ``DIR/fit_record.json``: what the checkpoints were fit on (`fit_record`: the train pickle's SHA-256, a
  digest of its feature files' fingerprints, the settings that shape the fit). A rerun into the same DIR on
  other data or with other settings is refused before anything is written, naming what differs
  (``--overwrite`` starts the fit over, a new ``--out`` keeps the old one).

Everything is checked before any work: the flags (counts >= 1, a finite positive ``--lr``, a seed in
[0, 2**32)), the output paths (`l2l_jax.outputs`), every split's features (validated; bad videos stop the
program or, with ``--skip_bad_videos``, are left out), and that the pickles' feature paths lie under ROOT (a
copied ROOT needs ``--feature_root``, so the original is never written into). One run writes into DIR at a
time (``DIR/.lock``, `l2l_jax.training.lock`). Parameters that become NaN or inf stop the fit (exit 2) and
are never checkpointed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from tqdm.auto import tqdm

from l2l_jax.data.fingerprint import fingerprint
from l2l_jax.data.source import FeatureSource, FileSource, file_sha256
from l2l_jax.errors import ConfigError, NonFiniteLossError
from l2l_jax.model import ImageAudioClassifier, PreviewConfig, init_variables
from l2l_jax.recipe import cross_entropy

WIDTH = 512
RECORD_FILE = "fit_record.json"
RECORD_FORMAT = "l2l-finetune-fit"
MAX_BATCH = 1 << 20
# the flags whose values shape the checkpoints (--epochs only says where the fit stops)
FIT_SETTINGS = ("num_classes", "lr", "batch_size", "clips_per_video", "seed", "skip_bad_videos")


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
        where = Path(checkpoint_dir).absolute() / str(done)
        try:
            state = ckpts.restore(done, args=ocp.args.StandardRestore(target))
        except Exception as e:  # orbax raises many types for a damaged or foreign checkpoint
            why = str(e).splitlines()[0][:160] if str(e) else ""
            raise ConfigError(f"{where}: cannot be restored ({type(e).__name__}: {why}); start over with "
                              "--overwrite or choose a new --out") from None
        if not _all_finite(state["params"]):
            raise ConfigError(f"{where}: the checkpoint holds NaN or inf parameters; start over with --overwrite "
                              "(and a lower --lr) or choose a new --out")
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
        if not _all_finite(params):  # never checkpointed, never returned
            if ckpts is not None:
                ckpts.wait_until_finished()
                ckpts.close()
            bar.close()
            again = (f"; the checkpoints up to epoch {epoch} are kept: start over with --overwrite"
                     if ckpts is not None and epoch else "")
            raise NonFiniteLossError(f"the fusion net's parameters became NaN or inf in epoch {epoch + 1} (last loss "
                                     f"{float(loss):.4g}) and were not saved; lower --lr{again}")
        if ckpts is not None:
            ckpts.save(epoch + 1, args=ocp.args.StandardSave(
                {"params": params, "opt_state": opt_state, "acc": np.asarray(acc, np.float32)}))
    bar.close()
    if ckpts is not None:
        ckpts.wait_until_finished()
        ckpts.close()
    return {"params": jax.device_get(params)}, {"train_clip_acc": acc, "clips": int(n), "resumed_after": done}


def _all_finite(tree: Any) -> bool:
    return all(bool(np.all(np.isfinite(np.asarray(x)))) for x in jax.tree.leaves(jax.device_get(tree))
               if np.issubdtype(np.asarray(x).dtype, np.floating))


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


def write_fused(source: FileSource, fused: FusedFeatures, *, progress: bool = True) -> dict:
    """Write ``imageAudio_features/<video>.npy`` (the pickle's template path, after ``--feature_root``) for
    every video of a validated split; returns {"videos", "clips", "clip_acc"}."""
    from l2l_jax.video.extract import atomic_save

    hits = clips = 0
    for i in tqdm(range(len(source)), desc=f"fused {Path(source.index.source).name}", unit="video",
                  disable=not progress):
        image, audio = source.read(i)
        f, logits = fused(image, audio)
        out = Path(source.index.templates[i])
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_save(out, f.astype(np.float32))
        hits += int(np.sum(np.argmax(logits, -1) == source.labels[i]))
        clips += len(f)
    return {"videos": len(source), "clips": clips, "clip_acc": hits / max(clips, 1)}


def features_digest(source: FileSource) -> str:
    """SHA-256 over the kept videos' pickle rows and their feature files' sizes and content digests (not their
    paths or mtimes, so a copied feature root with the same files has the same digest)."""
    h = hashlib.sha256(b"l2l-finetune-features:1")
    for i, paths in enumerate(source.index.paths):
        h.update(f"{int(source.ids[i])}:{int(source.labels[i])}".encode())
        for path in paths:
            fp = source.fingerprints.get(path) or fingerprint(path)
            h.update(f":{fp.size}:{fp.digest}".encode())
    return h.hexdigest()


def fit_record(train_pkl: Path, source: FileSource, settings: dict[str, Any]) -> dict[str, Any]:
    """What a fit's checkpoints depend on: the train pickle, its features and the `FIT_SETTINGS`."""
    return {"format": RECORD_FORMAT, "version": 1, "pickle": str(train_pkl), "pickle_sha256": file_sha256(train_pkl),
            "features_sha256": features_digest(source), "videos": len(source),
            "settings": {k: settings[k] for k in FIT_SETTINGS}}


def record_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs between a recorded fit and this run, in words (empty: the same fit)."""
    diffs = []
    if old.get("pickle_sha256") != new["pickle_sha256"]:
        diffs.append(f"train.pkl differs (recorded {old.get('pickle')})")
    elif old.get("features_sha256") != new["features_sha256"]:
        diffs.append("the training features differ")
    recorded = old.get("settings") if isinstance(old.get("settings"), dict) else {}
    for key in FIT_SETTINGS:
        if recorded.get(key) != new["settings"][key]:
            diffs.append(f"--{key} {new['settings'][key]} (recorded {recorded.get(key)})")
    return diffs


def _checked_args(args: argparse.Namespace) -> None:
    """Every flag before anything is read: counts, a finite positive --lr, the seed's range, a plain --name."""
    for flag in ("num_classes", "epochs", "batch_size"):
        if getattr(args, flag) < 1:
            raise ConfigError(f"--{flag} {getattr(args, flag)}: must be at least 1")
    if args.batch_size > MAX_BATCH:
        raise ConfigError(f"--batch_size {args.batch_size}: at most {MAX_BATCH} clips per batch")
    if args.clips_per_video < 0:
        raise ConfigError(f"--clips_per_video {args.clips_per_video}: must be 0 (all clips) or more")
    if not math.isfinite(args.lr) or args.lr <= 0:
        raise ConfigError(f"--lr {args.lr}: must be a finite number above 0 (e.g. 1e-3)")
    if not 0 <= args.seed < 2**32:
        raise ConfigError(f"--seed {args.seed}: must be in [0, 2**32)")
    if args.name is not None and (not args.name or args.name in (".", "..") or any(c in args.name for c in "/\\\0")):
        raise ConfigError(f"--name {args.name!r}: must be a plain file-name part (no '/', not empty)")
    for s in args.splits or []:
        if not s or s in (".", "..") or any(c in s for c in "/\\\0"):
            raise ConfigError(f"--splits {s!r}: name a split (train, val, ...: ROOT/<split>.pkl)")


def _check_outputs(out: Path, pth: Path, sources: dict[str, FileSource], root: Path, feature_root: str | None) -> None:
    """Every output path can take what will be written, and every fused feature file lies under the feature
    root that is named: ROOT, or --feature_root."""
    from l2l_jax.model_dir import is_model_dir
    from l2l_jax.outputs import output_dir, output_file

    output_dir(out, "--out")
    away = "move it away or choose another --out"
    output_dir(out / "checkpoints", "--out", advice=away)
    output_file(out / "finetune.json", "--out", advice=away)
    output_file(out / RECORD_FILE, "--out", advice=away)
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


def _resume_check(out: Path, record: dict[str, Any], epochs: int, overwrite: bool) -> None:
    """Under the lock: the checkpoints in ``out`` are of this fit (or there are none), else `ConfigError`
    naming the directory and what differs. With `overwrite`, the old checkpoints and record are removed."""
    ckpt_dir, record_file = out / "checkpoints", out / RECORD_FILE
    steps = sorted(int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit()) if ckpt_dir.is_dir() else []
    if overwrite:
        if ckpt_dir.is_dir():
            shutil.rmtree(ckpt_dir)
        record_file.unlink(missing_ok=True)
        return
    what = "start over with --overwrite, or choose a new --out to keep them"
    if not steps:  # nothing to resume, nothing a new fit could mix with: an old record is simply replaced
        return
    if record_file.exists():
        try:
            old = json.loads(record_file.read_text())
            if not isinstance(old, dict) or old.get("format") != RECORD_FORMAT:
                raise ValueError
        except (OSError, ValueError):
            raise ConfigError(f"--out {out}: {record_file} is not a fit record of l2l-finetune; {what}") from None
        diffs = record_differences(old, record)
        if diffs:
            raise ConfigError(f"--out {out}: its checkpoints are of another fit ({'; '.join(diffs)}); {what}")
    else:
        raise ConfigError(f"--out {out}: {ckpt_dir} holds checkpoints without a record of their data and "
                          f"settings; {what}")
    if steps[-1] > epochs:
        raise ConfigError(f"--out {out}: its checkpoints reach epoch {steps[-1]}, beyond --epochs {epochs}; give "
                          f"--epochs {steps[-1]} or more, or {what}")


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
    p.add_argument("--feature_root", default=None,
                   help="replace every feature path's prefix (before imageAudio_features) with this directory "
                        "(a copied or moved ROOT); the fused features are written there")
    p.add_argument("--skip_bad_videos", action="store_true",
                   help="leave out videos whose feature files fail validation instead of stopping")
    p.add_argument("--overwrite", action="store_true",
                   help="start over: remove the checkpoints (and fit record) of an earlier fit in --out")
    p.add_argument("--no_progress", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true", help="traceback instead of a one-line error")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from l2l_jax.programs.flags import run_program

    return run_program("finetune", lambda: _main(argv), argv)


def _main(argv: Sequence[str] | None) -> int:
    from l2l_jax.data import open_split
    from l2l_jax.model_dir import save_model_dir
    from l2l_jax.outputs import atomic_write_text, writing
    from l2l_jax.pth_convert import export_checkpoint
    from l2l_jax.torch_io import write_torch_file
    from l2l_jax.training.lock import RunLock

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
    record = fit_record(train_pkl, source, vars(args))
    with RunLock(out, flag="--out") as lock:
        for w in lock.warnings:
            print(f"l2l-finetune: warning: {w}", file=sys.stderr)
        _resume_check(out, record, args.epochs, args.overwrite)
        with writing(out / RECORD_FILE, "--out"):
            atomic_write_text(out / RECORD_FILE, json.dumps(record, indent=1) + "\n")
        t0 = time.perf_counter()
        with writing(out / "checkpoints", "--out"):
            variables, info = fit_imageaudionet(source, args.num_classes, epochs=args.epochs,
                                                batch_size=args.batch_size, learning_rate=args.lr,
                                                clips_per_video=args.clips_per_video or None, seed=args.seed,
                                                progress=progress, checkpoint_dir=out / "checkpoints")
        if info["resumed_after"]:
            print(f"resumed after epoch {info['resumed_after']} from {out / 'checkpoints'}")
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


__all__ = ["FusedFeatures", "features_digest", "fit_imageaudionet", "fit_record", "main", "record_differences",
           "sample_clips", "write_fused"]
