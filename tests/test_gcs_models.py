"""Models, weights and evaluation outputs on a bucket (``gs://``, the in-process emulator of tests/gcs_emulator.py):
l2l-convert both ways with the .pth and the model directory on the bucket gives the arrays a local conversion gives;
--pretrained_model reads .pth files, model directories and folders of .pth files there; a model directory
without its meta.json (being written, or left by an interrupted write) is refused by name, and a failed
replacement keeps the old model; l2l-eval writes --export, --metrics_json and --plot to the bucket with the
bytes and values it writes locally; a missing object or bucket is one line naming the URL."""

from __future__ import annotations

import argparse
import collections
import io
import json
from pathlib import Path

import fsspec
import numpy as np
import pytest
import torch
from fixture_inputs import clip_features, manifest_state_dict, read_json

from convert.cli import main as convert_main
from l2l_jax import config, model_dir, storage, weights
from l2l_jax.errors import WeightsError
from l2l_jax.evaluation import plots
from l2l_jax.programs import evaluate
from l2l_jax.programs import flags as program_flags
from l2l_jax.pth_convert import variables_from_state_dict
from l2l_jax.torch_io import ConversionError, read_state_dict, write_torch_file

MANIFEST = "manifests/preview_two_C12.json"
FUSION_MANIFEST = "manifests/imageaudionet_C12.json"  # few tensors: quick to write on the emulator
ROOT = Path(__file__).resolve().parents[1]


def _torch_bytes(sd: dict[str, np.ndarray], **extras) -> bytes:
    """``torch.save`` bytes of ``{"model": sd as tensors, **extras}``."""
    model = collections.OrderedDict((k, torch.from_numpy(v.copy())) for k, v in sd.items())
    buf = io.BytesIO()
    torch.save({"model": model, **extras}, buf)
    return buf.getvalue()


def _upstream_pth(seed: int = 5) -> bytes:
    """An upstream-shaped training checkpoint of the two-modality model (C=12), as torch.save bytes."""
    ns = argparse.Namespace(num_classes=12, episode_length=10, lr=0.01)
    return _torch_bytes(manifest_state_dict(MANIFEST, seed), epoch=24, namespace=ns)


def _same_tree(a, b) -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b)
        for k in a:
            _same_tree(a[k], b[k])
    else:
        a, b = np.asarray(a), np.asarray(b)
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)


def _objects(gcs) -> list[str]:
    """Every object name in the test bucket."""
    fs, _ = fsspec.core.url_to_fs(gcs.gs(""))
    fs.invalidate_cache()
    return sorted(name.removeprefix(f"{gcs.bucket}/") for name in fs.find(gcs.bucket))


def _one_line(err: str) -> str:
    """The program's one error line (the in-process emulator's own server may log to stderr beside it)."""
    lines = [line for line in err.splitlines() if line.startswith("l2l-")]
    assert len(lines) == 1, err
    return lines[0]


