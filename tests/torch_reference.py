"""A straightforward eager PyTorch implementation of upstream's preview models, written from docs/UPSTREAM.md.

Written from that description (§2, §4, §5, §6, §8), not from upstream's code. Module names match
upstream's, so `load_state_dict(strict=True)` takes the state dicts of `l2l_jax.torch_names.to_state_dict` and
`tests/fixture_inputs.manifest_state_dict`. The style is upstream's: batch-first tensors, a Python loop over
the E steps, BatchNorm1d/2d in torch's layout, bmm scores, -1e35 masking, argmax of the softmax,
`F.interpolate` for `feature_interpolate`, torch's own SGD. Used as the parity reference of
`tests/test_model_cases.py` and as the "plain PyTorch" baseline of `benchmarks/train_speed.py` and
`benchmarks/eval_speed.py` (CPU, torch's default thread count).

API
---
Models (`torch.nn.Module`; call `.eval()` / `.train()` as usual):

- ``PreviewModel(num_classes, *, mean_feature_as_start=False, with_replacement=False,
  feature_interpolate=False, subsample_factor=1)`` - two modalities (§4).
  ``forward(image (B,L,512), audio (B,L,512), mask (B,L), E, hard=False, start_idx=None) -> PreviewOutput``
  with fields ``avgpool_logits (B,C)``, ``step_logits`` (list of E tensors (B,C); the last is the "LSTM"
  logits), ``image_idx``, ``audio_idx`` (B,E) int64, ``modality_w`` (B,E,2), ``fused`` (B,512,E).
- ``SinglePreviewModel(num_classes, feature_dim=512, *, ...same flags, subsample_factor default 2)`` - §5.
  ``forward(features (B,L,D), mask (B,L), E, hard=False, start_idx=None, gt_features=None) -> SingleOutput``
  with ``avgpool_logits``, ``step_logits`` (list, one per step taken), ``idx`` (B,steps) int64,
  ``selected_gt_mean`` (B,D).
  ``start_idx=None`` draws upstream's start: argmax of ``torch.rand(B,L) + mask``.
- ``build(variant, num_classes, feature_dim=512, **flags)`` (variant "two" or "single"),
  ``from_state_dict(state_dict, variant, **flags)`` (numpy or torch tensors; C and D from the shapes, strict),
  ``state_dict_numpy(model)`` (numpy copy, upstream order).

Training (§6):

- ``make_optimizer(model, variant, lr=0.01, momentum=0.9, weight_decay=1e-4, freeze=False)``: torch SGD
  (Nesterov, dampening 0) with upstream's param groups (freeze: classifier 0.1*lr, fusion net lr 0,
  modality_attention in no group).
- ``make_scheduler(optimizer, milestones=(), warmup_iters=0, gamma=0.1, warmup_factor=1e-5)``: the warm-up
  multistep schedule in iterations (a LambdaLR; step it after every optimizer step).
- ``train_step(model, optimizer, batch, E, *, with_avgpool_ce_loss=True, with_lstm_ce_loss=False,
  avgpool_ce_loss_weight=1.0, lstm_ce_loss_weight=1.0, hard=False, start_idx=None, scheduler=None) -> dict``:
  one upstream iteration (train mode, forward, CE losses, zero_grad, backward, step); returns the float
  losses ``loss``, ``avgpool_ce``, ``lstm_ce``. ``batch`` is a collate tuple ``(x1, x2, mask, labels, idx)``.
- ``losses(avgpool_logits, lstm_logits, labels, ...) -> (loss, avgpool_ce, lstm_ce)`` (tensors).

Collates (§2; items are ``(image (T,512), audio (T,512), label, index)``, single ``(feat, feat, label,
index)``; arrays may be numpy or torch):

- ``eval_collate(items, single=False, rng=random)`` -> ``(x1 (B,L,F), x2, mask (B,L), labels int64 (B,),
  idx numpy int64 (B,))``, L = the longest video.
- ``train_collate(items, single=False, rng=random)``: L ~ randint(200, 500) capped at the longest video, a
  shared random crop start per longer video, then the short-video fill (root: last clip; single: random
  earlier clip per position). ``rng`` is anything with ``randint(a, b)`` (Python's ``random`` module by default).
"""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

