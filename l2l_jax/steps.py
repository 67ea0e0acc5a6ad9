"""The jitted steps: pure functions of (state, batch), shared by training, evaluation and the tests.

`train_step` does one iteration of upstream's recipe (docs/UPSTREAM.md §6): forward in training mode
(BatchNorm batch statistics, running statistics updated), the configured loss, gradients, the optax
update. The start clip of every video comes from `batch["start_idx"]` when the batch carries it (the
parity tests feed upstream's), else from a key derived from the state's seed and step, so one seed fixes
every draw and a resumed run draws the same starts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from l2l_jax import layouts, variants
from l2l_jax.model import sample_start
from l2l_jax.recipe import Recipe

Batch = Mapping[str, jax.Array]


@flax.struct.dataclass
class TrainState:
    """Everything a training run carries from step to step (and saves in a checkpoint)."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array  # raw uint32 key data: start clips of step k use fold_in(rng, k)

    @property
    def variables(self) -> dict:
        return {"params": self.params, "batch_stats": self.batch_stats}


def create_train_state(variables: Mapping, tx: optax.GradientTransformation, seed: int) -> TrainState:
    """A fresh state: step 0, the given variables, fresh optimizer state."""
    params = variables["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=variables["batch_stats"],
                      opt_state=tx.init(params), rng=jax.random.key_data(jax.random.key(seed)))


def model_inputs(batch: Batch) -> tuple[jax.Array, ...]:
    """The feature arrays of a batch in the model's argument order, in the batch's layout (dense (B, Lb, F),
    or (G, S, F) in the chunk layout), float32 or float16 (the layout converts them)."""
    return tuple(jnp.asarray(batch[n]) for n in variants.batch_modalities(batch))


def start_positions(batch: Batch, key: jax.Array) -> jax.Array:
    """The batch's own `start_idx` if it has one, else upstream's uniform draw over valid positions."""
    if "start_idx" in batch:
        return jnp.asarray(batch["start_idx"], jnp.int32)
    return sample_start(key, batch["mask"], batch["length"])


def correct(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Top-1 hits per row (float32)."""
    return (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)


def apply_model(model: nn.Module, variables: Mapping, batch: Batch, start_idx: jax.Array, *, train: bool,
                hard: bool):
    """The model on a batch, in the batch's layout (`l2l_jax.layouts.of_batch`); in training also returns the
    updated BatchNorm statistics."""
    args = (*model_inputs(batch), batch["mask"], batch["length"], start_idx, batch["valid"],
            layouts.of_batch(batch))
    if train:
        return model.apply(variables, *args, train=True, hard=hard, mutable=["batch_stats"])
    return model.apply(variables, *args, train=False, hard=hard)


def make_train_step(model: nn.Module, recipe: Recipe) -> Callable[[TrainState, Batch], tuple[TrainState, dict]]:
    """The (not yet jitted) train step for a model and recipe. Returns (new state, metrics) where metrics
    are per-batch sums over valid rows (`avgpool_correct`, `lstm_correct`, `count`) and the losses."""
    tx = recipe.optimizer()
    train_hard = variants.get(recipe.variant).trains_hard and recipe.hard  # single: --gt_feature_eval trains hard
    constant = recipe.constant_modules()  # no gradient computed for parameters that never change

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict]:
        start = start_positions(batch, jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step))

        def loss_fn(params):
            params = {m: jax.lax.stop_gradient(p) if m in constant else p for m, p in params.items()}
            out, updates = apply_model(model, {"params": params, "batch_stats": state.batch_stats}, batch, start,
                                       train=True, hard=train_hard)
            return recipe.objective(out, batch["label"], batch["valid"]), (updates["batch_stats"], out)

        grads, (batch_stats, out) = jax.grad(loss_fn, has_aux=True)(state.params)
        # The reported losses sum rows by exact trees, which over a sharded batch are point-to-point transfers:
        # they start once every gradient is done, so that no two such transfer trees can run at once.
        out, grads = jax.lax.optimization_barrier((out, grads))
        loss, aux = recipe.loss(out, batch["label"], batch["valid"])
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        valid = batch["valid"].astype(jnp.float32)
        metrics = {
            "loss": loss,
            **aux,
            "avgpool_correct": jnp.sum(correct(out["avgpool_logits"], batch["label"]) * valid),
            "lstm_correct": jnp.sum(correct(out["lstm_logits"], batch["label"]) * valid),
            "count": jnp.sum(valid),
        }
        new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state)
        return new_state, metrics

    return train_step


def make_eval_step(model: nn.Module, *, hard: bool = False) -> Callable[[Mapping, Batch, jax.Array], dict]:
    """The eval step: (variables, batch, key) -> the model's outputs (BatchNorm in eval mode). `key` draws
    the start clips unless the batch carries `start_idx`."""

    def eval_step(variables: Mapping, batch: Batch, key: jax.Array) -> dict:
        start = start_positions(batch, key)
        out = apply_model(model, variables, batch, start, train=False, hard=hard)
        return {**out, "start_idx": start}

    return eval_step
