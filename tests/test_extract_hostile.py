"""Careless and hostile input to `l2l-extract`, through its real ``main(argv)``: the labels CSV, the output
folder, the weights, the flags, the manifest of a rerun, and videos whose timestamps are broken.

Each refusal is exit status 2 with one line naming the file, line or flag, and nothing written or changed;
each valid input works. One tiny extraction (a 2 s, 32 x 24 video listed twice, plus two videos with a far
timestamp) is shared by the module; most cases stop before anything compiles, or find every video done or
skipped, so none needs the networks.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import stat
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av")

from l2l_jax.programs import extract as XP  # noqa: E402
from l2l_jax.video import decode as D  # noqa: E402
from l2l_jax.video import trunks as T  # noqa: E402

SMALL = ["--frame_size", "40", "--crop", "32", "--batch_size", "4", "--workers", "2", "--no_progress"]
# a UTF-8 BOM before the header; "./a.mp4" and "a.mp4" are one video; labels 2, 10, 11 are class indices
LABELS = "\ufeffvideo,label,split\n./a.mp4,2,train\na.mp4,2,train\nfar.mp4,10,train\nhuge.mkv,11,val\n"


def _video_with_pts(path: Path, pts: list[int], rate: int = 8) -> Path:
    """A tiny video whose frames have the given timestamps (in 1/rate s): a far one makes a long 'video'."""
    with av.open(os.fspath(path), mode="w") as out:
        vs = out.add_stream("mpeg4", rate=rate, options={"threads": "1"})
        vs.width, vs.height, vs.pix_fmt = 32, 24, "yuv420p"
        vs.codec_context.time_base = Fraction(1, rate)
        for i, p in enumerate(pts):
            frame = av.VideoFrame.from_ndarray(np.full((24, 32, 3), 40 * i, np.uint8), format="rgb24")
            frame = frame.reformat(format="yuv420p")
            frame.pts = p
            for packet in vs.encode(frame):
                out.mux(packet)
        for packet in vs.encode():
            out.mux(packet)
    return path


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """The shared extraction, made under umask 022."""
    tmp = tmp_path_factory.mktemp("extract_hostile")
    videos = tmp / "videos"
    videos.mkdir()
    D.write_test_video(videos / "a.mp4", seconds=2, fps=4, width=32, height=24, audio="pcm", seed=0)
    _video_with_pts(videos / "far.mp4", [0, 1, 8 * 3600])  # three frames, the last at 1 h
    _video_with_pts(videos / "huge.mkv", [0, 1, 8 * 2_000_000])  # the last at 2e6 s
    labels = tmp / "labels.csv"
    labels.write_text(LABELS, encoding="utf-8")
    root = tmp / "root"
    argv = [str(videos), "--labels", str(labels), "--out", str(root), *SMALL]
    old = os.umask(0o022)
    t0 = time.perf_counter()
    try:
        with pytest.warns(T.RandomWeightsWarning):
            rc = XP.main(argv)
    finally:
        os.umask(old)
    return {"tmp": tmp, "videos": videos, "labels": labels, "root": root, "argv": argv, "rc": rc,
            "seconds": time.perf_counter() - t0}


def _tree(root: Path) -> dict[str, str]:
    """Every file under `root` (relative path -> SHA-256 of its bytes; folders as 'dir')."""
    if not root.exists():
        return {}
    out = {}
    for p in sorted(root.rglob("*")):
        out[str(p.relative_to(root))] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _refused(argv: list[str], capsys, *names: str) -> str:
    """Runs l2l-extract; it must exit 2 with one line on stderr, no traceback, holding every name. The line."""
    capsys.readouterr()
    status = XP.main(argv)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err, captured.err[-3000:]
    lines = captured.err.strip().splitlines()
    assert status == 2, captured
    assert len(lines) == 1 and lines[0].startswith("l2l-extract: "), captured.err
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


def _args(base, tmp: Path, csv: str | None = None, out: Path | None = None, *extra: str) -> list[str]:
    labels = base["labels"]
    if csv is not None:
        labels = tmp / "l.csv"
        labels.write_text(csv, encoding="utf-8")
    return [str(base["videos"]), "--labels", str(labels), "--out", str(out or tmp / "out"), *SMALL, *extra]


# ---------------------------------------------------------------------------------------------- the shared run


def test_bom_header_and_integer_labels_are_kept(base, capsys):
    """A BOM before 'video,label,split' is a header; labels 2, 10, 11 stay 2, 10, 11 (never renumbered)."""
    assert base["rc"] == 0
    root = base["root"]
    paths, labels = pickle.loads((root / "train.pkl").read_bytes())  # our own file
    assert paths == [str(root / "imageAudio_features" / "a.npy")] and labels == [2]
    assert pickle.loads((root / "val.pkl").read_bytes()) == ([], [])
    assert not (root / "classes.json").exists()


def test_dot_slash_duplicate_is_extracted_once(base):
    root = base["root"]
    assert sorted(p.name for p in (root / "image_features").iterdir()) == ["a.npy"]
    assert np.load(root / "image_features" / "a.npy").shape == (2, 512)


def test_far_timestamps_are_skipped_with_their_reason(base, tmp_path, capsys):
    """3 frames with the last at 1 h: implausible (3601 clips, 2 with a frame); at 2e6 s: past --max_seconds,
    found from the container before decoding. A rerun reports both again, quickly."""
    t0 = time.perf_counter()
    with pytest.warns(T.RandomWeightsWarning):
        assert XP.main(base["argv"]) == 0
    out = capsys.readouterr().out
    assert time.perf_counter() - t0 < 20
    assert "labels: class indices (detected" in out and "1 repeated line(s) kept once: a.mp4" in out
    assert "extracted 0 videos" in out and "already done: 1" in out
    assert "far.mp4: implausible timing: 3601 clips of 1 s, but only 2 hold a frame of their own" in out
    assert "huge.mkv: longer than --max_seconds 10800 (the container says 2000000.1 s" in out


def test_decode_limits_directly(base, tmp_path):
    """Slow but regular frame rates are fine; a frame past max_seconds stops decoding at once."""
    slow = _video_with_pts(tmp_path / "slow.mkv", [0, 1, 2, 3, 4], rate=1)  # 1 frame per clip
    assert D.decode_video(slow).num_clips == 5
    sparse = _video_with_pts(tmp_path / "sparse.mkv", [0, 2, 4, 6], rate=1)  # 1 frame per 2 clips
    assert D.decode_video(sparse).num_clips == 8  # the last frame lasts 2 s
    with pytest.raises(D.DecodeError, match="longer than --max_seconds 2"):
        D.decode_video(base["videos"] / "far.mp4", max_seconds=2)
    with pytest.raises(D.DecodeError, match="implausible timing"):
        D.decode_video(_video_with_pts(tmp_path / "gap.mkv", [0, 1, 2, 3, 400], rate=1))


def test_one_far_timestamp_never_takes_much_memory(base):
    """With the length limit lifted past 2e6 s, the far frame is still refused for its timing, before any
    frame or audio array of 2e6 clips is allocated (16 GiB of audio alone)."""
    import tracemalloc

    tracemalloc.start()
    try:
        with pytest.raises(D.DecodeError, match="implausible timing: 2000001 clips"):
            D.decode_video(base["videos"] / "huge.mkv", max_seconds=1e7)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 200 * 2**20, peak


def test_output_files_get_the_umasks_mode(base):
    root = base["root"]
    for p in [root / "image_features" / "a.npy", root / "audio_features" / "a.npy", root / "train.pkl",
              root / "extract.json"]:
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, p


def test_manifest_records_how_the_features_were_made(base):
    record = json.loads((base["root"] / "extract.json").read_text())
    from l2l_jax import __version__

    assert record["package_version"] == __version__
    assert record["seed"] == 0 and record["frame_size"] == 40 and record["crop"] == 32
    assert record["precision"] == "exact" and record["weights"] is None and record["weights_sha256"] is None
    assert len(record["networks_sha256"]) == 64 and record["label_kind"] == "int" and record["classes"] is None


# ---------------------------------------------------------------------------------------------- reruns


@pytest.mark.parametrize("flag,value,said", [("--seed", "1", "--seed 0 (now 1)"),
                                             ("--frame_size", "48", "--frame_size 40 (now 48)"),
                                             ("--crop", "24", "--crop 32 (now 24)"),
                                             ("--precision", "fast", "--precision exact (now fast)"),
                                             ("--label_kind", "name", "label kind int (now name)")])
def test_rerun_with_other_settings_is_refused(base, capsys, flag, value, said):
    before = _tree(base["root"])
    argv = [a for a in base["argv"]]
    if flag in argv:
        argv[argv.index(flag) + 1] = value
    else:
        argv += [flag, value]
    with pytest.warns(T.RandomWeightsWarning):
        _refused(argv, capsys, str(base["root"]), said, "--overwrite")
    assert _tree(base["root"]) == before


def test_rerun_with_other_weights_is_refused(base, weights, capsys):
    before = _tree(base["root"])
    _refused([*base["argv"], "--weights_resnet18", str(weights["good"])], capsys, "--weights_resnet18",
             "none (random networks) (now", "--overwrite")
    assert _tree(base["root"]) == before


def test_overwrite_extracts_again_with_the_new_settings(base, tmp_path, capsys):
    root = tmp_path / "root"
    shutil.copytree(base["root"], root)
    argv = [*base["argv"][:3], "--out", str(root), *SMALL, "--seed", "5", "--overwrite"]
    with pytest.warns(T.RandomWeightsWarning):
        assert XP.main(argv) == 0
    out = capsys.readouterr().out
    assert "--overwrite: deleted 2 feature file(s)" in out and "extracted 1 videos" in out
    assert json.loads((root / "extract.json").read_text())["seed"] == 5
    assert not np.array_equal(np.load(root / "image_features" / "a.npy"),
                              np.load(base["root"] / "image_features" / "a.npy"))


def test_other_settings_are_fine_while_no_feature_exists(base, tmp_path, capsys):
    """A first run that extracted nothing (every video missing) holds no feature to keep apart."""
    argv = _args(base, tmp_path, "m.mp4,0\n")
    for seed in ("0", "3"):
        with pytest.warns(T.RandomWeightsWarning):
            assert XP.main([*argv, "--seed", seed]) == 0
    assert json.loads((tmp_path / "out" / "extract.json").read_text())["seed"] == 3


@pytest.mark.parametrize("case", ["no_manifest", "damaged_manifest"])
def test_features_of_unknown_origin_are_refused(base, tmp_path, capsys, case):
    root = tmp_path / "root"
    shutil.copytree(base["root"], root)
    if case == "no_manifest":
        (root / "extract.json").unlink()
    else:
        (root / "extract.json").write_text("{not json")
    before = _tree(root)
    with pytest.warns(T.RandomWeightsWarning):
        _refused([*base["argv"][:3], "--out", str(root), *SMALL], capsys, str(root), "extract.json", "--overwrite")
    assert _tree(root) == before


# ---------------------------------------------------------------------------------------------- the labels CSV

BAD_CSV = {
    "header_filename": ("filename,label\na.mp4,2\n", "line 1: the header 'filename,label' must be 'video,label'"),
    "header_bom_label_only": ("\ufeffvideo,labels\na.mp4,2\n", "line 1: the header 'video,labels'"),
    "minus_one": ("a.mp4,2\nb.mp4,10\nc.mp4,-1\n", "line 3: label '-1' is a number but not a class index"),
    "one_point_zero": ("a.mp4,2\nb.mp4,1.0\n", "line 2: label '1.0' is a number but not a class index"),
    "empty": ("a.mp4,2\n\nb.mp4,\n", "line 3: empty label"),
    "superscript": ("a.mp4,2\nb.mp4,²\n", "line 2: label '²' is a class name, but line 1's '2' is a class index"),
    "name_then_index": ("a.mp4,walk\nb.mp4,3\n", "line 2: label '3' is a class index, but line 1's 'walk'"),
    "conflicting_duplicate": ("./a.mp4,1\na.mp4,2\n", "lines 1 and 2 both name the video 'a.mp4'"),
    "outside": ("../a.mp4,1\n", "line 1: the video path '../a.mp4' is not a file inside VIDEOS"),
    "absolute": ("/etc/a.mp4,1\n", "line 1: the video path '/etc/a.mp4' is absolute"),
    "fields": ("a.mp4,1,train\nb.mp4,1\n", "line 2: 'b.mp4,1' does not have 3 fields"),
    "split": ("a.mp4,1,../x\n", "line 1: invalid split '../x'"),
    "same_name": ("a.mp4,1\nsub/b.mp4,1\nsub__b.mkv,1\n", "lines 2 ('sub/b.mp4') and 3 ('sub__b.mkv')"),
    "not_utf8": (None, "unreadable"),
    "huge_index": ("a.mp4,1\nb.mp4," + "9" * 5000 + "\n", "line 2: label 99999999999999999999... is too large"),
}


@pytest.mark.parametrize("case", sorted(BAD_CSV))
def test_bad_labels_csv(base, tmp_path, capsys, case):
    text, said = BAD_CSV[case]
    argv = _args(base, tmp_path, text or "")
    if text is None:
        (tmp_path / "l.csv").write_bytes("a.mp4,caf\xe9\n".encode("latin-1"))
    _refused(argv, capsys, str(tmp_path / "l.csv"), said)
    assert not (tmp_path / "out").exists()


def test_labels_fifo_is_refused_without_opening_it(base, tmp_path, capsys):
    fifo = tmp_path / "labels.csv"
    os.mkfifo(fifo)
    argv = _args(base, tmp_path)
    argv[argv.index("--labels") + 1] = str(fifo)
    _refused(argv, capsys, str(fifo), "not a regular file")


@pytest.mark.parametrize("case", ["superscript", "minus_one", "name"])
def test_label_kind_int_refuses_what_is_not_an_index(base, tmp_path, capsys, case):
    label = {"superscript": "²", "minus_one": "-1", "name": "walk"}[case]
    _refused(_args(base, tmp_path, f"a.mp4,0\nb.mp4,{label}\n", None, "--label_kind", "int"), capsys,
             str(tmp_path / "l.csv"), f"line 2: label {label!r} is not a class index", "--label_kind name")
    assert not (tmp_path / "out").exists()


def test_label_kind_name_numbers_names_in_sorted_order(base, tmp_path, capsys):
    """Explicit name mode on 2, 10, 11: class names (sorted as text), recorded in classes.json; the run itself
    finds no video (all missing), so nothing compiles."""
    csv = "video,label\nm1.mp4,2\nm2.mp4,10\nm3.mp4,11\n"
    with pytest.warns(T.RandomWeightsWarning):
        assert XP.main(_args(base, tmp_path, csv, None, "--label_kind", "name")) == 0
    out = capsys.readouterr().out
    assert "labels: 3 class names, numbered in sorted order (--label_kind" in out
    assert json.loads((tmp_path / "out" / "classes.json").read_text()) == ["10", "11", "2"]


def test_class_names_are_detected_and_said(base, tmp_path, capsys):
    with pytest.warns(T.RandomWeightsWarning):
        assert XP.main(_args(base, tmp_path, "m1.mp4,walk\nm2.mp4,run\n")) == 0
    assert "labels: 2 class names, numbered in sorted order (detected" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "classes.json").read_text()) == ["run", "walk"]


# ---------------------------------------------------------------------------------------------- output paths


@pytest.mark.parametrize("case", ["image_features_file", "train_pkl_dir", "manifest_dir", "classes_dir", "out_file"])
def test_output_path_in_the_way(base, tmp_path, capsys, case):
    out = tmp_path / "out"
    out.mkdir()
    csv = None
    if case == "image_features_file":
        (out / "image_features").write_text("mine")
        said = "image_features: is a file, not a directory; move it away"
    elif case == "train_pkl_dir":
        (out / "train.pkl").mkdir()
        said = "train.pkl: is a directory; move it away"
    elif case == "manifest_dir":
        (out / "extract.json").mkdir()
        said = "extract.json: is a directory"
    elif case == "classes_dir":
        (out / "classes.json").mkdir()
        csv, said = "a.mp4,walk\n", "classes.json: is a directory"
    else:
        shutil.rmtree(out)
        out.write_text("mine")
        said = "is a file, not a directory"
    argv = _args(base, tmp_path, csv, out)
    before = _tree(tmp_path)
    _refused(argv, capsys, "--out", said)
    assert _tree(tmp_path) == before


def test_read_only_out(base, tmp_path, capsys, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):  # root: permissions do not bind, so the check is shown a read-only folder
            real = os.access
            monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == ro and mode & os.W_OK
                                else real(p, mode, **kw))
        _refused(_args(base, tmp_path, None, ro / "out"), capsys, "--out", str(ro), "permission denied")
        assert list(ro.iterdir()) == []
        _refused(_args(base, tmp_path, None, ro), capsys, "--out", str(ro), "permission denied")
    finally:
        ro.chmod(0o700)


# ---------------------------------------------------------------------------------------------- weights and flags


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """resnet18 .pth files: good, one NaN, one inf, bfloat16, and one sparse tensor."""
    import torch
    import torch_video_reference as tvr

    tmp = tmp_path_factory.mktemp("resnet18")
    torch.manual_seed(0)
    sd = tvr.ResNet18().state_dict()
    out = {"good": tmp / "good.pth"}
    torch.save(sd, out["good"])
    bad = {k: v.clone() for k, v in sd.items()}
    bad["layer1.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    out["nan"] = tmp / "nan.pth"
    torch.save(bad, out["nan"])
    bad = {k: v.clone() for k, v in sd.items()}
    bad["bn1.running_var"][3] = float("inf")
    out["inf"] = tmp / "inf.pth"
    torch.save({"model": bad}, out["inf"])
    out["bf16"] = tmp / "bf16.pth"
    torch.save({k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in sd.items()}, out["bf16"])
    out["bf16_as_f32"] = tmp / "bf16_as_f32.pth"
    torch.save({k: v.to(torch.bfloat16).float() if v.is_floating_point() else v for k, v in sd.items()},
               out["bf16_as_f32"])
    sparse = dict(sd)
    sparse["fc.weight"] = sd["fc.weight"].to_sparse()
    out["sparse"] = tmp / "sparse.pth"
    torch.save(sparse, out["sparse"])
    return out


@pytest.mark.parametrize("case,said", [("nan", "layer1.0.conv1.weight"), ("inf", "bn1.running_var"),
                                       ("sparse", "'fc.weight' is stored as torch.sparse_coo (sparse)")])
def test_unusable_weights_are_refused_before_any_work(base, weights, tmp_path, capsys, case, said):
    _refused(_args(base, tmp_path, None, None, "--weights_resnet18", str(weights[case])), capsys,
             str(weights[case]), said)
    assert not (tmp_path / "out").exists()


def test_bfloat16_weights_are_read_as_float32(base, weights, tmp_path, capsys):
    """bfloat16 tensors widen to float32 exactly: the same networks as the float32 file of the same values."""
    from l2l_jax.integrity import tensor_checksum

    a = T.load_networks(str(weights["bf16"]), 0)
    b = T.load_networks(str(weights["bf16_as_f32"]), 0)
    assert a.weights_sha256 == b.weights_sha256
    assert tensor_checksum([a.visual, a.audio]) == tensor_checksum([b.visual, b.audio])
    # through main: every video missing, so the weights are read and recorded but nothing compiles
    assert XP.main(_args(base, tmp_path, "m.mp4,0\n", None, "--weights_resnet18", str(weights["bf16"]))) == 0
    assert json.loads((tmp_path / "out" / "extract.json").read_text())["weights_sha256"] == a.weights_sha256


@pytest.mark.parametrize("flag,value", [("--seed", "-1"), ("--seed", str(2**40)), ("--max_seconds", "0"),
                                        ("--max_seconds", "nan"), ("--max_seconds", "-5"), ("--batch_size", "0"),
                                        ("--batch_size", str(10**6)), ("--workers", "100000"),
                                        ("--frame_size", "100000")])
def test_bad_flags(base, tmp_path, capsys, flag, value):
    _refused(_args(base, tmp_path, None, None, flag, value), capsys, flag)
    assert not (tmp_path / "out").exists()


def test_max_seconds_skips_longer_videos(base, tmp_path, capsys):
    with pytest.warns(T.RandomWeightsWarning):
        assert XP.main(_args(base, tmp_path, "a.mp4,0\n", None, "--max_seconds", "1")) == 0
    out = capsys.readouterr().out
    assert "a.mp4: longer than --max_seconds 1" in out or "a.mp4: a frame at" in out or "past --max_seconds 1" in out
    assert pickle.loads((tmp_path / "out" / "train.pkl").read_bytes()) == ([], [])
