"""The end-to-end student and its jitted, data-parallel train step (`l2l-distill`).

The student is upstream's image-audio network trained as one piece: ``VisualNet`` on a clip's frame and
``AudioNet`` on its 1 s log-mel, their 512-wide features into the fusion net + classifier
(`l2l_jax.model.ImageAudioClassifier`, the ``ImageAudioNet`` the preview policy loads). Variables:
``params/{visual,audio,imageaudio}`` and ``batch_stats/{visual,audio}``; ``visual`` and ``audio`` have the
trees of `l2l_jax.video.networks` (so `l2l_jax.video.convert` names them), ``imageaudio`` that of
``init_variables(cfg, variants.IMAGEAUDIONET, key)`` (so `l2l_jax.torch_names` names it).

Objectives (`LOSSES`):

- ``distill``: T^2 * KL(softmax(teacher / T) || softmax(student / T)), averaged over the batch (Hinton et al.'s
  distillation loss; T^2 keeps the gradient scale independent of T). The targets are the teacher's logits.
- ``classify``: cross entropy of the student's logits against integer labels (the fine-tuning stage).

Data parallelism: the train state is replicated (``P()``), every batch array split over the mesh axis ``data``
(``P("data")``). BatchNorm's train-mode moments are plain means over the whole (sharded) batch axis, which XLA
computes with an all-reduce, so the statistics, the gradients and therefore the parameters do not depend on the
device count (tests/test_distill.py: 1 vs 4 devices).

Batches (host numpy, one row per clip): ``frames`` (B, c, c, 3) uint8 RGB (cropped and flipped on the host,
`l2l_jax.video.clip_cache`), ``logmel`` (B, T, F) float32, and ``target``: (B, C) float32 teacher logits
(distill) or (B,) int32 labels (classify). The step normalises the frames with ImageNet's mean and std as
`l2l_jax.video.frames.preprocess_frames` does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from l2l_jax import parallel, variants
from l2l_jax.model import ImageAudioClassifier, PreviewConfig, init_variables
from l2l_jax.numerics import EXACT, Numerics
from l2l_jax.video.frames import IMAGENET_MEAN, IMAGENET_STD
from l2l_jax.video.networks import AudioNet, VisualNet
from l2l_jax.video.trunks import fresh_variables

Array = jax.Array
OBJECTIVES = ("distill", "classify")


class Student(nn.Module):
    """VisualNet + AudioNet + fusion net + classifier: (normalised images (B, H, W, 3), spectrograms (B, T, F))
    -> {"image", "audio", "fused": (B, 512), "logits": (B, C)}."""

    num_classes: int
    numerics: Numerics = EXACT

    @nn.compact
    def __call__(self, images: Array, spectrograms: Array, train: bool = False) -> dict[str, Array]:
        image = VisualNet(self.numerics, name="visual")(images, train)
        audio = AudioNet(self.numerics, name="audio")(spectrograms, train)
        fused, logits = ImageAudioClassifier(self.num_classes, self.numerics, name="imageaudio")(image, audio)
        return {"image": image, "audio": audio, "fused": fused, "logits": logits}


def normalise_frames(frames: Array) -> Array:
    """uint8 RGB (B, H, W, 3) -> float32 normalised with ImageNet's mean and std (as `frames.preprocess_frames`)."""
    x = frames.astype(jnp.float32) / 255.0
    return (x - jnp.asarray(IMAGENET_MEAN, jnp.float32)) / jnp.asarray(IMAGENET_STD, jnp.float32)


def distill_loss(student_logits: Array, teacher_logits: Array, temperature: float) -> Array:
    """T^2 * mean over rows of KL(softmax(teacher / T) || softmax(student / T))."""
    t = float(temperature)
    log_q = jax.nn.log_softmax(student_logits.astype(jnp.float32) / t, axis=-1)
    log_p = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / t, axis=-1)
    return t * t * jnp.mean(jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1))


def classify_loss(logits: Array, labels: Array) -> Array:
    """Mean cross entropy of integer labels."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, labels.astype(jnp.int32)[:, None], axis=-1))


def loss_of(objective: str, logits: Array, target: Array, temperature: float) -> Array:
    """The objective's loss (see the module docstring)."""
    if objective == "distill":
        return distill_loss(logits, target, temperature)
    if objective == "classify":
        return classify_loss(logits, target)
    raise ValueError(f"unknown objective {objective!r}; expected one of {OBJECTIVES}")


