"""`l2l-train` end to end on the tiny synthetic dataset: recipe through the CLI, train -> checkpoints -> resume ->
final -> validation, SIGKILL and resume, 1 vs 4 devices, 2 processes vs 1, the non-finite-loss stop.

The runs share a persistent compilation cache (one per test session) so that the subprocesses do not recompile
the same step; one length bucket keeps it to one executable per device count.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_train_parity import RUNS, recipe_of

from l2l_jax import config
from l2l_jax.model_dir import load_model_dir
from l2l_jax.programs import flags as program_flags
from l2l_jax.runkit.checkpoints import RunCheckpoints

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------- cheap
def train_settings(argv: list[str]) -> config.Settings:
    """l2l-train's settings from these flags."""
    return config.settings(program_flags.resolve("train", argv), "train")


def _run_flags(run: dict) -> list[str]:
    flags = ["--variant", run["variant"], "--num_classes", "12", "--lr", str(run["lr"]), "--momentum",
             str(run["momentum"]), "--weight_decay", str(run["weight_decay"]), "--episode_length", str(run["E"]),
             "--warmup_epochs", str(run["warmup_epochs"]), "--milestones", *map(str, run["milestones_epochs"])]
    for flag, on in (("--scheduler", run["scheduler"]), ("--freeze_imageAudioNet", run["freeze"]),
                     ("--with_avgpool_ce_loss", run["with_avgpool_ce_loss"]),
                     ("--with_lstm_ce_loss", run["with_lstm_ce_loss"]),
                     ("--gt_feature_eval", run.get("use_gt_feature", False))):
        if on:
            flags.append(flag)
    if run["variant"] == "two":
        flags += ["--avgpool_ce_loss_weight", str(run["avgpool_ce_loss_weight"]),
                  "--lstm_ce_loss_weight", str(run["lstm_ce_loss_weight"])]
    return flags


@pytest.mark.parametrize("variant,run", RUNS, ids=[r["name"] for _, r in RUNS])
def test_cli_builds_the_fixture_recipe(variant, run):
    settings = config.settings(program_flags.resolve("train", _run_flags(run)), "train")
    got = settings.recipe.build(run["iters_per_epoch"])
    assert got == recipe_of(run)
    for k in range(len(run["steps"])):
        assert got.group_lrs(k) == pytest.approx(run["steps"][k]["lr"], rel=1e-12, abs=0.0)


# ---------------------------------------------------------------------------------------------- --pretrained_model
_SAVE_RUN = """
import logging, sys
import jax
from l2l_jax import config, parallel, weights
from l2l_jax.programs import flags as program_flags
from l2l_jax.steps import create_train_state
from l2l_jax.runkit.checkpoints import RunCheckpoints
assert jax.device_count() == int(sys.argv[1]), jax.devices()
settings = config.settings(program_flags.resolve("train", sys.argv[3:]), "train")
state = create_train_state(weights.initial_variables(settings, logging.getLogger("save")),
                           settings.recipe.build(4).optimizer(), settings.seed)
ckpts = RunCheckpoints(sys.argv[2])
ckpts.save(4, parallel.replicate(state, parallel.make_mesh()), {"epoch": 0, "next_epoch": 1, "final": True})
ckpts.close()
"""