HIDDEN = 1024
KEY_DIM = 512
FEATURE_DIM = 512
E_COLLATE = 10  # hard-coded in upstream's collates (quirk 2)
MASKED = -1e35


# -- networks (docs/UPSTREAM.md §3-§5) -----------------------------------------------------------------


class ImageAudioNet(nn.Module):
    """cat(image, audio) -> Linear(1024,1024) -> ReLU -> Linear(1024,512)."""

    def __init__(self):
        super().__init__()
        self.imageAudio_fc1 = nn.Linear(1024, 1024)
        self.imageAudio_fc2 = nn.Linear(1024, 512)

    def forward(self, image: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        x = torch.cat([image, audio], dim=1)
        return self.imageAudio_fc2(F.relu(self.imageAudio_fc1(x)))


class ClassifierNet(nn.Module):
    """Linear(in -> C) named `classifier`."""

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.classifier = nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x)


def query_mlp() -> nn.Sequential:
    """[Linear(1024,1024), BatchNorm1d(1024), ReLU, Linear(1024,512)]."""
    return nn.Sequential(nn.Linear(HIDDEN, HIDDEN), nn.BatchNorm1d(HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, KEY_DIM))


def key_conv(in_channels: int) -> nn.Sequential:
    """[Conv2d(in,512,1), BatchNorm2d(512), ReLU]."""
    return nn.Sequential(nn.Conv2d(in_channels, KEY_DIM, kernel_size=1, stride=1, padding=0),
                         nn.BatchNorm2d(KEY_DIM), nn.ReLU())


def weight_norm_lstm(input_size: int) -> nn.LSTMCell:
    """LSTMCell(input, 1024) with torch's weight_norm on weight_hh, then weight_ih (keys `rnn.weight_ih_g` ...)."""
    cell = nn.LSTMCell(input_size, HIDDEN)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the old API is the one with upstream's key names
        nn.utils.weight_norm(cell, "weight_hh")
        nn.utils.weight_norm(cell, "weight_ih")
    nn.init.zeros_(cell.bias_ih)
    nn.init.zeros_(cell.bias_hh)
    return cell


def interp_time(x: torch.Tensor, length: int, subsample: int) -> torch.Tensor:
    """F.interpolate(x[:, ::s] along time, size=L, linear, align_corners=False); x is (B,L,F)."""
    y = x[:, ::subsample, :].permute(0, 2, 1)
    return F.interpolate(y, size=length, mode="linear", align_corners=False).permute(0, 2, 1)


def keys_of(conv: nn.Sequential, bank: torch.Tensor) -> torch.Tensor:
    """(B,L,F) -> Conv1x1/BN2d/ReLU over (B,F,L,1) -> keys (B,512,L)."""
    return conv(bank.permute(0, 2, 1).unsqueeze(3)).squeeze(3)


