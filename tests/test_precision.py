"""`--precision exact|fast` and the numerics policy it selects: exact is the default everywhere and is what
every parity test runs; fast runs bfloat16 matrix products with float32 accumulation, stores features, keys
and banks in bfloat16, reduces with plain sums, keeps parameters, optimizer state, BatchNorm statistics and
losses in float32, streams features in 16 bits, and stays close to exact."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from fixture_inputs import case_weights, clip_features, eval_collate, in_layout, read_json, read_npz

from l2l_jax import config, torch_names
from l2l_jax.model import PreviewConfig, build_model, init_variables
from l2l_jax.numerics import EXACT, FAST
from l2l_jax.programs import flags as program_flags
from l2l_jax.recipe import Recipe
from l2l_jax.steps import create_train_state, make_eval_step, make_train_step


def test_exact_is_the_default_of_flags_model_and_loader():
    for program in ("train", "eval"):
        cfg = program_flags.resolve(program, [])
        assert cfg.precision == "exact"
        settings = config.settings(cfg, program)
        assert settings.model.numerics is EXACT
        assert settings.loader.feature_dtype is None
    assert PreviewConfig(num_classes=3).numerics is EXACT
    fast = program_flags.resolve("eval", ["--precision", "fast"])
    assert config.settings(fast, "eval", "gpu").model.numerics is FAST
    on_cpu = config.settings(fast, "eval", "cpu").model.numerics  # the episode stays a loop on a CPU
    assert on_cpu.name == "fast" and not on_cpu.unroll_episode and on_cpu.storage_dtype == FAST.storage_dtype
    assert config.settings(fast, "eval").loader.feature_dtype == "float16"


def _soft_cases():
    return [c for c in read_json("preview/cases.json") if not c["hard"]]


@pytest.mark.parametrize("layout", ["dense", "chunk"])
@pytest.mark.parametrize("case", _soft_cases()[:3], ids=[c["name"] for c in _soft_cases()[:3]])
def test_fast_stays_close_to_exact_on_the_fixture_cases(case, layout):
    ref = {k.split("/", 1)[1]: v for k, v in read_npz("preview/outputs.npz").items()
           if k.startswith(case["name"] + "/")}
    videos = [(clip_features(si, n), clip_features(sa, n))
              for si, sa, n in zip(case["image_seeds"], case["audio_seeds"], case["lengths"], strict=True)]
    (image, audio), mask = eval_collate(videos)
    (image, audio), lay = in_layout(layout, [image.astype(np.float16), audio.astype(np.float16)], mask)
    variables = torch_names.from_state_dict(case_weights(case), "two")
    cfg = PreviewConfig(num_classes=case["num_classes"], episode_length=case["E"],
                        mean_feature_as_start=case["mean_start"], with_replacement=case["no_repeat"],
                        feature_interpolate=case["interpolate"], subsample_factor=case["subsample"])
    out = {p: build_model(dataclasses.replace(cfg, numerics=p), "two").apply(
        variables, image, audio, mask, jnp.int32(mask.shape[1]), ref["start_idx"], None, lay) for p in
        (EXACT, FAST)}
    exact, fast = (np.asarray(out[p]["avgpool_logits"]) for p in (EXACT, FAST))
    assert fast.dtype == np.float32
    assert np.linalg.norm(fast - exact) / np.linalg.norm(exact) < 2e-2
    np.testing.assert_array_equal(np.argmax(fast, 1), np.argmax(exact, 1))
    assert not np.array_equal(fast, exact)  # fast really computes differently


@pytest.mark.parametrize("variant", ["two", "single"])
@pytest.mark.parametrize("layout", ["dense", "chunk"])
def test_fast_train_and_eval_steps_keep_float32_state(variant, layout):
    d = 512 if variant == "two" else 24
    cfg = PreviewConfig(num_classes=5, feature_dim=d, mean_feature_as_start=True, with_replacement=True,
                        numerics=FAST)
    model = build_model(cfg, variant)
    variables = init_variables(cfg, variant, jax.random.key(0))
    rng = np.random.default_rng(0)
    lengths, lb = [30, 12, 7, 40], 64
    mask = np.zeros((4, lb), np.float32)
    names = ("image", "audio") if variant == "two" else ("features",)
    feats = [np.zeros((4, lb, d), np.float16) for _ in names]
    for r, n in enumerate(lengths):
        mask[r, :max(n, 10)] = 1
        for x in feats:
            x[r, :max(n, 10)] = np.maximum(rng.standard_normal((max(n, 10), d)), 0)
    feats, lay = in_layout(layout, feats, mask)
    batch = {**dict(zip(names, feats, strict=True)), "mask": mask, "label": np.arange(4, dtype=np.int32),
             "valid": np.ones(4, np.float32), "length": np.int32(40), "index": np.arange(4, dtype=np.int32)}
    if layout == "chunk":
        from l2l_jax.layouts import chunk

        batch["chunks"] = chunk.chunk_index(mask, None, 1)
    recipe = Recipe(variant, with_avgpool_ce_loss=True, with_lstm_ce_loss=True)
    state = create_train_state(variables, recipe.optimizer(), 0)
    state, metrics = jax.jit(make_train_step(model, recipe))(state, batch)
    assert np.isfinite(float(metrics["loss"]))
    for tree in (state.params, state.batch_stats, state.opt_state):
        for x in jax.tree.leaves(tree):
            if jnp.issubdtype(x.dtype, jnp.floating):
                assert x.dtype == jnp.float32
    out = jax.jit(make_eval_step(model))(state.variables, batch, jax.random.key(1))
    assert out["avgpool_logits"].dtype == jnp.float32 and np.all(np.isfinite(out["avgpool_logits"]))


def test_fast_loader_streams_features_in_16_bits(tmp_path):
    from l2l_jax.data.source import open_split
    from l2l_jax.data.synthetic import generate

    root = generate(tmp_path / "synth", preset="tiny", seed=0, progress=False)
    cfg = program_flags.resolve("eval", ["--test_dataset_file", str(root / "val.pkl"), "--num_classes", "6",
                               "--batch_size", "4", "--precision", "fast", "--layout", "dense"])
    settings = config.settings(cfg, "eval")
    source = open_split(settings.data.test_file, **settings.data.split_options(progress=False))
    batch = next(iter(settings.eval_loader(source)))
    assert batch["image"].dtype == np.float16 and batch["audio"].dtype == np.float16