def test_convert_to_bucket_and_back_matches_local(gcs, tmp_path, capsys):
    local_pth, url_pth = tmp_path / "model_final.pth", gcs.gs("up", "model_final.pth")
    local_pth.write_bytes(_upstream_pth())
    storage.write_bytes(url_pth, local_pth.read_bytes())
    assert convert_main(["preview", "--torch", str(local_pth), "--out", str(tmp_path / "flax")]) == 0
    assert convert_main(["preview", "--torch", url_pth, "--out", gcs.gs("m", "flax")]) == 0
    assert gcs.gs("m", "flax") in capsys.readouterr().out
    local_vars, local_meta = model_dir.load_model_dir(tmp_path / "flax")
    url_vars, url_meta = model_dir.load_model_dir(gcs.gs("m", "flax"))
    _same_tree(url_vars, local_vars)
    assert url_meta["source"] == url_pth
    assert {k: v for k, v in url_meta.items() if k != "source"} == {k: v for k, v in local_meta.items()
                                                                    if k != "source"}
    assert url_meta["epoch"] == 24 and url_meta["upstream_args"]["episode_length"] == 10

    # back to upstream's format, on the bucket, from the bucket
    assert convert_main(["export", "--flax", gcs.gs("m", "flax"), "--out", gcs.gs("m", "back.pth")]) == 0
    assert convert_main(["export", "--flax", str(tmp_path / "flax"), "--out", str(tmp_path / "back.pth")]) == 0
    url_sd, url_extras = read_state_dict(gcs.gs("m", "back.pth"))
    local_sd, local_extras = read_state_dict(tmp_path / "back.pth")
    assert list(url_sd) == list(local_sd) == list(manifest_state_dict(MANIFEST, 5))
    _same_tree(url_sd, local_sd)
    assert url_extras["epoch"] == local_extras["epoch"] == 24
    assert convert_main(["export", "--flax", gcs.gs("m", "flax"), "--out", gcs.gs("m", "back.pth")]) == 2
    assert "already exists" in _one_line(capsys.readouterr().err)

    # an existing model on the bucket is replaced only with --overwrite (test_half_written_... replaces one)
    assert convert_main(["preview", "--torch", url_pth, "--out", gcs.gs("m", "flax")]) == 2
    assert _one_line(capsys.readouterr().err).startswith(f"l2l-convert: --out {gcs.gs('m', 'flax')}: already exists")
    assert not any(name.startswith("m/.") for name in _objects(gcs))
    assert {name.split("/")[1] for name in _objects(gcs) if name.startswith("m/")} == {"flax", "back.pth"}

    # a folder on the bucket that is not a model is not replaced
    storage.write_text(gcs.gs("plain", "keep.txt"), "x")
    assert convert_main(["preview", "--torch", url_pth, "--out", gcs.gs("plain"), "--overwrite"]) == 2
    assert "is not a model directory" in _one_line(capsys.readouterr().err)
    assert storage.path(gcs.gs("plain", "keep.txt")).read_text() == "x"


def test_half_written_model_dir_is_refused_and_a_failed_replace_keeps_the_old(gcs, tmp_path, capsys, monkeypatch):
    variables, meta = variables_from_state_dict(manifest_state_dict(FUSION_MANIFEST, 5), "imageaudionet", "test")
    url = gcs.gs("half", "model")
    model_dir.save_model_dir(url, variables, meta)
    storage.path(url).joinpath(model_dir.META_FILE).unlink()  # what a reader sees before meta.json is written
    with pytest.raises(model_dir.NotAModelDirError, match=rf"^{url} is not an l2l-jax model directory \(no meta"):
        model_dir.load_model_dir(url)
    assert not model_dir.is_model_dir(url)
    with pytest.raises(WeightsError, match=rf"^--weights_audioImageModel {url}: a model directory without its "
                                           "meta.json"):
        weights.resolve(url, "--weights_audioImageModel")
    assert convert_main(["export", "--flax", url, "--out", str(tmp_path / "x.pth")]) == 2
    assert url in _one_line(capsys.readouterr().err) and not (tmp_path / "x.pth").exists()
    # --overwrite may replace what an interrupted write left, and a complete model (l2l-convert --overwrite)
    model_dir.save_model_dir(url, variables, meta, overwrite=True)
    _same_tree(model_dir.load_model_dir(url)[0], variables)
    storage.write_bytes(gcs.gs("half", "new.pth"), _torch_bytes(manifest_state_dict(FUSION_MANIFEST, 6)))
    assert convert_main(["imageaudionet", "--torch", gcs.gs("half", "new.pth"), "--out", url, "--overwrite"]) == 0
    replaced = variables_from_state_dict(manifest_state_dict(FUSION_MANIFEST, 6), "imageaudionet", "x")[0]
    _same_tree(model_dir.load_model_dir(url)[0], replaced)
    assert sorted(_objects(gcs))[0] == "half/model/meta.json"  # no temporary prefix left ("." sorts first)
    assert model_dir.load_meta(url)["source"] == gcs.gs("half", "new.pth")
    storage.path(gcs.gs("half", "new.pth")).unlink()

    # a replacement that fails before the new model is complete leaves the old one whole, and no temporary prefix
    real_write_text = storage.write_text

    def failing(p, text):
        if str(p).endswith(model_dir.META_FILE):
            raise OSError("simulated failure while writing meta.json")
        real_write_text(p, text)

    monkeypatch.setattr(storage, "write_text", failing)
    changed = {**variables, "params": {**variables["params"]}}
    changed["params"]["net_classifier"] = {"classifier": {
        "kernel": variables["params"]["net_classifier"]["classifier"]["kernel"] + 1,
        "bias": variables["params"]["net_classifier"]["classifier"]["bias"]}}
    with pytest.raises(OSError, match="simulated"):
        model_dir.save_model_dir(url, changed, meta, overwrite=True)
    monkeypatch.setattr(storage, "write_text", real_write_text)
    _same_tree(model_dir.load_model_dir(url)[0], replaced)
    assert all(name.startswith("half/model/") for name in _objects(gcs))
    # a new model whose write fails leaves nothing behind
    monkeypatch.setattr(storage, "write_text", failing)
    with pytest.raises(OSError, match="simulated"):
        model_dir.save_model_dir(gcs.gs("half", "new"), variables, meta)
    monkeypatch.setattr(storage, "write_text", real_write_text)
    assert not storage.path(gcs.gs("half", "new")).exists()


