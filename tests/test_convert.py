"""The converter and the model-directory format: strict, safe, bit-exact both ways."""

from __future__ import annotations

import argparse
import collections
import json
import os
import warnings

import numpy as np
import pytest
import torch
from fixture_inputs import clip_features, manifest_state_dict, read_json, read_npz

from convert.cli import main
from l2l_jax import model_dir
from l2l_jax import pth_convert as core
from l2l_jax.torch_io import ConversionError, read_state_dict

MANIFESTS = {
    "two": "manifests/preview_two_C12.json",
    "single": "manifests/preview_single_C12_D48.json",
    "imageaudionet": "manifests/imageaudionet_C12.json",
}
DIMS = {"two": (12, 512), "single": (12, 48), "imageaudionet": (12, 512)}


def _sd(variant: str, seed: int = 5) -> dict[str, np.ndarray]:
    return manifest_state_dict(MANIFESTS[variant], seed)


def _tensors(sd, prefix=""):
    return collections.OrderedDict((prefix + k, torch.from_numpy(v.copy())) for k, v in sd.items())


def _upstream_checkpoint(sd: dict[str, np.ndarray], prefix: str = "") -> dict:
    """A training checkpoint shaped like upstream's (manifests/training_checkpoint_two.json)."""
    model = _tensors(sd, prefix)
    trainable = [k for k, v in sd.items() if v.dtype == np.float32 and not k.endswith(("running_mean",
                                                                                       "running_var"))]
    group = {"lr": 0.001, "momentum": 0.9, "dampening": 0, "weight_decay": 0.0001, "nesterov": 1,
             "maximize": False, "foreach": None, "differentiable": False, "fused": None, "initial_lr": 0.01,
             "params": list(range(len(trainable)))}
    optimizer = {"state": {i: {"momentum_buffer": torch.zeros(sd[k].shape)} for i, k in enumerate(trainable)},
                 "param_groups": [group]}
    scheduler = {"_get_lr_called_within_step": False, "_is_initial": False, "_last_lr": [0.001],
                 "_step_count": 5, "base_lrs": [0.01], "gamma": 0.1, "last_epoch": 4, "milestones": [2],
                 "warmup_factor": 1e-5, "warmup_iters": 2, "warmup_method": "linear"}
    ns = argparse.Namespace(num_classes=12, episode_length=10, milestones=[2], mean_feature_as_start=True,
                            lr=0.01, checkpoint_path="./checkpoints/exp")
    return {"epoch": 24, "model": model, "optimizer": optimizer, "scheduler": scheduler, "namespace": ns}


def _assert_same_sd(got: dict[str, np.ndarray], ref: dict[str, np.ndarray]):
    assert list(got) == list(ref)
    for k in ref:
        assert got[k].dtype == ref[k].dtype and got[k].shape == ref[k].shape, k
        assert np.array_equal(got[k], ref[k]), k


def _assert_same_tree(a, b):
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b)
        for k in a:
            _assert_same_tree(a[k], b[k])
    else:
        a, b = np.asarray(a), np.asarray(b)
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)


# --- upstream's module skeletons (docs/UPSTREAM.md §3-§5), to prove `load_state_dict(strict=True)` ---------
def _torch_skeleton(variant: str, C: int, D: int) -> torch.nn.Module:
    nn = torch.nn

    def linear(i, o):
        return nn.Linear(i, o)

    def named(**mods):
        m = nn.Module()
        for k, v in mods.items():
            setattr(m, k, v)
        return m

    def query():
        return nn.Sequential(linear(1024, 1024), nn.BatchNorm1d(1024), nn.ReLU(), linear(1024, 512))

    def keyconv(d):
        return nn.Sequential(nn.Conv2d(d, 512, 1), nn.BatchNorm2d(512), nn.ReLU())

    def rnn(d):
        cell = nn.LSTMCell(d, 1024)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.nn.utils.weight_norm is deprecated, upstream uses it
            nn.utils.weight_norm(cell, "weight_hh")
            nn.utils.weight_norm(cell, "weight_ih")
        return cell

    fusion = named(imageAudio_fc1=linear(1024, 1024), imageAudio_fc2=linear(1024, 512))
    if variant == "imageaudionet":
        return named(net_imageAudio=fusion, net_classifier=named(classifier=linear(512, C)))
    if variant == "two":
        return named(net_imageAudio=fusion, net_classifier=named(classifier=linear(512, C)),
                     image_queryfeature_mlp=query(), audio_queryfeature_mlp=query(),
                     prediction_fc=linear(1024, C), image_key_conv1x1=keyconv(512), audio_key_conv1x1=keyconv(512),
                     rnn=rnn(512), modality_attention=linear(1024, 2), softmax=nn.Softmax(dim=-1))
    return named(net_classifier=named(classifier=linear(D, C)), queryfeature_mlp=query(),
                 prediction_fc=linear(1024, C), key_conv1x1=keyconv(D), rnn=rnn(D))