def test_pretrained_run_directory_loads_on_another_device_count(tmp_path):
    """A run checkpoint saved on 4 (fake CPU) devices is read by `l2l-train --pretrained_model` (run directory or
    its checkpoints/ or one step's directory) and `l2l-eval --pretrained_model` in this process, which has
    another device count."""
    import logging

    import jax

    from l2l_jax import weights

    n_save = 4 if jax.device_count() != 4 else 2
    run_dir = tmp_path / "run"
    small = ["--num_classes", "6", "--episode_length", "3", "--with_lstm_ce_loss"]
    e = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={n_save}", "JAX_PLATFORMS": "cpu",
         "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", _SAVE_RUN, str(n_save), str(run_dir), *small, "--seed", "7"],
                          env=e, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    log = logging.getLogger("test_pretrained")
    want = weights.initial_variables(train_settings([*small, "--seed", "7"]), log)  # what the run saved

    assert_trees_equal(weights.load(run_dir, "two").variables, want)
    for path in (run_dir, run_dir / "checkpoints", run_dir / "checkpoints" / "4"):
        argv = [*small, "--seed", "3", "--pretrained_model", str(path)]
        got = weights.initial_variables(train_settings(argv), log)
        assert_trees_equal(got, want)
        eval_flags = program_flags.resolve("eval", ["--num_classes", "6", "--pretrained_model", str(path)])
        loaded = weights.eval_weights(config.settings(eval_flags, "eval"))
        assert_trees_equal(loaded.variables, want)
        assert (loaded.meta["num_classes"], loaded.meta["step"]) == (6, 4)
        assert loaded.ref.where == run_dir / "checkpoints" / "4"


# ---------------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The tiny dataset and the environment of every training process (shared compilation cache)."""
    from l2l_jax.data.synthetic import generate

    base = tmp_path_factory.mktemp("train")
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


def flags(env, workdir: Path, *extra: str, val: bool = True) -> list[str]:
    out = ["--train_dataset_file", str(env["data"] / "train.pkl"), "--num_classes", "6", "--batch_size", "16",
           "--with_avgpool_ce_loss", "--with_lstm_ce_loss", "--checkpoint_freq", "1", "--print_freq", "2",
           "--buckets", "264", "--decode_threads", "2", "--workdir", str(workdir), "--seed", "3"]
    if val:
        out += ["--test_dataset_file", str(env["data"] / "val.pkl")]
    return out + list(extra)


