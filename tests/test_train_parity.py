"""Four training steps of upstream's recipe reproduce upstream's losses, learning rates and every tensor.

The fixtures (tests/fixtures/train/*.json) record, per step, the collate's random draws, the start clips,
the losses, each param group's learning rate, and fingerprints of every state-dict entry (BatchNorm
statistics included) after steps 0, 1 and 3. Tolerances are the fixtures' README's.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from fixture_inputs import array_sha256, case_weights, clip_features, fingerprint, read_json, train_collate

from l2l_jax import torch_names
from l2l_jax.model import PreviewConfig, build_model
from l2l_jax.recipe import Recipe
from l2l_jax.steps import create_train_state, make_train_step

RUNS = [("two", r) for r in read_json("train/two.json")] + [("single", r) for r in read_json("train/single.json")]


def recipe_of(run: dict) -> Recipe:
    weights = {}
    if run["variant"] == "two":
        weights = {"avgpool_ce_loss_weight": run["avgpool_ce_loss_weight"],
                   "lstm_ce_loss_weight": run["lstm_ce_loss_weight"]}
    return Recipe.from_epochs(
        run["variant"], iters_per_epoch=run["iters_per_epoch"], milestones_epochs=run["milestones_epochs"],
        scheduler=run["scheduler"], warmup_epochs=run["warmup_epochs"], lr=run["lr"], momentum=run["momentum"],
        weight_decay=run["weight_decay"], freeze=run["freeze"], with_avgpool_ce_loss=run["with_avgpool_ce_loss"],
        with_lstm_ce_loss=run["with_lstm_ce_loss"], hard=run.get("use_gt_feature", False),
        episode_length=run["E"], **weights)


def model_of(run: dict):
    width = run.get("width", 512)
    cfg = PreviewConfig(num_classes=12, episode_length=run["E"], mean_feature_as_start=run["mean_start"],
                        with_replacement=run["no_repeat"], feature_interpolate=run["interpolate"],
                        subsample_factor=run["subsample"], feature_dim=width)
    return build_model(cfg, run["variant"])


def videos_of(run: dict) -> list[tuple[np.ndarray, ...]]:
    seed = run["seed"]
    if run["variant"] == "two":
        return [(clip_features(seed * 1000 + j, n), clip_features(seed * 1000 + 500 + j, n))
                for j, n in enumerate(run["videos"])]
    return [(clip_features(seed * 1000 + j, n, run["width"]),) for j, n in enumerate(run["videos"])]


def batch_of(run: dict, step: dict, videos) -> dict:
    single = run["variant"] == "single"
    members = step["members"]
    arrays, mask, L = train_collate([videos[j] for j in members], [c[2] for c in step["randint_calls"]], single)
    assert L == step["L"]
    assert array_sha256(arrays[0]) == step["batch_features_sha256" if single else "batch_image_sha256"]
    names = ("features",) if single else ("image", "audio")
    return {**dict(zip(names, arrays, strict=True)), "mask": mask, "length": np.int32(L),
            "label": np.asarray([run["labels"][j] for j in members], np.int32),
            "valid": np.ones(len(members), np.float32), "start_idx": np.asarray(step["start_idx"], np.int32)}


def assert_fingerprints(state_dict: dict, initial: dict, expected: dict, where: str) -> None:
    assert set(expected) == set(state_dict), where
    for key, ref in expected.items():
        x = state_dict[key]
        value, delta = fingerprint(x), fingerprint(x.astype(np.float64) - initial[key].astype(np.float64))
        if x.dtype == np.int64:
            assert value == ref["value"], f"{where} {key}"
            continue
        ref_v, ref_d = np.asarray(ref["value"]), np.asarray(ref["delta"])
        assert np.all(np.abs(np.asarray(value) - ref_v) <= 1e-5 * ref_v[1]), f"{where} {key} value {value} vs {ref_v}"
        tol = 1e-3 * ref_d[1] + 2.0**-23 * ref_v[1]
        assert np.all(np.abs(np.asarray(delta) - ref_d) <= tol), f"{where} {key} delta {delta} vs {ref_d}"


@pytest.mark.parametrize("variant,run", RUNS, ids=[r["name"] for _, r in RUNS])
def test_four_training_steps_match_upstream(variant, run):
    recipe = recipe_of(run)
    initial = case_weights(run)
    state = create_train_state(torch_names.from_state_dict(initial, variant), recipe.optimizer(), seed=0)
    step_fn = jax.jit(make_train_step(model_of(run), recipe))
    videos = videos_of(run)
    for k, step in enumerate(run["steps"]):
        assert recipe.group_lrs(k) == pytest.approx(step["lr"], rel=1e-12, abs=0.0)
        state, metrics = step_fn(state, batch_of(run, step, videos))
        for name in ("loss", "avgpool_ce", "lstm_ce"):
            assert float(metrics[name]) == pytest.approx(step[name], rel=1e-5), f"step {k} {name}"
        if "fingerprints" in step:
            sd = torch_names.to_state_dict(jax.device_get(state.variables), variant)
            assert_fingerprints(sd, initial, step["fingerprints"], f"step {k}")
