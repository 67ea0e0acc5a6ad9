"""l2l-extract (decode -> VisualNet / AudioNet -> upstream's layout) on tiny videos made here with PyAV.

Videos: 64 x 48, 8 fps, 3 s (one 2.5 s), AAC / PCM / no audio, plus a corrupt file and a missing one; frames
shrunk to 32 x 32 (``--frame_size 40 --crop 32``: VisualNet is resolution-agnostic) to keep the file short.
"""

from __future__ import annotations

import contextlib
import json
import pickle
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("av")

from l2l_jax.data.source import open_split  # noqa: E402
from l2l_jax.errors import ConfigError  # noqa: E402
from l2l_jax.programs import extract as XP  # noqa: E402
from l2l_jax.video import decode as D  # noqa: E402
from l2l_jax.video import frames as F  # noqa: E402
from l2l_jax.video import networks as N  # noqa: E402
from l2l_jax.video import trunks as T  # noqa: E402
from l2l_jax.video.labels import read_labels  # noqa: E402

SMALL = ["--frame_size", "40", "--crop", "32", "--batch_size", "4", "--workers", "2", "--no_progress"]
LABELS = "video,label,split\na.mp4,0,train\nsub/b.mkv,1,train\nc.mp4,1,val\nd.mp4,0,train\ne.mp4,1,val\n"


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("extract")
    videos = tmp / "videos"
    (videos / "sub").mkdir(parents=True)
    D.write_test_video(videos / "a.mp4", audio="aac", seed=0)
    D.write_test_video(videos / "sub" / "b.mkv", audio="pcm", seed=1)
    D.write_test_video(videos / "c.mp4", audio=None, seconds=2.5, seed=2)
    (videos / "d.mp4").write_bytes(b"not a video " * 64)
    (tmp / "labels.csv").write_text(LABELS)
    root = tmp / "root"
    argv = [str(videos), "--labels", str(tmp / "labels.csv"), "--out", str(root), *SMALL]
    with pytest.warns(T.RandomWeightsWarning):
        rc = XP.main(argv)
    return {"tmp": tmp, "videos": videos, "root": root, "argv": argv, "rc": rc}


def test_layout_shapes_and_report(extracted, capsys):
    root = extracted["root"]
    assert extracted["rc"] == 0
    lengths = {"a": 3, "sub__b": 3, "c": 3}  # 2.5 s: the last partial clip counts
    for name, t in lengths.items():
        for d in ("image_features", "audio_features"):
            x = np.load(root / d / f"{name}.npy")
            assert x.dtype == np.float32 and x.shape == (t, 512), (d, name)
            assert np.isfinite(x).all()
    assert not list(root.rglob("*.tmp"))  # atomic writes leave nothing behind
    train = pickle.loads((root / "train.pkl").read_bytes())
    val = pickle.loads((root / "val.pkl").read_bytes())
    assert train == ([str(root / "imageAudio_features" / "a.npy"), str(root / "imageAudio_features" / "sub__b.npy")],
                     [0, 1])
    assert val == ([str(root / "imageAudio_features" / "c.npy")], [1])
    # silent clips (no audio track) all give the same audio feature; clips with sound do not
    silent = np.load(root / "audio_features" / "c.npy")
    assert np.allclose(silent, silent[:1], atol=1e-6)


def test_report_lists_silence_and_skipped(tmp_path, extracted, capsys):
    # a fresh run over the same videos, to see its report
    root = tmp_path / "root"
    argv = [str(extracted["videos"]), "--labels", str(extracted["tmp"] / "labels.csv"), "--out", str(root), *SMALL]
    with pytest.warns(T.RandomWeightsWarning):
        assert XP.main(argv) == 0
    out = capsys.readouterr().out
    assert "extracted 3 videos (9 clips" in out
    assert "1 video(s) without an audio track got silence: c.mp4" in out
    assert "skipped 2 video(s):" in out
    assert "d.mp4: cannot open (InvalidDataError" in out
    assert "e.mp4: no such file" in out
    assert "note: 3 video(s) have fewer than 10 clips" in out
    # same seed, same weights, same bytes
    for d in ("image_features", "audio_features"):
        for name in ("a", "sub__b", "c"):
            assert np.array_equal(np.load(root / d / f"{name}.npy"), np.load(extracted["root"] / d / f"{name}.npy"))


