"""l2l-predict on tiny generated videos: the same probabilities as l2l-extract + l2l-eval, the feature cache,
refusals before any work, skipped files, its JSON lines and timelines.

World: three 12 s synthetic videos of three classes, a 4 s one without audio, a corrupt file; features by l2l-extract
with random networks calibrated on them (``--calibrate_bn``, as the videos demo makes them) at 32 x 32 pixels (names
-> classes.json), which l2l-predict reproduces from ``--calibration``; two freshly initialised two-modality models (E
= 3) saved as ``run*/model_final`` beside a ``config.json`` that names the training pickle, one starting from a random
clip, one from the mean feature.
"""

from __future__ import annotations

import json
import shutil
import warnings

import jax
import numpy as np
import pytest

pytest.importorskip("av")

from l2l_jax import model_dir  # noqa: E402
from l2l_jax.model import PreviewConfig, init_variables  # noqa: E402
from l2l_jax.prediction import policy as PP  # noqa: E402
from l2l_jax.prediction import present  # noqa: E402
from l2l_jax.programs import extract as XP  # noqa: E402
from l2l_jax.programs import predict as PR  # noqa: E402
from l2l_jax.video import decode as D  # noqa: E402

LABELS = "video,label,split\nv0.mp4,cat,val\nv1.mp4,dog,val\nv2.mp4,owl,val\nshort.mp4,cat,val\n"
E = 3


def _model(tmp, name: str, mean: bool, data) -> str:
    cfg = PreviewConfig(num_classes=3, episode_length=E, mean_feature_as_start=mean)
    var = init_variables(cfg, "two", jax.random.key(1))
    var = jax.tree_util.tree_map(np.asarray, {k: dict(v) for k, v in var.items()})
    run = tmp / name
    model_dir.save_model_dir(run / "model_final", var, {"variant": "two", "num_classes": 3, "feature_dim": 512,
                                                        "source": "test"})
    # the keys of the resolved flags l2l-train writes that l2l-predict reads
    (run / "config.json").write_text(json.dumps({"variant": "two", "num_classes": 3, "episode_length": E,
                                                 "mean_feature_as_start": mean,
                                                 "train_dataset_file": str(data / "val.pkl")}))
    return str(run / "model_final")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("predict")
    videos = tmp / "videos"
    videos.mkdir()
    for i in range(3):
        D.write_synthetic_video(videos / f"v{i}.mp4", i, 3, seconds=12, seed=i)
    D.write_test_video(videos / "short.mp4", seconds=4, audio=None, seed=5)
    (videos / "broken.mp4").write_bytes(b"not a video " * 64)
    (tmp / "labels.csv").write_text(LABELS)
    data = tmp / "data"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert XP.main([str(videos), "--labels", str(tmp / "labels.csv"), "--out", str(data), "--frame_size", "40",
                        "--crop", "32", "--batch_size", "8", "--workers", "2", "--no_progress", "--calibrate_bn"]) == 0
    return {"tmp": tmp, "videos": videos, "data": data, "model": _model(tmp, "run", False, data),
            "mean_model": _model(tmp, "run_mean", True, data),
            "calibration": ["--calibration", str(videos), str(tmp / "labels.csv")]}


