"""Metrics: AP equal to scikit-learn's, and upstream's fixture metrics reproduced from the fixture logits."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from fixture_inputs import read_json, read_npz
from sklearn.metrics import average_precision_score

from l2l_jax import metrics as M


def _sk(y_true, y_score):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "No positive class found in y_true"
        return average_precision_score(y_true, y_score)


@pytest.mark.parametrize("seed", range(6))
def test_binary_ap_equals_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 60))
    y = rng.random(n) < rng.uniform(0.1, 0.7)
    y[0] = True
    score = rng.integers(0, 6, n).astype(np.float64) if seed % 2 else rng.random(n)  # many ties when even
    assert M.binary_average_precision(y, score) == pytest.approx(_sk(y, score), abs=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_macro_ap_equals_sklearn_with_absent_classes(seed):
    rng = np.random.default_rng(100 + seed)
    n, c = int(rng.integers(3, 40)), int(rng.integers(2, 15))
    labels = rng.integers(0, max(1, c - 2), n)  # the last classes never occur
    onehot = np.eye(c)[labels]
    scores = rng.random((n, c))
    if seed % 2:
        scores = np.round(scores, 1)  # ties
    mean, per_class = M.average_precision(onehot, scores)
    assert mean == pytest.approx(_sk(onehot, scores), abs=1e-12)
    assert per_class[-1] == 0.0  # an absent class contributes 0 to the mean


def test_no_positive_at_all_and_degenerate_inputs():
    assert M.binary_average_precision(np.zeros(4), np.arange(4.0)) == 0.0
    assert M.binary_average_precision(np.ones(3), np.zeros(3)) == 1.0
    with pytest.raises(ValueError, match="NaN"):
        M.binary_average_precision(np.ones(2), np.array([0.1, np.nan]))


def test_video_map_equals_sklearn_on_softmax_scores():
    rng = np.random.default_rng(7)
    logits = (rng.standard_normal((30, 9)) * 4).astype(np.float32)
    labels = rng.integers(0, 9, 30)
    for kind in M.SOFTMAXES:
        s = M.softmax_rows(logits, kind)
        assert M.video_map(logits, labels, softmax=kind) == pytest.approx(_sk(np.eye(9)[labels], s), abs=1e-12)
    e = np.exp(logits.astype(np.float32))
    np.testing.assert_array_equal(M.softmax_rows(logits, "naive"), (e / e.sum(1, keepdims=True)).astype(np.float64))


def test_naive_softmax_overflow_is_a_clear_error():
    logits = np.zeros((3, 4), np.float32)
    logits[1, 2] = 100.0
    with pytest.raises(ValueError, match="overflows"):
        M.video_map(logits, np.array([0, 2, 1]))
    assert np.isfinite(M.video_map(logits, np.array([0, 2, 1]), softmax="stable"))


def test_each_video_counts_once_and_fillers_are_ignored():
    m = M.VideoMetrics(3)
    eye = np.eye(3, dtype=np.float32)
    # Video 5 first wrong, then right (the later value replaces the earlier one); index -1 and valid 0 skipped.
    m.update(np.array([5, 6, -1]), np.array([0, 1, 2]), eye[[1, 1, 2]], eye[[1, 1, 2]])
    m.update(np.array([5, 7]), np.array([0, 2]), eye[[0, 0]], eye[[0, 0]], valid=np.array([1, 0]))
    assert m.num_videos == 2
    assert m.accuracy("avgpool") == 1.0
    # mAP from the mean of video 5's two stored logits.
    mean5 = (eye[1] + eye[0]) / 2
    ref = M.video_map(np.stack([mean5, eye[1]]), np.array([0, 1]), 3)
    assert m.mean_ap("avgpool") == ref


def test_accuracy_is_n_correct_over_n_in_float64():
    """One rule, as upstream's validate() returns it: a Python division (3/20 is 0.15, not float32's
    0.15000000596046448), for `VideoMetrics` and `fraction_correct` alike."""
    eye = np.eye(3, dtype=np.float32)
    m = M.VideoMetrics(3)
    logits = eye[[0] * 3 + [1] * 17]
    m.update(np.arange(20), np.zeros(20, np.int64), logits, logits)
    assert m.accuracy("avgpool") == 0.15
    assert m.result()["lstm_acc"] == 0.15
    assert M.fraction_correct(M.top1_correct(logits, np.zeros(20))) == 0.15
    assert M.fraction_correct([True, False, False, False, False, False]) == 1 / 6
    with pytest.raises(ValueError, match="no videos"):
        M.VideoMetrics(3).accuracy("lstm")


def _check(result, ref):
    for key in ("avgpool_acc", "lstm_acc", "avgpool_map", "lstm_map"):
        if key in ref:
            assert result[key] == pytest.approx(ref[key], abs=1e-6), key


@pytest.mark.parametrize("folder,variant", [("preview", "two"), ("single", "single")])
def test_fixture_metrics(folder, variant):
    """Upstream's metrics from upstream's logits, per case; the LSTM logits are the last step taken."""
    cases = {c["name"]: c for c in read_json(f"{folder}/cases.json")}
    out = read_npz(f"{folder}/outputs.npz")
    refs = read_json(f"{folder}/metrics.json")
    assert set(refs) == set(cases)
    for name, ref in refs.items():
        c = cases[name]
        m = M.VideoMetrics(c["num_classes"], variant)
        n = len(c["labels"])
        lstm = out[f"{name}/step_logits"][ref.get("steps_taken", 0) - 1]
        m.update(np.arange(n), np.array(c["labels"]), out[f"{name}/avgpool_logits"], lstm)
        _check(m.result(), ref)