def test_pretrained_model_from_the_bucket(gcs, tmp_path):
    pth = _upstream_pth()
    (tmp_path / "model_final.pth").write_bytes(pth)
    storage.write_bytes(gcs.gs("w", "old.pth"), _upstream_pth(seed=6))
    storage.write_bytes(gcs.gs("w", "model_final.pth"), pth)  # the newer of the two
    local = weights.load(tmp_path / "model_final.pth", "two", "--pretrained_model")

    from_object = weights.load(gcs.gs("w", "model_final.pth"), "two", "--pretrained_model")
    assert from_object.ref.kind == "pth" and str(from_object.ref.path) == gcs.gs("w", "model_final.pth")
    _same_tree(from_object.variables, local.variables)
    assert from_object.meta["source"] == gcs.gs("w", "model_final.pth")

    folder = weights.resolve(gcs.gs("w"), "--pretrained_model")  # a folder of .pth files: the newest
    assert (folder.kind, str(folder.path)) == ("pth", gcs.gs("w", "model_final.pth"))

    model_dir.save_model_dir(gcs.gs("d"), local.variables, local.meta)
    from_dir = weights.load(gcs.gs("d"), "two", "--pretrained_model")
    assert from_dir.ref.kind == "model_dir"
    _same_tree(from_dir.variables, local.variables)
    fusion = weights.load(gcs.gs("d"), "imageaudionet", "--weights_audioImageModel")  # a two-modality dir serves
    _same_tree(fusion.variables["params"]["net_classifier"], local.variables["params"]["net_classifier"])

    # the safe loader still refuses a pickle that needs arbitrary objects, read from the bucket
    buf = io.BytesIO()
    torch.save({"model": collections.OrderedDict(), "evil": collections.UserDict()}, buf)
    storage.write_bytes(gcs.gs("w2", "evil.pth"), buf.getvalue())
    with pytest.raises(WeightsError, match=r"refusing to load gs://l2l-test/w2/evil.pth"):
        weights.load(gcs.gs("w2", "evil.pth"), "two", "--pretrained_model")
    # non-finite tensors are refused too
    sd = manifest_state_dict(MANIFEST, 5)
    sd["net_classifier.classifier.bias"][0] = np.nan
    write_torch_file(gcs.gs("w2", "nan.pth"), sd)
    with pytest.raises(WeightsError, match=r"non-finite"):
        weights.load(gcs.gs("w2", "nan.pth"), "two", "--pretrained_model")


