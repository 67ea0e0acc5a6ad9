"""The run directory kit (`l2l_jax.runkit`) under the video trainers, through their programs' ``main`` at tiny
size: `l2l-finetune` and `l2l-distill` (l2l-train's: tests/test_train.py, names with damaged_newest, sigkill,
rerun and overwrite).

For each: (a) a damaged newest checkpoint is reported (one warning), moved aside to ``corrupt-<step>-<time>``
and the run resumes from the previous one, ending with the parameters of an uninterrupted run; (b) a rerun with
another learning rate, seed, class count (distill: objective, teacher) or fewer epochs than done is refused
before any work with one line naming each difference, and ``--overwrite`` starts over; (c) a run killed with
SIGKILL after its first checkpoint, run again, ends with the parameters of an uninterrupted run, bit for bit.

The distill runs share a persistent compilation cache (one per module), so the student compiles once.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from l2l_jax.model_dir import load_model_dir
from l2l_jax.runkit.checkpoints import RunCheckpoints

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------ helpers
def _flip(step_dir: Path) -> None:
    """Flip one byte in the middle of the largest array data file of a checkpoint."""
    data = max((p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"),
               key=lambda p: p.stat().st_size)
    b = bytearray(data.read_bytes())
    b[len(b) // 2] ^= 0x40
    data.write_bytes(bytes(b))


def _snapshot(d: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*")) if p.is_file()}


def _steps(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").iterdir())


def _assert_same(a, b) -> None:
    la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
    assert [p for p, _ in la] == [p for p, _ in lb]
    for (path, x), (_, y) in zip(la, lb, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))


def _run(main, argv: list, capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err, err[-3000:]
    return status, out, err


def _refusal(main, program: str, argv: list, capsys) -> str:
    status, _, err = _run(main, argv, capsys)
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and lines[0].startswith(f"{program}: "), err
    return lines[0]


def _warning(err: str, run: Path, bad: int, good: int) -> None:
    """One warning on stderr: checkpoint `bad` does not restore (its checksum), moved aside, resuming from `good`."""
    warned = [line for line in err.splitlines() if "does not restore" in line]
    assert len(warned) == 1, err[-3000:]
    assert re.search(rf"warning: checkpoint {re.escape(str(run / 'checkpoints' / str(bad)))} \(step {bad}\) does not "
                     rf"restore: the tensors' checksum does not match .*; moved aside to corrupt-{bad}-\S+, resuming "
                     rf"from step {good}$", warned[0]), warned[0]
    assert any(n.startswith(f"corrupt-{bad}-") for n in _steps(run))


def _kill_after_first_checkpoint(argv: list[str], run: Path, env: dict, module: str) -> None:
    """Run the program in a child process and SIGKILL it as soon as its first checkpoint is complete."""
    p = subprocess.Popen([sys.executable, "-m", module, *argv], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 400
    try:
        while not (run / "checkpoints" / "1").is_dir():
            assert p.poll() is None, "ended before its first checkpoint: " + p.stdout.read()[-3000:]
            assert time.time() < deadline, "no checkpoint in time"
            time.sleep(0.01)
        assert p.poll() is None, "ended before it could be killed (make the run longer)"
        p.send_signal(signal.SIGKILL)
    finally:
        p.kill()
        p.communicate()


def _rerun(argv: list[str], env: dict, module: str) -> str:
    done = subprocess.run([sys.executable, "-m", module, *argv], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def _child_env(extra: dict | None = None) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu", **(extra or {})}
    return env


# ------------------------------------------------------------------------------------------------ l2l-finetune
FIT = ["--num_classes", "2", "--batch_size", "8", "--no_progress"]


@pytest.fixture(scope="module")
def ft(tmp_path_factory):
    """A tiny feature root, a finished 2-epoch fit and an uninterrupted 3-epoch fit of it."""
    from test_finetune_hostile import make_feature_root

    from l2l_jax.programs import finetune as FTP

    base = tmp_path_factory.mktemp("ft_runkit")
    root = make_feature_root(base / "feat")
    for run, epochs in (("two", "2"), ("three", "3")):
        assert FTP.main(["--data", str(root), "--out", str(base / run), *FIT, "--epochs", epochs]) == 0
    return {"base": base, "root": root, "main": FTP.main}


def test_finetune_damaged_newest_checkpoint_falls_back(ft, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(ft["base"] / "two", run)
    _flip(run / "checkpoints" / "2")
    status, out, err = _run(ft["main"], ["--data", ft["root"], "--out", run, *FIT, "--epochs", "3"], capsys)
    assert status == 0, err
    _warning(err, run, 2, 1)
    assert "resumed after epoch 1" in out
    assert [n for n in _steps(run) if n.isdigit()] == ["2", "3"]
    _assert_same(load_model_dir(run / "imageaudionet")[0], load_model_dir(ft["base"] / "three" / "imageaudionet")[0])


def test_finetune_rerun_with_other_settings_is_refused_and_overwrite_starts_over(ft, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(ft["base"] / "two", run)
    before = _snapshot(run)
    base = ["--data", ft["root"], "--out", run, "--batch_size", "8", "--no_progress"]
    line = _refusal(ft["main"], "l2l-finetune", [*base, "--num_classes", "3", "--lr", "0.01", "--seed", "1",
                                                 "--epochs", "2"], capsys)
    assert line == (f"l2l-finetune: --out {run}: its checkpoints were made with other settings (--num_classes 2 "
                    "(recorded) vs 3 (given); --lr 0.001 (recorded) vs 0.01 (given); --seed 0 (recorded) vs 1 "
                    "(given)); start over with --overwrite, or choose a new --out to keep them"), line
    line = _refusal(ft["main"], "l2l-finetune", [*base, "--num_classes", "2", "--epochs", "1"], capsys)
    assert "its checkpoints reach epoch 2, beyond --epochs 1" in line, line
    assert _snapshot(run) == before
    status, out, err = _run(ft["main"], [*base, "--num_classes", "2", "--seed", "1", "--epochs", "1", "--overwrite"],
                            capsys)
    assert status == 0 and "resumed" not in out, err
    assert _steps(run) == ["1"]
    assert json.loads((run / "settings.json").read_text())["settings"]["seed"] == 1


@pytest.mark.slow
def test_finetune_sigkill_after_a_checkpoint_then_rerun_equals_uninterrupted(ft, tmp_path):
    """Killed after its first epoch's checkpoint; the rerun (same command) ends with the parameters of an
    uninterrupted fit of the same command, bit for bit. Many short epochs, so that the kill comes mid-fit."""
    from l2l_jax.programs import finetune as FTP

    argv = ["--data", str(ft["root"]), *FIT, "--epochs", "8"]
    want = tmp_path / "uninterrupted"
    assert FTP.main([*argv, "--out", str(want)]) == 0
    run = tmp_path / "killed"
    env = _child_env()
    _kill_after_first_checkpoint([*argv, "--out", str(run)], run, env, "l2l_jax.programs.finetune")
    assert not (run / "imageaudionet").exists()
    out = _rerun([*argv, "--out", str(run)], env, "l2l_jax.programs.finetune")
    assert "resumed after epoch" in out, out
    _assert_same(load_model_dir(run / "imageaudionet")[0], load_model_dir(want / "imageaudionet")[0])


# ------------------------------------------------------------------------------------------------ l2l-distill
DISTILL = ["--frame_size", "24", "--crop", "16", "--batch_size", "2", "--random_crop", "--flip", "--workers", "2",
           "--no_progress"]
VIDEOS = {"a.mp4": 0, "b.mp4": 1}  # training videos (2 clips each); no val split: no evaluation to compile


def _teacher(folder: Path, classes: int, seed: int) -> Path:
    folder.mkdir()
    for i, name in enumerate(VIDEOS):
        rows = np.random.default_rng([seed, i]).standard_normal((2, classes)).astype(np.float32)
        np.save(folder / f"{Path(name).stem}.npy", rows)
    return folder


@pytest.fixture(scope="module")
def dd(tmp_path_factory):
    """Two tiny videos, their labels CSV, teachers (3 classes; other values; 4 classes), a shared compilation
    cache, a finished 2-epoch distillation and an uninterrupted 3-epoch one."""
    pytest.importorskip("av")
    from l2l_jax.programs import distill as DI
    from l2l_jax.video import decode as D

    base = tmp_path_factory.mktemp("distill_runkit")
    videos = base / "videos"
    videos.mkdir()
    for i, name in enumerate(VIDEOS):
        D.write_test_video(videos / name, seconds=2, fps=4, width=32, height=24, audio="pcm", seed=i)
    labels = base / "labels.csv"
    labels.write_text("video,label,split\n" + "".join(f"{v},{lab},train\n" for v, lab in VIDEOS.items()))
    teachers = {k: _teacher(base / f"teacher_{k}", c, s) for k, c, s in (("3", 3, 0), ("other", 3, 1), ("4", 4, 0))}
    cache = base / "jaxcache"
    env = {"JAX_COMPILATION_CACHE_DIR": str(cache), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
           "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_persistent_cache_min_entry_size_bytes")
    saved = {n: getattr(jax.config, n) for n in names}
    for n, v in zip(names, (str(cache), 0.0, 0), strict=True):
        jax.config.update(n, v)

    def argv(out: Path, *extra: str, teacher: str = "3") -> list[str]:
        return [str(videos), "--labels", str(labels), "--out", str(out), "--teacher", str(teachers[teacher]),
                *DISTILL, *extra]

    try:
        for run, epochs in (("two", "2"), ("three", "3")):
            assert DI.main(argv(base / run, "--epochs", epochs)) == 0
        yield {"base": base, "argv": argv, "env": env, "main": DI.main}
    finally:
        for n, v in saved.items():
            jax.config.update(n, v)


def _distilled(run: Path) -> dict:
    """The newest checkpoint's params and BatchNorm statistics, and the losses of metrics.jsonl."""
    ckpts = RunCheckpoints(run)
    try:
        out = ckpts.restore_params()
    finally:
        ckpts.close()
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return {**out, "metrics": [(r["epoch"], r["loss"], r["train_top1"]) for r in records]}


