"""One configuration path: l2l-train and l2l-eval build the same model and read the data the same way from
the same flags (`l2l_jax.config.settings`), every flag problem is refused before any work (`config.check`),
and every way to name weights resolves through `l2l_jax.weights`, with a `WeightsError` naming the path when
it names nothing usable."""

from __future__ import annotations

import re
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from l2l_jax import config, parallel, torch_names, weights
from l2l_jax.errors import ConfigError, WeightsError
from l2l_jax.model_dir import save_model_dir
from l2l_jax.programs import flags as program_flags
from l2l_jax.runkit.checkpoints import RunCheckpoints
from l2l_jax.steps import create_train_state
from l2l_jax.torch_io import write_torch_file

# ---------------------------------------------------------------------------------------------- train == eval
SHARED_FLAGS = {
    "defaults": [],
    "single, --feature_subsample": ["--variant", "single", "--feature_subsample", "--subsample_factor", "2"],
    "two, --feature_subsample": ["--variant", "two", "--feature_subsample", "--subsample_factor", "2"],
    "single, switches": ["--variant", "single", "--embedding_size", "256", "--episode_length", "5",
                         "--mean_feature_as_start", "--with_replacement", "--feature_interpolate"],
    "two, interpolate s=3": ["--feature_interpolate", "--subsample_factor", "3", "--num_classes", "7"],
    "loader flags": ["--batch_size", "32", "--seed", "5", "--buckets", "64", "128", "--decode_threads", "40",
                     "--layout", "dense", "--feature_root", "/data", "--skip_bad_videos", "--precision", "fast"],
}
#: What the loaders read with --feature_subsample (docs/UPSTREAM.md §1: only the two-modality data.py has it).
READ_SUBSAMPLE = {"single, --feature_subsample": 1, "two, --feature_subsample": 2, "defaults": 1}


@pytest.mark.parametrize("name", list(SHARED_FLAGS))
def test_train_and_eval_build_the_same_model_and_loaders(name):
    argv = SHARED_FLAGS[name]
    train = config.settings(program_flags.resolve("train", argv), "train")
    evaluate = config.settings(program_flags.resolve("eval", argv), "eval")
    assert train.model == evaluate.model
    assert train.loader == evaluate.loader
    assert train.data.split_options() == evaluate.data.split_options()
    assert train.layout == evaluate.layout
    assert (train.variant, train.seed, train.hard, train.weights) == (evaluate.variant, evaluate.seed, evaluate.hard,
                                                                      evaluate.weights)
    if name in READ_SUBSAMPLE:
        assert train.loader.subsample == READ_SUBSAMPLE[name]
    if name.endswith("--feature_subsample"):
        assert train.model.subsample_factor == 2


# ---------------------------------------------------------------------------------------------- weights
SMALL = ["--num_classes", "6", "--episode_length", "3", "--with_lstm_ce_loss"]


def train_settings(argv: list[str]) -> config.Settings:
    """l2l-train's settings from these flags."""
    return config.settings(program_flags.resolve("train", argv), "train")


def fresh(seed: int) -> dict:
    """A tiny two-modality model's initial variables (numpy)."""
    return weights.initial_variables(train_settings([*SMALL, "--seed", str(seed)]))


def assert_same(a, b) -> None:
    la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
    assert [p for p, _ in la] == [p for p, _ in lb]
    for (path, x), (_, y) in zip(la, lb, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(path))


def write_pth(path: Path, variables: dict) -> Path:
    """An upstream-format model file (state dict under "model", upstream's names)."""
    return write_torch_file(path, torch_names.to_state_dict(variables, "two"), epoch=0)


