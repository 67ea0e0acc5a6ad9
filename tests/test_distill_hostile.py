"""Careless and hostile input to `l2l-distill` (and `l2l-extract --weights_imageaudionet`), through the real
``main(argv)``: every flag, the teacher, the split names, ``--init`` and the checkpoints of another class count
are checked before any work (one line, one ``l2l-distill:`` prefix, exit status 2, no traceback, nothing
decoded, cached or written); a shared ``--cache`` serves each run the videos of its own labels CSV only, and two
runs filling one new cache at once leave it whole; an output folder whose files are not of one run is refused.

The runs that get past the checks stop short of compiling the student: `_train` (the epochs) is replaced by a
stub that records what it was given, so they still cache, read the teacher and write every output.
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("av")

from l2l_jax.programs import distill as DI  # noqa: E402
from l2l_jax.programs import extract as XP  # noqa: E402
from l2l_jax.video import decode as D  # noqa: E402
from l2l_jax.video import distill_step as S  # noqa: E402
from l2l_jax.video import distilled as DD  # noqa: E402
from l2l_jax.video.clip_cache import FRAMES, LOGMEL, ClipCache, square_frames  # noqa: E402

SMALL = ["--frame_size", "24", "--crop", "16", "--batch_size", "4", "--workers", "2", "--no_progress"]
VIDEOS = {"a.mp4": (0, "train"), "b.mp4": (1, "train"), "c.mp4": (2, "val")}
CLASSES = 3


def _csv(path: Path, rows: dict[str, tuple[int, str]]) -> Path:
    path.write_text("video,label,split\n" + "".join(f"{v},{lab},{s}\n" for v, (lab, s) in rows.items()))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Three 2 s videos of 32 x 24 (a, b train; c val), their labels CSV and a teacher of 3 classes."""
    tmp = tmp_path_factory.mktemp("distill_hostile")
    videos, teacher = tmp / "videos", tmp / "teacher"
    videos.mkdir()
    teacher.mkdir()
    for i, name in enumerate(VIDEOS):
        D.write_test_video(videos / name, seconds=2, fps=4, width=32, height=24, audio="pcm", seed=i)
        np.save(teacher / f"{Path(name).stem}.npy", np.random.default_rng(i).standard_normal((2, CLASSES))
                .astype(np.float32))
    return {"tmp": tmp, "videos": videos, "teacher": teacher, "labels": _csv(tmp / "labels.csv", VIDEOS)}


def _argv(data, out: Path, *extra: str, labels: Path | None = None, teacher: Path | None = None) -> list[str]:
    return [str(data["videos"]), "--labels", str(labels or data["labels"]), "--out", str(out), "--teacher",
            str(teacher or data["teacher"]), *SMALL, *extra]


def _refused(argv: list[str], capsys, *names: str) -> str:
    """l2l-distill exits 2 with one line on stderr, one program prefix, no traceback, naming every name."""
    capsys.readouterr()
    status = DI.main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err, captured.err[-3000:]
    lines = captured.err.strip().splitlines()
    assert status == 2 and len(lines) == 1, captured
    assert lines[0].startswith("l2l-distill: ") and lines[0].count("l2l-distill") == 1, lines[0]
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


@pytest.fixture
def no_epochs(monkeypatch):
    """`_train` replaced: records (clips, rows, targets) of every run and trains nothing."""
    seen: list[dict] = []

    def fake(args, out, trainer, clips, rows, targets, ckpts):
        seen.append({"clips": clips, "rows": rows, "targets": np.array(targets), "out": out})
        return {}, 0, 0.0

    monkeypatch.setattr(DI, "_train", fake)
    return seen


# ------------------------------------------------------------------------------------------- flags and names