def test_resume_skips_finished_and_redoes_broken(extracted, capsys):
    root = extracted["root"]
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*.npy")}
    with pytest.warns(T.RandomWeightsWarning):
        assert XP.main(extracted["argv"]) == 0
    out = capsys.readouterr().out
    assert "extracted 0 videos" in out and "already done: 3" in out
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*.npy")} == before
    # a truncated feature file is not "finished": that video is extracted again, the others are not
    good = np.load(root / "image_features" / "a.npy")
    (root / "image_features" / "a.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.warns(T.RandomWeightsWarning):
        assert XP.main(extracted["argv"]) == 0
    out = capsys.readouterr().out
    assert "extracted 1 videos (3 clips" in out and "already done: 2" in out
    assert np.array_equal(np.load(root / "image_features" / "a.npy"), good)


def test_data_parallel_over_two_devices_gives_the_same_features(extracted, tmp_path):
    """The same run on 2 (fake CPU) devices, batch 3 rounded up to 4 and split over them."""
    import os
    import subprocess
    import sys

    root = tmp_path / "root"
    argv = [str(extracted["videos"]), "--labels", str(extracted["tmp"] / "labels.csv"), "--out", str(root),
            *SMALL[:4], "--batch_size", "3", "--no_progress"]
    code = ("import sys, jax; assert len(jax.devices()) == 2; from l2l_jax.programs import extract; "
            f"sys.exit(extract.main({argv!r}))")
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    for d in ("image_features", "audio_features"):
        for name in ("a", "sub__b", "c"):
            np.testing.assert_allclose(np.load(root / d / f"{name}.npy"),
                                       np.load(extracted["root"] / d / f"{name}.npy"), rtol=1e-5, atol=1e-5)


def test_loaders_read_it(extracted):
    src = open_split(extracted["root"] / "train.pkl", variant="two", num_classes=2, width=512, progress=False,
                     cache=False)
    assert len(src) == 2 and list(src.labels) == [0, 1]
    image, audio = src.read(1)
    assert image.shape == audio.shape == (3, 512)


def test_features_equal_the_networks_on_each_clip(extracted):
    """The batched, padded, scattered features are VisualNet(preprocess(frame of clip k)) row by row."""
    video = D.decode_video(extracted["videos"] / "sub" / "b.mkv")
    variables = T.fresh_variables("visualnet", 0)
    cfg = F.FrameConfig(resize=40, crop=32)
    frames = np.concatenate([video.frames, np.zeros_like(video.frames[:1])])  # the batch of 4 the run used
    ref = jax.jit(lambda v, x: N.VisualNet().apply(v, F.preprocess_frames(x, cfg)))(variables, frames)[:3]
    got = np.load(extracted["root"] / "image_features" / "sub__b.npy")
    np.testing.assert_allclose(got, np.asarray(ref), rtol=1e-5, atol=1e-5)


def test_imagenet_weights(extracted, tmp_path, capsys):
    """--weights_resnet18: a torchvision-named resnet18 .pth (random here) through the safe loader; no warning."""
    import warnings

    import torch
    import torch_video_reference as tvr

    torch.manual_seed(0)
    pth = tmp_path / "resnet18.pth"
    torch.save(tvr.ResNet18().state_dict(), pth)
    (tmp_path / "l.csv").write_text("a.mp4,0\n")
    root = tmp_path / "root"
    with warnings.catch_warnings():
        warnings.simplefilter("error", T.RandomWeightsWarning)
        assert XP.main([str(extracted["videos"]), "--labels", str(tmp_path / "l.csv"), "--out", str(root),
                       "--weights_resnet18", str(pth), *SMALL]) == 0
    assert "weights: ImageNet resnet18 from" in capsys.readouterr().out
    got = np.load(root / "image_features" / "a.npy")
    assert got.shape == (3, 512)
    assert not np.allclose(got, np.load(extracted["root"] / "image_features" / "a.npy"))


def test_decode_picks_each_clips_first_frame_and_resamples_audio(tmp_path):
    def draw(i, t):  # frame i has brightness 10 * i
        return np.full((48, 64, 3), 10 * i, np.uint8)

    def tone(t):
        return (0.5 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)

    path = tmp_path / "v.mp4"
    D.write_test_video(path, seconds=3, fps=8, audio="pcm", draw=draw, sound=tone)
    v = D.decode_video(path)
    assert v.num_clips == 3 and v.has_audio and v.fps == 8.0
    assert v.frames.shape == (3, 48, 64, 3) and v.frames.dtype == np.uint8
    np.testing.assert_allclose(v.frames.reshape(3, -1).mean(1), [0, 80, 160], atol=3)  # frames 0, 8, 16
    assert v.audio.shape == (3, 16000) and v.audio.dtype == np.float32
    rms = np.sqrt(np.mean(v.audio[:, 1000:-1000] ** 2, axis=1))
    np.testing.assert_allclose(rms, 0.5 / np.sqrt(2), rtol=0.02)  # the tone, resampled 22.05 -> 16 kHz
    with pytest.raises(D.DecodeError, match="cannot open"):
        D.decode_video(tmp_path / "missing.mp4")


def test_fresh_variables_have_the_networks_structure():
    for net, module, x in (("visualnet", N.VisualNet(), jnp.zeros((1, 32, 32, 3))),
                           ("audionet", N.AudioNet(), jnp.zeros((1, 16, 40)))):
        ref = jax.eval_shape(lambda k, m=module, x=x: m.init(k, x), jax.random.key(0))
        got = T.fresh_variables(net, 3)
        assert jax.tree_util.tree_structure(ref) == jax.tree_util.tree_structure(got)
        for r, g in zip(jax.tree_util.tree_leaves(ref), jax.tree_util.tree_leaves(got), strict=True):
            assert r.shape == g.shape and r.dtype == g.dtype
        again = jax.tree_util.tree_leaves(T.fresh_variables(net, 3))
        assert all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(got), again, strict=True))


