"""The Variant spec: each variant's facts agree with each other and with the model the spec builds, and the
programs take them from the spec (a variant's flag defaults, widths, groups, logs)."""

from __future__ import annotations

import jax
import pytest

from l2l_jax import config, recipe, torch_names, variants
from l2l_jax.model import PreviewConfig, init_variables
from l2l_jax.programs import flags as program_flags
from l2l_jax.training.validation import validation_lines


@pytest.mark.parametrize("spec", list(variants.VARIANTS.values()), ids=variants.NAMES)
def test_spec_is_consistent_with_the_model_it_builds(spec):
    cfg = PreviewConfig(num_classes=7, feature_dim=spec.width(24))
    tree = jax.eval_shape(lambda: init_variables(cfg, spec.name, jax.random.key(0)))
    assert set(tree["params"]) == set(spec.modules)
    assert {path[0] for _, _, path in spec.weight_table} == set(spec.modules)
    assert set(torch_names.flax_paths(spec.name)) == {
        "/".join((c, *(k.key for k in path))) for c in tree for path, _ in jax.tree_util.tree_flatten_with_path(
            tree[c])[0]}
    assert len(spec.feature_dirs) == len(spec.modalities)
    assert {m for m, _ in spec.freeze_groups} <= set(spec.modules)
    for uses in (spec.avgpool_uses, spec.lstm_uses, spec.attention_modules):
        assert uses <= set(spec.modules)
    assert set(spec.export_outputs) | {k for _, k in spec.timeline_rows} | set(spec.chosen) <= set(spec.policy_outputs)


def test_unknown_variant_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown variant 'three'"):
        variants.get("three")
    assert variants.holds("two", variants.IMAGEAUDIONET) and not variants.holds("single", variants.IMAGEAUDIONET)


def test_programs_take_variant_facts_from_the_spec():
    single = program_flags.resolve("train", ["--variant", "single", "--embedding_size", "24"])
    for key, value in variants.SINGLE.flag_defaults:
        assert single[key] == value
    widths = [config.settings(cfg, "train").model.feature_dim for cfg in (single, program_flags.resolve("train", []))]
    assert widths == [24, 512]
    groups = recipe.param_groups("two", True)
    assert [(g.name, g.lr_factor) for g in groups] == list(variants.TWO.freeze_groups)
    lines = validation_lines("single", 3, {"avgpool_acc": 0.5, "lstm_acc": 0.25, "avgpool_map": 0.1,
                                           "lstm_map": 0.2, "gt_map": 0.3})
    assert lines[-1] == "mAP from gt predictions at epoch 3: 0.3\n"
    assert validation_lines("two", 1, {"avgpool_acc": 1, "lstm_acc": 1, "avgpool_map": 1, "lstm_map": 1})[1] == \
        "Final accuracy from lstm final prediction at epoch 1: 1"