def train_proc(env, args: list[str], extra_env: dict | None = None, **kw) -> subprocess.Popen:
    e = dict(env["env"], **(extra_env or {}))
    return subprocess.Popen([sys.executable, "-m", "l2l_jax.programs.train", *args], env=e, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def run_ok(env, args: list[str], extra_env: dict | None = None, timeout: float = 300) -> str:
    p = train_proc(env, args, extra_env)
    out, _ = p.communicate(timeout=timeout)
    assert p.returncode == 0, out[-4000:]
    return out


def final_params(run_dir: Path) -> dict:
    """The variables of the run's newest checkpoint (restored on this process's one device)."""
    return RunCheckpoints(run_dir).restore_params()


def model_final(run_dir: Path) -> dict:
    return load_model_dir(run_dir / "model_final")[0]


def epoch_records(run_dir: Path) -> list[dict]:
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    drop = ("train/videos_per_s", "train/seconds", "val/videos_per_s")
    return [{k: v for k, v in r.items() if k not in drop} for r in recs if r["kind"] == "epoch"]


def assert_trees_equal(a, b, rtol=0.0, atol=0.0):
    import jax

    la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
    assert [p for p, _ in la] == [p for p, _ in lb]
    for (path, x), (_, y) in zip(la, lb, strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol, err_msg=str(path))


@pytest.fixture(scope="module")
def reference(env):
    """An uninterrupted 3-epoch run (subprocess), the reference of the resume tests."""
    run_dir = env["base"] / "reference"
    run_ok(env, flags(env, run_dir, "--epochs", "3"))
    return run_dir


@pytest.mark.slow
def test_train_checkpoints_resume_final_validation(env, reference):
    from l2l_jax.programs.train import main

    run_dir = env["base"] / "e2e"
    assert main(flags(env, run_dir, "--epochs", "2", "--visualization", "--keep_checkpoints", "2")) == 0
    steps = sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [4, 8]  # 4 iterations per epoch, one checkpoint per epoch (epoch 0 included)
    assert [r["epoch"] for r in epoch_records(run_dir)] == [0, 1]
    assert all("val/avgpool_map" in r and "val/lstm_acc" in r for r in epoch_records(run_dir))
    epoch_log = (run_dir / "epoch.log").read_text()
    assert epoch_log.startswith("epoch,loss,acc,lr\n0, ")
    assert "mAP from lstm final prediction at epoch 1: " in epoch_log
    assert "Epoch: [1][2/4]\tLR: 0.01\tTime " in (run_dir / "run.log").read_text()
    assert (run_dir / "curves.png").stat().st_size > 0
    assert any((run_dir / "tensorboard").iterdir())
    # a third epoch: resumes after epoch 1, keeps the newest 2, ends where the uninterrupted run ends
    assert main(flags(env, run_dir, "--epochs", "3", "--keep_checkpoints", "2")) == 0
    steps = sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [8, 12]
    assert "Resuming after epoch 1 at step 8" in (run_dir / "run.log").read_text()
    assert_trees_equal(final_params(run_dir), final_params(reference))
    assert_trees_equal(load_model_dir(run_dir / "model_final")[0], final_params(reference))
    assert epoch_records(run_dir) == epoch_records(reference)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(env, reference):
    run_dir = env["base"] / "killed"
    args = flags(env, run_dir, "--epochs", "3")
    p = train_proc(env, args)
    deadline = time.time() + 240
    while not (run_dir / "checkpoints" / "4").exists():  # epoch 0 saved: now in epoch 1 (or validating)
        assert p.poll() is None and time.time() < deadline, "training ended before its first checkpoint"
        time.sleep(0.05)
    while "Epoch: [1][2/4]" not in (run_dir / "run.log").read_text():
        assert p.poll() is None and time.time() < deadline
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (run_dir / "model_final").exists()
    run_ok(env, args)
    assert_trees_equal(final_params(run_dir), final_params(reference))
    assert epoch_records(run_dir) == epoch_records(reference)


@pytest.mark.slow
def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(env, reference, capsys):
    """The program's contract: exit status 2 and one line on stderr with the message, no traceback."""
    from l2l_jax.programs.train import main

    run_dir = env["base"] / "nan"
    shutil.copytree(reference, run_dir)
    record = json.loads((run_dir / "settings.json").read_text())  # as if the run had been made at --lr 1e30
    record["settings"]["lr"] = 1e30
    (run_dir / "settings.json").write_text(json.dumps(record))
    good = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert main(flags(env, run_dir, "--epochs", "5", "--lr", "1e30", val=False)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    ours = [line for line in err.splitlines() if line.startswith("l2l-train:")]
    assert len(ours) == 1, err[-2000:]
    assert re.fullmatch(r"l2l-train: non-finite training loss at step 1[2-5] .*last good checkpoint is .*12\. .*",
                        ours[0]), ours[0]
    assert err.rstrip().endswith(ours[0])  # the last thing the program says
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == good


@pytest.fixture(scope="module")
def two_epochs(env):
    """A finished 2-epoch run (checkpoints 4 and 8), copied by the tests that damage or truncate it."""
    run_dir = env["base"] / "two_epochs"
    run_ok(env, flags(env, run_dir, "--epochs", "2"))
    return run_dir


def _program_output(capsys) -> tuple[str, str]:
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err, captured.err[-4000:]
    return captured.out, captured.err


@pytest.mark.slow
def test_validation_lost_to_a_kill_is_written_on_resume(env, reference, two_epochs, capsys):
    """Killed during epoch 1's validation, after its checkpoint: no epoch line, no validation lines, no epoch
    record for epoch 1, and the dead process's lock left behind. The resumed run takes the lock over (one
    warning), validates epoch 1 with the restored state, writes what was lost, and ends as the uninterrupted
    run: the same epoch.log, the same records (each epoch once), the same parameters."""
    from l2l_jax.programs.train import main
    from l2l_jax.runkit.lock import LOCK_NAME

    run_dir = env["base"] / "lost_validation"
    shutil.copytree(two_epochs, run_dir)
    shutil.rmtree(run_dir / "model_final")
    metrics = run_dir / "metrics.jsonl"
    records = [json.loads(x) for x in metrics.read_text().splitlines()]
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [0, 1]
    metrics.write_text("".join(json.dumps(r) + "\n" for r in records if (r["kind"], r["epoch"]) != ("epoch", 1)))
    epoch_log = (run_dir / "epoch.log").read_text()
    cut = epoch_log.index("\n1, ") + 1
    (run_dir / "epoch.log").write_text(epoch_log[:cut])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run_dir / LOCK_NAME).write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "started": "t"}))

    assert main(flags(env, run_dir, "--epochs", "3")) == 0
    _, err = _program_output(capsys)
    warned = [line for line in err.splitlines() if line.startswith("l2l-train: warning:")]
    assert len(warned) == 1 and f"pid {dead.pid}" in warned[0] and "no longer running" in warned[0], err[-2000:]
    assert not (run_dir / LOCK_NAME).exists()
    assert "Epoch 1's record and validation were not written" in (run_dir / "run.log").read_text()
    assert epoch_records(run_dir) == epoch_records(reference)
    assert (run_dir / "epoch.log").read_text() == (reference / "epoch.log").read_text()
    assert_trees_equal(final_params(run_dir), final_params(reference))


