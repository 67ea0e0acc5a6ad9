"""The Flax policies against our eager PyTorch reference (tests/torch_reference.py) on cases the fixtures lack.

Random small weights (`manifest_state_dict` with new seeds), seeded clip features, upstream's eval collate
(the reference's), the same start clips fed to both. Cases: a batch of one; videos shorter than E (the
collate fills them to 10 valid positions, so E = 12 exhausts them); videos with exactly E valid positions
(the last step's row is fully masked: uniform over all L positions, argmax 0) and E beyond the valid
positions (several fully masked steps); the single variant's early stop once the whole batch is exhausted;
soft and hard inputs; both variants; eval mode, and train mode (batch statistics, running statistics after
one forward, losses). Tolerances as for the fixtures: logits 1e-4 relative (norm of the difference over the
norm of the reference), chosen clips identical, modality weights 1e-5 absolute; losses and BatchNorm running
statistics 1e-5 relative, `num_batches_tracked` exact.

Short videos are tested without interpolation or with subsample 1 (an exact identity): their fill rows are
bitwise copies, so the scores tie exactly and both implementations pick the first copy. Interpolated with
subsample 2, the copies become near-copies ((1-l)*a + l*a is not always a), whose scores differ in the last
bits; which one wins then depends on each framework's rounding, as it would between any two float32 runs.
"""

from __future__ import annotations

import random

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch_reference as tr
from fixture_inputs import clip_features, in_layout, manifest_state_dict

from l2l_jax import torch_names
from l2l_jax.model import PreviewConfig, build_model
from l2l_jax.recipe import compute_loss

MANIFESTS = {"two": "manifests/preview_two_C12.json", "single": "manifests/preview_single_C12_D48.json"}
WIDTH = {"two": 512, "single": 48}

# name, variant, lengths, E, mean start, no repeat, interpolate, subsample, hard
CASES = [
    ("two_batch_of_one", "two", [23], 10, False, True, True, 2, False),
    ("two_short_E12_hard", "two", [3, 5, 12], 12, False, True, True, 1, True),
    ("two_exactly_E_valid", "two", [10, 6, 10, 18], 10, True, True, False, 1, False),
    ("two_E_beyond_valid", "two", [10, 4, 15, 12], 16, False, True, False, 1, False),
    ("single_batch_of_one", "single", [23], 10, False, True, True, 2, False),
    ("single_short_E12", "single", [3, 5, 10, 14], 12, True, True, True, 2, False),
    ("single_exhausted_break_hard", "single", [10, 4, 8], 12, False, True, False, 1, True),
]
TRAIN_CASES = [
    ("two_train_short", "two", [3, 5, 14], 10, False, True, True, 2, False),
    ("single_train_exactly_E", "single", [3, 10, 14], 10, True, True, True, 2, False),
]


def rel_err(ours, ref) -> float:
    ref = np.asarray(ref, np.float64)
    return float(np.linalg.norm(np.asarray(ours, np.float64) - ref) / np.linalg.norm(ref))


def setup_case(case: tuple, seed: int):
    """(torch model, JAX model, JAX variables, collated batch, start clips, labels) for a case."""
    name, variant, lengths, E, mean_start, no_repeat, interp, sub, hard = case
    flags = {"mean_feature_as_start": mean_start, "with_replacement": no_repeat, "feature_interpolate": interp,
             "subsample_factor": sub}
    sd = manifest_state_dict(MANIFESTS[variant], seed)
    width = WIDTH[variant]
    if variant == "two":
        items = [(clip_features(seed * 100 + j, n), clip_features(seed * 100 + 50 + j, n), j % 12, j)
                 for j, n in enumerate(lengths)]
    else:
        items = [(f, f, j % 12, j) for j, f in enumerate(clip_features(seed * 100 + j, n, width)
                                                         for j, n in enumerate(lengths))]
    batch = tr.eval_collate(items, single=variant == "single", rng=random.Random(seed))
    mask = batch[2].numpy()
    gen = np.random.default_rng(seed)
    start = np.asarray([gen.choice(np.flatnonzero(row)) for row in mask], np.int32)
    cfg = PreviewConfig(num_classes=12, episode_length=E, mean_feature_as_start=mean_start,
                        with_replacement=no_repeat, feature_interpolate=interp, subsample_factor=sub,
                        feature_dim=width)
    return tr.from_state_dict(sd, variant, **flags), build_model(cfg, variant), \
        torch_names.from_state_dict(sd, variant), batch, start


