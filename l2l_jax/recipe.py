"""Upstream's optimisation recipe as optax: parameter groups, SGD, the schedule and the losses.

Everything here follows docs/UPSTREAM.md §6 (and quirks 12-14, 23 of §8):

* **SGD** as torch's ``SGD(momentum=mu, weight_decay=wd, nesterov=True, dampening=0)``:
  ``d = g + wd*p``; ``buf = d`` on the first step, else ``mu*buf + d``; ``p -= lr*(d + mu*buf)``.
  optax's ``add_decayed_weights`` + ``trace(nesterov=True)`` with its zero-initialised trace computes exactly
  this (``buf_0 = mu*0 + d = d``).
* **Parameter groups** by top-level module name, in upstream's group order (`param_groups`). With
  ``--freeze_imageAudioNet`` (two modalities) the fusion net is in a group with lr 0 (it still gets decay and
  momentum, it just never moves), the classifier runs at 0.1*lr, and ``modality_attention`` is in no group at
  all: it is never updated (no decay, no momentum). Without the flag, one group holds everything at lr. The
  single-modality freeze recipe puts every module at lr.
* **No gradient path, no update** (quirk 14): torch skips parameters whose ``.grad`` is ``None`` (no decay,
  no momentum). In JAX such parameters get a zero gradient instead, so `no_grad_modules` decides them from the
  loss flags and `Recipe.optimizer` masks them (``optax.set_to_zero``).
* **Schedule**, counted in iterations k (0 for the first step):
  ``lr_g(k) = base_g * w(k) * gamma**#{m in milestones: m <= k}``, ``w(k) = f*(1 - k/W) + k/W`` for
  ``k < W`` (f = 1e-5) else 1. Upstream's plain ``MultiStepLR`` (no ``--scheduler``) is the case ``W = 0``.
  `Recipe.lr_at` gives it in float64 for logging (the fixtures record it to 1e-12); `Recipe.schedule` is the
  optax (float32) version used by the update.
* **Losses**: cross entropy, batch mean over the rows with ``valid == 1``, on the avgpool logits and on the
  last step's logits; ``loss = [avgpool flag]*w_a*avgpool_ce + [lstm flag]*w_l*lstm_ce`` (the single variant
  has no weight options: leave both at 1). Both cross entropies are always returned; no loss flag is an error.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from l2l_jax import variants
from l2l_jax.exact import gradient_sum, tree_sum

#: Label of the parameters that the optimizer never touches (no group, or no gradient path).
FROZEN = "frozen"


@dataclasses.dataclass(frozen=True)
class ParamGroup:
    """One of upstream's optimizer param groups: its name, its top-level modules and its lr factor."""

    name: str
    modules: tuple[str, ...]
    lr_factor: float


def param_groups(variant: str, freeze: bool) -> list[ParamGroup]:
    """Upstream's param groups in upstream's order (docs/UPSTREAM.md §6; the variant's `freeze_groups` under
    --freeze_imageAudioNet); modules in no group are never updated."""
    spec = variants.get(variant)
    if not freeze:
        return [ParamGroup("all", spec.modules, 1.0)]
    return [ParamGroup(m, (m,), factor) for m, factor in spec.freeze_groups]


def no_grad_modules(
    variant: str,
    *,
    with_avgpool_ce_loss: bool,
    with_lstm_ce_loss: bool,
    hard: bool = False,
    episode_length: int = 10,
) -> frozenset[str]:
    """Top-level modules with no gradient path to the configured loss (torch leaves their ``.grad`` None).

    Each loss reaches the variant's `avgpool_uses` / `lstm_uses`, plus its `attention_modules` when a soft
    attended feature reaches that loss: never when ``hard`` (single trains hard under ``--gt_feature_eval``,
    docs/UPSTREAM.md §5, so the last state's input is a hard pick) and never with ``E = 1`` (no attended
    feature in use).
    """
    spec = variants.get(variant)
    _require_a_loss(with_avgpool_ce_loss, with_lstm_ce_loss)
    attention_used = episode_length >= 2 and not hard  # some consumed input is a soft attended feature
    used: set[str] = set()
    if with_avgpool_ce_loss:
        used |= spec.avgpool_uses
        if attention_used and spec.avgpool_attends:
            used |= spec.attention_modules
    if with_lstm_ce_loss:
        used |= spec.lstm_uses
        if attention_used:
            used |= spec.attention_modules
    return frozenset(m for m in spec.modules if m not in used)


