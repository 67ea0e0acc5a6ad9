"""The Listen-to-Look networks in Flax Linen: fusion net, classifier and the two preview policies.

Pure math, no I/O, no knowledge of devices. Module and parameter names follow upstream's state dict
(docs/DESIGN.md has the table; `l2l_jax.torch_names` converts). Behaviour, quirks included, is
docs/UPSTREAM.md §3-§5; each quirk is implemented once, here, with a comment naming it.

Where the per-position work runs is the batch's feature layout (`l2l_jax.layouts`), an argument of the
call: dense (B, Lb, F) by default, or the chunk layout of real clips only.

Both policies take a batch padded to a bucket length Lb >= L, where L (`length`) is the length upstream's
collate gave the batch: positions >= L never influence any number (BatchNorm statistics, interpolation,
softmax), so padding a batch to a longer bucket changes nothing. Rows with `valid == 0` (filler rows) are
left out of BatchNorm statistics.

Precondition (what upstream's collate produces, docs/UPSTREAM.md §2): the mask is 0 or 1, and features
are zero wherever it is 0. The chunk layout then works on each row's positions up to its last mask > 0 only,
and no layout needs a multiply by the mask.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from l2l_jax import variants
from l2l_jax.exact import TIE_WINDOW
from l2l_jax.layouts import DenseLayout, Layout
from l2l_jax.numerics import EXACT, Numerics
from l2l_jax.torch_ops import (
    TorchBatchNorm,
    WeightNormLSTMCell,
    interp_time,
    normal,
    torch_dense,
    torch_uniform,
)

Array = jax.Array

HIDDEN = 1024  # H: LSTM width, hard-coded upstream (--hidden_size is ignored, quirk 15)
KEY_DIM = 512  # K: key/query width
FEATURE_DIM = variants.FUSION_WIDTH  # image/audio/fused feature width of the two-modality model
MASKED_SCORE = -1e35  # upstream masks with a finite -1e35 (quirk 6)
SCORE_SCALE = math.sqrt(KEY_DIM)  # 22.627416997969522, divides the scores in float32


@dataclasses.dataclass(frozen=True)
class PreviewConfig:
    """The switches of the preview policy, with upstream's flag names (docs/UPSTREAM.md §6 "Option defaults")."""

    num_classes: int
    episode_length: int = 10  # E
    mean_feature_as_start: bool = False
    with_replacement: bool = False  # quirk 1: True means a clip is NEVER chosen twice
    feature_interpolate: bool = False
    subsample_factor: int = 1
    feature_dim: int = FEATURE_DIM  # D; the two-modality model requires 512
    hard_audio_index: bool = False  # quirk 10: hard mode indexes the audio bank with the image index unless set
    numerics: Numerics = EXACT  # `l2l_jax.numerics`: EXACT computes what upstream does (quirk 29), or FAST


class ImageAudioNet(nn.Module):
    """Fusion net: cat(image, audio) -> Linear(1024,1024) -> ReLU -> Linear(1024,512) (section 3)."""

    numerics: Numerics = EXACT

    @nn.compact
    def __call__(self, image: Array, audio: Array) -> Array:
        x = jnp.concatenate([image, audio], axis=-1)
        x = nn.relu(torch_dense(1024, 1024, "imageAudio_fc1", self.numerics)(x))
        return torch_dense(FEATURE_DIM, 1024, "imageAudio_fc2", self.numerics)(x)


class Classifier(nn.Module):
    """Linear(in -> C) named `classifier`, as upstream's ClassifierNet."""

    num_classes: int
    in_features: int = FEATURE_DIM
    numerics: Numerics = EXACT

    @nn.compact
    def __call__(self, x: Array) -> Array:
        return torch_dense(self.num_classes, self.in_features, "classifier", self.numerics)(x)


class ImageAudioClassifier(nn.Module):
    """Fusion net + classifier (upstream's ImageAudioClassify container, the released ImageAudioNet weights)."""

    num_classes: int
    numerics: Numerics = EXACT

    def setup(self):
        self.net_imageAudio = ImageAudioNet(self.numerics)
        self.net_classifier = Classifier(self.num_classes, FEATURE_DIM, self.numerics)

    def __call__(self, image: Array, audio: Array) -> tuple[Array, Array]:
        """Returns (fused (N,512), logits (N,C))."""
        fused = self.net_imageAudio(image, audio)
        return fused, self.net_classifier(fused)


