"""The end-to-end training of `l2l-distill` (`l2l_jax.programs.distill`): the student's starting variables, host
batches read from the clip cache, the jitted steps over the device mesh, one epoch, scoring, checkpoints.

The student and its steps are `l2l_jax.video.distill_step`; the clips come from a `clip_cache.ClipSelection`
(the videos of the labels CSV at hand), addressed by local clip index, and the targets (teacher logits or
labels) are indexed the same way. Training is data-parallel over every device (state replicated, batch split
over the mesh axis ``data``; the global batch a multiple of the device count); an epoch's clip order and
augmentation are drawn from ``(seed, epoch)``, so a resumed run sees the same batches. Checkpoints are the
run directory kit's (`l2l_jax.runkit.checkpoints.RunCheckpoints`, one per epoch: `save_epoch`, `resume`).
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import hashlib
import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from l2l_jax import numerics, parallel
from l2l_jax.data.source import file_sha256
from l2l_jax.errors import NonFiniteLossError
from l2l_jax.runkit.checkpoints import RunCheckpoints
from l2l_jax.video import distill_step as S
from l2l_jax.video.clip_cache import ClipSelection
from l2l_jax.video.trunks import network_weights


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """What shapes the training (the flags of ``l2l-distill`` of the same names)."""

    objective: str = "distill"
    temperature: float = 4.0
    optimizer: str = "adam"
    lr: float = 1e-4
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 64
    crop: int = 224
    random_crop: bool = False
    flip: bool = False
    precision: str = "exact"
    seed: int = 0


def initial_variables(num_classes: int, seed: int, *, weights_resnet18: str | None = None,
                      init: tuple[dict, dict, dict, dict] | None = None, init_path: str = "") -> tuple[dict, str]:
    """The student's starting variables and a description: `init` (a distillation output read by
    `l2l_jax.video.distilled.load_distilled`, from `init_path`: its classifier is kept when its class count is
    `num_classes`, else drawn anew), `weights_resnet18` (ImageNet trunks) or fresh (with a
    `l2l_jax.video.trunks.RandomWeightsWarning`)."""
    if init is not None:
        visual, audio, fusion, meta = init
        if int(meta["num_classes"]) != num_classes:  # new classes: keep the fusion net, draw a new classifier
            fresh = S.student_variables(num_classes, seed, visual=visual, audio=audio)
            fresh["params"]["imageaudio"]["net_imageAudio"] = fusion["params"]["net_imageAudio"]
            return fresh, f"--init {init_path} (classifier drawn anew for {num_classes} classes)"
        return S.student_variables(num_classes, seed, visual=visual, audio=audio, imageaudio=fusion), \
            f"--init {init_path}"
    visual, audio, desc = network_weights(weights_resnet18, seed)
    return S.student_variables(num_classes, seed, visual=visual, audio=audio), desc


class Batches:
    """Host batches of one epoch, read (and cropped) one ahead in a thread while the device trains: the local
    clips `rows` of `clips` in groups of `batch_size` (a ragged tail dropped; fewer clips than one batch are
    repeated to fill it), each with ``target`` = ``targets[rows]``."""

    def __init__(self, clips: ClipSelection, rows: np.ndarray, targets: np.ndarray, batch_size: int, crop: int,
                 rng: np.random.Generator | None, flip: bool):
        self.clips, self.rows, self.targets = clips, rows, targets
        self.b, self.crop, self.rng, self.flip = batch_size, crop, rng, flip

    def __len__(self) -> int:
        return max(1, len(self.rows) // self.b)

    def _read(self, k: int) -> dict:
        rows = self.rows[k * self.b:(k + 1) * self.b]
        if len(rows) < self.b:  # fewer clips than one batch: repeat them to fill it
            rows = np.resize(rows, self.b)
        out = self.clips.batch(rows, self.crop, self.rng, flip=self.flip)
        out["target"] = np.asarray(self.targets[rows])
        return out

    def __iter__(self) -> Iterator[dict]:
        with cf.ThreadPoolExecutor(1, thread_name_prefix="l2l-batches") as pool:
            nxt = pool.submit(self._read, 0)
            for k in range(len(self)):
                batch = nxt.result()
                if k + 1 < len(self):
                    nxt = pool.submit(self._read, k + 1)
                yield batch


def evaluate(clips: ClipSelection, rows: np.ndarray, targets: np.ndarray, variables, eval_step, mesh,
             batch_size: int, crop: int, objective: str) -> float:
    """Top-1 agreement with the teacher (distill) or accuracy (classify) over the local clips `rows`, centre
    crops, eval mode."""
    hits = 0
    for s in range(0, len(rows), batch_size):
        part = rows[s:s + batch_size]
        b = clips.batch(np.resize(part, batch_size), crop)
        out = eval_step(variables, *(parallel.shard_batch({"f": b["frames"], "m": b["logmel"]}, mesh).values()))
        pred = np.asarray(out["logits"]).argmax(-1)[:len(part)]
        want = np.asarray(targets[part])
        want = want.argmax(-1) if objective == "distill" else want
        hits += int((pred == want).sum())
    return hits / max(len(rows), 1)


@dataclasses.dataclass
class Trainer:
    """The jitted steps over the device mesh, the (replicated) train state and the global batch size."""

    mesh: Any
    batch_size: int  # global: a multiple of the device count
    state: Any
    step: Any
    eval_step: Any


def make_trainer(num_classes: int, settings: TrainSettings, variables: dict) -> Trainer:
    """The student, its optimizer and `variables`, replicated over every device, and the jitted steps."""
    mesh = parallel.make_mesh()
    ndev = mesh.devices.size
    batch_size = -(-settings.batch_size // ndev) * ndev
    model = S.Student(num_classes, numerics.get(settings.precision))
    tx = S.make_optimizer(settings.optimizer, settings.lr, settings.momentum, settings.weight_decay)
    state = parallel.replicate(S.init_state(variables, tx), mesh)
    step = S.jit_train_step(S.train_step_fn(model, tx, settings.objective, settings.temperature), mesh)
    eval_step = S.jit_eval_step(S.eval_step_fn(model), mesh)
    return Trainer(mesh, batch_size, state, step, eval_step)


def resume(ckpts: RunCheckpoints, trainer: Trainer, warn: Callable[[str], None]) -> int:
    """Epochs already done: the newest checkpoint of the run directory that restores, restored into `trainer`
    (newer ones that do not restore are reported through `warn` and moved aside:
    `RunCheckpoints.restore_newest`), else 0."""
    restored = ckpts.restore_newest(trainer.state, warn, main_process=parallel.is_main_process())
    if restored is None:
        return 0
    trainer.state, progress, _ = restored
    return int(progress["next_epoch"])


def save_epoch(ckpts: RunCheckpoints, epoch: int, trainer: Trainer, metrics: Mapping[str, Any]) -> None:
    """Checkpoint ``epoch + 1`` (epochs done) of the train state, the epoch's metrics in its progress."""
    ckpts.save(epoch + 1, trainer.state, {"data": {}, "epoch": epoch, "next_epoch": epoch + 1,
                                          "metrics": dict(metrics)})