def test_labels_csv_variants(tmp_path):
    f = tmp_path / "l.csv"
    f.write_text("x/a.mp4,walk\nb.webm,run\nc.avi,walk\n")
    entries, names = read_labels(f, None)
    assert names == ["run", "walk"]
    assert [(e.name, e.label, e.split) for e in entries] == [("x__a", 1, "train"), ("b", 0, "train"),
                                                           ("c", 1, "train")]
    entries, _ = read_labels(f, ["val"])
    assert {e.split for e in entries} == {"val"}
    f.write_text("a.mp4,0,train\nb.mp4,1,val\n")
    assert [e.video for e in read_labels(f, ["val"])[0]] == ["b.mp4"]
    f.write_text("a.mp4,0\na.mkv,1\n")
    with pytest.raises(ConfigError, match="unique"):
        read_labels(f, None)


@pytest.mark.parametrize("case", ["no_labels", "no_videos", "bad_crop", "no_weights_file"])
def test_input_errors_are_one_line(tmp_path, capsys, case):
    (tmp_path / "v").mkdir()
    (tmp_path / "l.csv").write_text("a.mp4,0\n")
    base = [str(tmp_path / "v"), "--labels", str(tmp_path / "l.csv"), "--out", str(tmp_path / "o")]
    argv = {"no_labels": [str(tmp_path / "v"), "--labels", str(tmp_path / "none.csv"), "--out", "o"],
            "no_videos": [str(tmp_path / "none"), *base[1:]],
            "bad_crop": [*base, "--frame_size", "32", "--crop", "40"],
            "no_weights_file": [*base, "--weights_resnet18", str(tmp_path / "none.pth")]}[case]
    assert XP.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("l2l-extract: ")


# ---------------------------------------------------------------------------------------------- l2l-finetune


@pytest.fixture(scope="module")
def finetuned(extracted, tmp_path_factory):
    from l2l_jax.programs import finetune as FT

    out = tmp_path_factory.mktemp("finetune")
    rc = FT.main(["--data", str(extracted["root"]), "--num_classes", "2", "--out", str(out), "--epochs", "3",
                  "--batch_size", "4", "--name", "tiny", "--no_progress"])
    return {"out": out, "rc": rc, **{k: extracted[k] for k in ("root", "videos", "tmp")}}


