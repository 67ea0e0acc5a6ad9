"""Our eager PyTorch reference (tests/torch_reference.py) reproduces upstream's recorded fixtures.

It is the reference of tests/test_model_cases.py and the baseline of the benchmarks, so it is checked once
against upstream's own numbers: one two-modality case (short videos, exact ties, hard mode), one single case
(random fill in the collate, interpolation) and one training iteration (collate draws, train-mode
BatchNorm, SGD groups, schedule, losses). Tolerances are the fixtures' README's.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch_reference as tr
from fixture_inputs import case_weights, clip_features, read_json, read_npz


class Replay:
    """A `random` stand-in that returns the draws upstream recorded, checking their ranges."""

    def __init__(self, calls):
        self.calls = iter(calls)

    def randint(self, a: int, b: int) -> int:
        lo, hi, value = next(self.calls)
        assert (lo, hi) == (a, b)
        return value


def rel_err(ours, ref) -> float:
    ref = np.asarray(ref, np.float64)
    return float(np.linalg.norm(np.asarray(ours, np.float64) - ref) / np.linalg.norm(ref))


def flags_of(case: dict) -> dict:
    return {"mean_feature_as_start": case["mean_start"], "with_replacement": case["no_repeat"],
            "feature_interpolate": case["interpolate"], "subsample_factor": case["subsample"]}


def outputs_of(npz: str, name: str) -> dict:
    return {k.split("/", 1)[1]: v for k, v in read_npz(npz).items() if k.startswith(name + "/")}


def case_named(rel: str, name: str) -> dict:
    return next(c for c in read_json(rel) if c["name"] == name)


def test_two_modality_fixture_case():
    case = case_named("preview/cases.json", "large_scores_short")
    ref = outputs_of("preview/outputs.npz", case["name"])
    seeds = zip(case["image_seeds"], case["audio_seeds"], case["lengths"], strict=True)
    items = [(clip_features(si, n), clip_features(sa, n), 0, i) for i, (si, sa, n) in enumerate(seeds)]
    image, audio, mask, _, _ = tr.eval_collate(items)
    np.testing.assert_array_equal(mask.numpy(), ref["mask"])
    model = tr.from_state_dict(case_weights(case), "two", **flags_of(case)).eval()
    with torch.no_grad():
        out = model(image, audio, mask, case["E"], case["hard"], torch.as_tensor(ref["start_idx"]))
    assert rel_err(out.avgpool_logits, ref["avgpool_logits"]) <= 1e-4
    assert rel_err(torch.stack(out.step_logits), ref["step_logits"]) <= 1e-4
    np.testing.assert_array_equal(out.image_idx.numpy(), ref["image_idx"])
    np.testing.assert_array_equal(out.audio_idx.numpy(), ref["audio_idx"])
    np.testing.assert_allclose(out.modality_w.numpy(), ref["modality_w"], rtol=0, atol=1e-5)


def test_single_modality_fixture_case():
    case = case_named("single/cases.json", "soft_sub2")
    ref = outputs_of("single/outputs.npz", case["name"])
    videos = [clip_features(s, n, case["width"]) for s, n in zip(case["feature_seeds"], case["lengths"], strict=True)]
    items = [(v, v, 0, i) for i, v in enumerate(videos)]
    feats, gt, mask, _, _ = tr.eval_collate(items, single=True, rng=Replay(case["collate_randint_calls"]))
    np.testing.assert_array_equal(mask.numpy(), ref["mask"])
    model = tr.from_state_dict(case_weights(case), "single", **flags_of(case)).eval()
    with torch.no_grad():
        out = model(feats, mask, case["E"], case["hard"], torch.as_tensor(ref["start_idx"]), gt_features=gt)
    assert rel_err(out.avgpool_logits, ref["avgpool_logits"]) <= 1e-4
    assert rel_err(torch.stack(out.step_logits), ref["step_logits"]) <= 1e-4
    np.testing.assert_array_equal(out.idx.numpy(), ref["idx"])
    assert rel_err(out.selected_gt_mean, ref["selected_gt_mean"]) <= 1e-4


def test_training_iteration_matches_upstream():
    run = read_json("train/single.json")[0]
    model = tr.from_state_dict(case_weights(run), "single", **flags_of(run))
    opt = tr.make_optimizer(model, "single", run["lr"], run["momentum"], run["weight_decay"], run["freeze"])
    n_it = run["iters_per_epoch"]
    sched = tr.make_scheduler(opt, [m * n_it for m in run["milestones_epochs"]],
                              run["warmup_epochs"] * n_it if run["scheduler"] else 0)
    videos = [clip_features(run["seed"] * 1000 + j, n, run["width"]) for j, n in enumerate(run["videos"])]
    for step in run["steps"][:1]:
        assert [g["lr"] for g in opt.param_groups] == pytest.approx(step["lr"], rel=1e-12, abs=0.0)
        items = [(videos[j], videos[j], run["labels"][j], j) for j in step["members"]]
        batch = tr.train_collate(items, single=True, rng=Replay(step["randint_calls"]))
        assert batch[0].shape[1] == step["L"]
        got = tr.train_step(model, opt, batch, run["E"], with_avgpool_ce_loss=run["with_avgpool_ce_loss"],
                            with_lstm_ce_loss=run["with_lstm_ce_loss"], start_idx=torch.as_tensor(step["start_idx"]),
                            scheduler=sched)
        for name in ("loss", "avgpool_ce", "lstm_ce"):
            assert got[name] == pytest.approx(step[name], rel=1e-5), name
    assert [g["lr"] for g in opt.param_groups] == pytest.approx(run["steps"][1]["lr"], rel=1e-12, abs=0.0)
