"""The fit of upstream's ImageAudioNet (fusion net + classifier) on extracted clip features, and the imageAudio
features it writes: the library of `l2l-finetune` (`l2l_jax.programs.finetune`) and of the demo.

Every clip of a training video gets its video's label, and `l2l_jax.model.ImageAudioClassifier` (cat(image,
audio) -> fc1 -> ReLU -> fc2 -> classifier) is trained with Adam on the clips' cross entropy, jitted and
data-parallel (each batch split over all devices, ``P("data")``; the batch size is rounded up to a multiple of
the device count). `fit_imageaudionet` is the one fit of the project. `FusedFeatures` applies the fitted net to
clip features and `write_fused` writes them where upstream's pickles point (``imageAudio_features/``).
`fit_settings` says what a fit's checkpoints depend on (recorded in its run directory through `l2l_jax.runkit`),
so that a rerun on other data or with other settings is refused.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from tqdm.auto import tqdm

from l2l_jax import parallel
from l2l_jax.data.fingerprint import fingerprint
from l2l_jax.data.source import FeatureSource, FileSource, file_sha256
from l2l_jax.errors import NonFiniteLossError
from l2l_jax.model import ImageAudioClassifier, PreviewConfig, init_variables
from l2l_jax.outputs import atomic_save
from l2l_jax.recipe import cross_entropy
from l2l_jax.runkit.checkpoints import RunCheckpoints
from l2l_jax.runkit.run import epochs_bar

WIDTH = 512
# the flags whose values shape the checkpoints (--epochs only says where the fit stops)
FIT_SETTINGS = ("num_classes", "lr", "batch_size", "clips_per_video", "seed", "skip_bad_videos")
# the facts of the data recorded with them: the train pickle's SHA-256 and its features' digest
PICKLE_KEY, FEATURES_KEY = "train.pkl", "train.pkl features"


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



def _mesh_shardings(devices=None) -> tuple[int, NamedSharding, NamedSharding]:
    mesh = parallel.make_mesh(None if devices is None else list(devices))
    return mesh.devices.size, parallel.data_sharding(mesh), parallel.replicated(mesh)


def _train_step(model: ImageAudioClassifier, tx: optax.GradientTransformation):
    """The jitted Adam step on one batch: (params, opt_state, image, audio, labels) -> (params, opt_state,
    loss, hits)."""

    @jax.jit
    def step(params, opt_state, xi, xa, y):
        def loss_fn(p):
            _, logits = model.apply({"params": p}, xi, xa)
            return cross_entropy(logits, y), logits

        (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        hits = jnp.sum(jnp.argmax(logits, -1) == y)
        return optax.apply_updates(params, updates), opt_state, loss, hits

    return step


def _resume(checkpoints: RunCheckpoints | None, state: dict, warn: Callable[[str], None]) -> tuple[dict, float, int]:
    """(state, last accuracy, epochs done) from the newest checkpoint that restores (newer damaged ones are
    reported through `warn` and moved aside: `RunCheckpoints.restore_newest`), else `state` as it is."""
    restored = checkpoints.restore_newest(state, warn) if checkpoints is not None else None
    if restored is None:
        return state, 0.0, 0
    state, progress, _ = restored
    return state, float(progress.get("acc", 0.0)), int(progress["next_epoch"])


def _fit_epoch(step, state: dict, order: np.ndarray, arrays: tuple[np.ndarray, ...], batch_size: int,
               per_epoch: int, data: NamedSharding, bar) -> tuple[dict, float, float]:
    """One pass over the clips in `order` (`per_epoch` batches): (state, clip accuracy, last loss)."""
    params, opt_state = state["params"], state["opt_state"]
    hits_sum, seen, loss = 0, 0, float("nan")
    for k in range(per_epoch):
        rows = order[k * batch_size:(k + 1) * batch_size]
        if len(rows) < batch_size:  # fewer clips than one batch: repeat them to fill it
            rows = np.resize(rows, batch_size)
        xi, xa, y = (jax.device_put(a[rows], data) for a in arrays)
        params, opt_state, loss, hits = step(params, opt_state, xi, xa, y)
        hits_sum += int(hits)
        seen += len(rows)
        bar.update(1)
        bar.set_postfix(loss=f"{float(loss):.3f}")
    return {"params": params, "opt_state": opt_state}, hits_sum / max(seen, 1), float(loss)


def fit_imageaudionet(source: FeatureSource, num_classes: int, *, epochs: int = 4, batch_size: int = 256,
                      learning_rate: float = 1e-3, clips_per_video: int | None = 32, seed: int = 0,
                      progress: bool = True, devices=None, checkpoints: RunCheckpoints | None = None,
                      warn: Callable[[str], None] = print) -> tuple[dict, dict]:
    """Fit the fusion net + classifier on clip labels; returns (variables, {"train_clip_acc": ..., "clips": N,
    "resumed_after": epochs restored from `checkpoints`}).

    Adam, `epochs` passes over the sampled clips in a seeded random order, ragged tail dropped (one compiled
    shape); each batch is split over `devices` (default all, `l2l_jax.parallel`'s mesh) and the parameters
    replicated. With `checkpoints` (a run directory's `RunCheckpoints`, step = epochs done), a checkpoint
    (parameters, optimizer state; the accuracy in its progress) is written after every epoch, and the fit
    resumes after the newest one that restores with the same clip order, so it ends with the parameters an
    uninterrupted fit gives. Parameters that become NaN or inf are never saved (`NonFiniteLossError`)."""
    image, audio, labels = sample_clips(source, clips_per_video, seed)
    ndev, data, replicated = _mesh_shardings(devices)
    batch_size = -(-batch_size // ndev) * ndev
    variables = init_variables(PreviewConfig(num_classes=num_classes), "imageaudionet", jax.random.key(seed))
    tx = optax.adam(learning_rate)
    state = jax.device_put({"params": variables["params"], "opt_state": tx.init(variables["params"])}, replicated)
    state, acc, done = _resume(checkpoints, state, warn)
    step = _train_step(ImageAudioClassifier(num_classes), tx)
    rng = np.random.default_rng(seed + 1)
    n = len(labels)
    per_epoch = max(1, n // batch_size)  # drop the ragged tail: one compiled shape
    bar = epochs_bar(epochs, done, per_epoch, desc="fit fusion net", unit="batch", show=progress)
    for epoch in range(epochs):
        order = rng.permutation(n)  # drawn for finished epochs too: a resumed fit sees the same order
        if epoch < done:
            continue
        state, acc, loss = _fit_epoch(step, state, order, (image, audio, labels), batch_size, per_epoch, data, bar)
        if not _all_finite(state["params"]):  # never checkpointed, never returned
            bar.close()
            again = (f"; the checkpoints up to epoch {epoch} are kept: start over with --overwrite"
                     if checkpoints is not None and epoch else "")
            raise NonFiniteLossError(f"the fusion net's parameters became NaN or inf in epoch {epoch + 1} (last loss "
                                     f"{loss:.4g}) and were not saved; lower --lr{again}")
        if checkpoints is not None:
            checkpoints.save(epoch + 1, state, {"data": {}, "epoch": epoch, "next_epoch": epoch + 1, "acc": acc})
    bar.close()
    return {"params": jax.device_get(state["params"])}, {"train_clip_acc": acc, "clips": int(n), "resumed_after": done}


def _all_finite(tree: Any) -> bool:
    return all(bool(np.all(np.isfinite(np.asarray(x)))) for x in jax.tree.leaves(jax.device_get(tree))
               if np.issubdtype(np.asarray(x).dtype, np.floating))


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


def fit_settings(train_pkl: Path, source: FileSource, flags: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(settings, info) of a fit's run directory record (`l2l_jax.runkit.settings`): the `FIT_SETTINGS` flags,
    the train pickle's SHA-256 (``train.pkl``) and its features' digest (``train.pkl features``,
    `features_digest`); the pickle's path and video count are kept beside them, not compared."""
    settings = {**{k: flags[k] for k in FIT_SETTINGS}, PICKLE_KEY: file_sha256(train_pkl),
                FEATURES_KEY: features_digest(source)}
    return settings, {"pickle": str(train_pkl), "videos": len(source)}


__all__ = ["FEATURES_KEY", "FIT_SETTINGS", "PICKLE_KEY", "WIDTH", "FusedFeatures", "features_digest",
           "fit_imageaudionet", "fit_settings", "sample_clips", "write_fused"]
