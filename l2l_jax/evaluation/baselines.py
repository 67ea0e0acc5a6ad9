"""Baselines beside the policy, on the same features with the model's own fusion net and classifier.

Each baseline is a function registered under a name in `BASELINES` (with the `register` decorator, which
also takes its label for the comparison table): given a batch's `Clips`, it returns the (B, F) feature the
classifier classifies. `baseline_logits` runs every registered one, so adding a baseline touches one place.

* ``uniform``: E clips uniformly spaced over the video's valid positions -- clip ``floor((k + 0.5) * n / E)``,
  k = 0..E-1, the centres of E equal segments (n = the mask's valid count, upstream's max(10, T));
* ``random``: E distinct clips drawn uniformly (one key per video, so the draw depends only on the seed and the
  dataset index); when E > n every clip is taken and the rest repeat;
* ``all``: every valid clip.

Two-modality: each chosen clip's image and audio features are fused by ``net_imageAudio``, the fused vectors
averaged, and ``net_classifier`` classifies the average (as the policy's avgpool head does with its fused step
inputs). Single: the features themselves are averaged and classified.

Also the logits after k = 1..E steps, for the mAP-vs-steps curve: the policy's are the avgpool head over its
first k fused step inputs (two-modality; exactly the avgpool logits at k = E), and for the single variant the
LSTM head's logits at step k (its avgpool runs over attended outputs the model does not return); uniform
sampling's are the uniform baseline with k clips.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from l2l_jax import layouts, variants
from l2l_jax.model import Classifier, ImageAudioNet, PreviewConfig
from l2l_jax.steps import model_inputs


@dataclasses.dataclass(frozen=True)
class Clips:
    """What a baseline sees of one batch (inside jit)."""

    features: jax.Array  # (B, Lb, F) per-clip features, dense (fused by net_imageAudio for two-modality)
    mask: jax.Array  # (B, Lb) upstream's mask; its valid positions are a prefix of each row
    n: jax.Array  # (B,) float32: valid positions per row
    keys: jax.Array  # (B,) one random key per video (from the seed and the dataset index)
    episode_length: int  # E: clips a sampling baseline takes


Baseline = Callable[[Clips], jax.Array]
#: name -> the baseline's (B, F) feature to classify, in the order they run and are reported.
BASELINES: dict[str, Baseline] = {}
#: name -> its label in the comparison table (``{e}`` is replaced by E).
LABELS: dict[str, str] = {}


def register(name: str, label: str) -> Callable[[Baseline], Baseline]:
    """Decorator: adds a baseline to `BASELINES` under `name`, shown as `label` (``{e}``: E) in tables."""

    def add(fn: Baseline) -> Baseline:
        BASELINES[name] = fn
        LABELS[name] = label
        return fn

    return add


def label(name: str, episode_length: int) -> str:
    """The comparison table's label of a baseline (its name when it has none)."""
    return LABELS.get(name, name).format(e=episode_length)


def uniform_positions(n: jax.Array, k: int) -> jax.Array:
    """(B, k) clip positions: centres of k equal segments of each row's n valid positions."""
    frac = (jnp.arange(k, dtype=jnp.float32) + 0.5) / k
    return jnp.minimum(jnp.floor(frac[None, :] * n[:, None]), n[:, None] - 1).astype(jnp.int32)


def random_positions(keys: jax.Array, n: jax.Array, lb: int, k: int) -> jax.Array:
    """(B, k) distinct random positions among each row's n valid ones. Position t of a video gets the score
    uniform(fold_in(key, t)), independent of the padded length lb; the k best valid scores win."""
    t = jnp.arange(lb)

    def row(key):
        return jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(key, i), ()))(t)

    u = jax.vmap(row)(keys)
    u = jnp.where(t[None, :] < n[:, None], u, -1.0 - u)
    kk = min(k, lb)
    _, top = jax.lax.top_k(u, kk)
    if kk < k:  # more clips asked for than positions: cycle (only the first n are used as they are)
        top = jnp.take(top, jnp.arange(k) % kk, axis=1)
    # with k > n, positions past n repeat the first ones
    j = jnp.arange(k)[None, :]
    return jnp.where(j < n[:, None], top, jnp.take_along_axis(top, j % n[:, None].astype(jnp.int32), axis=1))