@pytest.mark.parametrize("flag,value", [
    ("--lr", "nan"), ("--lr", "inf"), ("--lr", "0"), ("--lr", "-1"), ("--lr", "1e38"),
    ("--momentum", "1.5"), ("--momentum", "-0.1"), ("--momentum", "nan"),
    ("--weight_decay", "-1"), ("--weight_decay", "inf"),
    ("--temperature", "0"), ("--temperature", "nan"), ("--temperature", "1e9"),
    ("--seed", "-1"), ("--seed", str(2**32)), ("--batch_size", "0"), ("--batch_size", str(10**6)),
    ("--epochs", "0"), ("--frame_size", "100000"), ("--workers", "0"), ("--keep_checkpoints", "0"),
    ("--name", "a/b"), ("--name", "."), ("--name", ".."), ("--name", ""), ("--name", "a\\b"),
])
def test_flags_are_checked_before_any_work(data, tmp_path, capsys, flag, value):
    _refused(_argv(data, tmp_path / "out", flag, value), capsys, flag)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flag,split", [("--train_split", "training"), ("--val_split", "valid")])
def test_split_names_must_be_in_the_labels_csv(data, tmp_path, capsys, flag, split):
    line = _refused(_argv(data, tmp_path / "out", flag, split), capsys, flag, split, "train, val")
    assert "l2l-distill output" not in line
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------ the teacher


def _teacher_copy(data, tmp: Path) -> Path:
    teacher = tmp / "teacher"
    shutil.copytree(data["teacher"], teacher)
    return teacher


@pytest.mark.parametrize("case", ["missing", "width0", "not_a_folder", "nan"])
def test_teacher_files_are_checked_before_any_work(data, tmp_path, capsys, case):
    teacher = _teacher_copy(data, tmp_path)
    said = "--teacher"
    if case == "missing":
        (teacher / "c.npy").unlink()  # a val video's: needed too
        said = str(teacher / "c.npy")
    elif case == "width0":
        np.save(teacher / "b.npy", np.zeros((2, 0), np.float32))
        said = str(teacher / "b.npy")
    elif case == "not_a_folder":
        shutil.rmtree(teacher)
        teacher.write_text("x")
    else:
        np.save(teacher / "a.npy", np.full((2, CLASSES), np.nan, np.float32))
        said = "non-finite"
    _refused(_argv(data, tmp_path / "out", teacher=teacher), capsys, "--teacher", said)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", ["npy", "not_zip", "zero_classes", "zero_inputs", "missing"])
def test_teacher_head_is_checked_before_any_work(data, tmp_path, capsys, case):
    head = {"npy": tmp_path / "head.npy", "not_zip": tmp_path / "head.pth", "zero_classes": tmp_path / "h0.npz",
            "zero_inputs": tmp_path / "h1.npz", "missing": tmp_path / "none.npz"}[case]
    if case == "npy":
        np.save(head, np.zeros((CLASSES, CLASSES), np.float32))
    elif case == "not_zip":
        head.write_bytes(b"not a zip archive")
    elif case == "zero_classes":
        np.savez(head, weight=np.zeros((0, CLASSES), np.float32), bias=np.zeros((0,), np.float32))
    elif case == "zero_inputs":
        np.savez(head, weight=np.zeros((CLASSES, 0), np.float32), bias=np.zeros((CLASSES,), np.float32))
    _refused(_argv(data, tmp_path / "out", "--teacher_head", str(head)), capsys, "--teacher_head", str(head))
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------- output folders, --init


