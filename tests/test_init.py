"""Fresh variables follow upstream's initial distributions (docs/UPSTREAM.md §6)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from l2l_jax.model import PreviewConfig, init_variables


def _uniform_within(x: np.ndarray, bound: float) -> None:
    assert np.abs(x).max() <= bound
    assert np.abs(x).max() > 0.9 * bound  # spread over the whole interval, not a narrower law
    assert abs(float(x.std()) - bound / np.sqrt(3)) < 0.1 * bound  # a normal of std 0.02 would fail this


def _normal(x: np.ndarray, mean: float, std: float) -> None:
    n = x.size  # four standard errors of the sample mean and standard deviation
    assert abs(float(x.mean()) - mean) < 4 * std / np.sqrt(n)
    assert abs(float(x.std()) - std) < 4 * std / np.sqrt(2 * n)


@pytest.mark.parametrize("variant,width", [("two", 512), ("single", 48)])
def test_fresh_variables_follow_upstreams_distributions(variant, width):
    v = jax.device_get(init_variables(PreviewConfig(num_classes=200, feature_dim=width), variant, jax.random.key(0)))
    p, stats = v["params"], v["batch_stats"]
    mlps = ["image_queryfeature_mlp", "audio_queryfeature_mlp"] if variant == "two" else ["queryfeature_mlp"]
    convs = ["image_key_conv1x1", "audio_key_conv1x1"] if variant == "two" else ["key_conv1x1"]
    dense = [p["net_classifier"]["classifier"], p["prediction_fc"]] + [p[m][f] for m in mlps for f in ("fc1", "fc2")]
    if variant == "two":
        dense += [p["net_imageAudio"]["imageAudio_fc1"], p["net_imageAudio"]["imageAudio_fc2"]]
    for layer in dense + [p[c]["conv"] for c in convs]:  # weights N(0, 0.02), biases U(+-1/sqrt(fan_in))
        _normal(layer["kernel"], 0.0, 0.02)
        _uniform_within(layer["bias"], 1.0 / np.sqrt(layer["kernel"].shape[0]))
    for m in mlps:  # BatchNorm1d is not matched by weights_init: scale 1, bias 0
        np.testing.assert_array_equal(p[m]["bn"]["scale"], 1.0)
        np.testing.assert_array_equal(p[m]["bn"]["bias"], 0.0)
    for c in convs:  # BatchNorm2d: scale N(1, 0.02), bias 0
        _normal(p[c]["bn"]["scale"], 1.0, 0.02)
        np.testing.assert_array_equal(p[c]["bn"]["bias"], 0.0)
    for m in mlps + convs:  # running statistics start at mean 0, var 1
        np.testing.assert_array_equal(stats[m]["bn"]["mean"], 0.0)
        np.testing.assert_array_equal(stats[m]["bn"]["var"], 1.0)
        assert int(stats[m]["bn"]["num_batches_tracked"]) == 0
    rnn = p["rnn"]  # LSTMCell U(+-1/32), weight norm with g = the row norms (W unchanged), biases 0
    for name in ("ih", "hh"):
        vmat = rnn[f"weight_{name}_v"]
        _uniform_within(vmat, 1.0 / 32)
        np.testing.assert_allclose(rnn[f"weight_{name}_g"][:, 0], np.linalg.norm(vmat, axis=1), rtol=1e-6)
    np.testing.assert_array_equal(rnn["bias_ih"], 0.0)
    np.testing.assert_array_equal(rnn["bias_hh"], 0.0)
    if variant == "two":  # modality attention keeps torch's default Linear init: U(+-1/32) for both
        _uniform_within(p["modality_attention"]["kernel"], 1.0 / 32)
        assert np.abs(p["modality_attention"]["bias"]).max() <= 1.0 / 32
