"""The Flax policies compute what upstream computed on the fixture cases (eval mode).

Per case: avgpool and step logits within 1e-4 relative, chosen clips identical, modality weights within
1e-5 (tolerances from the fixtures' README). Upstream's start clips are fed in. Every case runs in both
feature layouts (`l2l_jax.layouts`).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from fixture_inputs import (
    LAYOUTS,
    case_weights,
    clip_features,
    eval_collate,
    in_layout,
    read_json,
    read_npz,
    single_eval_collate,
)

from l2l_jax import torch_names
from l2l_jax.model import PreviewConfig, build_model

TWO = read_json("preview/cases.json")
SINGLE = read_json("single/cases.json")


def rel_err(ours, ref) -> float:
    ref = np.asarray(ref, np.float64)
    return float(np.linalg.norm(np.asarray(ours, np.float64) - ref) / np.linalg.norm(ref))


def config_of(case: dict) -> PreviewConfig:
    return PreviewConfig(num_classes=case["num_classes"], episode_length=case["E"],
                         mean_feature_as_start=case["mean_start"], with_replacement=case["no_repeat"],
                         feature_interpolate=case["interpolate"], subsample_factor=case["subsample"],
                         feature_dim=case.get("width", 512))


def run_two(case: dict, ref: dict, layout: str) -> dict:
    videos = [(clip_features(si, n), clip_features(sa, n))
              for si, sa, n in zip(case["image_seeds"], case["audio_seeds"], case["lengths"], strict=True)]
    (image, audio), mask = eval_collate(videos)
    np.testing.assert_array_equal(mask, ref["mask"])
    variables = torch_names.from_state_dict(case_weights(case), "two")
    (image, audio), lay = in_layout(layout, [image, audio], mask)
    return build_model(config_of(case), "two").apply(
        variables, image, audio, mask, jnp.int32(mask.shape[1]), ref["start_idx"], None, lay, hard=case["hard"])


def run_single(case: dict, ref: dict, layout: str) -> dict:
    videos = [clip_features(s, n, case["width"]) for s, n in zip(case["feature_seeds"], case["lengths"], strict=True)]
    features, mask = single_eval_collate(videos, [c[2] for c in case["collate_randint_calls"]])
    np.testing.assert_array_equal(mask, ref["mask"])
    variables = torch_names.from_state_dict(case_weights(case), "single")
    (features,), lay = in_layout(layout, [features], mask)
    return build_model(config_of(case), "single").apply(
        variables, features, mask, jnp.int32(mask.shape[1]), ref["start_idx"], None, lay, hard=case["hard"])


def case_outputs(npz: str, name: str) -> dict:
    return {k.split("/", 1)[1]: v for k, v in read_npz(npz).items() if k.startswith(name + "/")}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", TWO, ids=[c["name"] for c in TWO])
def test_two_modality_matches_upstream(case, layout):
    ref = case_outputs("preview/outputs.npz", case["name"])
    out = run_two(case, ref, layout)
    assert rel_err(out["avgpool_logits"], ref["avgpool_logits"]) <= 1e-4
    assert rel_err(np.swapaxes(out["step_logits"], 0, 1), ref["step_logits"]) <= 1e-4
    np.testing.assert_array_equal(out["image_idx"], ref["image_idx"])
    np.testing.assert_array_equal(out["audio_idx"], ref["audio_idx"])
    np.testing.assert_allclose(out["modality_w"], ref["modality_w"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", SINGLE, ids=[c["name"] for c in SINGLE])
def test_single_modality_matches_upstream(case, layout):
    ref = case_outputs("single/outputs.npz", case["name"])
    steps = read_json("single/metrics.json")[case["name"]]["steps_taken"]
    out = run_single(case, ref, layout)
    assert int(out["steps_taken"]) == steps
    assert rel_err(out["avgpool_logits"], ref["avgpool_logits"]) <= 1e-4
    assert rel_err(np.swapaxes(out["step_logits"], 0, 1)[:steps], ref["step_logits"]) <= 1e-4
    np.testing.assert_array_equal(out["idx"][:, :steps], ref["idx"])
    assert rel_err(out["selected_gt_mean"], ref["selected_gt_mean"]) <= 1e-4