def run_both(case: tuple, seed: int, train: bool, layout: str = "dense"):
    _, variant, _, E, *_, hard = case
    tmodel, jmodel, variables, batch, start = setup_case(case, seed)
    x1, x2, mask = batch[0], batch[1], batch[2]
    tmodel.train(train)
    with torch.no_grad():
        if variant == "two":
            ref = tmodel(x1, x2, mask, E, hard, torch.as_tensor(start, dtype=torch.long))
        else:
            ref = tmodel(x1, mask, E, hard, torch.as_tensor(start, dtype=torch.long), gt_features=x2)
    args, lay = in_layout(layout, [x1.numpy(), x2.numpy()] if variant == "two" else [x1.numpy()], mask.numpy())
    length = jnp.int32(mask.shape[1])
    if train:
        out, updates = jmodel.apply(variables, *args, mask.numpy(), length, start, None, lay, train=True, hard=hard,
                                    mutable=["batch_stats"])
        new_stats = torch_names.to_state_dict({**variables, "batch_stats": updates["batch_stats"]}, variant)
    else:
        out, new_stats = jmodel.apply(variables, *args, mask.numpy(), length, start, None, lay, hard=hard), None
    return variant, ref, out, new_stats, tmodel, batch


def assert_outputs_match(variant: str, ref, out) -> int:
    """The tolerances of the module docstring; returns the number of steps compared."""
    steps = len(ref.step_logits)
    assert rel_err(out["avgpool_logits"], ref.avgpool_logits) <= 1e-4
    step_logits = np.swapaxes(np.asarray(out["step_logits"]), 0, 1)[:steps]
    assert rel_err(step_logits, torch.stack(ref.step_logits)) <= 1e-4
    if variant == "two":
        np.testing.assert_array_equal(out["image_idx"], ref.image_idx.numpy())
        np.testing.assert_array_equal(out["audio_idx"], ref.audio_idx.numpy())
        np.testing.assert_allclose(out["modality_w"], ref.modality_w.numpy(), rtol=0, atol=1e-5)
    else:
        assert int(out["steps_taken"]) == steps
        np.testing.assert_array_equal(np.asarray(out["idx"])[:, :steps], ref.idx.numpy())
        assert rel_err(out["selected_gt_mean"], ref.selected_gt_mean) <= 1e-4
    return steps


@pytest.mark.parametrize("layout", ["dense", "chunk"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_eval_matches_torch_reference(case, layout):
    variant, ref, out, _, _, batch = run_both(case, seed=700 + CASES.index(case), train=False, layout=layout)
    steps = assert_outputs_match(variant, ref, out)
    # the situations the case exists for really occur
    mask = batch[2].numpy()
    valid = mask.sum(1)
    idx = np.asarray(out["image_idx"] if variant == "two" else out["idx"])
    E = case[3]
    for b in np.flatnonzero(valid <= min(E, steps)):  # exhausted before the last step: argmax 0, uniform
        assert idx[b, int(valid[b]) - 1] == 0
    if variant == "single" and case[0].endswith("break_hard"):
        assert steps == int(valid.max()) < E


@pytest.mark.parametrize("layout", ["dense", "chunk"])
@pytest.mark.parametrize("case", TRAIN_CASES, ids=[c[0] for c in TRAIN_CASES])
def test_train_mode_matches_torch_reference(case, layout):
    variant, ref, out, new_stats, tmodel, batch = run_both(case, seed=800 + TRAIN_CASES.index(case), train=True,
                                                           layout=layout)
    assert_outputs_match(variant, ref, out)
    labels = batch[3]
    t_loss, t_avg, t_lstm = tr.losses(ref.avgpool_logits, ref.step_logits[-1], labels, with_avgpool_ce_loss=True,
                                      with_lstm_ce_loss=True)
    loss, aux = compute_loss(out, jnp.asarray(labels.numpy()), with_avgpool_ce_loss=True, with_lstm_ce_loss=True)
    for ours, theirs in ((loss, t_loss), (aux["avgpool_ce"], t_avg), (aux["lstm_ce"], t_lstm)):
        assert float(ours) == pytest.approx(float(theirs), rel=1e-5)
    torch_stats = tr.state_dict_numpy(tmodel)
    stat_keys = [k for k in torch_stats if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert len(stat_keys) == (12 if variant == "two" else 6)
    for key in stat_keys:
        if key.endswith("num_batches_tracked"):
            np.testing.assert_array_equal(new_stats[key], torch_stats[key], err_msg=key)
        else:
            assert rel_err(new_stats[key], torch_stats[key]) <= 1e-5, key


def test_interpolation_with_subsample_1_is_exactly_the_masked_features():
    """The model skips `interp_time` when s = 1 (model._inputs); that shortcut must change no bit."""
    from l2l_jax.torch_ops import interp_time

    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.standard_normal((3, 40, 16)), jnp.float32)
    for length in (10, 37, 40):
        got = np.asarray(interp_time(x, jnp.int32(length), 1))[:, :length]
        np.testing.assert_array_equal(got, np.asarray(x)[:, :length])
