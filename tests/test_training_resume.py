"""A run directory is never lost, corrupted or silently wrong: checkpoints that do not restore (damaged files,
checksum mismatches, non-finite params) are reported, moved aside and the previous one is used; the run
directory's lock; the epoch.log/metrics.jsonl bookkeeping of a resumed run. Unit level, no training (the
programs end to end: tests/test_train.py)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from l2l_jax import config, parallel, weights
from l2l_jax.errors import ConfigError, L2LError, WeightsError
from l2l_jax.integrity import named_tensors
from l2l_jax.programs import flags as program_flags
from l2l_jax.runkit.checkpoints import CheckpointError, RunCheckpoints
from l2l_jax.runkit.lock import LOCK_NAME, RunLock
from l2l_jax.steps import create_train_state
from l2l_jax.training.log import RunLog

SMALL = ["--num_classes", "6", "--episode_length", "3", "--with_lstm_ce_loss"]


def _state(seed: int, nan: bool = False, flags=SMALL):
    settings = config.settings(program_flags.resolve("train", [*flags, "--seed", str(seed)]), "train")
    variables = weights.initial_variables(settings)
    if nan:
        bias = np.array(variables["params"]["prediction_fc"]["bias"])
        bias[0] = np.nan
        variables["params"]["prediction_fc"]["bias"] = bias
    state = create_train_state(variables, settings.recipe.build(4).optimizer(), seed)
    return parallel.replicate(state, parallel.make_mesh())


@pytest.fixture(scope="module")
def states():
    return {seed: _state(seed) for seed in (1, 2)}


def _save(run_dir: Path, states, steps=(4, 8), nan_last=False) -> RunCheckpoints:
    ckpts = RunCheckpoints(run_dir)
    for i, step in enumerate(steps):
        state = _state(9, nan=True) if nan_last and i == len(steps) - 1 else states[1 + i % 2]
        ckpts.save(step, state, {"data": {"next_index": step}, "next_epoch": i + 1, "epoch": i, "final": False})
    return ckpts


def _data_files(step_dir: Path) -> list[Path]:
    """The orbax array data files of a checkpoint, largest first."""
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"
             and "ocdbt.process" in str(p)]
    return sorted(files, key=lambda p: -p.stat().st_size)


def _damage(step_dir: Path, how: str) -> None:
    if how == "truncated_data_file":
        f = _data_files(step_dir)[0]
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    elif how == "flipped_bytes":
        f = _data_files(step_dir)[0]
        b = bytearray(f.read_bytes())
        mid = len(b) // 2
        b[mid:mid + 64] = bytes(x ^ 0xFF for x in b[mid:mid + 64])
        f.write_bytes(bytes(b))
    elif how == "deleted_manifest":
        (step_dir / "state" / "manifest.ocdbt").unlink()
    elif how == "deleted_progress_metadata":
        (step_dir / "progress" / "metadata").unlink()
    elif how == "progress_of_the_wrong_kind":
        meta = step_dir / "progress" / "metadata"
        meta.write_text(json.dumps({**json.loads(meta.read_text()), "next_epoch": "two"}))
    elif how == "wrong_checksum":
        meta = step_dir / "progress" / "metadata"
        meta.write_text(json.dumps({**json.loads(meta.read_text()), "checksum": "0" * 64}))
    else:
        raise AssertionError(how)


def _same(a, b) -> bool:
    fa, fb = named_tensors(parallel.to_host(a)), named_tensors(parallel.to_host(b))
    return fa.keys() == fb.keys() and all(np.array_equal(fa[k], fb[k]) for k in fa)


DAMAGE = ["truncated_data_file", "flipped_bytes", "deleted_manifest", "deleted_progress_metadata", "wrong_checksum",
          "progress_of_the_wrong_kind", "nonfinite_params"]


@pytest.mark.parametrize("how", DAMAGE)
def test_a_damaged_newest_checkpoint_falls_back_and_is_moved_aside(tmp_path, states, how):
    ckpts = _save(tmp_path, states, nan_last=how == "nonfinite_params")
    if how != "nonfinite_params":
        _damage(tmp_path / "checkpoints" / "8", how)
    warnings: list[str] = []
    state, progress, step = ckpts.restore_newest(states[1], warnings.append)
    assert step == 4 and progress["epoch"] == 0
    assert _same(state, states[1])
    assert len(warnings) == 1, warnings
    w = warnings[0]
    assert "(step 8) does not restore: " in w and "moved aside to corrupt-8-" in w and "resuming from step 4" in w
    if how in ("flipped_bytes", "wrong_checksum"):
        assert "the tensors' checksum does not match the one saved with them" in w
    if how == "nonfinite_params":
        assert "non-finite values in params/prediction_fc/bias" in w
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names[0] == "4" and len(names) == 2 and names[1].startswith("corrupt-8-"), names
    assert ckpts.manager.all_steps() == [4] and ckpts.latest_step() == 4
    ckpts.save(8, states[2], {"data": {}, "next_epoch": 2, "epoch": 1})  # the step's name is free again
    ckpts.close()
    again = RunCheckpoints(tmp_path)
    assert _same(again.restore(states[1])[0], states[2])
    again.close()


def test_flipped_bytes_in_a_data_file_are_detected(tmp_path, states):
    ckpts = _save(tmp_path, states, steps=(4,))
    _damage(tmp_path / "checkpoints" / "4", "flipped_bytes")
    with pytest.raises(CheckpointError, match=r"no checkpoint restores \(step 4: ") as e:
        ckpts.restore_newest(states[1], print)
    assert isinstance(e.value, L2LError)
    assert (tmp_path / "checkpoints" / "4").is_dir()  # nothing moved when nothing restores
    ckpts.close()
    # --pretrained_model / l2l-eval read the run's params the same way: refused, naming the checkpoint
    from l2l_jax import weights

    with pytest.raises(WeightsError, match=r"checkpoints/4: the checkpoint does not restore"):
        weights.load(tmp_path, "two")


def test_none_restores_is_one_error_naming_every_step(tmp_path, states):
    ckpts = _save(tmp_path, states)
    _damage(tmp_path / "checkpoints" / "8", "deleted_manifest")
    _damage(tmp_path / "checkpoints" / "4", "wrong_checksum")
    with pytest.raises(CheckpointError) as e:
        ckpts.restore_newest(states[1], print)
    msg = str(e.value)
    assert "step 8: " in msg and "step 4: " in msg and "checksum" in msg and "\n" not in msg
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["4", "8"]
    ckpts.close()


def test_a_checkpoint_of_another_model_is_a_flag_error_not_corruption(tmp_path, states):
    ckpts = _save(tmp_path, states)
    other = _state(1, flags=["--num_classes", "7", "--episode_length", "3", "--with_lstm_ce_loss"])
    with pytest.raises(ConfigError, match=r"checkpoints/8: the checkpoint's params/\S+ has shape .* another model"):
        ckpts.restore_newest(other, print)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["4", "8"]
    ckpts.close()


def test_checkpoints_without_a_checksum_still_restore(tmp_path, states):
    """Checkpoints written before checksums existed."""
    ckpts = _save(tmp_path, states, steps=(4,))
    meta = tmp_path / "checkpoints" / "4" / "progress" / "metadata"
    progress = json.loads(meta.read_text())
    assert len(progress.pop("checksum")) == 64
    meta.write_text(json.dumps(progress))
    state, _, step = ckpts.restore_newest(states[1], print)
    assert step == 4 and _same(state, states[1])
    ckpts.close()


# ---------------------------------------------------------------------------------------------- the lock
def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_the_lock_refuses_a_second_run_and_names_the_holder(tmp_path):
    first = RunLock(tmp_path / "run").acquire()
    holder = json.loads((tmp_path / "run" / LOCK_NAME).read_text())
    assert holder["host"] == socket.gethostname() and holder["pid"] == os.getpid() and holder["started"]
    with pytest.raises(ConfigError, match=f"another run writes there \\(host {socket.gethostname()} pid "
                                          f"{os.getpid()} "):
        RunLock(tmp_path / "run").acquire()
    first.release()
    assert not (tmp_path / "run" / LOCK_NAME).exists()
    with RunLock(tmp_path / "run"):
        assert (tmp_path / "run" / LOCK_NAME).exists()
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == []  # no temporary files left


def test_a_dead_processs_lock_is_taken_over_with_a_warning(tmp_path):
    pid = _dead_pid()
    (tmp_path / LOCK_NAME).write_text(json.dumps({"host": socket.gethostname(), "pid": pid, "started": "x"}))
    lock = RunLock(tmp_path).acquire()
    assert len(lock.warnings) == 1 and f"pid {pid}" in lock.warnings[0] and "no longer running" in lock.warnings[0]
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()


@pytest.mark.parametrize("holder", [{"host": "elsewhere.example", "pid": 1}, "garbage"])
def test_other_hosts_and_unreadable_locks_are_refused(tmp_path, holder):
    (tmp_path / LOCK_NAME).write_text(json.dumps(holder) if isinstance(holder, dict) else holder)
    with pytest.raises(ConfigError, match="elsewhere.example pid 1" if isinstance(holder, dict) else "remove the file"):
        RunLock(tmp_path).acquire()
    assert (tmp_path / LOCK_NAME).exists()


def test_l2l_train_refuses_a_locked_directory_before_reading_data(tmp_path, capsys):
    from l2l_jax.programs.train import main

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / LOCK_NAME).write_text(json.dumps({"host": socket.gethostname(), "pid": os.getppid(), "started": "t"}))
    garbage = tmp_path / "train.pkl"
    garbage.write_bytes(b"not a pickle")  # reading it would be a dataset error
    assert main(["--train_dataset_file", str(garbage), "--with_lstm_ce_loss", "--workdir", str(run_dir)]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert "Traceback" not in captured.out + captured.err and len(err.splitlines()) == 1, err
    assert err.startswith(f"l2l-train: --checkpoint_path {run_dir}: another run writes there (host "
                          f"{socket.gethostname()} pid {os.getppid()} ")
    assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_NAME]  # no run.log: nothing was started


# ---------------------------------------------------------------------------------------------- the logs
def test_resumed_drops_partial_records_and_lines(tmp_path):
    """A kill after epoch 1's checkpoint but during its validation, with epoch 2's lines of a previous
    attempt: epoch 1's partial lines and records go, and `resumed` says they must be written again."""
    records = [{"kind": "train", "epoch": 0, "iteration": 2}, {"kind": "epoch", "epoch": 0, "val/lstm_acc": 0.5},
               {"kind": "train", "epoch": 1, "iteration": 2}, {"kind": "epoch", "epoch": 1}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + '{"kind": "tr')
    (tmp_path / "epoch.log").write_text("epoch,loss,acc,lr\n0, 1.5, 0.01\nFinal accuracy at epoch 0: 0.5\n\n"
                                        "1, 1.25, 0.01\nFinal accuracy at epoch 1: 0.5\n")
    run_log = RunLog(tmp_path, main_process=True)
    try:
        assert run_log.resumed(2, 1, validated=True)
        run_log.epochs.info("1, 1.25, 0.01")  # the handler writes into the rewritten file
    finally:
        run_log.close()
    assert [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == records[:3]
    assert (tmp_path / "epoch.log").read_text() == ("epoch,loss,acc,lr\n0, 1.5, 0.01\n"
                                                    "Final accuracy at epoch 0: 0.5\n\n1, 1.25, 0.01\n")
    run_log = RunLog(tmp_path, main_process=True)
    try:  # complete: nothing to redo, epochs from 1 on dropped (a resume from an older checkpoint)
        assert not run_log.resumed(1, 0, validated=True)
    finally:
        run_log.close()
    assert [json.loads(x)["epoch"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [0, 0]
    assert (tmp_path / "epoch.log").read_text() == "epoch,loss,acc,lr\n0, 1.5, 0.01\nFinal accuracy at epoch 0: 0.5\n\n"


def test_a_non_finite_loss_at_step_0_is_told_apart_from_a_learning_rate_problem(tmp_path):
    from types import SimpleNamespace

    from l2l_jax.errors import NonFiniteLossError
    from l2l_jax.training.loop import check_finite

    ckpts = SimpleNamespace(latest_step=lambda: None, directory=tmp_path)
    run_log = SimpleNamespace(log=SimpleNamespace(error=lambda msg: None))
    with pytest.raises(NonFiniteLossError, match=r"at step 0 .*no checkpoint yet\. The loss is non-finite before any "
                                                 r"update, from weights and features that were checked finite"):
        check_finite({"first_bad": 0, "loss": float("nan")}, 0, 4, ckpts, run_log)
    with pytest.raises(NonFiniteLossError, match=r"at step 5 .*Lower --lr"):
        check_finite({"first_bad": 5, "loss": float("nan")}, 1, 4, ckpts, run_log)


def test_a_fresh_start_drops_what_an_attempt_killed_before_its_first_checkpoint_wrote(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"kind": "train", "epoch": 0, "iteration": 2}\n{"kind": "tra')
    (tmp_path / "epoch.log").write_text("epoch,loss,acc,lr\n")
    run_log = RunLog(tmp_path, main_process=True)
    try:
        assert not run_log.resumed(0)
    finally:
        run_log.close()
    assert (tmp_path / "metrics.jsonl").read_text() == ""
    assert (tmp_path / "epoch.log").read_text() == "epoch,loss,acc,lr\n"
