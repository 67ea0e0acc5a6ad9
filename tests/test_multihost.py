"""The multi-host start-up flags of l2l-train and l2l-eval (`l2l_jax.parallel.init_distributed`): the triple
--coordinator_address / --num_processes / --process_id is all or nothing, refused before any work when given
in part; a coordinator that never answers and a process that never joins end the program within
--coordinator_timeout with one line naming the address (exit status 2), never with jax's abort from C++. (Two
processes that do start: tests/test_train.py.)
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from l2l_jax import parallel
from l2l_jax.errors import ConfigError
from l2l_jax.programs import flags as program_flags

TRIPLE = ("coordinator_address", "num_processes", "process_id")
ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "L2L_DISTRIBUTED")


@pytest.fixture(autouse=True)
def no_multihost_environment(monkeypatch):
    for name in ENV:
        monkeypatch.delenv(name, raising=False)


def free_port() -> int:
    """A port nobody listens on (bound and released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def program_args(program: str, tmp: Path) -> list[str]:
    """Enough flags to reach the multi-host start-up; every file is missing (nothing else may be reached)."""
    if program == "train":
        return ["--train_dataset_file", str(tmp / "missing.pkl"), "--with_lstm_ce_loss", "--workdir", str(tmp / "run")]
    return ["--test_dataset_file", str(tmp / "missing.pkl"), "--pretrained_model", str(tmp / "missing.pth")]


def run_main(program: str, argv: list[str], capsys) -> tuple[int, str]:
    if program == "train":
        from l2l_jax.programs.train import main
    else:
        from l2l_jax.programs.evaluate import main
    capsys.readouterr()
    status = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err[-3000:]
    return status, err.strip()


VALUES = {"coordinator_address": "127.0.0.1:1", "num_processes": "2", "process_id": "1"}
PARTS = [("num_processes", "process_id"), ("coordinator_address",), ("coordinator_address", "num_processes"),
         ("process_id",)]


@pytest.mark.parametrize("given", PARTS, ids=["-".join(g) for g in PARTS])
@pytest.mark.parametrize("program", ["train", "eval"])
def test_part_of_the_triple_is_refused_before_any_work(tmp_path, capsys, program, given):
    argv = program_args(program, tmp_path) + [a for name in given for a in (f"--{name}", VALUES[name])]
    status, line = run_main(program, argv, capsys)
    assert status == 2 and line.startswith(f"l2l-{program}: multi-host: "), line
    for name in TRIPLE:
        assert f"--{name}" in line, line  # what was given and what is missing
    assert "missing.pkl" not in line  # refused before the dataset is looked at
    assert not (tmp_path / "run").exists()


def test_the_environment_stands_in_for_a_flag_and_is_named(monkeypatch):
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")  # monkeypatch removes it again
    with pytest.raises(ConfigError, match="JAX_NUM_PROCESSES and --process_id without --coordinator_address"):
        parallel.init_distributed({"process_id": 1})


def test_a_single_process_or_no_triple_starts_nothing():
    assert parallel.init_distributed({}) is False
    assert parallel.init_distributed({"coordinator_address": "127.0.0.1:1", "num_processes": 1,
                                      "process_id": 0}) is False


@pytest.mark.parametrize("change, said", [
    ({"num_processes": 0}, "--num_processes 0"),
    ({"process_id": 2}, "--process_id 2"),
    ({"process_id": -1}, "--process_id -1"),
    ({"coordinator_address": "localhost"}, "--coordinator_address localhost: not HOST:PORT"),
    ({"coordinator_address": "localhost:99999"}, "--coordinator_address localhost:99999: not HOST:PORT"),
    ({"coordinator_timeout": 0}, "--coordinator_timeout 0"),
    ({"coordinator_timeout": -5.0}, "--coordinator_timeout -5.0"),
], ids=["num_0", "pid_2", "pid_-1", "no_port", "port_too_big", "timeout_0", "timeout_negative"])
def test_bad_values_are_refused_naming_the_flag(change, said):
    cfg = {"coordinator_address": "127.0.0.1:1", "num_processes": 2, "process_id": 1, **change}
    with pytest.raises(ConfigError) as e:
        parallel.init_distributed(cfg)
    assert said in str(e.value) and "\n" not in str(e.value), e.value


def test_the_timeout_flag_is_in_the_table_and_the_shared_group():
    for program in ("train", "eval"):
        assert program_flags.defaults(program).coordinator_timeout == parallel.COORDINATOR_TIMEOUT
    parser = argparse.ArgumentParser()
    program_flags.add_common(parser, "multihost")
    args = parser.parse_args(["--coordinator_timeout", "7.5"])
    assert args.coordinator_timeout == 7.5 and {*TRIPLE} <= set(vars(args))
    assert parser.parse_args([]).coordinator_timeout == parallel.COORDINATOR_TIMEOUT


def test_unreachable_coordinator_ends_within_the_timeout_in_process(tmp_path, capsys):
    """Process 1 waits for the coordinator's port in Python (jax is never started), so this runs in-process."""
    address = f"127.0.0.1:{free_port()}"
    argv = program_args("eval", tmp_path) + ["--coordinator_address", address, "--num_processes", "2",
                                            "--process_id", "1", "--coordinator_timeout", "1"]
    t0 = time.monotonic()
    status, line = run_main("eval", argv, capsys)
    took = time.monotonic() - t0
    assert status == 2 and 1 <= took < 10, (took, line)
    assert f"--coordinator_address {address}" in line and "did not answer within 1 s" in line, line
    assert "--coordinator_timeout" in line, line


def _run_program(module: str, argv: list[str], timeout: float) -> tuple[int, str, float]:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    for name in ENV:
        env.pop(name, None)
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", module, *argv], env=env, capture_output=True, text=True,
                       timeout=timeout)
    return p.returncode, p.stderr, time.monotonic() - t0


