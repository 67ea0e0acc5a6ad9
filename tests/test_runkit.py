"""The run directory kit (`l2l_jax.runkit`) on a tiny state pytree: the lock, checksummed checkpoints with
fallback and quarantine (and no "Exception ignored" noise from the damaged reads), the settings record that
refuses a rerun with other settings or fewer epochs, ``--overwrite``, metrics.jsonl. The trainers on top:
tests/test_training_resume.py, tests/test_train.py."""

from __future__ import annotations

import gc
import json
import time
from pathlib import Path

import numpy as np
import pytest

from l2l_jax import parallel
from l2l_jax.errors import ConfigError, WeightsError
from l2l_jax.integrity import named_tensors
from l2l_jax.runkit.checkpoints import CheckpointError, RunCheckpoints, read_run_params
from l2l_jax.runkit.lock import LOCK_NAME, RunLock, lock_run, on_main_process
from l2l_jax.runkit.metrics import MetricsFile, read_records
from l2l_jax.runkit.run import epochs_bar, open_run
from l2l_jax.runkit.settings import (
    SETTINGS_FILE,
    check_rerun,
    epochs_done,
    read_settings,
    settings_differences,
    write_settings,
)

SETTINGS = {"lr": 0.01, "seed": 1, "objective": "distill", "num_classes": 4, "train.pkl": "ab" * 32}


def _state(seed: int, nan: bool = False) -> dict:
    """A small train state: many arrays (so a restore gathers many reads), BatchNorm statistics, a step."""
    rng = np.random.default_rng(seed)
    params = {f"layer{i}": {"kernel": rng.normal(size=(64, 32)).astype(np.float32),
                            "bias": rng.normal(size=(32,)).astype(np.float32)} for i in range(12)}
    if nan:
        params["layer3"]["bias"][0] = np.nan
    return {"params": params, "batch_stats": {"mean": rng.normal(size=(32,)).astype(np.float32)},
            "opt_state": {"mu": rng.normal(size=(64, 32)).astype(np.float32)}, "step": np.asarray(seed, np.int32)}


def _on_devices(state: dict) -> dict:
    return parallel.replicate(state, parallel.make_mesh())


def _save(run_dir: Path, epochs=(1, 2), nan_last=False, keep=3) -> RunCheckpoints:
    ckpts = RunCheckpoints(run_dir, keep=keep, flag="--out", model_flags="--num_classes")
    for i, epoch in enumerate(epochs):
        state = _state(epoch, nan=nan_last and i == len(epochs) - 1)
        ckpts.save(epoch, _on_devices(state), {"data": {}, "epoch": epoch - 1, "next_epoch": epoch})
    return ckpts


def _same(a, b) -> bool:
    fa, fb = named_tensors(parallel.to_host(a)), named_tensors(parallel.to_host(b))
    return fa.keys() == fb.keys() and all(np.array_equal(fa[k], fb[k]) for k in fa)


def _largest_data_file(step_dir: Path) -> Path:
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    return max(files, key=lambda p: p.stat().st_size)


def _damage(step_dir: Path, how: str) -> None:
    if how == "truncated":
        f = _largest_data_file(step_dir)
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    elif how == "no_manifest":
        (step_dir / "state" / "manifest.ocdbt").unlink()
    elif how == "wrong_checksum":
        meta = step_dir / "progress" / "metadata"
        meta.write_text(json.dumps({**json.loads(meta.read_text()), "checksum": "0" * 64}))


@pytest.fixture
def unraisable(monkeypatch):
    """The "Exception ignored" reports (sys.unraisablehook) raised while the test runs and once it collects."""
    import sys

    seen: list[str] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(f"{u.exc_type.__name__}: {u.exc_value}"))

    def collect() -> list[str]:
        time.sleep(0.5)  # TensorStore completes late reads in its own threads
        gc.collect()
        return seen

    return collect


# ---------------------------------------------------------------------------------------------- checkpoints
def test_save_and_restore_any_pytree_on_devices_or_host(tmp_path):
    ckpts = _save(tmp_path, epochs=(1,))
    state, progress = ckpts.restore(_on_devices(_state(0)))
    assert _same(state, _state(1)) and progress["next_epoch"] == 1 and len(progress["checksum"]) == 64
    host, _ = ckpts.restore(_state(0))  # numpy leaves restore as numpy
    assert isinstance(host["params"]["layer0"]["kernel"], np.ndarray) and _same(host, _state(1))
    assert ckpts.progress()["epoch"] == 0 and ckpts.epochs_done() == 1
    ckpts.close()
    params, step = read_run_params(tmp_path)
    assert step == 1 and sorted(params) == ["batch_stats", "params"]
    assert np.array_equal(params["params"]["layer2"]["bias"], _state(1)["params"]["layer2"]["bias"])


