"""Bucket invariance, bitwise: padding a batch to a longer bucket, and appending filler rows, changes no bit.

The same batch (upstream's eval collate, L = 37, a short video among them) is run as is and padded to a
bucket length Lb > L (zero positions, mask 0, `length` stays L) with filler rows appended (copies of row 0,
valid 0; `l2l_jax.data.buckets`). Compared with `np.array_equal` (bitwise): every eval-mode output, every
train-mode output, the loss and both cross entropies, the gradient of every parameter (through
`l2l_jax.steps.apply_model` and the recipe's loss) and every updated BatchNorm statistic; real rows only where
a tensor has a row axis. Both variants, `feature_interpolate` with subsample 1 and 2, each batch with the
chunk index that training and evaluation give it (`l2l_jax.layouts.chunk`: its shape depends on the clips only),
and in the dense layout.

What it takes (docs/DESIGN.md): every product over positions runs on the chunk layout of
`l2l_jax.packing`, whose shapes depend on the clips only (the key conv, its kernel gradient and BatchNorm
sums, the attention scores and attended features); the sums left over Lb or rows (softmax normaliser, query
BatchNorm) are fixed halving trees fed through an exact `where` that blocks LLVM's FMA contraction; custom
VJPs route the gradients of broadcasts, the softmax and the layout changes the same way.

Limit, observed and not tested here: the per-row results of XLA's dense layers (and their kernel gradients,
which sum over rows) can depend on the number of rows: 4 real rows + 2 fillers match 4 rows bitwise, 4 + 3
or 4 + 4 did not in every tensor (the classifier's logits differed by 1 ulp). Training and evaluation keep a
fixed batch size per run (fillers only fill the last batch up to it), so rows are never compared across row
counts there; the bucket length, which varies from batch to batch, is what must not matter.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from batch_helpers import fill_rows, pad_to_length
from fixture_inputs import clip_features, eval_collate, manifest_state_dict

from l2l_jax import torch_names
from l2l_jax.layouts import chunk as packing
from l2l_jax.model import PreviewConfig, build_model
from l2l_jax.recipe import Recipe
from l2l_jax.steps import apply_model

LENGTHS = [37, 4, 12, 25]
# variant, subsample, mean start, bucket length, filler rows
CASES = [
    ("two", 1, False, 64, 2),
    ("two", 2, True, 512, 2),
    ("single", 2, True, 128, 2),
]


def base_batch(variant: str, seed: int) -> dict:
    width = 512 if variant == "two" else 48
    videos = [tuple(clip_features(seed * 100 + 50 * m + j, n, width) for m in range(2 if variant == "two" else 1))
              for j, n in enumerate(LENGTHS)]
    arrays, mask = eval_collate(videos)
    B, L = mask.shape
    gen = np.random.default_rng(seed)
    start = np.asarray([gen.choice(np.flatnonzero(row)) for row in mask], np.int32)
    names = ("image", "audio") if variant == "two" else ("features",)
    return {**dict(zip(names, arrays, strict=True)), "mask": mask, "length": np.int32(L),
            "label": np.arange(B, dtype=np.int32) * 5 % 12, "valid": np.ones(B, np.float32),
            "index": np.arange(B, dtype=np.int32), "start_idx": start}


def make_fn(variant: str, subsample: int, mean_start: bool):
    cfg = PreviewConfig(num_classes=12, episode_length=10, mean_feature_as_start=mean_start, with_replacement=True,
                        feature_interpolate=True, subsample_factor=subsample,
                        feature_dim=512 if variant == "two" else 48)
    model = build_model(cfg, variant)
    recipe = Recipe(variant, with_avgpool_ce_loss=True, with_lstm_ce_loss=True)

    def fn(variables, batch):
        evaluated = apply_model(model, variables, batch, batch["start_idx"], train=False, hard=False)

        def loss_fn(params):
            out, updates = apply_model(model, {"params": params, "batch_stats": variables["batch_stats"]}, batch,
                                       batch["start_idx"], train=True, hard=False)
            loss, aux = recipe.loss(out, batch["label"], batch["valid"])
            return loss, (aux, out, updates["batch_stats"])

        (loss, (aux, out, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
        return {"eval": evaluated, "train": out, "loss": {"loss": loss, **aux}, "grads": grads, "batch_stats": stats}

    return jax.jit(fn)


def leaves(tree) -> dict[str, np.ndarray]:
    return {jax.tree_util.keystr(path): np.asarray(x) for path, x in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.mark.parametrize("layout", ["dense", "chunk"])
@pytest.mark.parametrize("variant,subsample,mean_start,bucket,fillers", CASES,
                         ids=[f"{v}-s{s}-Lb{b}-fill{f}" for v, s, _, b, f in CASES])
def test_padding_and_fillers_change_no_bit(variant, subsample, mean_start, bucket, fillers, layout):
    seed = 40 + CASES.index((variant, subsample, mean_start, bucket, fillers))
    variables = torch_names.from_state_dict(
        manifest_state_dict(f"manifests/preview_{'two_C12' if variant == 'two' else 'single_C12_D48'}.json", seed),
        variant)
    batch = base_batch(variant, seed)
    B, L = batch["mask"].shape
    padded = fill_rows(pad_to_length(batch, bucket), B + fillers)
    assert padded["mask"].shape == (B + fillers, bucket) and int(padded["length"]) == L
    if layout == "chunk":
        for b in (batch, padded):  # the chunk index the loader adds, one device
            b["chunks"] = packing.chunk_index(b["mask"], b["valid"])
        assert batch["chunks"].shape == padded["chunks"].shape
    fn = make_fn(variant, subsample, mean_start)
    ref, got = jax.device_get(fn(variables, batch)), jax.device_get(fn(variables, padded))
    ref_leaves, got_leaves = leaves(ref), leaves(got)
    assert ref_leaves.keys() == got_leaves.keys()
    grads = [k for k in ref_leaves if k.startswith("['grads']")]
    assert len(grads) == (36 if variant == "two" else 20)
    assert any(np.any(ref_leaves[k] != 0) for k in grads)
    for key, want in ref_leaves.items():
        have = got_leaves[key]
        if key.startswith(("['eval']", "['train']")) and want.ndim and have.shape[0] == B + fillers:
            have = have[:B]  # rows of the batch (fillers dropped)
        assert have.shape == want.shape, key
        assert np.array_equal(have, want), f"{key}: max |diff| {np.max(np.abs(have - want))}"