@pytest.mark.slow  # initialising the model (compiling its init) is most of it
def test_training_starts_from_weights_on_the_bucket(gcs):
    """l2l-train's start (`weights.initial_variables`): --weights_audioImageModel from an upstream ImageAudioNet
    .pth on the bucket sets the fusion net and the classifier."""
    fusion_sd = manifest_state_dict(FUSION_MANIFEST, 7)
    storage.write_bytes(gcs.gs("t", "ImageAudioNet.pth"), _torch_bytes(fusion_sd))
    cfg = program_flags.resolve("train", ["--num_classes", "12", "--train_dataset_file", "t.pkl",
                                          "--weights_audioImageModel", gcs.gs("t", "ImageAudioNet.pth")])
    started = weights.initial_variables(config.settings(cfg, "train"))
    want = variables_from_state_dict(fusion_sd, "imageaudionet", "x")[0]["params"]
    for module in weights.FUSION_MODULES:
        _same_tree(started["params"][module], want[module])


def test_missing_objects_and_buckets_are_one_line(gcs, tmp_path, capsys):
    missing = gcs.gs("nothing", "model.pth")
    with pytest.raises(WeightsError, match=rf"^--pretrained_model {missing}: no such file or directory$"):
        weights.resolve(missing, "--pretrained_model")
    with pytest.raises(WeightsError, match=r"^--weights_audioImageModel gs://no-such-bucket/m.pth: bucket "
                                           r"no-such-bucket does not exist"):
        weights.resolve("gs://no-such-bucket/m.pth", "--weights_audioImageModel")
    with pytest.raises(ConversionError, match=rf"^{missing}: no such file$"):
        read_state_dict(missing)
    with pytest.raises(FileNotFoundError, match=r"^gs://no-such-bucket/m: bucket no-such-bucket does not exist"):
        model_dir.load_model_dir("gs://no-such-bucket/m")
    assert convert_main(["preview", "--torch", missing, "--out", gcs.gs("out")]) == 2
    assert _one_line(capsys.readouterr().err) == f"l2l-convert: {missing}: no such file"
    assert not storage.path(gcs.gs("out")).exists()
    assert convert_main(["export", "--flax", gcs.gs("nothing"), "--out", str(tmp_path / "x.pth")]) == 2
    assert gcs.gs("nothing") in _one_line(capsys.readouterr().err)
    (tmp_path / "m.pth").write_bytes(_upstream_pth())
    assert convert_main(["preview", "--torch", str(tmp_path / "m.pth"), "--out", "gs://no-such-bucket/m"]) == 2
    assert "bucket no-such-bucket does not exist" in _one_line(capsys.readouterr().err)
    with gcs.deny_writes():  # the bucket refuses the upload: one line naming --out, nothing left
        assert convert_main(["preview", "--torch", str(tmp_path / "m.pth"), "--out", gcs.gs("denied")]) == 2
    assert _one_line(capsys.readouterr().err).startswith(f"l2l-convert: --out {gcs.gs('denied')}: could not be "
                                                         "written (")
    assert not storage.path(gcs.gs("denied")).exists()