def test_finetune_writes_pth_model_dir_and_fused_features(finetuned):
    from l2l_jax import weights
    from l2l_jax.torch_io import read_state_dict

    out, root = finetuned["out"], finetuned["root"]
    assert finetuned["rc"] == 0
    pth = out / "ImageAudioNet_tiny.pth"
    sd, _ = read_state_dict(pth)
    assert any(k.startswith("net_imageAudio.") for k in sd) and any(k.startswith("net_classifier.") for k in sd)
    for name, t in {"a": 3, "sub__b": 3, "c": 3}.items():
        x = np.load(root / "imageAudio_features" / f"{name}.npy")
        assert x.dtype == np.float32 and x.shape == (t, 512) and np.isfinite(x).all()
    report = json.loads((out / "finetune.json").read_text())
    assert report["train_clips"] == 6 and set(report["fused"]) == {"train", "val"}
    # both forms are what --weights_audioImageModel takes, with the same numbers
    a = weights.load(str(pth), "imageaudionet", "--weights_audioImageModel")
    b = weights.load(str(out / "imageaudionet"), "imageaudionet", "--weights_audioImageModel")
    for x, y in zip(jax.tree_util.tree_leaves(a.variables), jax.tree_util.tree_leaves(b.variables), strict=True):
        assert np.array_equal(np.asarray(x), np.asarray(y))


def test_finetune_fused_features_are_the_fitted_nets_output(finetuned):
    from l2l_jax.model import ImageAudioClassifier
    from l2l_jax.model_dir import load_model_dir

    root = finetuned["root"]
    variables, meta = load_model_dir(finetuned["out"] / "imageaudionet")
    image, audio = (np.load(root / d / "c.npy") for d in ("image_features", "audio_features"))
    fused, _ = ImageAudioClassifier(2).apply({"params": variables["params"]}, image, audio)
    np.testing.assert_allclose(np.load(root / "imageAudio_features" / "c.npy"), np.asarray(fused), rtol=1e-5,
                               atol=1e-6)


def test_finetune_resumes_from_its_checkpoints_to_the_uninterrupted_weights(extracted, tmp_path):
    from l2l_jax.runkit.checkpoints import RunCheckpoints
    from l2l_jax.video.finetune import fit_imageaudionet

    source = open_split(extracted["root"] / "train.pkl", variant="two", num_classes=2, width=512, progress=False)
    kw = dict(batch_size=4, clips_per_video=None, seed=3, progress=False)
    want, _ = fit_imageaudionet(source, 2, epochs=3, **kw)
    run = tmp_path / "run"
    with contextlib.closing(RunCheckpoints(run, keep=2)) as ckpts:  # "killed" after 2
        _, first = fit_imageaudionet(source, 2, epochs=2, checkpoints=ckpts, **kw)
    with contextlib.closing(RunCheckpoints(run, keep=2)) as ckpts:
        got, info = fit_imageaudionet(source, 2, epochs=3, checkpoints=ckpts, **kw)
    assert first["resumed_after"] == 0 and info["resumed_after"] == 2
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(want), jax.tree.leaves(got), strict=True):
        np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.isdigit()) == ["2", "3"]