def test_only_the_newest_keep_checkpoints_are_kept(tmp_path):
    ckpts = _save(tmp_path, epochs=(1, 2, 3), keep=2)
    assert ckpts.all_steps() == [2, 3]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["2", "3"]  # no temporary directory
    ckpts.close()


@pytest.mark.parametrize("how", ["truncated", "no_manifest", "wrong_checksum", "nonfinite"])
def test_a_damaged_newest_checkpoint_falls_back_and_is_quarantined_quietly(tmp_path, how, unraisable):
    ckpts = _save(tmp_path, nan_last=how == "nonfinite")
    if how != "nonfinite":
        _damage(tmp_path / "checkpoints" / "2", how)
    warnings: list[str] = []
    state, progress, step = ckpts.restore_newest(_on_devices(_state(0)), warnings.append)
    assert step == 1 and progress["next_epoch"] == 1 and _same(state, _state(1))
    assert len(warnings) == 1 and "(step 2) does not restore: " in warnings[0], warnings
    assert "moved aside to corrupt-2-" in warnings[0] and "resuming from step 1" in warnings[0]
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names[0] == "1" and len(names) == 2 and names[1].startswith("corrupt-2-"), names
    assert ckpts.all_steps() == [1]
    ckpts.close()
    assert unraisable() == []  # orbax's pending sibling reads were drained, not left to print tracebacks


def test_none_restores_is_one_error_and_nothing_moves(tmp_path, unraisable):
    ckpts = _save(tmp_path)
    _damage(tmp_path / "checkpoints" / "2", "truncated")
    _damage(tmp_path / "checkpoints" / "1", "no_manifest")
    with pytest.raises(CheckpointError, match=r"no checkpoint restores \(step 2: .*; step 1: .*another --out"):
        ckpts.restore_newest(_on_devices(_state(0)), print)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["1", "2"]
    ckpts.close()
    with pytest.raises(WeightsError, match=r"checkpoints/2: the checkpoint does not restore"):
        read_run_params(tmp_path)
    assert unraisable() == []


def test_a_checkpoint_of_another_model_is_a_flag_error(tmp_path):
    ckpts = _save(tmp_path, epochs=(1,))
    other = _state(0)
    other["params"]["layer0"]["kernel"] = np.zeros((64, 5), np.float32)
    with pytest.raises(ConfigError, match=r"params/layer0/kernel has shape \(64, 32\), this run's model \(64, 5\): "
                                          r".*other --num_classes\?\); use the run's flags or another --out"):
        ckpts.restore_newest(_on_devices(other), print)
    ckpts.close()


# ---------------------------------------------------------------------------------------------- the lock
def test_one_run_per_directory(tmp_path):
    lock = lock_run(tmp_path / "run", "--out")
    with pytest.raises(ConfigError, match=r"--out .*run: another run writes there \(host .*choose another --out"):
        RunLock(tmp_path / "run", "--out").acquire()
    lock.release()
    assert not (tmp_path / "run" / LOCK_NAME).exists()
    assert on_main_process(lambda: 7, "unused") == 7
    with pytest.raises(ConfigError, match="mine"):
        on_main_process(lambda: (_ for _ in ()).throw(ConfigError("mine")), "unused")


# ---------------------------------------------------------------------------------------------- the settings
def test_settings_differences_name_each_setting():
    given = {**SETTINGS, "lr": 0.02, "seed": 2, "num_classes": 4.0, "train.pkl": "cd" * 32}
    assert settings_differences(SETTINGS, given) == [
        "--lr 0.01 (recorded) vs 0.02 (given)", "--seed 1 (recorded) vs 2 (given)",
        "train.pkl differs"]
    assert settings_differences({"flip": 1}, {"flip": True}) == ["--flip 1 (recorded) vs true (given)"]
    assert settings_differences({"student classes": 3}, {"student classes": 4}) == [
        "student classes differ (3 recorded, 4 given)"]
    gone = settings_differences({"splits": ["a"], "gone": 1}, {"splits": ("a",)})
    assert gone == ["--gone 1 (recorded) vs none (given)"]