def masked_probs(query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """softmax_l(<q, K[:, :, l]>/sqrt(512) masked with -1e35) -> (B,L).

    The bmm runs as (B,L,512) x (B,512,1): one dot product per key row, so bitwise-identical key rows (the
    repeated clips of a short video) get bitwise-identical scores and the first copy wins the argmax, as in
    upstream. The (B,1,512) x (B,512,L) orientation rounds identical columns differently on CPU (checked)."""
    scores = torch.bmm(keys.transpose(1, 2), query.unsqueeze(2)).squeeze(2) / math.sqrt(KEY_DIM)
    scores = scores * mask + (1 - mask) * MASKED
    return F.softmax(scores, dim=-1)


def attend(probs: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """sum_l p[b,l] bank[b,l,:] -> (B,F)."""
    return torch.bmm(probs.unsqueeze(1), bank).squeeze(1)


def random_start(mask: torch.Tensor) -> torch.Tensor:
    """Upstream's start: argmax_t of U[0,1) + mask (uniform over valid positions)."""
    return torch.argmax(torch.rand(mask.shape) + mask, dim=1)


def drop(mask: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """A copy of the mask with position idx[b] of row b set to 0."""
    mask = mask.clone()
    mask[torch.arange(mask.shape[0]), idx] = 0
    return mask


class PreviewOutput(NamedTuple):
    avgpool_logits: torch.Tensor
    step_logits: list[torch.Tensor]
    image_idx: torch.Tensor
    audio_idx: torch.Tensor
    modality_w: torch.Tensor
    fused: torch.Tensor


class SingleOutput(NamedTuple):
    avgpool_logits: torch.Tensor
    step_logits: list[torch.Tensor]
    idx: torch.Tensor
    selected_gt_mean: torch.Tensor


class PreviewModel(nn.Module):
    """The two-modality preview model (docs/UPSTREAM.md §4)."""

    def __init__(self, num_classes: int, *, mean_feature_as_start: bool = False, with_replacement: bool = False,
                 feature_interpolate: bool = False, subsample_factor: int = 1):
        super().__init__()
        self.mean_feature_as_start = mean_feature_as_start
        self.with_replacement = with_replacement
        self.feature_interpolate = feature_interpolate
        self.subsample_factor = subsample_factor
        self.net_imageAudio = ImageAudioNet()
        self.net_classifier = ClassifierNet(FEATURE_DIM, num_classes)
        self.image_queryfeature_mlp = query_mlp()
        self.audio_queryfeature_mlp = query_mlp()
        self.prediction_fc = nn.Linear(HIDDEN, num_classes)
        self.image_key_conv1x1 = key_conv(FEATURE_DIM)
        self.audio_key_conv1x1 = key_conv(FEATURE_DIM)
        self.rnn = weight_norm_lstm(FEATURE_DIM)
        self.modality_attention = nn.Linear(HIDDEN, 2)
        self.softmax = nn.Softmax(dim=-1)

    def forward(self, image: torch.Tensor, audio: torch.Tensor, mask: torch.Tensor, E: int, hard: bool = False,
                start_idx: torch.Tensor | None = None) -> PreviewOutput:
        B, L, _ = image.shape
        h = torch.zeros(B, HIDDEN)
        c = torch.zeros(B, HIDDEN)
        mask_i, mask_a = mask.clone(), mask.clone()
        if self.feature_interpolate:
            bank_i = interp_time(image, L, self.subsample_factor) * mask_i.unsqueeze(2)
            bank_a = interp_time(audio, L, self.subsample_factor) * mask_a.unsqueeze(2)
        else:
            bank_i, bank_a = image, audio
        keys_i = keys_of(self.image_key_conv1x1, bank_i)
        keys_a = keys_of(self.audio_key_conv1x1, bank_a)
        j0 = random_start(mask) if start_idx is None else torch.as_tensor(start_idx, dtype=torch.long)
        rows = torch.arange(B)
        if self.mean_feature_as_start:
            x_i = bank_i.sum(1) / mask.sum(1, keepdim=True)
            x_a = bank_a.sum(1) / mask.sum(1, keepdim=True)
        else:
            x_i, x_a = image[rows, j0], audio[rows, j0]
        idx_i = idx_a = j0
        fused, logits, image_idx, audio_idx, weights = [], [], [], [], []
        for _ in range(E):
            if self.with_replacement:  # quirk 1: no repeats
                mask_i, mask_a = drop(mask_i, idx_i), drop(mask_a, idx_a)
            f = self.net_imageAudio(x_i, x_a)
            fused.append(f)
            h, c = self.rnn(f, (h, c))
            q_i = self.image_queryfeature_mlp(h)
            q_a = self.audio_queryfeature_mlp(h)
            logits.append(self.prediction_fc(h))
            p_i = masked_probs(q_i, keys_i, mask_i)
            p_a = masked_probs(q_a, keys_a, mask_a)
            idx_i, idx_a = torch.argmax(p_i, dim=1), torch.argmax(p_a, dim=1)
            w = self.softmax(self.modality_attention(h))
            x_i = w[:, 0:1] * attend(p_i, bank_i) + w[:, 1:2] * attend(p_a, bank_i)
            x_a = w[:, 0:1] * attend(p_i, bank_a) + w[:, 1:2] * attend(p_a, bank_a)
            if hard:  # quirk 10: the image index for both banks
                x_i, x_a = bank_i[rows, idx_i], bank_a[rows, idx_i]
            image_idx.append(idx_i)
            audio_idx.append(idx_a)
            weights.append(w)
        stacked = torch.stack(fused, dim=2)
        pred = self.net_classifier(stacked.mean(dim=2))
        return PreviewOutput(pred, logits, torch.stack(image_idx, 1), torch.stack(audio_idx, 1),
                             torch.stack(weights, 1), stacked)


class SinglePreviewModel(nn.Module):
    """The single-modality preview model (docs/UPSTREAM.md §5), D-wide features."""

    def __init__(self, num_classes: int, feature_dim: int = 512, *, mean_feature_as_start: bool = False,
                 with_replacement: bool = False, feature_interpolate: bool = False, subsample_factor: int = 2):
        super().__init__()
        self.mean_feature_as_start = mean_feature_as_start
        self.with_replacement = with_replacement
        self.feature_interpolate = feature_interpolate
        self.subsample_factor = subsample_factor
        self.net_classifier = ClassifierNet(feature_dim, num_classes)
        self.queryfeature_mlp = query_mlp()
        self.prediction_fc = nn.Linear(HIDDEN, num_classes)
        self.key_conv1x1 = key_conv(feature_dim)
        self.rnn = weight_norm_lstm(feature_dim)

    def forward(self, features: torch.Tensor, mask: torch.Tensor, E: int, hard: bool = False,
                start_idx: torch.Tensor | None = None, gt_features: torch.Tensor | None = None) -> SingleOutput:
        B, L, _ = features.shape
        gt = features if gt_features is None else gt_features
        h = torch.zeros(B, HIDDEN)
        c = torch.zeros(B, HIDDEN)
        if self.feature_interpolate:
            bank = interp_time(features, L, self.subsample_factor) * mask.unsqueeze(2)
        else:
            bank = features
        keys = keys_of(self.key_conv1x1, features)  # raw features (quirk 18)
        j = random_start(mask) if start_idx is None else torch.as_tensor(start_idx, dtype=torch.long)
        rows = torch.arange(B)
        x = features.sum(1) / mask.sum(1, keepdim=True) if self.mean_feature_as_start else features[rows, j]
        mask = mask.clone()
        soft, chosen, logits, idx = [], [], [], []
        for _ in range(E):
            if self.with_replacement:
                mask = drop(mask, j)
            h, c = self.rnn(x, (h, c))
            q = self.queryfeature_mlp(h)
            logits.append(self.prediction_fc(h))
            p = masked_probs(q, keys, mask)
            j = torch.argmax(p, dim=1)
            x = attend(p, bank)
            idx.append(j)
            chosen.append(gt[rows, j])
            soft.append(x)
            if hard:  # the next step's input only (quirk 20)
                x = bank[rows, j]
            if mask.sum() == 0:
                break
        pred = self.net_classifier(torch.stack(soft, 1).mean(1))
        return SingleOutput(pred, logits, torch.stack(idx, 1), torch.stack(chosen, 1).mean(1))


def build(variant: str, num_classes: int, feature_dim: int = 512, **flags: Any) -> nn.Module:
    """A fresh model ("two" or "single") with torch's default init; `flags` are the constructor switches."""
    if variant == "two":
        return PreviewModel(num_classes, **flags)
    if variant == "single":
        return SinglePreviewModel(num_classes, feature_dim, **flags)
    raise ValueError(f"unknown variant {variant!r}")


def from_state_dict(state_dict: Mapping[str, Any], variant: str, **flags: Any) -> nn.Module:
    """A model holding an upstream-format state dict (strict); C and D come from the classifier's shape."""
    sd = {k: torch.as_tensor(np.asarray(v)).clone() for k, v in state_dict.items()}
    num_classes, feature_dim = sd["net_classifier.classifier.weight"].shape
    model = build(variant, num_classes, feature_dim, **flags)
    model.load_state_dict(sd, strict=True)
    return model


def state_dict_numpy(model: nn.Module) -> dict[str, np.ndarray]:
    """The model's state dict as numpy copies, upstream's order."""
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


# -- training (docs/UPSTREAM.md §6) --------------------------------------------------------------------

_FREEZE_GROUPS = {
    "two": [("image_queryfeature_mlp", 1.0), ("audio_queryfeature_mlp", 1.0), ("prediction_fc", 1.0),
            ("image_key_conv1x1", 1.0), ("audio_key_conv1x1", 1.0), ("rnn", 1.0), ("net_classifier", 0.1),
            ("net_imageAudio", 0.0)],
    "single": [("queryfeature_mlp", 1.0), ("prediction_fc", 1.0), ("key_conv1x1", 1.0), ("rnn", 1.0),
               ("net_classifier", 1.0)],
}


def make_optimizer(model: nn.Module, variant: str, lr: float = 0.01, momentum: float = 0.9,
                   weight_decay: float = 1e-4, freeze: bool = False) -> torch.optim.SGD:
    """torch SGD (Nesterov) with upstream's param groups."""
    if freeze:
        groups = [{"params": list(getattr(model, name).parameters()), "lr": lr * factor}
                  for name, factor in _FREEZE_GROUPS[variant]]
    else:
        groups = [{"params": list(model.parameters()), "lr": lr}]
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=True,
                           dampening=0)


def make_scheduler(optimizer: torch.optim.Optimizer, milestones: Sequence[int] = (), warmup_iters: int = 0,
                   gamma: float = 0.1, warmup_factor: float = 1e-5) -> torch.optim.lr_scheduler.LambdaLR:
    """Upstream's warm-up multistep schedule, counted in iterations (step after every optimizer step)."""

    def factor(k: int) -> float:
        warm = 1.0
        if k < warmup_iters:
            alpha = k / warmup_iters
            warm = warmup_factor * (1 - alpha) + alpha
        return warm * gamma ** sum(1 for m in milestones if m <= k)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def losses(avgpool_logits: torch.Tensor, lstm_logits: torch.Tensor, labels: torch.Tensor, *,
           with_avgpool_ce_loss: bool = True, with_lstm_ce_loss: bool = False, avgpool_ce_loss_weight: float = 1.0,
           lstm_ce_loss_weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, avgpool_ce, lstm_ce): batch-mean cross entropies and the configured weighted sum."""
    avgpool_ce = F.cross_entropy(avgpool_logits, labels)
    lstm_ce = F.cross_entropy(lstm_logits, labels)
    if not (with_avgpool_ce_loss or with_lstm_ce_loss):
        raise ValueError("no loss selected")
    loss = 0
    if with_avgpool_ce_loss:
        loss = loss + avgpool_ce_loss_weight * avgpool_ce
    if with_lstm_ce_loss:
        loss = loss + lstm_ce_loss_weight * lstm_ce
    return loss, avgpool_ce, lstm_ce


def forward_batch(model: nn.Module, batch: Sequence[Any], E: int, hard: bool = False,
                  start_idx: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """The model on a collate tuple: (avgpool logits, last step logits, full output)."""
    x1, x2, mask = batch[0], batch[1], batch[2]
    if isinstance(model, SinglePreviewModel):
        out = model(x1, mask, E, hard, start_idx, gt_features=x2)
    else:
        out = model(x1, x2, mask, E, hard, start_idx)
    return out.avgpool_logits, out.step_logits[-1], out


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: Sequence[Any], E: int, *,
               with_avgpool_ce_loss: bool = True, with_lstm_ce_loss: bool = False,
               avgpool_ce_loss_weight: float = 1.0, lstm_ce_loss_weight: float = 1.0, hard: bool = False,
               start_idx: torch.Tensor | None = None,
               scheduler: torch.optim.lr_scheduler.LRScheduler | None = None) -> dict[str, float]:
    """One upstream training iteration on a collate tuple; returns the losses as floats."""
    model.train()
    avgpool, lstm, _ = forward_batch(model, batch, E, hard, start_idx)
    loss, avgpool_ce, lstm_ce = losses(avgpool, lstm, batch[3], with_avgpool_ce_loss=with_avgpool_ce_loss,
                                       with_lstm_ce_loss=with_lstm_ce_loss,
                                       avgpool_ce_loss_weight=avgpool_ce_loss_weight,
                                       lstm_ce_loss_weight=lstm_ce_loss_weight)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    return {"loss": float(loss.item()), "avgpool_ce": float(avgpool_ce.item()), "lstm_ce": float(lstm_ce.item())}


# -- collates (docs/UPSTREAM.md §2) --------------------------------------------------------------------


def _tensor(x: Any) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.Tensor(np.asarray(x))


def _pad_crop(x: torch.Tensor, L: int, start: int) -> torch.Tensor:
    n = x.shape[0]
    if n < L:
        return torch.cat([x, torch.zeros(L - n, x.shape[1])], dim=0)
    if n > L:
        return x[start:start + L]
    return x


def _collate(items: Sequence[Sequence[Any]], L: int, single: bool, rng: Any, crop: bool):
    firsts, seconds, lengths = [], [], []
    for item in items:
        a, b = _tensor(item[0]), _tensor(item[1])
        n = a.shape[0]
        start = rng.randint(0, n - L) if (crop and n > L) else 0
        firsts.append(_pad_crop(a, L, start))
        seconds.append(_pad_crop(b, L, start))
        lengths.append(n)
    if L < E_COLLATE and min(lengths) < E_COLLATE:
        raise IndexError(f"batch length {L} < {E_COLLATE}: upstream's short-video fill overruns")
    for a, b, n in zip(firsts, seconds, lengths, strict=True):
        for p in range(n, E_COLLATE):
            src = rng.randint(0, n - 1) if single else n - 1
            a[p] = a[src]
            b[p] = b[src]
    mask = torch.zeros(len(items), L)
    for i, n in enumerate(lengths):
        mask[i, :max(E_COLLATE, n)] = 1
    labels = torch.LongTensor([int(item[2]) for item in items])
    idx = np.asarray([int(item[3]) for item in items], dtype=np.int64)
    return torch.stack(firsts), torch.stack(seconds), mask, labels, idx


def eval_collate(items: Sequence[Sequence[Any]], single: bool = False, rng: Any = random):
    """Upstream's evaluation collate: pad to the longest video, fill short videos, mask up to max(10, T)."""
    L = max(_tensor(item[0]).shape[0] for item in items)
    return _collate(items, L, single, rng, crop=False)


def train_collate(items: Sequence[Sequence[Any]], single: bool = False, rng: Any = random):
    """Upstream's training collate: L ~ randint(200, 500) capped at the longest video, shared random crops."""
    L = rng.randint(200, 500)
    longest = max(_tensor(item[0]).shape[0] for item in items)
    if longest < L:
        L = longest
    return _collate(items, L, single, rng, crop=True)