def test_finetune_input_errors(tmp_path, capsys):
    from l2l_jax.programs import finetune as FT

    assert FT.main(["--data", str(tmp_path), "--num_classes", "2", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no train.pkl" in err[0]


# ---------------------------------------------------------------------------------------------- demo material


def test_synthetic_video_shows_and_sounds_its_class_where_planned(tmp_path):
    plan = D.write_synthetic_video(tmp_path / "s.mp4", 2, 4, seconds=12, seed=5)
    v = D.decode_video(tmp_path / "s.mp4")
    assert v.num_clips == 12 and v.has_audio
    s0, s1 = plan["segment"]
    colour = np.array(D.PALETTE[2], np.float32)
    hits = [(np.abs(f.astype(np.float32) - colour).sum(-1) < 60).sum() for f in v.frames]
    assert all(hits[t] > 10 for t in range(s0, s1))
    assert all(hits[t] == 0 for t in range(12) if not s0 <= t < s1)
    tone = 330.0 * 2 ** (2 * 5 / 12)
    power = np.abs(np.fft.rfft(v.audio, axis=1))[:, int(round(tone))]  # 1 Hz bins (1 s at 16 kHz)
    assert s0 <= int(np.argmax(power)) < s1  # loudest inside the segment, fading away from it
    assert power.min() < 0.01 * power.max()


def test_calibrate_bn(extracted, capsys):
    visual, audio = T.fresh_variables("visualnet", 0), T.fresh_variables("audionet", 1)
    entries, _ = read_labels(extracted["tmp"] / "labels.csv", None)
    v2, a2, n = T.calibrate_batchnorm(extracted["videos"], entries, visual, audio, frame_size=40, crop=32)
    assert n == 9  # the clips of the three readable videos
    for before, after in ((visual, v2), (audio, a2)):
        bn = after["batch_stats"]["resnet"]["bn1"]
        assert not np.allclose(bn["mean"], 0) and (bn["var"] > 0).all() and not np.allclose(bn["var"], 1)
        assert before["params"] is after["params"]
    base = [str(extracted["videos"]), "--labels", str(extracted["tmp"] / "labels.csv"), "--out", "o"]
    assert XP.main([*base, "--calibrate_bn", "--weights_resnet18", "x.pth"]) == 2
    assert "--calibrate_bn is for random networks" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_videos_preset_wiring(tmp_path, monkeypatch, capsys):
    """`l2l-demo --preset videos` at a smaller size: videos -> l2l-extract (with the video network) ->
    l2l-finetune -> l2l-train -> l2l-eval, then l2l-train / l2l-eval --variant single on the video network's
    features, whose row the final table shows beside the two-modality policy's."""
    from l2l_jax.programs import demo

    preset = dict(demo.PRESETS["videos"])
    preset["videos"] = {"classes": 2, "train": 4, "val": 2, "seconds": (10, 11)}
    preset["train"] = ["--epochs", "1", "--batch_size", "4", "--milestones", "1", "--warmup_epochs", "0",
                       "--checkpoint_freq", "1", "--buckets", "16", "--print_freq", "1"]
    preset["finetune"] = ["--epochs", "2", "--batch_size", "16"]
    monkeypatch.setitem(demo.PRESETS, "videos", preset)
    monkeypatch.chdir(tmp_path)
    assert demo.main(["--out", "demo", "--preset", "videos"]) == 0
    screen = capsys.readouterr().out
    for cmd in ("$ l2l-extract ", "$ l2l-finetune ", "$ l2l-train --config ", "$ l2l-eval ",
                "$ l2l-eval --variant single --embedding_size 512 "):
        assert cmd in screen
    commands = [line for line in screen.splitlines() if line.startswith("$ ")]
    assert [c for c in commands if c.startswith("$ l2l-extract ") and "--video_model r2plus1d_18" in c]
    assert [c for c in commands if c.startswith("$ l2l-train ") and "--variant single --embedding_size 512 " in c]
    out = tmp_path / "demo"
    assert (out / "finetune" / "ImageAudioNet_videos.pth").is_file()
    for kind in ("imageAudio_features", "r2plus1d152_features", "video_logits"):
        assert len(list((out / "data" / kind).glob("*.npy"))) == 6, kind
    assert (out / "metrics.json").is_file() and "policy (avgpool head)" in screen
    single = json.loads((out / "single" / "metrics.json").read_text())
    assert single["variant"] == "single" and single["num_videos"] == 2
    assert json.loads((out / "single" / "train" / "model_final" / "meta.json").read_text())["variant"] == "single"
    table = screen[screen.rindex("method "):]
    row = [line for line in table.splitlines() if line.startswith("single-modality policy, random r2plus1d_18 ")]
    assert len(row) == 1, table
    assert row[0].split()[-2:] == [f"{single['avgpool_map']:.4f}", f"{single['avgpool_acc'] * 100:.2f}%"]
    # it ends with l2l-predict on one new video per class, recalibrating the random networks from the demo's videos
    assert commands[-1].startswith("$ l2l-predict ") and "--calibration " in commands[-1]
    records = [json.loads(line) for line in (out / "predict" / "predictions.jsonl").read_text().splitlines()]
    assert [Path(r["video"]).name for r in records] == ["new_000_class0.mp4", "new_001_class1.mp4"]
    for r in records:
        assert r["num_clips"] >= 10 and len(r["top_k"]) == 2
        assert abs(sum(t["probability"] for t in r["top_k"]) - 1.0) < 1e-5
        assert Path(r["video"]).name in screen[screen.rindex("$ l2l-predict "):]
    assert len(list((out / "predict" / "timelines").glob("*.png"))) == 2
