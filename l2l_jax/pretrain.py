"""A short jitted fit of the fusion net + classifier on clip-level labels.

Upstream starts the preview policy from a released, fine-tuned image-audio network
(`ImageAudioNet_ActivityNet.pth`). For data that has no such network (the embedded synthetic dataset),
this fits one: every sampled clip of a training video gets the video's label, and ImageAudioClassifier
(cat(image, audio) -> fc1 -> ReLU -> fc2 -> classifier) is trained with Adam on the clips' cross entropy.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from l2l_jax.data.source import FeatureSource
from l2l_jax.model import ImageAudioClassifier, PreviewConfig, init_variables
from l2l_jax.recipe import cross_entropy


def sample_clips(source: FeatureSource, clips_per_video: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Up to `clips_per_video` random clips of every video: (image (N,512), audio (N,512), labels (N,))."""
    if len(source.keys) != 2:
        raise ValueError("the fusion net needs the two-modality (image + audio) features")
    rng = np.random.default_rng(seed)
    images, audios, labels = [], [], []
    for i in range(len(source)):
        image, audio = source.read(i)
        rows = rng.permutation(len(image))[:clips_per_video]
        images.append(np.asarray(image[rows], np.float32))
        audios.append(np.asarray(audio[rows], np.float32))
        labels.append(np.full(len(rows), source.labels[i], np.int32))
    return np.concatenate(images), np.concatenate(audios), np.concatenate(labels)


def fit_imageaudionet(source: FeatureSource, num_classes: int, *, epochs: int = 4, batch_size: int = 256,
                      learning_rate: float = 1e-3, clips_per_video: int = 32, seed: int = 0,
                      progress: bool = True) -> tuple[dict, dict]:
    """Fit the fusion net + classifier; returns (variables, {"train_clip_acc": ..., "clips": N})."""
    image, audio, labels = sample_clips(source, clips_per_video, seed)
    model = ImageAudioClassifier(num_classes)
    variables = init_variables(PreviewConfig(num_classes=num_classes), "imageaudionet", jax.random.key(seed))
    tx = optax.adam(learning_rate)
    params, opt_state = variables["params"], tx.init(variables["params"])

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
    bar = tqdm(total=epochs * per_epoch, desc="fit fusion net", unit="batch", disable=not progress)
    for _ in range(epochs):
        order = rng.permutation(n)
        hits_sum, seen = 0, 0
        for k in range(per_epoch):
            rows = order[k * batch_size:(k + 1) * batch_size]
            params, opt_state, loss, hits = step(params, opt_state, image[rows], audio[rows], labels[rows])
            hits_sum += int(hits)
            seen += len(rows)
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss):.3f}")
        acc = hits_sum / max(seen, 1)
    bar.close()
    return {"params": jax.device_get(params)}, {"train_clip_acc": acc, "clips": int(n)}
