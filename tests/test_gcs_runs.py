"""`l2l-train` with its run directory on a bucket (``--workdir gs://...``), against the local Cloud Storage
emulator (tests/gcs_emulator.py, the `gcs` fixture): checkpoints, logs and records written there, a resume
after a kill bit-identical to an uninterrupted run, the run lock, two processes on one shared run directory,
and the storage's faults (no such bucket, writes denied at the start or in the middle of a checkpoint, the
storage gone), each one line naming the URL.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from l2l_jax import storage
from l2l_jax.runkit.checkpoints import COMMIT_FILE, RunCheckpoints
from l2l_jax.runkit.lock import RunLock

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------- the emulator
# ---------------------------------------------------------------------------------------------- the data
@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The tiny dataset (local) and the environment of training processes (a shared compilation cache)."""
    from l2l_jax.data.synthetic import generate

    base = tmp_path_factory.mktemp("gcsruns")
    data = generate(base / "tiny", preset="tiny", seed=0, progress=False)
    e = dict(os.environ)
    e.update(JAX_COMPILATION_CACHE_DIR=str(base / "jaxcache"), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0", JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    e.pop("XLA_FLAGS", None)
    import jax

    jax.config.update("jax_compilation_cache_dir", e["JAX_COMPILATION_CACHE_DIR"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return {"base": base, "data": data, "env": e}


def flags(env, workdir: str | Path, *extra: str, val: bool = False) -> list[str]:
    out = ["--train_dataset_file", str(env["data"] / "train.pkl"), "--num_classes", "6", "--batch_size", "16",
           "--with_avgpool_ce_loss", "--with_lstm_ce_loss", "--checkpoint_freq", "1", "--print_freq", "2",
           "--buckets", "264", "--decode_threads", "2", "--workdir", str(workdir), "--seed", "3"]
    if val:
        out += ["--test_dataset_file", str(env["data"] / "val.pkl")]
    return out + list(extra)


@pytest.fixture(scope="module")
def reference(env):
    """An uninterrupted local 2-epoch run, the reference of the bucket's runs."""
    from l2l_jax.programs.train import main

    run_dir = env["base"] / "reference"
    assert main(flags(env, run_dir, "--epochs", "2")) == 0
    return run_dir


def fresh() -> None:
    """Forget this process's cached bucket listings: the programs under test write there from other processes."""
    storage.forget_listings("gs://l2l-test")


def final_params(run_dir) -> dict:
    fresh()
    ckpts = RunCheckpoints(run_dir)
    try:
        return ckpts.restore_params()
    finally:
        ckpts.close()


def assert_trees_equal(a, b) -> None:
    import jax

    la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
    assert [p for p, _ in la] == [p for p, _ in lb]
    for (path, x), (_, y) in zip(la, lb, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(path))


def epoch_records(run_dir) -> list[dict]:
    recs = [json.loads(x) for x in storage.path(run_dir).joinpath("metrics.jsonl").read_text().splitlines()]
    drop = ("train/videos_per_s", "train/seconds", "val/videos_per_s")
    return [{k: v for k, v in r.items() if k not in drop} for r in recs if r["kind"] == "epoch"]


def steps_on(url: str) -> list[int]:
    """The complete checkpoints under a bucket's run directory (with orbax's commit file)."""
    fresh()
    d = storage.path(url) / "checkpoints"
    if not d.exists():
        return []
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit() and (p / COMMIT_FILE).exists())


def one_line(err: str) -> str:
    """The program's one error line: the only ``l2l-train:`` line on stderr (no traceback)."""
    assert "Traceback" not in err, err[-3000:]
    ours = [line for line in err.splitlines() if line.startswith("l2l-train:")]
    assert len(ours) == 1, err[-3000:]
    return ours[0]


def train_proc(env, gcs, args: list[str]) -> subprocess.Popen:
    from gcs_emulator import child_env

    return subprocess.Popen([sys.executable, "-m", "l2l_jax.programs.train", *args], env=child_env(gcs, env["env"]),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


# ---------------------------------------------------------------------------------------------- a run on a bucket
@pytest.mark.slow
def test_a_run_on_a_bucket_writes_everything_there_and_resumes_exactly(env, gcs, reference):
    from l2l_jax.programs.train import main

    run = gcs.gs("runs", "exp")
    assert main(flags(env, run, "--epochs", "1", "--visualization")) == 0
    top = storage.path(run)
    assert steps_on(run) == [4]
    for name in ("run.log", "epoch.log", "metrics.jsonl", "config.json", "settings.json"):
        assert (top / name).exists(), name
    assert not (top / ".lock").exists()  # released at the end
    assert (top / "epoch.log").read_text().startswith("epoch,loss,acc,lr\n0, ")
    assert "Epoch: [0][2/4]\tLR: 0.01\tTime " in (top / "run.log").read_text()
    assert any((top / "tensorboard").iterdir())
    assert json.loads((top / "settings.json").read_text())["program"] == "l2l-train"
    # a second epoch: resumes from the bucket and ends exactly where the uninterrupted local run ends
    assert main(flags(env, run, "--epochs", "2")) == 0
    assert steps_on(run) == [4, 8]
    log = (top / "run.log").read_text()
    assert "Resuming after epoch 0 at step 4" in log and log.count("Namespace: ") == 2  # run.log kept, appended
    assert_trees_equal(final_params(run), final_params(reference))
    assert epoch_records(run) == epoch_records(reference)


@pytest.mark.slow
def test_killed_mid_epoch_resumes_from_the_bucket_exactly(env, gcs, reference):
    run = gcs.gs("runs", "killed")
    args = flags(env, run, "--epochs", "2")
    p = train_proc(env, gcs, args)
    log = storage.path(run) / "run.log"
    deadline = time.time() + 240
    while 4 not in steps_on(run):  # epoch 0 saved: now validating or in epoch 1
        assert p.poll() is None and time.time() < deadline, "training ended before its first checkpoint"
        time.sleep(0.1)
    while not (log.exists() and "Epoch: [1][2/4]" in log.read_text()):
        assert p.poll() is None and time.time() < deadline, p.communicate()[0][-3000:]
        time.sleep(0.05)
    p.kill()
    p.wait()
    assert not (storage.path(run) / "model_final").exists()
    assert (storage.path(run) / ".lock").exists()  # a killed run leaves its lock: on a bucket, removed by hand
    (storage.path(run) / ".lock").unlink()
    q = train_proc(env, gcs, args)
    out = q.communicate(timeout=300)[0]
    assert q.returncode == 0, out[-4000:]
    assert_trees_equal(final_params(run), final_params(reference))
    assert epoch_records(run) == epoch_records(reference)


# ---------------------------------------------------------------------------------------------- checkpoints
def test_a_damaged_newest_checkpoint_on_a_bucket_is_moved_aside_and_the_previous_one_restores(gcs):
    from test_training_resume import _same, _state

    run = gcs.gs("runs", "damaged")
    states = {1: _state(1), 2: _state(2)}
    ckpts = RunCheckpoints(run)
    for i, step in enumerate((4, 8)):
        ckpts.save(step, states[1 + i], {"data": {"next_index": step}, "next_epoch": i + 1, "epoch": i})
    assert steps_on(run) == [4, 8]
    meta = storage.path(run) / "checkpoints" / "8" / "progress" / "metadata"
    storage.write_text(meta, json.dumps({**json.loads(meta.read_text()), "checksum": "0" * 64}))
    warnings: list[str] = []
    state, progress, step = ckpts.restore_newest(states[1], warnings.append)
    assert step == 4 and progress["data"] == {"next_index": 4} and _same(state, states[1])
    assert len(warnings) == 1 and "(step 8) does not restore: the tensors' checksum does not match" in warnings[0]
    names = sorted(p.name for p in (storage.path(run) / "checkpoints").iterdir())
    assert names[0] == "4" and len(names) == 2 and names[1].startswith("corrupt-8-"), names  # moved, not deleted
    assert (storage.path(run) / "checkpoints" / names[1] / "state").exists()
    assert ckpts.all_steps() == [4]
    ckpts.save(8, states[2], {"data": {}, "next_epoch": 2, "epoch": 1})  # the step's name is free again
    ckpts.close()
    again = RunCheckpoints(run)
    assert _same(again.restore(states[1])[0], states[2])
    again.close()


# ---------------------------------------------------------------------------------------------- the lock
def test_a_lock_on_a_bucket_is_refused_naming_its_holder(gcs):
    run = gcs.gs("runs", "locked")
    first = RunLock(run).acquire()
    try:
        with pytest.raises(Exception) as e:
            RunLock(run).acquire()
        msg = str(e.value)
        assert "\n" not in msg and f"--checkpoint_path {run}: another run writes there (host " in msg
        assert f"pid {os.getpid()}" in msg  # even this host's live pid: a bucket cannot check any holder
    finally:
        first.release()
    assert not (storage.path(run) / ".lock").exists()
    with RunLock(run):  # free again
        pass


@pytest.mark.slow
def test_two_runs_at_once_into_one_bucket_directory_one_is_refused(env, gcs):
    run = gcs.gs("runs", "twice")
    args = flags(env, run, "--epochs", "1")
    procs = [train_proc(env, gcs, args) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], [o[-2000:] for o in outs]
    refused = outs[[p.returncode for p in procs].index(2)]
    line = one_line(refused)
    assert line.startswith(f"l2l-train: --checkpoint_path {run}: another run writes there (host "), line
    assert steps_on(run) == [4]


# ---------------------------------------------------------------------------------------------- faults
def test_a_bucket_that_does_not_exist_is_one_line(env, gcs, capsys):
    from l2l_jax.programs.train import main

    assert main(flags(env, "gs://no-such-bucket/run", "--epochs", "1")) == 2
    line = one_line(capsys.readouterr().err)
    assert line == ("l2l-train: --checkpoint_path gs://no-such-bucket/run: bucket no-such-bucket does not exist "
                    "(or these credentials cannot see it)"), line
    missing = gcs.gs("data", "train.pkl")
    assert main([*flags(env, gcs.gs("runs", "x"), "--epochs", "1"), "--train_dataset_file", missing]) == 2
    assert one_line(capsys.readouterr().err) == f"l2l-train: --train_dataset_file {missing}: no such file or directory"


def test_writes_denied_at_the_start_is_one_line(env, gcs, capsys):
    from l2l_jax.programs.train import main

    run = gcs.gs("runs", "denied")
    with gcs.deny_writes():
        assert main(flags(env, run, "--epochs", "1")) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"l2l-train: --checkpoint_path {run}: cannot create its lock {run}/.lock (Forbidden"), line
    assert not storage.path(run).exists()


class _DenyAfter:
    """Uploads are denied from the `after`-th one on, once armed (the middle of a checkpoint)."""

    def __init__(self, after: int):
        import gcs_emulator

        self.after, self.seen, self.armed = after, 0, False
        self._deny = gcs_emulator._DENY

    def install(self, monkeypatch) -> None:
        from gcp_storage_emulator import server as _server
        from gcp_storage_emulator.handlers import objects as _objects

        current = _objects.insert

        def insert(request, response, store, *args, **kwargs):
            if self.armed:
                self.seen += 1
                if self.seen >= self.after:
                    self._deny["writes"] = True
            return current(request, response, store, *args, **kwargs)

        monkeypatch.setattr(_objects, "insert", insert)
        for _, handlers in _server.HANDLERS:
            for method, fn in list(handlers.items()):
                if fn is current:
                    monkeypatch.setitem(handlers, method, insert)

    def lift(self) -> None:
        self.armed = False
        self._deny["writes"] = False


@pytest.mark.slow
def test_writes_denied_in_the_middle_of_a_checkpoint_then_resume_from_the_last_complete_one(
        env, gcs, reference, monkeypatch, capsys):
    from l2l_jax.programs.train import main

    run = gcs.gs("runs", "cut")
    deny = _DenyAfter(after=4)
    deny.install(monkeypatch)
    save = RunCheckpoints.save

    def arming_save(self, step, state, progress):
        deny.armed = deny.armed or int(step) == 8  # the second checkpoint: cut after a few of its objects
        return save(self, step, state, progress)

    monkeypatch.setattr(RunCheckpoints, "save", arming_save)
    try:
        assert main(flags(env, run, "--epochs", "2")) == 2
    finally:
        deny.lift()
    line = one_line(capsys.readouterr().err)
    assert re.fullmatch(rf"l2l-train: --checkpoint_path {run}: checkpoint {run}/checkpoints/8 could not be written "
                        rf"\(.*\); the last complete one is {run}/checkpoints/4", line), line
    assert steps_on(run) == [4]  # step 8 was begun (objects there) but never committed
    assert any(p.name == "8" for p in (storage.path(run) / "checkpoints").iterdir())
    monkeypatch.setattr(RunCheckpoints, "save", save)
    # the storage accepts writes again: the rerun resumes from checkpoint 4 and ends as the uninterrupted run
    assert main(flags(env, run, "--epochs", "2")) == 0
    assert "Resuming after epoch 0 at step 4" in (storage.path(run) / "run.log").read_text()
    assert steps_on(run) == [4, 8]
    assert_trees_equal(final_params(run), final_params(reference))
    assert epoch_records(run) == epoch_records(reference)


@pytest.mark.slow
def test_the_storage_gone_mid_run_is_one_line(env, gcs, monkeypatch, capsys):
    from l2l_jax.programs.train import main
    from l2l_jax.training.log import RunLog

    run = gcs.gs("runs", "outage")
    epoch_end = RunLog.epoch_end

    def stop_after_epoch_0(self, epoch, *args, **kwargs):
        epoch_end(self, epoch, *args, **kwargs)
        if epoch == 0:
            gcs.stop()  # the storage stops answering before epoch 1's first log write

    monkeypatch.setattr(RunLog, "epoch_end", stop_after_epoch_0)
    t0 = time.monotonic()
    assert main(flags(env, run, "--epochs", "2")) == 2
    seconds = time.monotonic() - t0
    line = one_line(capsys.readouterr().err)
    assert re.fullmatch(rf"l2l-train: {run}/(run\.log|metrics\.jsonl): could not be written \(.*\); the storage "
                        "refused the write or does not answer", line), line
    gcs.start()  # comes back empty (in memory): a rerun starts afresh, nothing is taken for a checkpoint
    monkeypatch.setattr(RunLog, "epoch_end", epoch_end)
    assert steps_on(run) == []
    assert seconds < 150, seconds  # gcsfs retries a refused connection for about half a minute, per request


# ---------------------------------------------------------------------------------------------- two processes
@pytest.mark.slow
def test_two_processes_share_a_run_directory_on_a_bucket_and_resume(env, gcs):
    run = gcs.gs("runs", "proc2")

    def launch(epochs: str) -> list[str]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        args = flags(env, run, "--epochs", epochs, "--batch_size", "32")
        procs = [train_proc(env, gcs, args + ["--coordinator_address", f"127.0.0.1:{port}", "--num_processes",
                                                 "2", "--process_id", str(i)]) for i in range(2)]
        try:
            outs = [p.communicate(timeout=240)[0] for p in procs]
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            outs = [p.communicate()[0] for p in procs]
            raise AssertionError("\n=====\n".join(o[-3000:] for o in outs)) from None
        for p, o in zip(procs, outs, strict=True):
            assert p.returncode == 0, o[-4000:]
        return outs

    launch("1")
    assert steps_on(run) == [2]  # 64 videos, batch 32: 2 steps an epoch; one checkpoint written by both
    names = {p.name for p in (storage.path(run) / "checkpoints" / "2" / "state").iterdir()}
    assert {"ocdbt.process_0", "ocdbt.process_1"} <= names, names
    assert "2 process(es)" in (storage.path(run) / "run.log").read_text()
    launch("2")  # resumes from the bucket
    assert steps_on(run) == [2, 4]
    log = (storage.path(run) / "run.log").read_text()
    assert "Resuming after epoch 0 at step 2" in log
    assert [r["epoch"] for r in epoch_records(run)] == [0, 1]