def _output_folder(out: Path, seed: int) -> Path:
    """A distillation output of fresh networks (3 classes), as l2l-distill writes it."""
    out.mkdir(parents=True)
    visual, audio, fusion = S.split_variables(S.student_variables(CLASSES, seed))
    paths = DD.write_distilled(out, visual, audio, fusion, CLASSES, "x", {"source": "test"})
    DD.write_report(out, {"objective": "distill"}, paths)
    return out


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Two output folders of different networks, and a third that mixes them (the audionet of the second)."""
    tmp = tmp_path_factory.mktemp("outputs")
    one, two = _output_folder(tmp / "one", 0), _output_folder(tmp / "two", 1)
    mixed = tmp / "mixed"
    shutil.copytree(one, mixed)
    shutil.copy2(two / DD.AUDIO_FILE, mixed / DD.AUDIO_FILE)
    return {"one": one, "two": two, "mixed": mixed}


def test_an_output_records_its_files_checksums(folders):
    report = json.loads((folders["one"] / DD.REPORT_FILE).read_text())
    assert set(report["files"]) == {"visualnet.pth", "audionet.pth", "ImageAudioNet_x.pth", "imageaudionet/meta.json"}
    visual, audio, fusion, meta = DD.load_distilled(folders["one"])  # an intact folder loads
    assert meta["num_classes"] == CLASSES and fusion["params"]["net_classifier"]["classifier"]["bias"].shape == (3,)


@pytest.mark.parametrize("case", ["mixed", "no_checksums", "missing"])
def test_extract_refuses_a_folder_whose_files_do_not_belong_together(data, folders, tmp_path, capsys, case):
    folder = folders["mixed"]
    said = DD.AUDIO_FILE
    if case != "mixed":
        folder = tmp_path / "folder"
        shutil.copytree(folders["one"], folder)
        if case == "no_checksums":
            report = json.loads((folder / DD.REPORT_FILE).read_text())
            del report["files"]
            (folder / DD.REPORT_FILE).write_text(json.dumps(report))
            said = "records no checksums"
        else:
            (folder / DD.VISUAL_FILE).unlink()
            said = DD.VISUAL_FILE
    capsys.readouterr()
    status = XP.main([str(data["videos"]), "--labels", str(data["labels"]), "--out", str(tmp_path / "feat"),
                      "--weights_imageaudionet", str(folder), *SMALL])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and "Traceback" not in captured.err, captured.err
    assert lines[0].startswith("l2l-extract: --weights_imageaudionet ") and said in lines[0], lines[0]
    assert not (tmp_path / "feat").exists()


@pytest.mark.parametrize("case", ["mixed", "empty", "a_file"])
def test_init_contents_are_checked_before_any_work(data, folders, tmp_path, capsys, case):
    init = {"mixed": folders["mixed"], "empty": tmp_path / "empty", "a_file": tmp_path / "a_file"}[case]
    if case == "empty":
        init.mkdir()
    elif case == "a_file":
        init.write_text("x")
    said = {"mixed": DD.AUDIO_FILE, "empty": "not a distillation output folder", "a_file": "not a directory"}[case]
    _refused(_argv(data, tmp_path / "out", "--init", str(init)), capsys, "--init", said)
    assert not (tmp_path / "out").exists()


def test_resume_with_a_teacher_of_another_class_count(data, tmp_path, capsys):
    """Checkpoints of a 3-class student, a teacher of 4 classes now: one line, before any caching."""
    from l2l_jax.runkit.checkpoints import RunCheckpoints
    from l2l_jax.runkit.settings import check_rerun

    out = tmp_path / "out"
    args = DI.build_parser().parse_args(_argv(data, out))
    check_rerun(out, DI._recorded(args, DI._plan(args)), program="l2l-distill", flag="--out")
    ckpts = RunCheckpoints(out, flag="--out")
    state = S.init_state(S.student_variables(CLASSES), S.make_optimizer("adam", 1e-4))
    ckpts.save(1, state, {"data": {}, "epoch": 0, "next_epoch": 1})
    ckpts.close()
    teacher = tmp_path / "teacher4"
    teacher.mkdir()
    for name in VIDEOS:
        np.save(teacher / f"{Path(name).stem}.npy", np.zeros((2, 4), np.float32))
    _refused(_argv(data, out, teacher=teacher), capsys, "--out", "student classes differ (3 recorded, 4 given)",
             "teacher files differ")
    assert not (out / "cache").exists() and not (out / ".lock").exists()


# ------------------------------------------------------------------------------------------- the clip cache


def test_a_shared_cache_serves_only_the_videos_of_the_csv(data, tmp_path, capsys, no_epochs):
    """A cache filled by a run over a, b, c; a run whose CSV lists a (train) and c (val) trains on a's clips
    only, scores c's, needs no teacher file for b, and takes the labels of its own CSV."""
    cache = tmp_path / "cache"
    assert DI.main(_argv(data, tmp_path / "first", "--cache", str(cache))) == 0
    assert {v.video for v in ClipCache(cache).videos} == set(VIDEOS)
    teacher = _teacher_copy(data, tmp_path)
    (teacher / "b.npy").unlink()
    labels = _csv(tmp_path / "ac.csv", {"a.mp4": (0, "train"), "c.mp4": (2, "val")})
    assert DI.main(_argv(data, tmp_path / "second", "--cache", str(cache), labels=labels, teacher=teacher)) == 0
    got = no_epochs[-1]
    clips = got["clips"]
    assert [v.video for v in clips.videos] == ["a.mp4", "c.mp4"]
    a, c = clips.videos
    assert list(clips.rows[got["rows"]["train"]]) == list(range(a.start, a.start + a.clips))
    assert list(clips.rows[got["rows"]["val"]]) == list(range(c.start, c.start + c.clips))
    assert got["targets"].shape == (a.clips + c.clips, CLASSES)
    report = json.loads((tmp_path / "second" / "distill.json").read_text())
    assert report["train_clips"] == a.clips and report["val_clips"] == c.clips
    # classify with other labels for a: the cache is used as it is, with this CSV's labels
    relabelled = _csv(tmp_path / "relabel.csv", {"a.mp4": (2, "train"), "c.mp4": (0, "val")})
    argv = [str(data["videos"]), "--labels", str(relabelled), "--out", str(tmp_path / "third"), "--cache", str(cache),
            "--objective", "classify", *SMALL]
    assert DI.main(argv) == 0
    got = no_epochs[-1]
    assert [v.video for v in got["clips"].videos] == ["a.mp4", "c.mp4"]
    assert set(got["targets"][got["rows"]["train"]]) == {2} and set(got["targets"][got["rows"]["val"]]) == {0}