# --- round trips ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["two", "single", "imageaudionet"])
def test_round_trip_is_bit_exact_and_loads_strictly_upstream(variant, tmp_path):
    sd = _sd(variant)
    src = tmp_path / "model_final.pth"
    torch.save(_upstream_checkpoint(sd), src)
    out, meta = core.convert_file(src, tmp_path / "flax", variant)
    C, D = DIMS[variant]
    assert (meta["variant"], meta["num_classes"], meta["feature_dim"]) == (variant, C, D)
    assert meta["epoch"] == 24 and meta["upstream_args"]["episode_length"] == 10

    variables, meta2 = model_dir.load_model_dir(out)
    assert meta2 == json.loads((out / "meta.json").read_text())
    assert ("batch_stats" in variables) == (variant != "imageaudionet")

    # Flax -> .pth: upstream's state dict exactly, loadable with strict=True into upstream's module tree.
    pth = tmp_path / "export.pth"
    core.export_file(out, pth)
    exported, extras = read_state_dict(pth)
    _assert_same_sd(exported, sd)
    assert extras["epoch"] == 24 and extras["namespace"].episode_length == 10
    with torch.serialization.safe_globals([argparse.Namespace]):
        ckpt = torch.load(pth, map_location="cpu", weights_only=True)
    assert isinstance(ckpt["model"], collections.OrderedDict) and isinstance(ckpt["namespace"], argparse.Namespace)
    counters = [v.dtype for k, v in ckpt["model"].items() if k.endswith("num_batches_tracked")]
    assert counters == [torch.int64] * {"two": 4, "single": 2, "imageaudionet": 0}[variant]
    skel = _torch_skeleton(variant, C, D)
    assert list(skel.state_dict()) == list(ckpt["model"])
    skel.load_state_dict(ckpt["model"], strict=True)
    for k, v in skel.state_dict().items():
        assert v.dtype == ckpt["model"][k].dtype and torch.equal(v, ckpt["model"][k]), k

    # .pth -> Flax again: the same variables, bit for bit.
    core.convert_file(pth, tmp_path / "flax2", variant)
    variables2, _ = model_dir.load_model_dir(tmp_path / "flax2")
    _assert_same_tree(variables2, variables)


def test_module_prefix_bare_state_dict_and_suffix_matching(tmp_path):
    sd = _sd("imageaudionet")
    # DataParallel prefix on every key, bare state dict (no "model" entry).
    torch.save(_tensors(sd, "module."), tmp_path / "a.pth")
    assert main(["imageaudionet", "--torch", str(tmp_path / "a.pth"), "--out", str(tmp_path / "a")]) == 0
    # Upstream's suffix matching: keys under another parent module, inside a training checkpoint.
    torch.save(_upstream_checkpoint(sd, prefix="audioVisual."), tmp_path / "b.pth")
    assert main(["imageaudionet", "--torch", str(tmp_path / "b.pth"), "--out", str(tmp_path / "b")]) == 0
    # Legacy (pre-1.6, non-zip) serialisation, as upstream's torch 1.0 wrote it.
    torch.save({"model": _tensors(sd)}, tmp_path / "c.pth", _use_new_zipfile_serialization=False)
    assert main(["imageaudionet", "--torch", str(tmp_path / "c.pth"), "--out", str(tmp_path / "c")]) == 0
    for name, want in (("a", "imageaudionet"), ("b", "imageaudionet")):
        assert core.load_upstream(tmp_path / f"{name}.pth")[1]["variant"] == want  # detected
    torch.save(_tensors(_sd("single")), tmp_path / "s.pth")
    assert core.load_upstream(tmp_path / "s.pth")[1]["variant"] == "single"
    ref, _ = model_dir.load_model_dir(tmp_path / "a")
    for name in "bc":
        _assert_same_tree(model_dir.load_model_dir(tmp_path / name)[0], ref)