def _gather(x: jax.Array, pos: jax.Array) -> jax.Array:
    """x (B, L, F), pos (B, ...) -> (B, ..., F)."""
    flat = pos.reshape(pos.shape[0], -1)
    out = jnp.take_along_axis(x, flat[..., None], axis=1)
    return out.reshape(*pos.shape, x.shape[-1])


@register("uniform", "{e} uniformly spaced clips")
def uniform_clips(clips: Clips) -> jax.Array:
    """The mean of E uniformly spaced clips."""
    return jnp.mean(_gather(clips.features, uniform_positions(clips.n, clips.episode_length)), axis=1)


@register("random", "{e} random clips")
def random_clips(clips: Clips) -> jax.Array:
    """The mean of E distinct random clips."""
    lb = clips.mask.shape[1]
    pos = random_positions(clips.keys, clips.n, lb, clips.episode_length)
    return jnp.mean(_gather(clips.features, pos), axis=1)


@register("all", "all clips averaged")
def all_clips(clips: Clips) -> jax.Array:
    """The mean of every valid clip."""
    return jnp.sum(clips.features * clips.mask[..., None], axis=1) / clips.n[:, None]


def baseline_logits(params: Mapping, batch: Mapping, cfg: PreviewConfig, variant: str, policy_out: Mapping,
                    rand_keys: jax.Array) -> dict[str, jax.Array]:
    """Logits of every registered baseline, ``<name>_logits`` (B, C), and of the k-step curves,
    ``uniform_steps_logits`` and ``policy_steps_logits`` (B, E, C), for one batch (inside jit). `rand_keys`
    (B,) are the videos' keys for the random draws; `policy_out` is the model's output on the batch."""
    e, c, p = cfg.episode_length, cfg.num_classes, cfg.numerics
    mask = batch["mask"]
    n = jnp.sum(mask, axis=1)
    classify = Classifier(c, cfg.feature_dim, p)
    cls_vars = {"params": params["net_classifier"]}
    layout = layouts.of_batch(batch)
    feats = [layout.features(x) for x in model_inputs(batch)]
    spec = variants.get(variant)
    if spec.fusion:
        # fuse every position of the layout once (positions with mask 0 are never averaged); gathering
        # fused rows equals fusing gathered clips (the net is per clip)
        feats = [ImageAudioNet(p).apply({"params": params["net_imageAudio"]}, *feats)]
    clip_feats = layout.to_dense(feats[0])  # (B, Lb, F)

    def head(x):
        return classify.apply(cls_vars, x)

    clips = Clips(clip_feats, mask, n, rand_keys, e)
    out = {f"{name}_logits": head(baseline(clips)) for name, baseline in BASELINES.items()}
    # uniform with k = 1..E clips: a (E, E) table of positions, weights 1/k on the first k of row k
    tri = np.tril(np.ones((e, e), np.float32)) / np.arange(1, e + 1, dtype=np.float32)[:, None]
    pos = jnp.stack([jnp.pad(uniform_positions(n, k), ((0, 0), (0, e - k))) for k in range(1, e + 1)], axis=1)
    feats = _gather(clip_feats, pos)  # (B, E, E, F)
    out["uniform_steps_logits"] = head(jnp.einsum("kj,bkjf->bkf", jnp.asarray(tri), feats))
    if spec.fusion:  # the policy's k-step curve: the classifier on the mean of its first k fused inputs
        prefix = np.tril(np.ones((e, e), np.float32)) / np.arange(1, e + 1, dtype=np.float32)[:, None]
        out["policy_steps_logits"] = head(jnp.einsum("kj,bjf->bkf", jnp.asarray(prefix), policy_out["fused"]))
    else:
        out["policy_steps_logits"] = policy_out["step_logits"]
    return out