def hits_of(objective: str, logits: Array, target: Array) -> Array:
    """Rows whose top-1 class is the teacher's top-1 (distill) or the label (classify)."""
    want = jnp.argmax(target, axis=-1) if objective == "distill" else target.astype(jnp.int32)
    return jnp.sum(jnp.argmax(logits, axis=-1) == want)


def make_optimizer(kind: str = "adam", learning_rate: float = 1e-4, momentum: float = 0.9,
                   weight_decay: float = 0.0) -> optax.GradientTransformation:
    """Adam, or SGD with momentum; `weight_decay` added to the gradients (L2, as torch's ``weight_decay``)."""
    if kind == "adam":
        opt = optax.adam(learning_rate)
    elif kind == "sgd":
        opt = optax.sgd(learning_rate, momentum=momentum or None)
    else:
        raise ValueError(f"unknown optimizer {kind!r}; expected adam or sgd")
    return optax.chain(optax.add_decayed_weights(weight_decay), opt) if weight_decay else opt


def init_state(variables: dict[str, Any], tx: optax.GradientTransformation) -> dict[str, Any]:
    """The train state: {"params", "batch_stats", "opt_state", "step"}."""
    return {"params": variables["params"], "batch_stats": variables["batch_stats"],
            "opt_state": tx.init(variables["params"]), "step": jnp.zeros((), jnp.int32)}


def loss_and_grad_fn(model: Student, objective: str, temperature: float = 1.0) -> Callable:
    """(params, batch_stats, batch) -> ((loss, (logits, updated batch_stats)), grads): the objective on a batch
    in train-mode BatchNorm and its gradient with respect to every parameter (what the train step applies)."""
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; expected one of {OBJECTIVES}")

    def loss_fn(params, batch_stats, batch):
        out, updated = model.apply({"params": params, "batch_stats": batch_stats}, normalise_frames(batch["frames"]),
                                   batch["logmel"], train=True, mutable=["batch_stats"])
        return loss_of(objective, out["logits"], batch["target"], temperature), (out["logits"],
                                                                                  updated["batch_stats"])

    return jax.value_and_grad(loss_fn, has_aux=True)


def train_step_fn(model: Student, tx: optax.GradientTransformation, objective: str, temperature: float = 1.0
                  ) -> Callable[[dict, dict], tuple[dict, dict]]:
    """(state, batch) -> (new state, {"loss", "hits"}): one optimizer step on the batch, train-mode BatchNorm."""
    grad_fn = loss_and_grad_fn(model, objective, temperature)

    def step(state: dict, batch: dict) -> tuple[dict, dict]:
        (loss, (logits, batch_stats)), grads = grad_fn(state["params"], state["batch_stats"], batch)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        new = {"params": optax.apply_updates(state["params"], updates), "batch_stats": batch_stats,
               "opt_state": opt_state, "step": state["step"] + 1}
        return new, {"loss": loss, "hits": hits_of(objective, logits, batch["target"])}

    return step


def student_variables(num_classes: int, seed: int = 0, *, visual: dict | None = None, audio: dict | None = None,
                      imageaudio: dict | None = None) -> dict[str, Any]:
    """The student's variables (numpy) from its parts; a part not given is drawn fresh from `seed` on the host
    (no compilation): the trunks as `l2l_jax.video.trunks.fresh_variables`, the fusion net and classifier with
    upstream's initial distributions (`l2l_jax.model.init_variables`)."""
    visual = visual if visual is not None else fresh_variables("visualnet", seed)
    audio = audio if audio is not None else fresh_variables("audionet", seed + 1)
    if imageaudio is None:
        imageaudio = jax.device_get(init_variables(PreviewConfig(num_classes=num_classes), variants.IMAGEAUDIONET,
                                                   jax.random.key(seed + 2)))
    to_np = lambda t: jax.tree.map(np.asarray, t)  # noqa: E731
    return {"params": {"visual": to_np(visual["params"]), "audio": to_np(audio["params"]),
                       "imageaudio": to_np(imageaudio["params"])},
            "batch_stats": {"visual": to_np(visual["batch_stats"]), "audio": to_np(audio["batch_stats"])}}