def test_a_rerun_with_other_settings_is_refused_before_any_work(tmp_path):
    check_rerun(tmp_path, SETTINGS, program="l2l-test", epochs=2)  # a fresh directory: recorded
    assert read_settings(tmp_path, program="l2l-test") == SETTINGS
    _save(tmp_path).close()
    check_rerun(tmp_path, SETTINGS, program="l2l-test", epochs=2)  # the same run: resumes
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    with pytest.raises(ConfigError) as e:
        check_rerun(tmp_path, {**SETTINGS, "lr": 0.02, "objective": "classify"}, program="l2l-test", epochs=2)
    msg = str(e.value)
    assert msg.startswith(f"--out {tmp_path}: its checkpoints were made with other settings (--lr 0.01 (recorded) vs "
                          "0.02 (given); --objective distill (recorded) vs classify (given)); start over with "
                          "--overwrite, or choose a new --out to keep them"), msg
    with pytest.raises(ConfigError, match=r"reach epoch 2, beyond --epochs 1; give --epochs 2 or more"):
        check_rerun(tmp_path, SETTINGS, program="l2l-test", epochs=1)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before  # nothing touched
    assert epochs_done(tmp_path) == 2


def test_overwrite_starts_over(tmp_path):
    write_settings(tmp_path, SETTINGS, program="l2l-test", info={"videos": 6, "format": "not this"})
    assert json.loads((tmp_path / SETTINGS_FILE).read_text())["videos"] == 6
    ckpts = _save(tmp_path)
    ckpts.close()
    (tmp_path / "checkpoints" / "corrupt-9-x").mkdir()
    check_rerun(tmp_path, {**SETTINGS, "seed": 5}, program="l2l-test", epochs=1, overwrite=True)
    assert not (tmp_path / "checkpoints").exists()
    assert read_settings(tmp_path, program="l2l-test")["seed"] == 5


def test_checkpoints_without_a_record_and_foreign_records_are_refused(tmp_path):
    _save(tmp_path, epochs=(1,)).close()
    with pytest.raises(ConfigError, match="holds checkpoints without a record of their settings; start over with"):
        check_rerun(tmp_path, SETTINGS, program="l2l-test")
    (tmp_path / SETTINGS_FILE).write_text('{"format": "something else"}')
    with pytest.raises(ConfigError, match="is not a settings record of l2l-test"):
        check_rerun(tmp_path, SETTINGS, program="l2l-test")
    empty = tmp_path / "empty"  # no checkpoints: nothing to mix with, the old record is replaced
    empty.mkdir()
    write_settings(empty, SETTINGS, program="l2l-test")
    check_rerun(empty, {**SETTINGS, "lr": 1.0}, program="l2l-test")
    assert read_settings(empty, program="l2l-test")["lr"] == 1.0


# ---------------------------------------------------------------------------------------------- metrics.jsonl
def test_metrics_records_survive_a_cut_line_and_are_trimmed_on_resume(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\n{"epoch": 2}\n{"epo')
    metrics = MetricsFile(tmp_path)
    assert metrics.keep(lambda r: r["epoch"] < 2) == [{"epoch": 1}, {"epoch": 2}]
    metrics.open()
    metrics.write({"epoch": 2, "loss": 0.5})
    metrics.close()
    assert read_records(tmp_path / "metrics.jsonl") == [{"epoch": 1}, {"epoch": 2, "loss": 0.5}]
    assert MetricsFile(tmp_path / "none").keep(lambda r: True) == [] and not (tmp_path / "none").exists()


# ---------------------------------------------------------------------------------------------- a trainer's run
def test_open_run_locks_checks_and_opens_the_checkpoints(tmp_path):
    warned: list[str] = []
    kw = {"program": "l2l-test", "epochs": 2, "warn": warned.append}
    with open_run(tmp_path, settings=SETTINGS, **kw) as ckpts:
        assert (tmp_path / LOCK_NAME).exists()
        assert ckpts.restore_newest(_on_devices(_state(0)), warned.append) is None
        ckpts.save(1, _on_devices(_state(1)), {"data": {}, "epoch": 0, "next_epoch": 1})
    assert not (tmp_path / LOCK_NAME).exists() and warned == []
    with pytest.raises(ConfigError, match=r"--seed 1 \(recorded\) vs 3 \(given\)"):
        with open_run(tmp_path, settings={**SETTINGS, "seed": 3}, **kw):
            raise AssertionError("refused before any work")
    assert not (tmp_path / LOCK_NAME).exists()
    with open_run(tmp_path, settings=SETTINGS, **kw) as ckpts:
        state, progress, step = ckpts.restore_newest(_on_devices(_state(0)), warned.append)
        assert step == 1 and _same(state, _state(1))
    bar = epochs_bar(4, 1, 10, desc="fit", show=False)
    assert (bar.total, bar.n) == (40, 10)
    bar.close()