class QueryMLP(nn.Module):
    """Linear(1024,1024) -> BatchNorm1d -> ReLU -> Linear(1024,512): the query from the LSTM state."""

    numerics: Numerics = EXACT

    @nn.compact
    def __call__(self, h: Array, valid: Array, train: bool) -> Array:
        x = torch_dense(HIDDEN, HIDDEN, "fc1", self.numerics)(h)
        x = nn.relu(TorchBatchNorm(HIDDEN, numerics=self.numerics, name="bn")(x, valid, train))
        return torch_dense(KEY_DIM, HIDDEN, "fc2", self.numerics)(x)


class Conv1x1(nn.Module):
    """Upstream's 1x1 key conv as a per-position Linear(D -> K): parameters ``kernel (D, K)`` and ``bias (K)``
    (created as flax's nn.Dense creates them), computed by the layout."""

    features: int
    in_features: int
    numerics: Numerics = EXACT

    @nn.compact
    def __call__(self, x: Array, weights: Array, layout: Layout) -> tuple[Array, Array]:
        """Returns (conv output in the layout, bias)."""
        kernel = self.param("kernel", normal(0.0, 0.02), (self.in_features, self.features))
        bias = self.param("bias", torch_uniform(1.0 / math.sqrt(self.in_features)), (self.features,))
        return layout.conv(x, kernel, bias, weights), bias


class KeyConv(nn.Module):
    """Conv1x1(D->512) -> BatchNorm2d -> ReLU applied per time position: the keys, in the batch's layout.

    `weights` (B, Lb) select which positions count in the batch statistics (section 4: upstream's span all
    B*L positions of the batch, padding within L included, but not our bucket padding or filler rows). The
    chunk layout convolves real clips only and enters the other counted positions, whose features are zero
    and whose conv output is the bias exactly, as one weighted row (`l2l_jax.layouts`)."""

    in_features: int
    numerics: Numerics = EXACT

    @nn.compact
    def __call__(self, x: Array, weights: Array, train: bool, layout: Layout) -> tuple[Array, Array | None]:
        """x: features in the layout. Returns the keys (in the layout, in the numerics' storage dtype) and,
        for the tie map (exact numerics only, else None), the keys of every row's first TIE_WINDOW positions
        (B, W, K) (no gradient)."""
        numerics = self.numerics
        y, bias = Conv1x1(KEY_DIM, self.in_features, numerics, name="conv")(x, weights, layout)
        y = numerics.store(y)  # FAST: the conv output in 16 bits (float32 accumulation); EXACT: float32 as it is
        w, implicit = layout.statistics(weights, bias)
        bn = TorchBatchNorm(KEY_DIM, scale_init_std=0.02, numerics=numerics, name="bn")
        if implicit is None:
            keys, fill = numerics.store(nn.relu(bn(y, w, train))), None
        else:
            y, fill = bn(y, w, train, implicit=implicit)
            keys, fill = numerics.store(nn.relu(y)), jax.lax.stop_gradient(numerics.store(nn.relu(fill)))
        if not numerics.exact_sums:
            return keys, None
        head = layout.head(jax.lax.stop_gradient(keys), fill, min(TIE_WINDOW, layout.length))
        return keys, head


def sample_start(key: Array, mask: Array, length: Array | None = None) -> Array:
    """Upstream's random start: argmax over t of U[0,1) + mask, i.e. uniform over valid positions (t < L)."""
    r = jax.random.uniform(key, mask.shape, jnp.float32) + mask
    if length is not None:
        r = jnp.where(jnp.arange(mask.shape[1]) < length, r, -1.0)
    return jnp.argmax(r, axis=1).astype(jnp.int32)


def attention_scores(query: Array, keys: Array, mask: Array, inside: Array, ties: Array | None,
                     layout: Layout) -> Array:
    """Masked scaled scores (B, Lb). The layout computes the dot products so that a position's score does
    not depend on the bucket length Lb; `ties`
    (`tie_map(keys)`, once per batch) maps the first positions to their first bitwise-identical key row, so
    identical rows get identical scores and ties resolve to the first copy (section 4).
    Upstream's mask: s*m + (1-m)*(-1e35); positions beyond L (bucket padding) get -inf, so they keep
    probability exactly 0 even in a fully masked row (which is then uniform over the L positions)."""
    s = layout.numerics.canonical(layout.scores(query, keys), ties) / jnp.float32(SCORE_SCALE)
    s = s * mask + (1.0 - mask) * jnp.float32(MASKED_SCORE)
    return jnp.where(inside, s, -jnp.inf)