def split_variables(variables: dict[str, Any]) -> tuple[dict, dict, dict]:
    """The student's variables -> (VisualNet variables, AudioNet variables, ImageAudioClassifier variables)."""
    p, s = variables["params"], variables["batch_stats"]
    return ({"params": p["visual"], "batch_stats": s["visual"]}, {"params": p["audio"], "batch_stats": s["audio"]},
            {"params": p["imageaudio"]})


def eval_step_fn(model: Student) -> Callable[[dict, Array, Array], dict[str, Array]]:
    """(variables, frames uint8, logmel) -> the student's outputs in eval mode (running BatchNorm statistics)."""

    def step(variables: dict, frames: Array, logmel: Array) -> dict[str, Array]:
        return model.apply(variables, normalise_frames(frames), logmel, train=False)

    return step


def jit_train_step(step: Callable, mesh: Mesh, donate: bool = True) -> Callable:
    """`step` jitted with the state replicated and the batch split over ``data`` (state donated)."""
    rep, data = parallel.replicated(mesh), parallel.data_sharding(mesh)
    return jax.jit(step, in_shardings=(rep, data), out_shardings=(rep, rep),
                   donate_argnums=(0,) if donate else (), compiler_options=_options(mesh))


def jit_eval_step(step: Callable, mesh: Mesh) -> Callable:
    """`eval_step_fn`'s step jitted: variables replicated, inputs and outputs split over ``data``."""
    rep, data = parallel.replicated(mesh), parallel.data_sharding(mesh)
    return jax.jit(step, in_shardings=(rep, data, data), out_shardings=data, compiler_options=_options(mesh))


def _options(mesh: Mesh) -> dict[str, str]:
    """`parallel.compiler_options` for a mesh of CPU devices; none for other platforms (e.g. deviceless
    accelerator topologies compiled ahead of time from a CPU host)."""
    return parallel.compiler_options() if mesh.devices.flat[0].platform == "cpu" else {}


def batch_shapes(batch_size: int, crop: int, num_classes: int, objective: str, mel_frames: int = 101,
                 mel_bins: int = 40) -> dict[str, tuple[tuple[int, ...], Any]]:
    """{name: (shape, dtype)} of a train batch."""
    target = ((batch_size, num_classes), np.float32) if objective == "distill" else ((batch_size,), np.int32)
    return {"frames": ((batch_size, crop, crop, 3), np.uint8), "logmel": ((batch_size, mel_frames, mel_bins),
                                                                          np.float32), "target": target}


def abstract_train_step(mesh: Mesh, batch_size: int, numerics: Numerics = EXACT, *, num_classes: int = 400,
                        crop: int = 224, objective: str = "distill", temperature: float = 4.0,
                        optimizer: str = "sgd") -> tuple[Callable, tuple[Any, Any]]:
    """(jitted train step, (abstract state, abstract batch)) for ahead-of-time compilation: every input is a
    `jax.ShapeDtypeStruct` carrying its `NamedSharding` (state replicated, batch on ``data``); nothing is
    allocated. ``fn.lower(*args).compile()`` compiles the step for `mesh`'s devices."""
    model = Student(num_classes, numerics)
    tx = make_optimizer(optimizer, 0.01)
    rep, data = parallel.replicated(mesh), parallel.data_sharding(mesh)

    def state_of():
        images = jnp.zeros((1, crop, crop, 3), jnp.float32)
        spec = jnp.zeros((1, 101, 40), jnp.float32)
        return init_state(model.init(jax.random.key(0), images, spec), tx)

    shapes = jax.eval_shape(state_of)
    state = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=rep), shapes)
    batch = {k: jax.ShapeDtypeStruct(shape, dtype, sharding=data)
             for k, (shape, dtype) in batch_shapes(batch_size, crop, num_classes, objective).items()}
    return jit_train_step(train_step_fn(model, tx, objective, temperature), mesh), (state, batch)


__all__ = ["OBJECTIVES", "Student", "abstract_train_step", "batch_shapes", "classify_loss", "distill_loss",
           "eval_step_fn", "hits_of", "init_state", "jit_eval_step", "jit_train_step", "loss_and_grad_fn", "loss_of",
           "make_optimizer", "normalise_frames", "split_variables", "student_variables", "train_step_fn"]
