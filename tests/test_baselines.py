"""The baselines' clip choices and logits (`l2l_jax.evaluation.baselines`) and their registry."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from l2l_jax.evaluation import baselines as bl
from l2l_jax.model import ImageAudioNet, PreviewConfig, init_variables


def test_uniform_positions_are_segment_centres():
    pos = np.asarray(bl.uniform_positions(jnp.array([10.0, 40.0, 13.0]), 10))
    np.testing.assert_array_equal(pos[0], np.arange(10))
    np.testing.assert_array_equal(pos[1], np.arange(10) * 4 + 2)
    assert (np.diff(pos[2]) >= 1).all() and pos[2].max() < 13


def test_random_positions_distinct_valid_and_independent_of_padding():
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(0), i))(jnp.arange(3))
    n = jnp.array([10.0, 25.0, 60.0])
    a = np.asarray(bl.random_positions(keys, n, 64, 10))
    b = np.asarray(bl.random_positions(keys, n, 128, 10))
    np.testing.assert_array_equal(a, b)
    for row, m in zip(a, [10, 25, 60], strict=True):
        assert len(set(row.tolist())) == 10 and row.max() < m
    # E > n: every clip once, then repeats
    c = np.asarray(bl.random_positions(keys[:1], n[:1], 16, 12))
    assert sorted(set(c[0].tolist())) == list(range(10))


def test_baseline_logits_match_direct_computation():
    cfg = PreviewConfig(num_classes=5, episode_length=4)
    variables = init_variables(cfg, "two", jax.random.key(1))
    params = variables["params"]
    rng = np.random.default_rng(0)
    b, lb = 2, 16
    image, audio = (rng.standard_normal((b, lb, 512)).astype(np.float32) for _ in range(2))
    mask = np.zeros((b, lb), np.float32)
    mask[0, :10], mask[1, :16] = 1, 1
    batch = {"image": image, "audio": audio, "mask": mask}
    fused = rng.standard_normal((b, 4, 512)).astype(np.float32)
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(0), i))(jnp.arange(b))
    out = bl.baseline_logits(params, batch, cfg, "two", {"fused": fused, "step_logits": None}, keys)
    w, c = params["net_classifier"]["classifier"]["kernel"], params["net_classifier"]["classifier"]["bias"]
    for r, n in enumerate((10, 16)):
        f = np.asarray(ImageAudioNet().apply({"params": params["net_imageAudio"]}, image[r, :n], audio[r, :n]))
        np.testing.assert_allclose(out["all_logits"][r], f.mean(0) @ w + c, rtol=1e-4, atol=1e-5)
        pos = np.asarray(bl.uniform_positions(jnp.array([float(n)]), 4))[0]
        np.testing.assert_allclose(out["uniform_logits"][r], f[pos].mean(0) @ w + c, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(out["uniform_steps_logits"][r, -1], out["uniform_logits"][r], rtol=1e-5, atol=1e-5)
        for k in range(1, 5):
            np.testing.assert_allclose(out["policy_steps_logits"][r, k - 1], fused[r, :k].mean(0) @ w + c,
                                       rtol=1e-4, atol=1e-5)


def test_registry_holds_the_three_baselines_and_every_one_gets_logits(monkeypatch):
    assert list(bl.BASELINES) == ["uniform", "random", "all"]
    assert [bl.label(n, 7) for n in bl.BASELINES] == ["7 uniformly spaced clips", "7 random clips",
                                                      "all clips averaged"]
    monkeypatch.setattr(bl, "BASELINES", dict(bl.BASELINES))
    monkeypatch.setattr(bl, "LABELS", dict(bl.LABELS))
    bl.register("last", "the last valid clip")(
        lambda clips: jnp.take_along_axis(clips.features, (clips.n.astype(jnp.int32) - 1)[:, None, None], 1)[:, 0])
    cfg = PreviewConfig(num_classes=5, episode_length=4)
    params = init_variables(cfg, "two", jax.random.key(1))["params"]
    rng = np.random.default_rng(1)
    image, audio = (rng.standard_normal((2, 16, 512)).astype(np.float32) for _ in range(2))
    mask = np.zeros((2, 16), np.float32)
    mask[0, :10], mask[1, :] = 1, 1
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(0), i))(jnp.arange(2))
    out = bl.baseline_logits(params, {"image": image, "audio": audio, "mask": mask}, cfg, "two",
                             {"fused": np.zeros((2, 4, 512), np.float32), "step_logits": None}, keys)
    assert set(out) == {f"{n}_logits" for n in ("uniform", "random", "all", "last")} | {
        "uniform_steps_logits", "policy_steps_logits"}
    w, c = params["net_classifier"]["classifier"]["kernel"], params["net_classifier"]["classifier"]["bias"]
    for r, n in enumerate((10, 16)):
        f = np.asarray(ImageAudioNet().apply({"params": params["net_imageAudio"]}, image[r, :n], audio[r, :n]))
        np.testing.assert_allclose(out["last_logits"][r], f[n - 1] @ w + c, rtol=1e-4, atol=1e-5)
    assert bl.label("last", 4) == "the last valid clip"


@pytest.mark.parametrize("k,lb", [(33, 32), (100, 16), (1, 16)])
def test_random_positions_for_any_episode_length_beyond_the_padded_length(k, lb):
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(1), i))(jnp.arange(2))
    n = jnp.array([10.0, float(lb)])
    pos = np.asarray(bl.random_positions(keys, n, lb, k))
    assert pos.shape == (2, k)
    for row, m in zip(pos, [10, lb], strict=True):
        assert row.max() < m and len(set(row.tolist())) == min(k, m)
