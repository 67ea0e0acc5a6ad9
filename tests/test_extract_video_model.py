"""l2l-extract --video_model: a torchvision video ResNet's clip features and logits beside the image and audio
features, on tiny videos made here with PyAV (as tests/test_extract.py makes them).

The video network sees 16 frames of 16 x 16 (``--video_size 20 --video_crop 16``: the networks are
resolution-agnostic) to keep the file short; the preprocessing itself is checked at its real sizes.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import jax
import numpy as np
import pytest

pytest.importorskip("av")

from l2l_jax.data.source import open_split  # noqa: E402
from l2l_jax.programs import extract as XP  # noqa: E402
from l2l_jax.video import decode as D  # noqa: E402
from l2l_jax.video import manifest as M  # noqa: E402
from l2l_jax.video import teacher as TE  # noqa: E402
from l2l_jax.video import trunks as T  # noqa: E402
from l2l_jax.video import video_calibrate as VK  # noqa: E402
from l2l_jax.video import video_clips as VC  # noqa: E402
from l2l_jax.video import video_networks as V  # noqa: E402
from l2l_jax.video.labels import Entry  # noqa: E402

SMALL = ["--frame_size", "40", "--crop", "32", "--batch_size", "4", "--workers", "2", "--no_progress",
         "--video_size", "20", "--video_crop", "16"]
LABELS = "video,label,split\na.mp4,0,train\nsub/b.mkv,1,train\nc.mp4,1,val\nd.mp4,0,train\n"
NAMES = {"a": 3, "sub__b": 3, "c": 3}  # name -> clips (c: 2.5 s, the last partial clip counts)
CFG = VC.ClipConfig(resize=20, crop=16)


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("extract_video")
    videos = tmp / "videos"
    (videos / "sub").mkdir(parents=True)
    D.write_test_video(videos / "a.mp4", audio="aac", seed=0)
    D.write_test_video(videos / "sub" / "b.mkv", audio="pcm", seed=1)
    D.write_test_video(videos / "c.mp4", audio=None, seconds=2.5, seed=2)
    (videos / "d.mp4").write_bytes(b"not a video " * 64)
    (tmp / "labels.csv").write_text(LABELS)
    root = tmp / "root"
    argv = [str(videos), "--labels", str(tmp / "labels.csv"), "--out", str(root), *SMALL, "--video_model", "mc3_18"]
    with pytest.warns(T.RandomWeightsWarning, match="mc3_18 is freshly initialised"):
        rc = XP.main(argv)
    return {"tmp": tmp, "videos": videos, "root": root, "argv": argv, "rc": rc}


def test_features_and_logits_one_row_per_clip(extracted):
    root = extracted["root"]
    assert extracted["rc"] == 0
    for name, t in NAMES.items():
        for d, width in (("image_features", 512), ("audio_features", 512), ("r2plus1d152_features", 512),
                         ("video_logits", V.NUM_CLASSES)):
            x = np.load(root / d / f"{name}.npy")
            assert x.dtype == np.float32 and x.shape == (t, width), (d, name)
            assert np.isfinite(x).all()
    assert not (root / "r2plus1d152_features" / "d.npy").exists()  # the unreadable video is skipped
    assert not list(root.rglob("*.tmp"))
    record = json.loads((root / "extract.json").read_text())
    assert record["video_model"] == "mc3_18" and record["video_weights"] is None
    assert record["video_weights_sha256"] is None and len(record["video_networks_sha256"]) == 64
    clips = record["video_clips"]
    assert (clips["frames"], clips["resize"], clips["crop"]) == (16, 20, 16)
    assert clips["mean"] == list(VC.KINETICS_MEAN) and clips["std"] == list(VC.KINETICS_STD)


def test_single_variant_loader_reads_the_video_features(extracted):
    root = extracted["root"]
    src = open_split(root / "train.pkl", variant="single", num_classes=2, width=512, progress=False, cache=False)
    assert len(src) == 2 and list(src.labels) == [0, 1]
    (features, *_) = src.read(1)
    np.testing.assert_array_equal(features, np.load(root / "r2plus1d152_features" / "sub__b.npy"))


def test_teacher_reads_the_logits_folder(extracted, tmp_path):
    folder, names = extracted["root"] / "video_logits", list(NAMES)
    assert TE.check_teacher(folder, names) == V.NUM_CLASSES
    got = TE.teacher_logits(folder, names, list(NAMES.values()), tmp_path / "t.npy")
    np.testing.assert_array_equal(got, np.concatenate([np.load(folder / f"{n}.npy") for n in names]))


def test_video_features_equal_the_network_on_each_clip(extracted):
    """The batched, padded, scattered rows are mc3_18(normalise(clip k)) with the fresh variables of seed 0."""
    video, clips = VC.decode_with_clips(extracted["videos"] / "sub" / "b.mkv", CFG)
    net = V.mc3_18()
    features, logits = jax.jit(lambda v, x: net.apply(v, VC.normalise(x, CFG), with_features=True))(
        VC.fresh_video_variables("mc3_18", 0), clips)
    root = extracted["root"]
    np.testing.assert_allclose(np.load(root / "r2plus1d152_features" / "sub__b.npy"), features, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.load(root / "video_logits" / "sub__b.npy"), logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size", [(48, 64), (100, 90), (240, 320)])
def test_clip_preprocessing_equals_a_torch_reference(size):
    """Resize (shorter side 128, bilinear, no antialias), centre crop 112, [0, 1], Kinetics normalisation."""
    import torch

    h, w = size
    frames = np.random.default_rng(h).integers(0, 256, (16, h, w, 3), dtype=np.uint8)
    got = VC.preprocess_clip(frames)
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0
    nh, nw = (128, int(128 * w / h)) if h <= w else (int(128 * h / w), 128)
    x = torch.nn.functional.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=False)
    top, left = int(round((nh - 112) / 2)), int(round((nw - 112) / 2))
    x = x[:, :, top:top + 112, left:left + 112]
    x = (x - torch.tensor(VC.KINETICS_MEAN)[:, None, None]) / torch.tensor(VC.KINETICS_STD)[:, None, None]
    assert got.shape == (16, 112, 112, 3)
    np.testing.assert_allclose(got, x.permute(0, 2, 3, 1).numpy(), rtol=0, atol=1e-5)


def test_clips_take_16_evenly_spaced_frames_in_the_same_pass(tmp_path):
    def draw(i, t):  # frame i has brightness 10 * i
        return np.full((48, 64, 3), 10 * i, np.uint8)

    path = tmp_path / "v.mp4"
    D.write_test_video(path, seconds=2.5, fps=8, draw=draw, audio="pcm")
    video, clips = VC.decode_with_clips(path, CFG)
    plain = D.decode_video(path)
    np.testing.assert_array_equal(video.frames, plain.frames)
    np.testing.assert_array_equal(video.audio, plain.audio)
    assert clips.shape == (3, 16, 16, 16, 3)
    shown = np.round(clips[:, :, 8, 8, 0] * 255 / 10).astype(int)  # the frame index shown at k + j / 16 s
    want = np.minimum(np.arange(3 * 16) // 2, 19).reshape(3, 16)  # 8 fps: each frame twice; past the end: last
    assert np.abs(shown - want).max() <= 1  # H.264 moves flat levels a little


def rerun_writes_nothing(run: dict, capsys) -> str:
    """Runs `run`'s command again: every video is already done and no feature file is rewritten; returns
    what it printed."""
    root = run["root"]
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*.npy")}
    with pytest.warns(T.RandomWeightsWarning):
        assert XP.main(run["argv"]) == 0
    out = capsys.readouterr().out
    assert "extracted 0 videos" in out and "already done: 3" in out
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*.npy")} == before
    return out


def test_resume_skips_done_videos_and_redoes_a_broken_logits_file(extracted, capsys):
    root = extracted["root"]
    rerun_writes_nothing(extracted, capsys)
    good = np.load(root / "video_logits" / "a.npy")
    (root / "video_logits" / "a.npy").unlink()
    with pytest.warns(T.RandomWeightsWarning):
        assert XP.main(extracted["argv"]) == 0
    out = capsys.readouterr().out
    assert "extracted 1 videos (3 clips" in out and "already done: 2" in out
    np.testing.assert_array_equal(np.load(root / "video_logits" / "a.npy"), good)


@pytest.mark.parametrize("change", [["--video_model", "r3d_18"], ["--video_size", "24"], []])
def test_changed_video_model_on_resume_is_refused_in_one_line(extracted, capsys, change):
    argv = extracted["argv"]
    argv = [*argv[:-2], *change] if change[:1] == ["--video_model"] or not change else [*argv, *change]
    with pytest.warns(T.RandomWeightsWarning):
        assert XP.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("l2l-extract: --out ") and "other settings" in err[0]
    want = {"r3d_18": "--video_model mc3_18 (now r3d_18)", "24": "video clip settings", None: "--video_model mc3_18"}
    assert want[change[-1] if change else None] in err[0]


def test_manifest_without_video_model_matches_one_written_before_the_flag(tmp_path):
    """Older manifests have no video keys: a run without --video_model resumes them; --overwrite's deletion
    covers the video model's folders."""
    kw = {"weights": None, "weights_sha256": None, "seed": 0, "calibrate_bn": False, "networks_sha256": "x",
          "frame_size": 256, "crop": 224, "precision": "exact", "label_kind": "int", "classes": None}
    new = M.manifest_record(**kw)
    old = {k: v for k, v in new.items() if k not in M.VIDEO_KEYS}
    assert M.manifest_differences(old, new, M.FEATURE_KEYS) == []
    with_video = M.manifest_record(**kw, video={"video_model": "r3d_18"})
    assert M.manifest_differences(old, with_video, M.FEATURE_KEYS) == ["--video_model none (now r3d_18)"]
    for d in M.FEATURE_DIRS:
        (tmp_path / d).mkdir()
        np.save(tmp_path / d / "a.npy", np.zeros((1, 2), np.float32))
    assert {M.VIDEO_DIR, M.LOGITS_DIR} <= set(M.FEATURE_DIRS)
    assert M.remove_features(tmp_path) == len(M.FEATURE_DIRS)
    assert not list(tmp_path.rglob("*.npy"))