def _require_a_loss(with_avgpool_ce_loss: bool, with_lstm_ce_loss: bool) -> None:
    if not (with_avgpool_ce_loss or with_lstm_ce_loss):
        raise ValueError(
            "no loss selected: set with_avgpool_ce_loss and/or with_lstm_ce_loss "
            "(upstream crashes without either, docs/UPSTREAM.md §8 quirk 23)"
        )


def warmup_multistep_lr(
    k: int,
    base_lr: float,
    milestones: Sequence[int],
    warmup_iters: int,
    *,
    gamma: float = 0.1,
    warmup_factor: float = 1e-5,
) -> float:
    """The rate of iteration k (float64), in the same order of operations as upstream's scheduler."""
    factor = 1.0
    if k < warmup_iters:
        alpha = float(k) / warmup_iters
        factor = warmup_factor * (1 - alpha) + alpha
    drops = sum(1 for m in milestones if m <= k)
    return base_lr * factor * gamma**drops


def row_nll(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Each row's cross entropy, -log softmax(logits)[label] (float32)."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(logp, labels.astype(jnp.int32)[:, None], axis=-1)[:, 0]


def cross_entropy(logits: jax.Array, labels: jax.Array, valid: jax.Array | None = None) -> jax.Array:
    """Mean cross entropy over the rows with ``valid == 1`` (torch's ``CrossEntropyLoss()`` on those rows). The
    sums over rows are fixed halving trees (`exact.tree_sum`), so filler rows change no bit of the loss."""
    nll = row_nll(logits, labels)
    if valid is None:
        return jnp.mean(nll)
    valid = valid.astype(jnp.float32)
    return tree_sum(nll * valid, axis=0) / tree_sum(valid, axis=0)


def cross_entropy_objective(logits: jax.Array, labels: jax.Array, valid: jax.Array) -> jax.Array:
    """`cross_entropy` with ``valid`` for differentiation only: the same gradient bit for bit, but the sums
    over rows are XLA's own (`exact.gradient_sum`; the count of valid rows is exact in any order), so its
    value may differ from `cross_entropy`'s in the last bits and is not reported."""
    valid = valid.astype(jnp.float32)
    return gradient_sum(row_nll(logits, labels) * valid, axis=0) / jnp.sum(valid)


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Upstream's training recipe (docs/UPSTREAM.md §6). Milestones and warm-up are in iterations; see `from_epochs`.

    ``freeze`` is ``--freeze_imageAudioNet``; ``warmup_iters`` is ``warmup_epochs * iters_per_epoch`` with
    ``--scheduler`` and 0 without (plain MultiStepLR); ``hard`` is single's ``--gt_feature_eval`` (it also
    makes training hard there).
    """

    variant: str
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    freeze: bool = False
    milestones: tuple[int, ...] = ()
    warmup_iters: int = 0
    gamma: float = 0.1
    warmup_factor: float = 1e-5
    with_avgpool_ce_loss: bool = False
    with_lstm_ce_loss: bool = False
    avgpool_ce_loss_weight: float = 1.0
    lstm_ce_loss_weight: float = 1.0
    hard: bool = False
    episode_length: int = 10

    def __post_init__(self):
        spec = variants.get(self.variant)
        weighted = self.avgpool_ce_loss_weight != 1.0 or self.lstm_ce_loss_weight != 1.0
        if not spec.loss_weights and weighted:
            raise ValueError(f"the {spec.title} variant has no loss weights (upstream sums the losses)")
        object.__setattr__(self, "milestones", tuple(int(m) for m in self.milestones))

    @classmethod
    def from_epochs(
        cls,
        variant: str,
        *,
        iters_per_epoch: int,
        milestones_epochs: Sequence[int] = (),
        scheduler: bool = False,
        warmup_epochs: int = 0,
        **kwargs: Any,
    ) -> Recipe:
        """From upstream's flags: milestones in epochs times N_it; warm-up only with ``--scheduler``."""
        return cls(
            variant,
            milestones=tuple(int(m) * iters_per_epoch for m in milestones_epochs),
            warmup_iters=int(warmup_epochs) * iters_per_epoch if scheduler else 0,
            **kwargs,
        )

    # -- groups -------------------------------------------------------------------------------------------
    def groups(self) -> list[ParamGroup]:
        """Upstream's param groups, in upstream's order."""
        return param_groups(self.variant, self.freeze)

    def group_base_lrs(self) -> list[float]:
        """Each group's base rate (upstream's ``initial_lr``), in group order."""
        return [self.lr * g.lr_factor for g in self.groups()]

    def no_grad_modules(self) -> frozenset[str]:
        """Modules without a gradient path for this recipe's loss flags (never updated)."""
        return no_grad_modules(
            self.variant,
            with_avgpool_ce_loss=self.with_avgpool_ce_loss,
            with_lstm_ce_loss=self.with_lstm_ce_loss,
            hard=self.hard,
            episode_length=self.episode_length,
        )

    def module_labels(self) -> dict[str, str]:
        """Top-level module -> optimizer label (a group name, or `FROZEN`)."""
        labels = {m: FROZEN for m in variants.get(self.variant).modules}
        for g in self.groups():
            for m in g.modules:
                labels[m] = g.name
        for m in self.no_grad_modules():
            labels[m] = FROZEN
        return labels

    def constant_modules(self) -> frozenset[str]:
        """Modules whose parameters never change: `FROZEN` ones and those in a group with lr factor 0 (the
        frozen fusion net). The train step stops their gradients, which saves computing them; the only
        difference is inside the lr-0 group's momentum buffer (weight decay only), which never moves a
        parameter."""
        zero = {g.name for g in self.groups() if g.lr_factor == 0.0}
        return frozenset(m for m, lab in self.module_labels().items() if lab == FROZEN or lab in zero)

    def param_labels(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The label pytree for ``optax.multi_transform``: every leaf labelled by its top-level module."""
        labels = self.module_labels()
        unknown = sorted(set(params) - set(labels))
        missing = sorted(set(labels) - set(params))
        if unknown or missing:
            raise ValueError(
                f"parameter tree does not match the {self.variant!r} variant: "
                f"unknown top-level modules {unknown}, missing {missing}"
            )
        return {m: jax.tree.map(lambda _, lab=labels[m]: lab, sub) for m, sub in params.items()}

    # -- schedule -----------------------------------------------------------------------------------------
    def lr_at(self, k: int, base_lr: float | None = None) -> float:
        """The rate of iteration k (0 = first step) in float64, for ``base_lr`` (default: ``lr``)."""
        return warmup_multistep_lr(
            k,
            self.lr if base_lr is None else base_lr,
            self.milestones,
            self.warmup_iters,
            gamma=self.gamma,
            warmup_factor=self.warmup_factor,
        )

    def group_lrs(self, k: int) -> list[float]:
        """Every group's rate at iteration k, in upstream's group order (what upstream logs/records)."""
        return [self.lr_at(k, base) for base in self.group_base_lrs()]

    def schedule(self, base_lr: float | None = None) -> optax.Schedule:
        """The optax version of `lr_at` (float32, traced on the step count)."""
        base = self.lr if base_lr is None else base_lr
        milestones = jnp.asarray(self.milestones if self.milestones else (-1,), jnp.int32)
        has_milestones = bool(self.milestones)
        W = self.warmup_iters

        def fn(count):
            k = jnp.asarray(count, jnp.int32)
            if W > 0:
                alpha = k.astype(jnp.float32) / W
                warm = jnp.where(k < W, self.warmup_factor * (1 - alpha) + alpha, 1.0)
            else:
                warm = jnp.float32(1.0)
            drops = jnp.sum(milestones <= k) if has_milestones else 0
            return base * warm * jnp.float32(self.gamma) ** drops

        return fn

    # -- optimizer ----------------------------------------------------------------------------------------
    def group_transform(self, base_lr: float) -> optax.GradientTransformation:
        """torch SGD (Nesterov, decay added before momentum) for one param group."""
        return optax.chain(
            optax.add_decayed_weights(self.weight_decay),
            optax.trace(decay=self.momentum, nesterov=True),
            optax.scale_by_learning_rate(self.schedule(base_lr)),
        )

    def optimizer(self) -> optax.GradientTransformation:
        """The whole optimizer: one SGD per upstream group, `FROZEN` leaves untouched (no state)."""
        _require_a_loss(self.with_avgpool_ce_loss, self.with_lstm_ce_loss)
        transforms: dict[str, optax.GradientTransformation] = {FROZEN: optax.set_to_zero()}
        for g, base in zip(self.groups(), self.group_base_lrs(), strict=True):
            transforms[g.name] = self.group_transform(base)
        return optax.multi_transform(transforms, self.param_labels)

    # -- losses -------------------------------------------------------------------------------------------
    def loss(
        self, outputs: Mapping[str, jax.Array], labels: jax.Array, valid: jax.Array | None = None
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """The configured loss and both cross entropies (``avgpool_ce``, ``lstm_ce``), from the model's
        outputs (``avgpool_logits``, ``lstm_logits``)."""
        return compute_loss(outputs, labels, valid, **self._loss_terms())

    def objective(self, outputs: Mapping[str, jax.Array], labels: jax.Array, valid: jax.Array) -> jax.Array:
        """The loss to differentiate: `loss`'s gradient bit for bit, from `cross_entropy_objective` (no
        point-to-point transfers over a sharded batch); report `loss`, not its value."""
        return weighted_loss(cross_entropy_objective(outputs["avgpool_logits"], labels, valid),
                             cross_entropy_objective(outputs["lstm_logits"], labels, valid), **self._loss_terms())

    def _loss_terms(self) -> dict[str, Any]:
        return {"with_avgpool_ce_loss": self.with_avgpool_ce_loss, "with_lstm_ce_loss": self.with_lstm_ce_loss,
                "avgpool_ce_loss_weight": self.avgpool_ce_loss_weight, "lstm_ce_loss_weight": self.lstm_ce_loss_weight}


def compute_loss(
    outputs: Mapping[str, jax.Array],
    labels: jax.Array,
    valid: jax.Array | None = None,
    *,
    with_avgpool_ce_loss: bool,
    with_lstm_ce_loss: bool,
    avgpool_ce_loss_weight: float = 1.0,
    lstm_ce_loss_weight: float = 1.0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """``loss = [avgpool]*w_a*CE(avgpool_logits) + [lstm]*w_l*CE(lstm_logits)``; both CEs returned in aux."""
    if valid is None:
        avgpool_ce = cross_entropy(outputs["avgpool_logits"], labels)
        lstm_ce = cross_entropy(outputs["lstm_logits"], labels)
    else:  # cross_entropy's trees for both, as one tree over (B, 3) columns: the same bits, one pass over rows
        valid = valid.astype(jnp.float32)
        columns = [row_nll(outputs[k], labels) * valid for k in ("avgpool_logits", "lstm_logits")] + [valid]
        sums = tree_sum(jnp.stack(columns, axis=-1), axis=0)
        avgpool_ce, lstm_ce = sums[0] / sums[2], sums[1] / sums[2]
    loss = weighted_loss(avgpool_ce, lstm_ce, with_avgpool_ce_loss=with_avgpool_ce_loss,
                         with_lstm_ce_loss=with_lstm_ce_loss, avgpool_ce_loss_weight=avgpool_ce_loss_weight,
                         lstm_ce_loss_weight=lstm_ce_loss_weight)
    return loss, {"avgpool_ce": avgpool_ce, "lstm_ce": lstm_ce}


def weighted_loss(avgpool_ce: jax.Array, lstm_ce: jax.Array, *, with_avgpool_ce_loss: bool, with_lstm_ce_loss: bool,
                  avgpool_ce_loss_weight: float = 1.0, lstm_ce_loss_weight: float = 1.0) -> jax.Array:
    """The configured terms, weighted and added in upstream's order."""
    _require_a_loss(with_avgpool_ce_loss, with_lstm_ce_loss)
    terms = []
    if with_avgpool_ce_loss:
        terms.append(avgpool_ce_loss_weight * avgpool_ce)
    if with_lstm_ce_loss:
        terms.append(lstm_ce_loss_weight * lstm_ce)
    return terms[0] if len(terms) == 1 else terms[0] + terms[1]


__all__ = [
    "FROZEN",
    "ParamGroup",
    "Recipe",
    "compute_loss",
    "cross_entropy",
    "cross_entropy_objective",
    "no_grad_modules",
    "param_groups",
    "row_nll",
    "warmup_multistep_lr",
    "weighted_loss",
]