@pytest.mark.slow  # a fresh interpreter (imports jax) and a 5 s wait
def test_unreachable_coordinator_ends_with_one_line_in_a_fresh_process(tmp_path):
    """l2l-train as process 1 of 2, nobody at the address: exit status 2 after --coordinator_timeout, one line
    on stderr naming the address (a C++ abort would show as status -6 and a stack dump)."""
    address = f"127.0.0.1:{free_port()}"
    argv = program_args("train", tmp_path) + ["--coordinator_address", address, "--num_processes", "2",
                                             "--process_id", "1", "--coordinator_timeout", "5"]
    status, err, took = _run_program("l2l_jax.programs.train", argv, timeout=120)
    assert status == 2, (status, err[-3000:])
    assert err.strip().splitlines() == [err.strip()] and err.startswith("l2l-train: multi-host: "), err[-3000:]
    assert f"--coordinator_address {address}" in err and "within 5 s" in err, err
    assert 5 <= took < 60, took
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # a fresh interpreter (imports jax, starts the coordinator) and a 5 s wait
def test_missing_peer_ends_process_0_with_one_line(tmp_path):
    """l2l-eval as process 0 of 2 (it serves the coordinator), process 1 never comes: jax's handshake blocks in
    C++; the program stops waiting at --coordinator_timeout and ends with one line naming the address, exit
    status 2, before jax's own deadline would abort it."""
    address = f"127.0.0.1:{free_port()}"
    argv = program_args("eval", tmp_path) + ["--coordinator_address", address, "--num_processes", "2",
                                            "--process_id", "0", "--coordinator_timeout", "5"]
    status, err, took = _run_program("l2l_jax.programs.evaluate", argv, timeout=120)
    assert status == 2, (status, err[-3000:])
    assert "Check failure" not in err and "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("l2l-eval:")]
    assert len(lines) == 1 and err.strip().endswith(lines[0]), err[-3000:]
    assert f"--coordinator_address {address}" in lines[0] and "not every process joined within 5 s" in lines[0]
    assert 5 <= took < 60, took