def drop(mask: Array, idx: Array) -> Array:
    """The mask with position idx[b] of each row set to 0 (the no-repeat bookkeeping)."""
    return mask * (1.0 - jax.nn.one_hot(idx, mask.shape[1], dtype=mask.dtype))


def _bank(x: Array, mask: Array, length: Array, cfg: PreviewConfig, layout: Layout) -> Array:
    """The feature "bank" the policy attends over, in the batch's layout: interp_time(x[:, ::s], L) * M, or x
    itself (section 4). With s = 1 the interpolation is exactly the identity (scale 1, weights 1 and 0:
    quirk 28), and x * M is x itself for upstream's batches (M is 0 or 1, and x is zero where M is 0: the
    module docstring's precondition), so the bank is x."""
    if cfg.feature_interpolate and cfg.subsample_factor > 1:
        dense = interp_time(layout.to_dense(x), length, cfg.subsample_factor) * mask[..., None]
        return layout.numerics.store(layout.from_dense(dense))
    return x


def _scan(body, length: int, train: bool, numerics: Numerics = EXACT):
    """nn.scan over the E steps of an episode: parameters broadcast; in training the BatchNorm statistics
    are carried (the query BatchNorm updates its running statistics once per step, in step order, section 4).
    Numerics that unroll the episode (FAST) unroll it fully: no loop-carried gradient accumulators and no
    per-step residual stores, so on a GPU a training step launches about half the kernels."""
    unroll = length if numerics.unroll_episode else 1
    if train:
        return nn.scan(body, variable_broadcast="params", variable_carry="batch_stats",
                       split_rngs={"params": False}, length=length, unroll=unroll)
    return nn.scan(body, variable_broadcast=["params", "batch_stats"], split_rngs={"params": False},
                   length=length, unroll=unroll)