def _predict(argv, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = PR.main([*argv, "--no_progress"])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _records(out):
    return {r["video"].rsplit("/", 1)[-1]: r for r in map(json.loads, (out / PR.JSONL).read_text().splitlines())}


@pytest.fixture(scope="module")
def predicted(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("predicted") / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = PR.main([str(world["videos"]), str(world["videos"] / "missing.mp4"), "--model", world["model"],
                      "--out", str(out), "--plot", "--top_k", "2", "--workers", "2", "--no_progress",
                      *world["calibration"]])
    return {"rc": rc, "out": out, "records": _records(out)}


@pytest.mark.slow
def test_probabilities_equal_extract_then_eval(world, predicted, tmp_path, capsys):
    """l2l-eval on l2l-extract's features of the same files, given predict's start clips: the same avgpool
    probabilities (largest difference printed), predictions and chosen clips; and the same feature values."""
    from l2l_jax.evaluation import report
    from l2l_jax.programs import evaluate

    recs = predicted["records"]
    order = ["v0.mp4", "v1.mp4", "v2.mp4", "short.mp4"]  # val.pkl's rows
    starts = tmp_path / "starts.json"
    starts.write_text(json.dumps({str(i): recs[v]["policy"]["start_idx"] for i, v in enumerate(order)}))
    captured = {}
    write_export = report.write_export

    def capture(result, path, names=None):
        captured["result"] = result
        return write_export(result, path, names)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(report, "write_export", capture)
        rc = evaluate.main(["--test_dataset_file", str(world["data"] / "val.pkl"), "--pretrained_model",
                            world["model"], "--num_classes", "3", "--episode_length", str(E), "--start_idx_file",
                            str(starts), "--export", str(tmp_path / "e.jsonl")])
    assert rc == 0
    capsys.readouterr()
    exported = [json.loads(line) for line in (tmp_path / "e.jsonl").read_text().splitlines()]
    v = captured["result"].videos
    worst = 0.0
    for row, name in enumerate(order):
        r = recs[name]
        probs = present.softmax(v["avgpool_logits"][row])
        worst = max(worst, float(np.abs(probs - np.array(r["probabilities"])).max()))
        assert exported[row]["prediction"] == r["top_k"][0]["index"]
        for key in ("start_idx", "image_idx", "audio_idx"):
            assert exported[row][key] == r["policy"][key], (name, key)
        assert exported[row]["num_clips"] == max(r["num_clips"], 10)
    print(f"largest probability difference, l2l-predict vs l2l-extract + l2l-eval: {worst:.3g}")
    assert worst < 1e-5
    cache = next((predicted["out"] / "features").iterdir())
    for name in order:
        for d in ("image_features", "audio_features"):
            ours = np.load(cache / d / f"{recs[name]['sha256_prefix']}.npy")
            theirs = np.load(world["data"] / d / f"{name[:-4]}.npy")
            np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_rerun_takes_features_from_the_cache(world, predicted, capsys):
    """A second run over the same files (given in another order, one copied under a new name) decodes nothing,
    runs no network batch and gives the same probabilities and start clips."""
    out = predicted["out"]
    copy = world["tmp"] / "copy_of_v1.mp4"
    copy.write_bytes((world["videos"] / "v1.mp4").read_bytes())
    rc, screen, _ = _predict([str(world["videos"] / "v2.mp4"), str(copy), str(world["videos"] / "v0.mp4"),
                              "--model", world["model"], "--out", str(out), "--top_k", "2", *world["calibration"]],
                             capsys)
    assert rc == 0
    assert "decode 0.00 (summed over threads), networks 0.00 (0 batches)" in screen
    again = _records(out)
    assert all(r["cached"] for r in again.values())
    first = predicted["records"]
    for new, old in (("v2.mp4", "v2.mp4"), ("copy_of_v1.mp4", "v1.mp4"), ("v0.mp4", "v0.mp4")):
        assert again[new]["policy"] == first[old]["policy"]
        np.testing.assert_allclose(again[new]["probabilities"], first[old]["probabilities"], rtol=0, atol=1e-6)


@pytest.mark.slow
def test_json_lines_and_timelines(world, predicted):
    """One line per input: classes named from extract.json, top-k sorted, probabilities summing to 1, E steps
    in seconds within the video, the silent short video noted; unreadable and missing files skipped with their
    reason; a PNG per predicted video."""
    assert predicted["rc"] == 0
    recs = predicted["records"]
    assert set(recs) == {"v0.mp4", "v1.mp4", "v2.mp4", "short.mp4", "broken.mp4", "missing.mp4"}
    assert recs["broken.mp4"]["skipped"].startswith("cannot open")
    assert recs["missing.mp4"]["skipped"] == "no such file"
    for name in ("v0.mp4", "v1.mp4", "v2.mp4", "short.mp4"):
        r = recs[name]
        assert [t["class"] for t in r["top_k"]] == [["cat", "dog", "owl"][t["index"]] for t in r["top_k"]]
        p = [t["probability"] for t in r["top_k"]]
        assert len(p) == 2 and p == sorted(p, reverse=True) and abs(sum(r["probabilities"]) - 1) < 1e-9
        assert len(r["steps"]) == E and r["num_clips"] == (4 if name == "short.mp4" else 12)
        for s in r["steps"]:
            assert 0 <= s["image_s"] < r["num_clips"] and 0 <= s["audio_s"] < r["num_clips"]
        assert 0 <= r["start_s"] < r["num_clips"]
        assert r["no_audio_track"] == (name == "short.mp4")
        assert set(r["seconds"]) == {"decode", "networks", "policy"} and r["seconds"]["networks"] > 0
    pngs = sorted((predicted["out"] / PR.TIMELINES).glob("*.png"))
    assert len(pngs) == 4 and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


@pytest.mark.slow
def test_mean_start_model_takes_its_settings_from_the_run(world, predicted, capsys):
    """A model trained with --mean_feature_as_start (its run's config.json): no start clip; E from the run.
    (The features come from the shared cache: the same networks made them.)"""
    rc, screen, _ = _predict([str(world["videos"] / "v0.mp4"), "--model", world["mean_model"], "--out",
                              str(predicted["out"]), *world["calibration"]], capsys)
    assert rc == 0 and "start clip" not in screen and "networks 0.00 (0 batches)" in screen
    r = _records(predicted["out"])["v0.mp4"]
    assert r["start_s"] is None and len(r["steps"]) == E


@pytest.mark.slow
def test_class_count_mismatch_is_refused_before_any_work(world, tmp_path, capsys):
    """--classes with 2 names for a 3-class model: one line, status 2, nothing decoded or written."""
    classes = tmp_path / "classes.json"
    classes.write_text('["a", "b"]')
    out = tmp_path / "o"
    rc, _, err = _predict([str(world["videos"]), "--model", world["model"], "--classes", str(classes), "--out",
                           str(out)], capsys)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("l2l-predict: --classes")
    assert "2 classes" in lines[0] and "has 3" in lines[0]
    assert not out.exists()


@pytest.mark.slow
def test_model_without_a_run_record_needs_data_or_networks(world, predicted, tmp_path, capsys):
    """A converted model with no run config.json beside it: where its features came from is unknown, so
    l2l-predict asks for --data or the networks (one line, status 2); with --data it runs."""
    bare = tmp_path / "bare"
    shutil.copytree(world["model"], bare / "model")
    rc, _, err = _predict([str(world["videos"] / "v0.mp4"), "--model", str(bare / "model")], capsys)
    assert rc == 2 and "pass --data ROOT" in err and len(err.strip().splitlines()) == 1
    rc, screen, err = _predict([str(world["videos"] / "v0.mp4"), "--model", str(bare / "model"), "--data",
                                str(world["data"]), "--episode_length", "2", "--out", str(predicted["out"]),
                                *world["calibration"]], capsys)
    assert rc == 0, err
    steps = screen.split("image previewed at s:")[1].splitlines()[0].split()
    assert len(steps) == 2  # --episode_length 2 over the default


@pytest.mark.slow
def test_calibrated_networks_need_their_videos(world, tmp_path, capsys):
    """Training features made with --calibrate_bn: without --calibration refused by name before any work; with
    a CSV other than l2l-extract's the recomputed statistics differ from the record: refused naming them."""
    out = tmp_path / "o"
    rc, _, err = _predict([str(world["videos"]), "--model", world["model"], "--out", str(out)], capsys)
    assert rc == 2 and "--calibrate_bn" in err and "--calibration" in err and len(err.strip().splitlines()) == 1
    other = tmp_path / "other.csv"
    other.write_text("video,label,split\nv2.mp4,owl,val\nv1.mp4,dog,val\n")
    rc, _, err = _predict([str(world["videos"]), "--model", world["model"], "--out", str(out), "--calibration",
                           str(world["videos"]), str(other)], capsys)
    assert rc == 2 and "the networks' variables" in err and len(err.strip().splitlines()) == 1
    assert not (out / "features").exists()


def test_start_clip_depends_on_the_video_alone():
    """The start draw is keyed by the content id: the same whatever other videos share the call, within the
    valid positions (at least 10: short videos are filled)."""
    ids = [PP.content_id("ab" * 32), PP.content_id("cd" * 32), PP.content_id("ef" * 32)]
    valid = [PP.positions(t, 1) for t in (12, 4, 300)]
    together = PP.start_clips(0, ids, valid)
    alone = [int(PP.start_clips(0, [i], [n])[0]) for i, n in zip(ids, valid, strict=True)]
    assert together.tolist() == alone
    assert all(0 <= s < n for s, n in zip(alone, valid, strict=True)) and valid[1] == 10
    many = [PP.content_id(f"{k:064x}") for k in range(1, 41)]
    assert PP.start_clips(1, many, [300] * 40).tolist() != PP.start_clips(0, many, [300] * 40).tolist()


def test_positions_map_to_clips_and_seconds():
    """Position p is clip p * s; positions past a short video's end show its last clip."""
    assert present.clip_of(3, 12) == 3 and present.seconds_of(3, 12) == 3.0
    assert present.clip_of(7, 4) == 3
    assert present.clip_of(2, 12, subsample=2) == 4 and present.clip_of(9, 12, subsample=2) == 11
    assert PP.positions(25, 2) == 13 and PP.positions(5, 1) == 10


@pytest.mark.slow
def test_single_modality_model_reads_the_video_models_features(world, tmp_path, capsys):
    """A single-modality model trained on l2l-extract --video_model --calibrate_bn features (a random video network
    whose BatchNorm statistics come from the CSV's videos, as the videos demo makes them): l2l-predict finds the
    video model in extract.json, reproduces its calibration from --calibration (checked against the recorded
    checksum), and (the videos in the split's order, so the batches' random fills are the same) gives l2l-eval's
    probabilities."""
    from l2l_jax.evaluation import report
    from l2l_jax.programs import evaluate

    data = tmp_path / "data"
    (tmp_path / "labels.csv").write_text("video,label,split\nv0.mp4,cat,val\nshort.mp4,dog,val\nv2.mp4,owl,val\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert XP.main([str(world["videos"]), "--labels", str(tmp_path / "labels.csv"), "--out", str(data),
                        "--frame_size", "40", "--crop", "32", "--batch_size", "8", "--workers", "2", "--no_progress",
                        "--video_model", "r3d_18", "--video_size", "20", "--video_crop", "16", "--calibrate_bn"]) == 0
    assert json.loads((data / "extract.json").read_text())["video_calibration"]["clips"] == 28  # 12 + 4 + 12
    cfg = PreviewConfig(num_classes=3, episode_length=E, feature_dim=512)
    var = jax.tree_util.tree_map(np.asarray, {k: dict(v) for k, v in
                                              init_variables(cfg, "single", jax.random.key(2)).items()})
    model = tmp_path / "run" / "model_final"
    model_dir.save_model_dir(model, var, {"variant": "single", "num_classes": 3, "feature_dim": 512, "source": "t"})
    (model.parent / "config.json").write_text(json.dumps({"variant": "single", "episode_length": E,
                                                          "embedding_size": 512,
                                                          "train_dataset_file": str(data / "val.pkl")}))
    order = ["v0.mp4", "short.mp4", "v2.mp4"]
    rc, _, err = _predict([*(str(world["videos"] / v) for v in order), "--model", str(model), "--out",
                           str(tmp_path / "o"), "--calibration", str(world["videos"]), str(tmp_path / "labels.csv")],
                          capsys)
    assert rc == 0, err
    recs = _records(tmp_path / "o")
    assert all(len(recs[v]["steps"]) <= E and "clip_s" in recs[v]["steps"][0] for v in order)
    starts = tmp_path / "starts.json"
    starts.write_text(json.dumps({str(i): recs[v]["policy"]["start_idx"] for i, v in enumerate(order)}))
    captured = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(report, "summary_lines", lambda result, ckpt: captured.setdefault("result", result) and "")
        assert evaluate.main(["--test_dataset_file", str(data / "val.pkl"), "--pretrained_model", str(model),
                              "--variant", "single", "--embedding_size", "512", "--num_classes", "3",
                              "--episode_length", str(E), "--start_idx_file", str(starts)]) == 0
    capsys.readouterr()
    v = captured["result"].videos
    worst = max(float(np.abs(present.softmax(v["avgpool_logits"][row]) - recs[name]["probabilities"]).max())
                for row, name in enumerate(order))
    print(f"single-modality: largest probability difference vs l2l-extract + l2l-eval: {worst:.3g}")
    assert worst < 1e-5


def test_l2l_train_records_what_predict_reads_from_a_run():
    """The model settings and the training pickle l2l-predict reads from a run's config.json are flags l2l-train
    resolves (and so writes there)."""
    from l2l_jax.programs import flags

    assert set(PR.MODEL_KEYS) | {"train_dataset_file", "test_dataset_file"} <= set(flags.defaults("train"))


@pytest.mark.slow
def test_resnet18_weights_are_found_from_the_record_and_checked(world, tmp_path, capsys):
    """Features made with --weights_resnet18: l2l-predict loads the file extract.json names and makes the same
    features; moved, it asks for the flag; the flag naming other weights is refused by their checksum."""
    import torch
    import torch_video_reference as tvr

    pths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        pths.append(tmp_path / f"resnet18_{seed}.pth")
        torch.save(tvr.ResNet18().state_dict(), pths[-1])
    (tmp_path / "l.csv").write_text("v0.mp4,0\n")
    data = tmp_path / "data"
    assert XP.main([str(world["videos"]), "--labels", str(tmp_path / "l.csv"), "--out", str(data), "--frame_size",
                    "40", "--crop", "32", "--batch_size", "8", "--no_progress", "--weights_resnet18",
                    str(pths[0])]) == 0
    video, model = str(world["videos"] / "v0.mp4"), world["model"]
    rc, _, err = _predict([video, "--model", model, "--data", str(data), "--out", str(tmp_path / "o")], capsys)
    assert rc == 0, err
    cache = next((tmp_path / "o" / "features").iterdir())
    ours = np.load(next((cache / "image_features").iterdir()))
    np.testing.assert_allclose(ours, np.load(data / "image_features" / "v0.npy"), rtol=0, atol=1e-5)
    moved = tmp_path / "moved.pth"
    pths[0].rename(moved)
    rc, _, err = _predict([video, "--model", model, "--data", str(data)], capsys)
    assert rc == 2 and "which are not there" in err and "--weights_resnet18" in err
    rc, _, err = _predict([video, "--model", model, "--data", str(data), "--weights_resnet18", str(pths[1])], capsys)
    assert rc == 2 and "--weights_resnet18 (tensor checksum)" in err and len(err.strip().splitlines()) == 1
    rc, _, err = _predict([video, "--model", model, "--data", str(data), "--weights_resnet18", str(moved), "--out",
                           str(tmp_path / "o")], capsys)
    assert rc == 0, err