# --- refusals ---------------------------------------------------------------------------------------------
class _Exploit:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_pickle_that_runs_code_is_refused_and_never_runs(tmp_path, capsys):
    target = tmp_path / "PWNED"
    evil = tmp_path / "evil.pth"
    torch.save({"model": _tensors(_sd("imageaudionet")), "namespace": _Exploit(target)}, evil)
    assert main(["imageaudionet", "--torch", str(evil), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "refusing to load" in err and str(evil) in err and "system" in err
    assert not target.exists()
    assert not (tmp_path / "x").exists()
    # A harmless-looking custom class is refused just the same.
    torch.save({"model": _tensors(_sd("imageaudionet")), "extra": collections.UserDict()}, evil)
    with pytest.raises(ConversionError, match="refusing to load"):
        read_state_dict(evil)


def test_corrupt_files_give_clear_errors(tmp_path):
    good = tmp_path / "good.pth"
    torch.save({"model": _tensors(_sd("imageaudionet"))}, good)
    data = good.read_bytes()
    cases = {"truncated.pth": data[: len(data) // 2], "garbage.pth": b"not a checkpoint" * 20, "empty.pth": b""}
    for name, blob in cases.items():
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(ConversionError, match="not a readable PyTorch checkpoint") as e:
            read_state_dict(tmp_path / name)
        assert str(tmp_path / name) in str(e.value)
    with pytest.raises(ConversionError, match="no such file"):
        read_state_dict(tmp_path / "missing.pth")
    torch.save([torch.ones(1)], tmp_path / "list.pth")
    with pytest.raises(ConversionError, match="not a checkpoint dict"):
        read_state_dict(tmp_path / "list.pth")
    torch.save({"state": 1, "other": "x"}, tmp_path / "nomodel.pth")
    with pytest.raises(ConversionError, match="no 'model' entry"):
        read_state_dict(tmp_path / "nomodel.pth")


def test_foreign_and_mismatched_state_dicts_list_every_problem(tmp_path):
    foreign = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8)).state_dict()
    torch.save({"model": foreign}, tmp_path / "foreign.pth")
    with pytest.raises(ConversionError) as e:
        core.convert_file(tmp_path / "foreign.pth", tmp_path / "out", "two")
    msg = str(e.value)
    assert str(tmp_path / "foreign.pth") in msg and "missing (48)" in msg and "unexpected (7)" in msg
    assert not (tmp_path / "out").exists()

    sd = _sd("two")
    sd.pop("rnn.bias_hh")
    sd["prediction_fc.weight"] = np.zeros((13, 1024), np.float32)  # wrong C
    sd["image_key_conv1x1.0.bias"] = sd["image_key_conv1x1.0.bias"].astype(np.float64)
    sd["stray.tensor"] = np.zeros(3, np.float32)
    with pytest.raises(ConversionError) as e:
        core.variables_from_state_dict(sd, "two", "x.pth")
    msg = str(e.value)
    for piece in ("missing (1)", "rnn.bias_hh", "unexpected (1)", "stray.tensor", "mis-shaped",
                  "prediction_fc.weight: (13, 1024), expected (12, 1024)", "wrong dtype", "float64"):
        assert piece in msg, piece

    # A two-modality model given to the single converter: a hint names the right subcommand.
    with pytest.raises(ConversionError, match="use `l2l-convert preview`"):
        core.variables_from_state_dict(_sd("two"), "single", "x.pth")
    # Two loaded keys that both end with one expected key: ambiguous, refused.
    amb = {f"a.{k}": v for k, v in _sd("imageaudionet").items()}
    amb["b.net_classifier.classifier.bias"] = amb["a.net_classifier.classifier.bias"]
    with pytest.raises(ConversionError, match="ambiguous"):
        core.variables_from_state_dict(amb, "imageaudionet", "x.pth")


# --- the CLI and the directory format -----------------------------------------------------------------------
def test_cli_all_subcommands(tmp_path, capsys):
    src = tmp_path / "model_final.pth"
    torch.save(_upstream_checkpoint(_sd("single")), src)
    out = tmp_path / "flax"
    assert main(["preview", "--torch", str(src), "--out", str(out), "--variant", "single"]) == 0
    assert "48" in capsys.readouterr().out
    assert main(["preview", "--torch", str(src), "--out", str(out), "--variant", "single"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["preview", "--torch", str(src), "--out", str(out), "--variant", "single", "--overwrite"]) == 0
    assert main(["preview", "--torch", str(src), "--out", str(tmp_path / "two")]) == 2
    assert "--variant single" in capsys.readouterr().err
    pth = tmp_path / "back.pth"
    assert main(["export", "--flax", str(out), "--out", str(pth)]) == 0
    _assert_same_sd(read_state_dict(pth)[0], _sd("single"))
    assert main(["export", "--flax", str(tmp_path), "--out", str(tmp_path / "y.pth")]) == 2
    assert "not an l2l-jax model directory" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["back.pth", "flax", "model_final.pth"]  # no temp left


def test_model_dir_errors_and_atomic_replace(tmp_path):
    variables, meta = core.variables_from_state_dict(_sd("imageaudionet"), "imageaudionet", "test")
    d = model_dir.save_model_dir(tmp_path / "m", variables, meta)
    assert model_dir.is_model_dir(d)
    with pytest.raises(FileExistsError):
        model_dir.save_model_dir(d, variables, meta)
    variables["params"]["net_classifier"]["classifier"]["bias"] += 1
    model_dir.save_model_dir(d, variables, meta | {"epoch": 3}, overwrite=True)
    got, got_meta = model_dir.load_model_dir(d)
    _assert_same_tree(got, variables)
    assert got_meta["epoch"] == 3 and got_meta["format_version"] == model_dir.FORMAT_VERSION
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]

    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not a model directory"):
        model_dir.save_model_dir(tmp_path / "plain", variables, meta, overwrite=True)
    assert (tmp_path / "plain" / "keep.txt").exists()
    with pytest.raises(model_dir.NotAModelDirError, match=str(tmp_path / "plain")):
        model_dir.load_model_dir(tmp_path / "plain")
    (tmp_path / "plain" / "meta.json").write_text('{"format": "something-else"}')
    with pytest.raises(model_dir.NotAModelDirError, match="format"):
        model_dir.load_model_dir(tmp_path / "plain")
    with pytest.raises(model_dir.NotAModelDirError, match="not a directory"):
        model_dir.load_model_dir(tmp_path / "plain" / "keep.txt")
    with pytest.raises(FileNotFoundError):
        model_dir.load_model_dir(tmp_path / "nothing")
    with pytest.raises(ValueError, match="meta.json says num_classes"):
        model_dir.save_model_dir(tmp_path / "bad", variables, meta | {"num_classes": 7})


# --- the converted ImageAudioNet computes upstream's outputs ---------------------------------------------
def test_imageaudionet_conversion_reproduces_upstream_outputs(tmp_path):
    from l2l_jax.model import ImageAudioClassifier

    case = read_json("imageaudionet/case.json")
    ref = read_npz("imageaudionet/outputs.npz")
    torch.save({"model": _tensors(manifest_state_dict(case["manifest"], case["model_seed"]), "module.")},
               tmp_path / "ImageAudioNet_ActivityNet.pth")
    assert main(["imageaudionet", "--torch", str(tmp_path / "ImageAudioNet_ActivityNet.pth"),
                 "--out", str(tmp_path / "ia")]) == 0
    variables, meta = model_dir.load_model_dir(tmp_path / "ia")
    image = clip_features(case["image_seed"], case["rows"])
    audio = clip_features(case["audio_seed"], case["rows"])
    fused, logits = ImageAudioClassifier(meta["num_classes"]).apply(variables, image, audio)
    for got, want in ((fused, ref["fused"]), (logits, ref["logits"])):
        assert np.linalg.norm(np.asarray(got) - want) / np.linalg.norm(want) <= 1e-5