class PreviewModel(nn.Module):
    """The two-modality preview policy (docs/UPSTREAM.md §4)."""

    cfg: PreviewConfig

    def setup(self):
        cfg, p = self.cfg, self.cfg.numerics
        if cfg.feature_dim != FEATURE_DIM:
            raise ValueError(f"the two-modality model needs 512-wide features, got feature_dim={cfg.feature_dim}")
        self.net_imageAudio = ImageAudioNet(p)
        self.net_classifier = Classifier(cfg.num_classes, FEATURE_DIM, p)
        self.image_queryfeature_mlp = QueryMLP(p)
        self.audio_queryfeature_mlp = QueryMLP(p)
        self.prediction_fc = torch_dense(cfg.num_classes, HIDDEN, "prediction_fc", p)
        self.image_key_conv1x1 = KeyConv(FEATURE_DIM, p)
        self.audio_key_conv1x1 = KeyConv(FEATURE_DIM, p)
        self.rnn = WeightNormLSTMCell(FEATURE_DIM, HIDDEN, p)
        self.modality_attention = torch_dense(2, HIDDEN, "modality_attention", p, weight_std=None)

    def __call__(self, image: Array, audio: Array, mask: Array, length: Array, start_idx: Array,
                 valid: Array | None = None, layout: Layout | None = None, *,
                 train: bool = False, hard: bool = False) -> dict[str, Array]:
        """image, audio: features in `layout` (default: dense, (B, Lb, 512))."""
        cfg = self.cfg
        b, lb = mask.shape
        valid = jnp.ones((b,), jnp.float32) if valid is None else valid.astype(jnp.float32)
        inside = jnp.arange(lb)[None, :] < length  # (1, Lb): positions of upstream's batch
        layout = (DenseLayout(b, lb) if layout is None else layout)._replace(numerics=cfg.numerics)
        image, audio = layout.features(image), layout.features(audio)
        bank_i, bank_a = _bank(image, mask, length, cfg, layout), _bank(audio, mask, length, cfg, layout)
        key_w = valid[:, None] * inside
        keys_i, head_i = self.image_key_conv1x1(bank_i, key_w, train, layout)
        keys_a, head_a = self.audio_key_conv1x1(bank_a, key_w, train, layout)
        ties_i, ties_a = cfg.numerics.ties(head_i), cfg.numerics.ties(head_a)
        keys_i, keys_a = layout.key_view(keys_i), layout.key_view(keys_a)  # as every step reads them
        if cfg.mean_feature_as_start:
            count = jnp.sum(mask, axis=1, keepdims=True)
            x_i, x_a = layout.row_sums(bank_i) / count, layout.row_sums(bank_a) / count
        else:  # raw features, not banks (quirk 18)
            x_i, x_a = layout.pick(image, start_idx), layout.pick(audio, start_idx)
        view_i, view_a = layout.bank_view(bank_i), layout.bank_view(bank_a)
        w_rnn = self.rnn.weights()
        zeros = jnp.zeros((b, HIDDEN), jnp.float32)
        start_idx = start_idx.astype(jnp.int32)
        carry = (zeros, zeros, x_i, x_a, mask, mask, start_idx, start_idx)
        if self.is_initializing():  # create the step's variables outside the scan
            self.net_imageAudio(x_i, x_a)
            for mlp in (self.image_queryfeature_mlp, self.audio_queryfeature_mlp):
                mlp(zeros, valid, False)
            self.prediction_fc(zeros)
            self.modality_attention(zeros)

        def step(mdl: PreviewModel, carry, _):
            h, c, x_i, x_a, m_i, m_a, i_prev, a_prev = carry
            if cfg.with_replacement:  # no repeats; at t = 0 both masks lose the start (quirks 8, 9)
                m_i, m_a = drop(m_i, i_prev), drop(m_a, a_prev)
            fused = mdl.net_imageAudio(x_i, x_a)  # f_t fuses the step's INPUT features (quirk 11)
            h, c = mdl.rnn(fused, h, c, w_rnn)
            q_i = mdl.image_queryfeature_mlp(h, valid, train)
            q_a = mdl.audio_queryfeature_mlp(h, valid, train)
            logits = mdl.prediction_fc(h)
            p_i = cfg.numerics.softmax(attention_scores(q_i, keys_i, m_i, inside, ties_i, layout))
            p_a = cfg.numerics.softmax(attention_scores(q_a, keys_a, m_a, inside, ties_a, layout))
            i_idx = jnp.argmax(p_i, axis=-1).astype(jnp.int32)  # argmax of probabilities (quirk 7)
            a_idx = jnp.argmax(p_a, axis=-1).astype(jnp.int32)
            w = jax.nn.softmax(mdl.modality_attention(h), axis=-1)
            if hard:  # quirk 10: both banks indexed with the image index by default
                j = a_idx if cfg.hard_audio_index else i_idx
                nx_i, nx_a = layout.pick(bank_i, i_idx), layout.pick(bank_a, j)
            else:
                probs = jnp.stack([p_i, p_a], axis=-1)  # one pass over each bank serves both queries
                att_i, att_a = layout.attend(probs, view_i), layout.attend(probs, view_a)
                nx_i = w[:, :1] * att_i[:, 0] + w[:, 1:] * att_i[:, 1]
                nx_a = w[:, :1] * att_a[:, 0] + w[:, 1:] * att_a[:, 1]
            out = (fused, logits, i_idx, a_idx, w)
            return (h, c, nx_i, nx_a, m_i, m_a, i_idx, a_idx), out

        _, (fused, logits, i_idx, a_idx, w) = _scan(step, cfg.episode_length, train, cfg.numerics)(self, carry, None)
        avgpool = self.net_classifier(jnp.mean(fused, axis=0))
        step_logits = jnp.swapaxes(logits, 0, 1)
        return {
            "avgpool_logits": avgpool,
            "lstm_logits": step_logits[:, -1],
            "step_logits": step_logits,
            "image_idx": i_idx.T,
            "audio_idx": a_idx.T,
            "modality_w": jnp.swapaxes(w, 0, 1),
            "fused": jnp.swapaxes(fused, 0, 1),
        }