@pytest.mark.parametrize("case", ["weights_without_model", "bad_video_crop", "unknown_model", "no_weights_file"])
def test_video_flag_errors_are_one_line(tmp_path, capsys, case):
    (tmp_path / "v").mkdir()
    (tmp_path / "l.csv").write_text("a.mp4,0\n")
    base = [str(tmp_path / "v"), "--labels", str(tmp_path / "l.csv"), "--out", str(tmp_path / "o")]
    extra = {"weights_without_model": ["--weights_video_model", "x.pth"],
             "bad_video_crop": ["--video_model", "r3d_18", "--video_size", "100"],
             "unknown_model": ["--video_model", "r3d_34"],
             "no_weights_file": ["--video_model", "r3d_18", "--weights_video_model", str(tmp_path / "none.pth")]}
    if case == "unknown_model":  # argparse's own refusal
        with pytest.raises(SystemExit):
            XP.main([*base, *extra[case]])
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", T.RandomWeightsWarning)  # the image networks are random here
        assert XP.main([*base, *extra[case]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("l2l-extract: --")


@pytest.mark.slow
def test_torchvision_weights_give_the_torch_networks_logits(extracted, tmp_path, capsys):
    """--weights_video_model: a torchvision-named mc3_18 .pth with 5 classes (random here), read weights-only;
    the written logits are the torch network's on the torch-preprocessed clips; no warning for the video net."""
    import torch
    import torch_videoresnet_reference as R

    torch.manual_seed(0)
    torch.set_num_threads(2)
    net = R.mc3_18(num_classes=5)
    R.randomize(net, torch.Generator().manual_seed(1))
    net.eval()
    pth = tmp_path / "mc3_18.pth"
    torch.save(net.state_dict(), pth)
    (tmp_path / "l.csv").write_text("a.mp4,0\n")
    root = tmp_path / "root"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert XP.main([str(extracted["videos"]), "--labels", str(tmp_path / "l.csv"), "--out", str(root), *SMALL,
                        "--video_model", "mc3_18", "--weights_video_model", str(pth)]) == 0
    assert not [w for w in caught if "--weights_video_model" in str(w.message)]
    assert "video model: mc3_18 from" in capsys.readouterr().out
    logits = np.load(root / "video_logits" / "a.npy")
    assert logits.shape == (3, 5)
    _, clips = VC.decode_with_clips(extracted["videos"] / "a.mp4", CFG)
    with torch.no_grad():
        x = torch.from_numpy(np.array(VC.normalise(clips, CFG))).permute(0, 4, 1, 2, 3)
        want = net(x).numpy()
    np.testing.assert_allclose(logits, want, rtol=1e-4, atol=1e-4)
    record = json.loads((root / "extract.json").read_text())
    assert record["video_weights"] == str(pth) and len(record["video_weights_sha256"]) == 64



# ------------------------------------------------------------------------------------------------ --calibrate_bn


def _spread(features: np.ndarray) -> float:
    """How much features vary across clips relative to their size: the mean per-dimension standard deviation
    over the clips, divided by the features' root mean square."""
    return float(features.std(axis=0).mean() / np.sqrt(np.mean(features ** 2)))


@pytest.fixture(scope="module")
def calibrated(extracted):
    """l2l-extract --calibrate_bn with a random r2plus1d_18 (the videos demo's network) on the same videos."""
    root = extracted["tmp"] / "calibrated"
    argv = [str(extracted["videos"]), "--labels", str(extracted["tmp"] / "labels.csv"), "--out", str(root), *SMALL,
            "--video_model", "r2plus1d_18", "--calibrate_bn"]
    with pytest.warns(T.RandomWeightsWarning):
        rc = XP.main(argv)
    return {"root": root, "argv": argv, "rc": rc}


def test_calibrate_bn_makes_random_video_features_vary_with_the_content(extracted, calibrated):
    """The calibrated network's features of the 9 clips of 3 videos vary (relative to their size) at least twice
    as much as the uncalibrated network's on the same clips; they are the features of the variables extract.json's
    checksum names (`calibrate_video_model` on the CSV's first clips, computed again here: deterministic)."""
    assert calibrated["rc"] == 0
    root, videos = calibrated["root"], extracted["videos"]
    names = {"a": "a.mp4", "sub__b": "sub/b.mkv", "c": "c.mp4"}
    got = np.concatenate([np.load(root / "r2plus1d152_features" / f"{n}.npy") for n in names])
    clips = np.concatenate([VC.decode_with_clips(videos / v, CFG)[1] for v in names.values()])
    net = V.r2plus1d_18()
    forward = jax.jit(lambda v, x: net.apply(v, VC.normalise(x, CFG), with_features=True)[0])
    with pytest.warns(T.RandomWeightsWarning):
        fresh = VC.load_video_model("r2plus1d_18", None, 0)
    entries = [Entry(video=v, name=n, label=0, split="train") for n, v in (("d", "d.mp4"), *names.items())]
    model, n = VK.calibrate_video_model(videos, entries, fresh, CFG)
    assert n == 9  # every clip of the decodable videos (the broken d.mp4 passed over), under the budget
    np.testing.assert_allclose(got, forward(model.variables, clips), rtol=1e-5, atol=1e-5)
    before, after = _spread(np.asarray(forward(fresh.variables, clips))), _spread(got)
    print(f"relative spread of r2plus1d_18's features over 9 clips: random {before:.3f}, calibrated {after:.3f}")
    assert after > 2 * before  # measured: 0.149 random, 0.592 calibrated
    record = json.loads((root / "extract.json").read_text())
    assert record["calibrate_bn"] and record["video_calibration"]["clips"] == 9
    assert record["video_networks_sha256"] == model.networks_sha256 != fresh.networks_sha256


def test_calibrated_statistics_are_the_batchs_own():
    """After `batch_statistics` the stem's first BatchNorm holds the mean and (unbiased) variance of its
    convolution's output on the batch, not a momentum step towards them; deeper layers too: eval mode on that
    batch gives train mode's features up to torch's unbiased variance (n / (n - 1), n small in layer4 here)."""
    net = V.r2plus1d_18()
    variables = VC.fresh_video_variables("r2plus1d_18", 3)
    x = np.random.default_rng(0).standard_normal((6, 16, 32, 32, 3)).astype(np.float32)
    calibrated_vars = VK.batch_statistics(net, variables, x)
    stem = calibrated_vars["batch_stats"]["stem"]["1"]
    kernel = variables["params"]["stem"]["0"]["kernel"]  # (1, 7, 7, 3, 45): stride (1, 2, 2), padding (0, 3, 3)
    y = np.asarray(jax.lax.conv_general_dilated(x, kernel, (1, 2, 2), [(0, 0), (3, 3), (3, 3)],
                                                dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
                                                precision=jax.lax.Precision.HIGHEST), np.float64)
    y = y.reshape(-1, y.shape[-1])
    np.testing.assert_allclose(stem["mean"], y.mean(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(stem["var"], y.var(0, ddof=1), rtol=1e-4)
    assert stem["num_batches_tracked"] == 0
    train, _ = jax.jit(lambda v, x: net.apply(v, x, train=True, with_features=True, mutable=["batch_stats"]))(
        variables, x)
    evaluate = jax.jit(lambda v, x: net.apply(v, x, with_features=True))
    scale = float(np.abs(train[0]).mean())  # measured: 0.82; calibrated off by 0.043 on average, random by 0.60
    assert np.abs(np.asarray(evaluate(calibrated_vars, x)[0]) - train[0]).mean() < 0.1 * scale
    assert np.abs(np.asarray(evaluate(variables, x)[0]) - train[0]).mean() > 0.5 * scale


def test_calibrated_video_run_resumes_and_a_run_without_calibration_is_refused(calibrated, capsys):
    assert "BatchNorm statistics from 9 clips" in rerun_writes_nothing(calibrated, capsys)
    with pytest.warns(T.RandomWeightsWarning):
        assert XP.main([a for a in calibrated["argv"] if a != "--calibrate_bn"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--calibrate_bn True (now False)" in err[0]


def test_calibrate_bn_never_touches_video_weights():
    """A network read from --weights_video_model (its weights' checksum set) is refused by the calibration."""
    with pytest.warns(T.RandomWeightsWarning):
        fresh = VC.load_video_model("mc3_18", None, 0)
    loaded = dataclasses.replace(fresh, weights_sha256="0" * 64)
    with pytest.raises(ValueError, match="never changes"):
        VK.calibrate_video_model(Path("."), [], loaded, CFG)