def files_digest(files: Mapping[str, str | os.PathLike], tag: str) -> str:
    """SHA-256 over `tag` and, for each ``name: path`` of `files` in order, the name and the SHA-256 of the
    file's bytes (not its path): what a run's record keeps of its teacher files, head or initial weights."""
    h = hashlib.sha256(f"l2l-distill-{tag}:1".encode())
    for name, path in files.items():
        h.update(f"{name}:{file_sha256(path)};".encode())
    return h.hexdigest()


def train_epoch(settings: TrainSettings, epoch: int, trainer: Trainer, clips: ClipSelection, train_rows: np.ndarray,
                targets: np.ndarray, out: Path, on_step: Callable[[float], None] | None = None) -> dict[str, Any]:
    """One pass over the local clips `train_rows` (order and augmentation drawn from ``(seed, epoch)``); returns
    the epoch's metrics. `on_step(loss)` after every step. A loss that is not finite stops the run
    (`NonFiniteLossError`)."""
    rng = np.random.default_rng([settings.seed, epoch])
    order = rng.permutation(train_rows)
    aug = rng if settings.random_crop or settings.flip else None
    batch_size = trainer.batch_size
    batches = Batches(clips, order, targets, batch_size, settings.crop, aug, settings.flip)
    t0 = time.perf_counter()
    loss_sum, hits, seen = 0.0, 0, 0
    for batch in batches:
        trainer.state, m = trainer.step(trainer.state, parallel.shard_batch(batch, trainer.mesh))
        loss = float(m["loss"])
        if not np.isfinite(loss):
            raise NonFiniteLossError(f"the loss became {loss} in epoch {epoch + 1}; lower --lr (last good "
                                     f"checkpoint: {out / 'checkpoints'})")
        loss_sum += loss * batch_size
        hits += int(m["hits"])
        seen += batch_size
        if on_step is not None:
            on_step(loss)
    seconds = time.perf_counter() - t0
    return {"epoch": epoch + 1, "loss": loss_sum / seen, "train_top1": hits / seen, "seconds": seconds,
            "clips_per_s": seen / seconds}


def host_variables(trainer: Trainer) -> dict:
    """The trained ``{"params", "batch_stats"}`` on the host."""
    return parallel.to_host({"params": trainer.state["params"], "batch_stats": trainer.state["batch_stats"]})


__all__ = ["Batches", "TrainSettings", "Trainer", "evaluate", "files_digest", "host_variables", "initial_variables",
           "make_trainer", "resume", "save_epoch", "train_epoch"]
