"""Careless and hostile input to `l2l-finetune`, through its real ``main(argv)``: checkpoints tied to their data
and settings, ``--feature_root``, the run-directory lock, flags checked first, non-finite parameters never
saved, output paths checked before work. Each refusal is exit status 2 with one line naming the flag or file,
and leaves what was there untouched.

The feature root is tiny (6 videos of 4 clips, 2 classes, absolute paths in ``train.pkl`` as `l2l-extract`
writes them) and one fit of it is shared by the module; tests that change it work on copies.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from l2l_jax.data.index import write_index
from l2l_jax.programs import finetune as FTP
from l2l_jax.runkit.settings import SETTINGS_FILE, SETTINGS_FORMAT
from l2l_jax.video import finetune as FT

FIT = ["--num_classes", "2", "--epochs", "2", "--batch_size", "8", "--no_progress"]


def make_feature_root(root: Path, *, videos: int = 6, clips: int = 4, seed: int = 0) -> Path:
    """image_features/ and audio_features/ (float32 (clips, 512)) and a train.pkl naming
    ROOT/imageAudio_features/<v>.npy by absolute path."""
    rng = np.random.default_rng(seed)
    for d in ("image_features", "audio_features"):
        (root / d).mkdir(parents=True)
    paths = []
    for i in range(videos):
        for d in ("image_features", "audio_features"):
            np.save(root / d / f"v{i}.npy", rng.standard_normal((clips, 512)).astype(np.float32))
        paths.append(str(root.absolute() / "imageAudio_features" / f"v{i}.npy"))
    write_index(root / "train.pkl", paths, [i % 2 for i in range(videos)])
    return root


def run(argv: list[str], capsys) -> tuple[int, str]:
    """(status, stderr) of one `l2l-finetune` run; never a traceback."""
    capsys.readouterr()
    status = FTP.main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return status, err


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("l2l-finetune:")]
    assert len(lines) == 1, err
    assert err.strip().endswith(lines[0]), err  # the message is the last thing said, and one line
    return lines[0]


def snapshot(*dirs: Path) -> dict[str, str]:
    """Every file below `dirs` (the lock aside) -> SHA-256 of its bytes."""
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for d in dirs if d.exists()
            for p in sorted(d.rglob("*")) if p.is_file() and p.name != ".lock"}


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    base = tmp_path_factory.mktemp("ft")
    root = make_feature_root(base / "feat")
    out = base / "out"
    assert FTP.main(["--data", str(root), "--out", str(out), *FIT]) == 0
    return {"root": root, "out": out}


@pytest.fixture
def copy(fitted, tmp_path):
    """A copy of the fitted run (feature root with its pickle's paths pointing at the copy, and out)."""
    root, out = tmp_path / "feat", tmp_path / "out"
    shutil.copytree(fitted["root"], root)
    shutil.copytree(fitted["out"], out)
    paths = [str(root.absolute() / "imageAudio_features" / f"v{i}.npy") for i in range(6)]
    write_index(root / "train.pkl", paths, [i % 2 for i in range(6)])
    # the copy's record names the copy's pickle (as if fit there)
    record = json.loads((out / SETTINGS_FILE).read_text())
    record["pickle"], record["settings"][FT.PICKLE_KEY] = str(root / "train.pkl"), FT.file_sha256(root / "train.pkl")
    (out / SETTINGS_FILE).write_text(json.dumps(record))
    return {"root": root, "out": out}


def test_a_fit_records_its_data_and_settings(fitted):
    record = json.loads((fitted["out"] / SETTINGS_FILE).read_text())
    assert record["format"] == SETTINGS_FORMAT and record["program"] == "l2l-finetune" and record["videos"] == 6
    settings = record["settings"]
    assert len(settings.pop(FT.PICKLE_KEY)) == 64 and len(settings.pop(FT.FEATURES_KEY)) == 64
    assert settings == {"num_classes": 2, "lr": 1e-3, "batch_size": 8, "clips_per_video": 0, "seed": 0,
                        "skip_bad_videos": False}
    assert sorted(p.name for p in (fitted["out"] / "checkpoints").iterdir()) == ["1", "2"]
    assert not (fitted["out"] / ".lock").exists()


def test_rerun_resumes_same_fit(copy, capsys):
    status, err = run(["--data", copy["root"], "--out", copy["out"], *FIT], capsys)
    assert status == 0, err


def test_refit_on_other_features_is_refused_before_writing(copy, capsys):
    root, out = copy["root"], copy["out"]
    np.save(root / "image_features" / "v0.npy", np.ones((4, 512), np.float32))
    before = snapshot(out, root / "imageAudio_features")
    status, err = run(["--data", root, "--out", out, *FIT], capsys)
    line = one_line(err)
    assert status == 2 and str(out) in line and "features differ" in line and "--overwrite" in line, line
    assert snapshot(out, root / "imageAudio_features") == before


def test_refit_on_another_pickle_is_refused(copy, capsys):
    root, out = copy["root"], copy["out"]
    paths = [str(root.absolute() / "imageAudio_features" / f"v{i}.npy") for i in range(6)]
    write_index(root / "train.pkl", paths, [1 - i % 2 for i in range(6)])  # other labels
    before = snapshot(out)
    status, err = run(["--data", root, "--out", out, *FIT], capsys)
    line = one_line(err)
    assert status == 2 and "train.pkl differs" in line, line
    assert snapshot(out) == before


@pytest.mark.parametrize("flag,recorded,value", [("--num_classes", "2", "3"), ("--lr", "0.001", "0.01"),
                                                 ("--seed", "0", "1"), ("--batch_size", "8", "4"),
                                                 ("--clips_per_video", "0", "2")])
def test_refit_with_other_settings_is_refused(copy, capsys, flag, recorded, value):
    out = copy["out"]
    before = snapshot(out)
    argv = ["--data", copy["root"], "--out", out, *FIT]
    argv = argv[:argv.index(flag) + 1] + [value] + argv[argv.index(flag) + 2:] if flag in argv else argv + [flag,
                                                                                                             value]
    status, err = run(argv, capsys)
    line = one_line(err)
    assert status == 2 and f"{flag} {recorded} (recorded) vs {value} (given)" in line and str(out) in line, line
    assert snapshot(out) == before  # the old .pth and model directory are still the first fit's


def test_overwrite_starts_over(copy, capsys):
    root, out = copy["root"], copy["out"]
    status, err = run(["--data", root, "--out", out, *FIT, "--seed", "1", "--overwrite"], capsys)
    assert status == 0, err
    assert json.loads((out / SETTINGS_FILE).read_text())["settings"]["seed"] == 1
    assert "resumed" not in err


def test_fewer_epochs_than_the_checkpoints_is_refused(copy, capsys):
    status, err = run(["--data", copy["root"], "--out", copy["out"], *FIT, "--epochs", "1"], capsys)
    line = one_line(err)
    assert status == 2 and "epoch 2" in line and "--epochs 1" in line, line


def test_checkpoints_without_a_record_are_refused(copy, capsys):
    (copy["out"] / SETTINGS_FILE).unlink()
    status, err = run(["--data", copy["root"], "--out", copy["out"], *FIT], capsys)
    line = one_line(err)
    assert status == 2 and "without a record" in line, line


def test_copied_root_needs_feature_root_and_never_writes_into_the_original(fitted, tmp_path, capsys):
    original = tmp_path / "orig"
    make_feature_root(original)
    moved = tmp_path / "copy"
    shutil.copytree(original, moved)  # the pickle still names the original's absolute paths
    status, err = run(["--data", moved, "--out", tmp_path / "o", *FIT], capsys)
    line = one_line(err)
    assert status == 2 and f"--feature_root {moved.absolute()}" in line, line
    assert not (tmp_path / "o").exists()
    status, err = run(["--data", moved, "--feature_root", moved, "--out", tmp_path / "o", *FIT], capsys)
    assert status == 0, err
    assert not (original / "imageAudio_features").exists()
    assert sorted(p.name for p in (moved / "imageAudio_features").iterdir()) == [f"v{i}.npy" for i in range(6)]


def test_a_second_run_into_the_same_out_is_refused(fitted, tmp_path, capsys):
    root = make_feature_root(tmp_path / "feat")
    out = tmp_path / "out"
    out.mkdir()
    lock = {"host": os.uname().nodename, "pid": os.getpid(), "started": "now"}
    (out / ".lock").write_text(json.dumps(lock))
    status, err = run(["--data", root, "--out", out, *FIT], capsys)
    line = one_line(err)
    assert status == 2 and "--out" in line and "another run writes there" in line, line
    assert sorted(p.name for p in out.iterdir()) == [".lock"]


@pytest.mark.parametrize("flag,value", [("--lr", "nan"), ("--lr", "inf"), ("--lr", "0"), ("--lr", "-1"),
                                        ("--lr", "1e38"), ("--epochs", "0"), ("--batch_size", "0"),
                                        ("--batch_size", "99999999"),
                                        ("--num_classes", "0"), ("--seed", "-1"), ("--seed", str(2**40)),
                                        ("--clips_per_video", "-1"), ("--name", "a/b"), ("--name", ".."),
                                        ("--name", ""), ("--splits", "../x")])
def test_flags_are_checked_first(tmp_path, capsys, flag, value):
    argv = ["--data", tmp_path / "nothing_here", "--out", tmp_path / "o", *FIT]
    argv = [a for i, a in enumerate(argv) if not (a == flag or (i and argv[i - 1] == flag))] + [flag, value]
    status, err = run(argv, capsys)
    line = one_line(err)
    assert status == 2 and f"{flag} " in line, line  # the flag, before the missing --data is noticed
    assert not (tmp_path / "o").exists()


def test_non_finite_parameters_are_never_checkpointed(tmp_path, capsys, monkeypatch):
    """Parameters that become NaN or inf are never saved. --lr is bounded (and Adam's steps are about --lr), so
    the fit's optimizer is swapped for SGD at a learning rate of 1e38 to get there."""
    import optax

    root = make_feature_root(tmp_path / "feat")
    out = tmp_path / "out"
    with monkeypatch.context() as m:
        m.setattr(optax, "adam", lambda learning_rate: optax.sgd(1e38))
        status, err = run(["--data", root, "--out", out, *FIT], capsys)
    line = one_line(err)
    assert status == 2 and "NaN or inf" in line and "--lr" in line, line
    assert not any(p.name.isdigit() for p in (out / "checkpoints").iterdir()) if (out / "checkpoints").exists() \
        else True
    assert not list(out.glob("*.pth")) and not (out / "imageaudionet").exists()
    assert not (root / "imageAudio_features").exists() and not (out / ".lock").exists()
    # then a sane fit runs: the record of a fit without checkpoints does not stand in the way
    status, err = run(["--data", root, "--out", out, *FIT], capsys)
    assert status == 0, err


def _out_cases(tmp: Path) -> dict[str, tuple[Path, Path]]:
    """name -> (--out, what the message must name)."""
    (tmp / "a_file").write_text("x")
    pth_dir = tmp / "o1"
    (pth_dir / "ImageAudioNet_feat.pth").mkdir(parents=True)
    not_model = tmp / "o2"
    (not_model / "imageaudionet").mkdir(parents=True)
    (not_model / "imageaudionet" / "keep.txt").write_text("mine")
    return {"file": (tmp / "a_file", tmp / "a_file"), "below_a_file": (tmp / "a_file" / "o", tmp / "a_file"),
            "pth_is_a_dir": (pth_dir, pth_dir / "ImageAudioNet_feat.pth"),
            "model_dir_in_the_way": (not_model, not_model / "imageaudionet")}


@pytest.mark.parametrize("case", ["file", "below_a_file", "pth_is_a_dir", "model_dir_in_the_way"])
def test_out_that_cannot_take_the_outputs(tmp_path, capsys, case):
    root = make_feature_root(tmp_path / "feat")
    out, named = _out_cases(tmp_path)[case]
    before = snapshot(tmp_path)
    status, err = run(["--data", root, "--out", out, *FIT], capsys)
    line = one_line(err)
    assert status == 2 and "--out" in line and str(named) in line, line
    assert snapshot(tmp_path) == before


def test_bad_video_stops_or_is_skipped_with_the_flag_it_names(tmp_path, capsys):
    root = make_feature_root(tmp_path / "feat")
    (root / "audio_features" / "v3.npy").write_bytes(b"garbage")
    status, err = run(["--data", root, "--out", tmp_path / "o", *FIT], capsys)
    assert status == 2 and "--skip_bad_videos" in err and str(root / "audio_features" / "v3.npy") in err, err
    assert not (tmp_path / "o").exists()
    status, err = run(["--data", root, "--out", tmp_path / "o", *FIT, "--skip_bad_videos"], capsys)
    assert status == 0, err
    report = json.loads((tmp_path / "o" / "finetune.json").read_text())
    assert report["train_videos"] == 5 and report["fused"]["train"]["videos"] == 5
    assert not (root / "imageAudio_features" / "v3.npy").exists()