def test_two_runs_filling_one_new_cache_at_once_leave_it_whole(data, tmp_path, capsys, no_epochs):
    """Two runs (threads) with overlapping CSVs add videos to one new cache at the same time: they take
    turns, every video is cached once, the index agrees with the frames and log-mel files, and each video's
    rows hold its own frames."""
    cache = tmp_path / "cache"
    csvs = [_csv(tmp_path / "ab.csv", {"a.mp4": (0, "train"), "b.mp4": (1, "val")}),
            _csv(tmp_path / "bc.csv", {"c.mp4": (2, "train"), "b.mp4": (1, "val")})]
    start = threading.Barrier(2)
    status: dict[int, int] = {}

    def run(k: int) -> None:
        start.wait()
        status[k] = DI.main(_argv(data, tmp_path / f"out{k}", "--cache", str(cache), labels=csvs[k]))

    threads = [threading.Thread(target=run, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert status == {0: 0, 1: 0}, capsys.readouterr().err
    opened = ClipCache(cache)
    assert sorted(v.video for v in opened.videos) == sorted(VIDEOS)
    starts = sorted((v.start, v.clips) for v in opened.videos)
    assert [s for s, _ in starts] == [sum(n for _, n in starts[:i]) for i in range(len(starts))]  # no gap, no overlap
    s, mel = opened.frame_size, opened.mel_shape
    assert (cache / FRAMES).stat().st_size == opened.num_clips * s * s * 3
    assert (cache / LOGMEL).stat().st_size == opened.num_clips * int(np.prod(mel)) * 4
    for v in opened.videos:
        want = square_frames(D.decode_video(data["videos"] / v.video).frames, s)
        assert np.array_equal(np.asarray(opened.frames[v.start:v.start + v.clips]), want), v.video
    assert sorted(v.video for r in no_epochs for v in r["clips"].videos) == ["a.mp4", "b.mp4", "b.mp4", "c.mp4"]