class SinglePreviewModel(nn.Module):
    """The single-modality preview policy (docs/UPSTREAM.md §5), D-wide features."""

    cfg: PreviewConfig

    def setup(self):
        cfg, p = self.cfg, self.cfg.numerics
        self.net_classifier = Classifier(cfg.num_classes, cfg.feature_dim, p)
        self.queryfeature_mlp = QueryMLP(p)
        self.prediction_fc = torch_dense(cfg.num_classes, HIDDEN, "prediction_fc", p)
        self.key_conv1x1 = KeyConv(cfg.feature_dim, p)
        self.rnn = WeightNormLSTMCell(cfg.feature_dim, HIDDEN, p)

    def __call__(self, features: Array, mask: Array, length: Array, start_idx: Array,
                 valid: Array | None = None, layout: Layout | None = None, *,
                 train: bool = False, hard: bool = False) -> dict[str, Array]:
        """features: in `layout` (default: dense, (B, Lb, D))."""
        cfg = self.cfg
        b, lb = mask.shape
        valid = jnp.ones((b,), jnp.float32) if valid is None else valid.astype(jnp.float32)
        inside = jnp.arange(lb)[None, :] < length
        layout = (DenseLayout(b, lb) if layout is None else layout)._replace(numerics=cfg.numerics)
        features = layout.features(features)
        bank = _bank(features, mask, length, cfg, layout)
        # keys from RAW features (quirk 18)
        keys, head = self.key_conv1x1(features, valid[:, None] * inside, train, layout)
        ties = cfg.numerics.ties(head)
        keys = layout.key_view(keys)
        if cfg.mean_feature_as_start:
            x = layout.row_sums(features) / jnp.sum(mask, axis=1, keepdims=True)
        else:
            x = layout.pick(features, start_idx)
        w_rnn = self.rnn.weights()
        zeros = jnp.zeros((b, HIDDEN), jnp.float32)
        start_idx = start_idx.astype(jnp.int32)
        carry = (zeros, zeros, x, mask, start_idx, jnp.array(False))
        if self.is_initializing():  # create the step's variables outside the scan
            self.queryfeature_mlp(zeros, valid, False)
            self.prediction_fc(zeros)

        def step(mdl: SinglePreviewModel, carry, _):
            h, c, x, m, j_prev, done = carry
            if cfg.with_replacement:
                m = drop(m, j_prev)
            h, c = mdl.rnn(x, h, c, w_rnn)
            q = mdl.queryfeature_mlp(h, valid, train)
            logits = mdl.prediction_fc(h)
            probs = cfg.numerics.softmax(attention_scores(q, keys, m, inside, ties, layout))
            j = jnp.argmax(probs, axis=-1).astype(jnp.int32)
            soft = layout.attend(probs[..., None], bank)[:, 0]
            chosen = layout.pick(features, j)  # upstream's "gt" rows: the raw features again (quirk 19)
            nx = layout.pick(bank, j) if hard else soft  # hard input for the next step only (quirk 20)
            active = jnp.logical_not(done)
            # upstream breaks once the mask of the whole batch is empty, after this step's stores
            done = jnp.logical_or(done, jnp.sum(m * valid[:, None]) == 0)
            return (h, c, nx, m, j, done), (soft, chosen, logits, j, active)

        _, (soft, chosen, logits, idx, active) = _scan(step, cfg.episode_length, train, cfg.numerics)(self, carry, None)
        weight = active.astype(jnp.float32)[:, None, None]
        steps = jnp.sum(active.astype(jnp.int32))
        n = steps.astype(jnp.float32)
        avgpool = self.net_classifier(jnp.sum(soft * weight, axis=0) / n)
        step_logits = jnp.swapaxes(logits, 0, 1)
        return {
            "avgpool_logits": avgpool,
            "lstm_logits": step_logits[:, steps - 1],
            "step_logits": step_logits,
            "idx": idx.T,
            "selected_gt_mean": jnp.sum(chosen * weight, axis=0) / n,
            "steps_taken": steps,
        }


#: the policy module of each variant (`l2l_jax.variants`), by name
POLICIES: dict[str, type[nn.Module]] = {variants.TWO.name: PreviewModel, variants.SINGLE.name: SinglePreviewModel}


def build_model(cfg: PreviewConfig, variant: str | variants.Variant) -> nn.Module:
    """The policy module of a variant (`l2l_jax.variants`)."""
    return POLICIES[variants.get(variant).name](cfg)


def init_variables(cfg: PreviewConfig, variant: str, key: Array) -> dict:
    """Fresh variables with upstream's initial distributions (docs/UPSTREAM.md §6).

    `variant` names a policy variant (`l2l_jax.variants`) or is `variants.IMAGEAUDIONET` (fusion net +
    classifier only)."""
    if variant == variants.IMAGEAUDIONET:
        x = jnp.zeros((1, FEATURE_DIM), jnp.float32)
        return ImageAudioClassifier(cfg.num_classes, cfg.numerics).init(key, x, x)
    spec = variants.get(variant)
    b, lb = 2, 10
    mask = jnp.ones((b, lb), jnp.float32)
    start = jnp.zeros((b,), jnp.int32)
    length = jnp.array(lb, jnp.int32)
    feats = [jnp.zeros((b, lb, cfg.feature_dim), jnp.float32) for _ in spec.modalities]
    return build_model(cfg, spec).init(key, *feats, mask, length, start)