@pytest.mark.slow
def test_a_damaged_newest_checkpoint_resumes_from_the_previous_one(env, reference, two_epochs, capsys):
    """Flipped bytes in the newest checkpoint's data file: one warning (step, reason) on stderr and in
    run.log, the checkpoint moved aside, epochs 1 and 2 trained from checkpoint 4, ending as the uninterrupted
    run. With every checkpoint damaged: one error line, exit 2, nothing moved."""
    from l2l_jax.programs.train import main

    def flip(step_dir: Path) -> None:
        data = max((p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"),
                   key=lambda p: p.stat().st_size)
        b = bytearray(data.read_bytes())
        b[len(b) // 2] ^= 0x40
        data.write_bytes(bytes(b))

    run_dir = env["base"] / "damaged"
    shutil.copytree(two_epochs, run_dir)
    flip(run_dir / "checkpoints" / "8")
    assert main(flags(env, run_dir, "--epochs", "3")) == 0
    _, err = _program_output(capsys)
    warned = [line for line in err.splitlines() if line.startswith("l2l-train: warning:")]
    assert len(warned) == 1, err[-2000:]
    assert re.fullmatch(r"l2l-train: warning: checkpoint \S+/checkpoints/8 \(step 8\) does not restore: the tensors' "
                        r"checksum does not match .*; moved aside to corrupt-8-\S+, resuming from step 4", warned[0])
    assert "WARNING:: checkpoint " in (run_dir / "run.log").read_text()
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert [n for n in names if n.isdigit()] == ["12", "4", "8"] and any(n.startswith("corrupt-8-") for n in names)
    assert_trees_equal(final_params(run_dir), final_params(reference))
    assert epoch_records(run_dir) == epoch_records(reference)
    assert (run_dir / "epoch.log").read_text() == (reference / "epoch.log").read_text()

    none_left = env["base"] / "all_damaged"
    shutil.copytree(two_epochs, none_left)
    for step in ("4", "8"):
        flip(none_left / "checkpoints" / step)
    assert main(flags(env, none_left, "--epochs", "3")) == 2
    _, err = _program_output(capsys)
    assert err.strip().splitlines()[-1].startswith(f"l2l-train: {none_left / 'checkpoints'}: no checkpoint restores "
                                                   "(step 8: the tensors' checksum"), err[-2000:]
    assert sorted(p.name for p in (none_left / "checkpoints").iterdir()) == ["4", "8"]


@pytest.mark.slow
def test_a_rerun_with_other_settings_is_refused_and_overwrite_starts_over(env, two_epochs, capsys):
    """A rerun of a 2-epoch run with another --lr, --seed and --num_classes: one line naming each difference,
    exit 2, before any data is read, nothing in the run directory touched; fewer --epochs than done: refused
    too. With --overwrite (and another --seed) the run starts over: the old checkpoints and records go, the
    new settings are recorded."""
    from l2l_jax.programs.train import main

    run_dir = env["base"] / "rerun"
    shutil.copytree(two_epochs, run_dir)
    before = {p: p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}
    for extra, said in (
            (["--lr", "0.02", "--seed", "4", "--num_classes", "7"],
             "its checkpoints were made with other settings (--lr 0.01 (recorded) vs 0.02 (given); --seed 3 "
             "(recorded) vs 4 (given); --num_classes 6 (recorded) vs 7 (given)); start over with --overwrite"),
            (["--epochs", "1"], "its checkpoints reach epoch 2, beyond --epochs 1; give --epochs 2 or more")):
        argv = flags(env, run_dir, "--epochs", "2")
        for flag, value in zip(extra[::2], extra[1::2], strict=True):
            if flag in argv:
                argv[argv.index(flag) + 1] = value
            else:
                argv += [flag, value]
        assert main(argv) == 2
        _, err = _program_output(capsys)
        assert len(err.strip().splitlines()) == 1, err
        assert err.strip().startswith(f"l2l-train: --checkpoint_path {run_dir}: {said}"), err
    assert {p: p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()} == before
    assert main(flags(env, run_dir, "--epochs", "1", "--seed", "4", "--overwrite")) == 0
    _program_output(capsys)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["4"]
    assert [r["epoch"] for r in epoch_records(run_dir)] == [0]
    assert json.loads((run_dir / "settings.json").read_text())["settings"]["seed"] == 4
    assert "Resuming" not in (run_dir / "run.log").read_text()


def test_flag_errors_stop_before_any_data_is_read(tmp_path, capsys):
    """A flag problem is one line and exit status 2, before the run directory is made or a split is read."""
    from l2l_jax.programs.train import main

    run_dir = tmp_path / "run"
    missing = tmp_path / "missing.pkl"
    for argv, said in ((["--epochs", "0"], "--epochs"), (["--checkpoint_freq", "0"], "--checkpoint_freq"),
                       (["--train_dataset_file", str(missing)], str(missing))):
        base = ["--train_dataset_file", str(tmp_path), "--with_lstm_ce_loss", "--workdir", str(run_dir)]
        assert main([*base, *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("l2l-train: ") and said in err and "Traceback" not in err, err
        assert len(err.strip().splitlines()) == 1, err
        assert not run_dir.exists()


# ---------------------------------------------------------------------------------------------- devices
def _two_step_flags(env, run_dir: Path) -> list[str]:
    # 64 videos, batch 32: one epoch = 2 steps
    return flags(env, run_dir, "--epochs", "1", "--batch_size", "32", val=False)


@pytest.mark.slow
def test_one_vs_four_devices_and_two_processes(env):
    one = env["base"] / "dev1"
    run_ok(env, _two_step_flags(env, one))
    four = env["base"] / "dev4"
    out = run_ok(env, _two_step_flags(env, four), {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
    assert "4 device(s)" in (four / "run.log").read_text(), out[-2000:]
    # float sums over rows split 4 ways: equal up to reduction order
    assert_trees_equal(model_final(one), model_final(four), rtol=2e-5, atol=2e-6)

    two = env["base"] / "proc2"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [train_proc(env, _two_step_flags(env, two) + ["--coordinator_address", f"127.0.0.1:{port}",
                                                          "--num_processes", "2", "--process_id", str(i)])
             for i in range(2)]
    outs = [p.communicate(timeout=420)[0] for p in procs]
    for p, o in zip(procs, outs, strict=True):
        assert p.returncode == 0, o[-4000:]
    assert "2 process(es)" in (two / "run.log").read_text()
    # process 0 writes model_final/: the 1-process run's parameters up to reduction order, and exactly its own
    # newest checkpoint (2-device arrays, read back on this process's device)
    assert (two / "model_final" / "meta.json").is_file()
    assert_trees_equal(model_final(one), model_final(two), rtol=2e-5, atol=2e-6)
    assert_trees_equal(model_final(two), final_params(two))
    # the epoch's losses and accuracies, which after step 1 depend on the updated parameters
    (r1,), (r2,) = epoch_records(one), epoch_records(two)
    assert r1.keys() == r2.keys()
    for key in r1:
        if isinstance(r1[key], str):
            assert r2[key] == r1[key]
            continue
        assert r2[key] == pytest.approx(r1[key], rel=2e-5, abs=1e-6), key