@pytest.fixture(scope="module")
def named(tmp_path_factory) -> dict:
    """Each way to name weights -> (path, the variables it must give); "root": the folder of them all."""
    root = tmp_path_factory.mktemp("weights")
    a, b, c, d = (fresh(s) for s in (1, 2, 3, 4))
    out = {"pth": (write_pth(root / "model_final.pth", a), a)}
    save_model_dir(root / "converted", b, {"variant": "two", "num_classes": 6, "feature_dim": 512, "source": "test"})
    out["converted"] = (root / "converted", b)
    # a training run with two checkpoints: step 4 holds `a`, step 8 (the newest) holds `c`
    tx, mesh = train_settings([*SMALL, "--seed", "0"]).recipe.build(4).optimizer(), parallel.make_mesh()
    ckpts = RunCheckpoints(root / "run")
    for step, variables in ((4, a), (8, c)):
        state = parallel.replicate(create_train_state(variables, tx, 0), mesh)
        ckpts.save(step, state, {"epoch": step // 4 - 1, "next_epoch": step // 4, "final": step == 8})
    ckpts.close()
    out["run"] = (root / "run", c)
    out["run/checkpoints"] = (root / "run" / "checkpoints", c)
    out["run/checkpoints/4"] = (root / "run" / "checkpoints" / "4", a)
    # upstream's checkpoint folder: the newest .pth by ctime
    (root / "pths").mkdir()
    write_pth(root / "pths" / "model_0000000.pth", b)
    time.sleep(0.05)
    write_pth(root / "pths" / "model_0000010.pth", d)
    out["pth folder"] = (root / "pths", d)
    return {"root": root, **out}


WHERE = {"pth": ("pth", "model_final.pth", None), "converted": ("model_dir", "converted", None),
         "run": ("run", "run/checkpoints/8", 8), "run/checkpoints": ("run", "run/checkpoints/8", 8),
         "run/checkpoints/4": ("run", "run/checkpoints/4", 4),
         "pth folder": ("pth", "pths/model_0000010.pth", None)}


@pytest.mark.parametrize("name", list(WHERE))
def test_every_way_to_name_weights_resolves_and_loads(named, name):
    path, want = named[name]
    kind, where, step = WHERE[name]
    ref = weights.resolve(path, "--pretrained_model")
    assert (ref.kind, ref.step, ref.where) == (kind, step, named["root"] / where)
    loaded = weights.load(path, "two", "--pretrained_model")
    assert_same(loaded.variables, want)
    assert loaded.meta["num_classes"] == 6
    # the training side takes them as --pretrained_model over fresh variables
    argv = [*SMALL, "--seed", "9", "--pretrained_model", str(path)]
    got = weights.initial_variables(train_settings(argv))
    assert_same(got, want)


def test_weights_that_name_nothing_are_a_weights_error_with_the_path(tmp_path):
    missing = tmp_path / "no_such_model.pth"
    with pytest.raises(WeightsError, match=re.escape(str(missing))):
        weights.resolve(missing, "--pretrained_model")
    with pytest.raises(WeightsError, match=re.escape(str(missing))):
        weights.initial_variables(train_settings([*SMALL, "--pretrained_model", str(missing)]))
    empty = tmp_path / "nothing_here"
    empty.mkdir()
    (empty / "notes.txt").write_text("not weights")
    with pytest.raises(WeightsError, match=re.escape(str(empty))):
        weights.load(empty, "two", "--pretrained_model")
    with pytest.raises(WeightsError, match=re.escape(str(empty))):
        eval_flags = program_flags.resolve("eval", ["--num_classes", "6", "--pretrained_model", str(empty)])
        weights.eval_weights(config.settings(eval_flags, "eval"))


# ---------------------------------------------------------------------------------------------- refused flags
REFUSED = [
    (["--lr", "0"], "--lr"), (["--lr", "-0.1"], "--lr"), (["--lr", "nan"], "--lr"), (["--lr", "inf"], "--lr"),
    (["--momentum", "1"], "--momentum"), (["--momentum", "-0.5"], "--momentum"), (["--momentum", "nan"], "--momentum"),
    (["--weight_decay=-1e-4"], "--weight_decay"), (["--weight_decay", "inf"], "--weight_decay"),
    (["--avgpool_ce_loss_weight", "-1"], "--avgpool_ce_loss_weight"),
    (["--lstm_ce_loss_weight", "nan"], "--lstm_ce_loss_weight"),
    (["--seed", "-1"], "--seed"), (["--seed", str(2**32)], "--seed"),
    (["--batch_size", str(config.MAX_BATCH + 1)], "--batch_size"), (["--batch_size", "0"], "--batch_size"),
]


@pytest.mark.parametrize("argv,flag", REFUSED, ids=[" ".join(a) for a, _ in REFUSED])
def test_check_refuses_a_bad_number_in_one_line_naming_the_flag(tmp_path, argv, flag):
    cfg = program_flags.resolve("train", [*SMALL, "--train_dataset_file", str(tmp_path), "--checkpoint_path",
                                          str(tmp_path / "run"), *argv])
    with pytest.raises(ConfigError) as e:
        config.check(cfg, "train")
    message = str(e.value)
    assert message.startswith(f"{flag} ") and "\n" not in message, message


def test_check_accepts_the_edges_of_the_ranges(tmp_path):
    argv = [*SMALL, "--train_dataset_file", str(tmp_path), "--checkpoint_path", str(tmp_path / "run"),
            "--momentum", "0", "--weight_decay", "0", "--avgpool_ce_loss_weight", "0", "--seed", str(2**32 - 1),
            "--batch_size", str(config.MAX_BATCH)]
    config.check(program_flags.resolve("train", argv), "train")