def test_distill_damaged_newest_checkpoint_falls_back(dd, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(dd["base"] / "two", run)
    _flip(run / "checkpoints" / "2")
    status, out, err = _run(dd["main"], dd["argv"](run, "--epochs", "3"), capsys)
    assert status == 0, err
    _warning(err, run, 2, 1)
    assert "resumed after epoch 1" in out
    assert [n for n in _steps(run) if n.isdigit()] == ["2", "3"]
    _assert_same(_distilled(run), _distilled(dd["base"] / "three"))


def test_distill_rerun_with_other_settings_is_refused_and_overwrite_starts_over(dd, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(dd["base"] / "two", run)
    before = _snapshot(run)
    argv, main = dd["argv"], dd["main"]
    cases = [
        (argv(run, "--epochs", "2", "--lr", "0.001", "--seed", "1"),
         "(--lr 0.0001 (recorded) vs 0.001 (given); --seed 0 (recorded) vs 1 (given))"),
        (argv(run, "--epochs", "2", teacher="other"), "(teacher files differ)"),
        (argv(run, "--epochs", "2", teacher="4"), "(student classes differ (3 recorded, 4 given); teacher files "
                                                  "differ)"),
        ([a for a in argv(run, "--epochs", "2") if a not in ("--teacher", str(dd["base"] / "teacher_3"))]
         + ["--objective", "classify"],
         "(--objective distill (recorded) vs classify (given); training videos differ; student classes differ (3 "
         "recorded, 2 given); --temperature 4.0 (recorded) vs none (given); teacher files differ)"),
    ]
    for case, said in cases:
        line = _refusal(main, "l2l-distill", case, capsys)
        assert line == (f"l2l-distill: --out {run}: its checkpoints were made with other settings {said}; start "
                        "over with --overwrite, or choose a new --out to keep them"), line
    line = _refusal(main, "l2l-distill", argv(run, "--epochs", "1"), capsys)
    assert "its checkpoints reach epoch 2, beyond --epochs 1; give --epochs 2 or more" in line, line
    assert _snapshot(run) == before
    status, out, err = _run(main, argv(run, "--epochs", "1", "--seed", "1", "--overwrite"), capsys)
    assert status == 0 and "resumed" not in out, err
    assert _steps(run) == ["1"]
    assert json.loads((run / "settings.json").read_text())["settings"]["seed"] == 1
    assert [r["epoch"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())] == [1]


@pytest.mark.slow
def test_distill_sigkill_after_a_checkpoint_then_rerun_equals_uninterrupted(dd, tmp_path):
    """Killed after its first epoch's checkpoint; the rerun (same command) ends with the parameters, BatchNorm
    statistics and epoch losses of the uninterrupted 3-epoch run, bit for bit."""
    run = tmp_path / "killed"
    argv = dd["argv"](run, "--epochs", "3")
    env = _child_env(dd["env"])
    _kill_after_first_checkpoint(argv, run, env, "l2l_jax.programs.distill")
    assert not (run / "distill.json").exists()
    out = _rerun(argv, env, "l2l_jax.programs.distill")
    assert "resumed after epoch" in out, out
    _assert_same(_distilled(run), _distilled(dd["base"] / "three"))