def test_training_curves_and_timelines_to_a_url(gcs, tmp_path):
    epochs = [{"epoch": e, "train/loss": 2.0 - e / 10, "train/avgpool_ce": 1.0, "train/lstm_ce": 1.0 - e / 20,
               "train/avgpool_acc": 0.1 * e, "train/lstm_acc": 0.1 * e, "val/avgpool_acc": 0.05 * e} for e in (1, 2)]
    assert str(plots.training_curves(gcs.gs("run", "curves.png"), epochs)) == gcs.gs("run", "curves.png")
    plots.training_curves(tmp_path / "curves.png", epochs)
    assert storage.path(gcs.gs("run", "curves.png")).read_bytes() == (tmp_path / "curves.png").read_bytes()
    rows = {"image": [1, 2, 2], "audio": [0, 3, 4]}
    plots.timeline(gcs.gs("run", "t.png"), num_clips=6, rows=rows, start=1, title="x")
    plots.timeline(tmp_path / "t.png", num_clips=6, rows=rows, start=1, title="x")
    assert storage.path(gcs.gs("run", "t.png")).read_bytes() == (tmp_path / "t.png").read_bytes()
    assert (tmp_path / "t.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- l2l-eval with every output on the bucket ----------------------------------------------------------------
DATA = read_json("dataset/dataset.json")
VAL = DATA["splits"]["val"]
CASE = next(c for c in DATA["validate"] if c["name"] == "published_soft")


def _eval_args(root: Path, model: str, *extra: str) -> list[str]:
    args = ["--test_dataset_file", str(root / "val.pkl"), "--feature_root", str(root), "--batch_size",
            str(CASE["batch_size"]), "--num_classes", "12", "--episode_length", str(CASE["E"]),
            "--pretrained_model", model, "--compute_mAP", "--decode_threads", "2", "--buckets", "64",
            "--subsample_factor", str(CASE["subsample"]), "--plot_videos", "3"]
    args += ["--with_replacement"] * CASE["no_repeat"] + ["--mean_feature_as_start"] * CASE["mean_start"]
    return args + ["--feature_interpolate"] * CASE["interpolate"] + list(extra)


@pytest.mark.slow
def test_eval_outputs_on_the_bucket_equal_local_ones(gcs, tmp_path, capsys):
    root = tmp_path / "data"
    for m in ("image_features", "audio_features"):
        (root / m).mkdir(parents=True)
    for name, n, si, sa in zip(VAL["names"], VAL["lengths"], VAL["image_seeds"], VAL["audio_seeds"], strict=True):
        np.save(root / "image_features" / f"{name}.npy", clip_features(si, n))
        np.save(root / "audio_features" / f"{name}.npy", clip_features(sa, n))
    (root / "val.pkl").write_bytes((ROOT / "tests/fixtures/dataset/val.pkl").read_bytes())
    sd = manifest_state_dict(CASE["manifest"], CASE["model_seed"])
    write_torch_file(root / "model_final.pth", sd, epoch=3)
    write_torch_file(gcs.gs("eval", "model_final.pth"), sd, epoch=3)

    local = tmp_path / "out"
    assert evaluate.main(_eval_args(root, str(root / "model_final.pth"), "--export", str(local / "e.jsonl"),
                                    "--metrics_json", str(local / "m.json"), "--plot", str(local / "plots"))) == 0
    local_out = capsys.readouterr().out
    url = gcs.gs("eval", "out")
    assert evaluate.main(_eval_args(root, gcs.gs("eval", "model_final.pth"), "--export", f"{url}/e.jsonl",
                                    "--metrics_json", f"{url}/m.json", "--plot", f"{url}/plots")) == 0
    url_out = capsys.readouterr().out
    assert url_out.splitlines()[0].replace(gcs.gs("eval", "model_final.pth"), str(root / "model_final.pth")) \
        == local_out.splitlines()[0]

    assert storage.path(f"{url}/e.jsonl").read_bytes() == (local / "e.jsonl").read_bytes()
    timing = {"videos_per_second", "compile_seconds", "run_seconds", "checkpoint"}
    got, want = json.loads(storage.path(f"{url}/m.json").read_text()), json.loads((local / "m.json").read_text())
    assert got["checkpoint"] == gcs.gs("eval", "model_final.pth")
    assert {k: v for k, v in got.items() if k not in timing} == {k: v for k, v in want.items() if k not in timing}
    local_pngs = sorted(p.name for p in (local / "plots").iterdir())
    assert len(local_pngs) == 4 and "map_vs_steps.png" in local_pngs
    assert sorted(p.name for p in storage.path(f"{url}/plots").iterdir()) == local_pngs
    for name in local_pngs:
        assert storage.path(f"{url}/plots/{name}").read_bytes() == (local / "plots" / name).read_bytes(), name

    # a missing model on the bucket, or outputs to a bucket that does not exist: one line, nothing run
    missing = gcs.gs("eval", "none.pth")
    assert evaluate.main(_eval_args(root, missing)) == 2
    assert _one_line(capsys.readouterr().err) == f"l2l-eval: --pretrained_model {missing}: no such file or directory"
    assert evaluate.main(_eval_args(root, str(root / "model_final.pth"), "--export", "gs://no-such-bucket/e")) == 2
    assert "--export gs://no-such-bucket/e: bucket no-such-bucket does not exist" in _one_line(capsys.readouterr().err)
