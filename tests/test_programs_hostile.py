"""Careless and hostile input through the programs' real ``main(argv)``, beyond tests/test_hostile_programs.py:
output paths that cannot take the output (a read-only place, ``/dev/full``, a FIFO, a directory or file in the
way), checked before any work for every program; a write that still fails; ``.pth`` files with bfloat16 or
sparse tensors or a 0-class classifier; ``--config`` files that do not run or return no dict; a model
directory whose ``meta.json`` lost its checksum; ``--seed -1``. Each ends with exit status 2 and one line
naming the flag or file, leaves no traceback, never hangs, and writes nothing. (`l2l-finetune`:
tests/test_finetune_hostile.py.)
"""

from __future__ import annotations

import errno
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from fixture_inputs import manifest_state_dict
from path_helpers import unwritable_dir

PREVIEW = "manifests/preview_two_C12.json"
FUSION = "manifests/imageaudionet_C12.json"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The tiny synthetic dataset and good preview-model weights."""
    from l2l_jax.data.synthetic import generate

    base = tmp_path_factory.mktemp("programs")
    data = generate(base / "tiny", preset="tiny", seed=0, progress=False)
    pth = base / "good_model.pth"
    torch.save({"model": {k: torch.from_numpy(np.array(v)) for k, v in manifest_state_dict(PREVIEW, 3).items()}},
               pth)
    return {"base": base, "data": data, "good_pth": pth}


def _program(name: str):
    if name == "train":
        from l2l_jax.train import main
    elif name == "eval":
        from l2l_jax.evaluate import main
    elif name == "pack":
        from l2l_jax.data.pack import main
    elif name == "synth":
        from l2l_jax.data.synthetic import main
    elif name == "demo":
        from l2l_jax.demo import main
    else:
        from convert.cli import main
    return main


def run(program: str, argv: list, capsys) -> tuple[int, str]:
    """(status, the one ``l2l-<program>:`` line) of a run that fails on input; no traceback, the message is
    the last thing said, and the run gives up within 60 s (a FIFO opened for writing would block forever)."""
    def hang(*_):
        raise AssertionError(f"l2l-{program} hangs")

    capsys.readouterr()
    old = signal.signal(signal.SIGALRM, hang)
    signal.alarm(60)
    try:
        status = _program(program)([str(a) for a in argv])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    err = capsys.readouterr().err
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith(f"l2l-{program}:")]
    assert len(lines) == 1 and err.strip().endswith(lines[0]), err[-3000:]
    return status, lines[0]


def eval_args(f, *extra) -> list:
    return ["--test_dataset_file", f["data"] / "val.pkl", "--num_classes", "12", "--batch_size", "16",
            "--buckets", "264", "--decode_threads", "2", "--pretrained_model", f["good_pth"], *extra]


def train_args(f, tmp: Path, *extra) -> list:
    return ["--train_dataset_file", f["data"] / "train.pkl", "--num_classes", "12", "--batch_size", "16",
            "--with_lstm_ce_loss", "--buckets", "264", "--decode_threads", "2", "--workdir", tmp / "run",
            "--epochs", "1", *extra]


def _bad_output(kind: str, tmp: Path) -> Path:
    """A path that cannot take an output file (kinds: readonly, dev_full, fifo, dir, below_file)."""
    if kind == "readonly":
        return unwritable_dir(tmp) / "x.out"
    if kind == "dev_full":
        if not os.path.exists("/dev/full"):
            pytest.skip("no /dev/full here")
        return Path("/dev/full")
    if kind == "fifo":
        os.mkfifo(tmp / "fifo")
        return tmp / "fifo"
    if kind == "dir":
        (tmp / "a_dir").mkdir()
        return tmp / "a_dir"
    (tmp / "a_file").write_text("x")
    return tmp / "a_file" / "x.out"


def _eval_refuses_output_before_loading(files, tmp_path, capsys, flag: str, path, kind: str) -> None:
    """l2l-eval with `flag` naming `path` and weights that do not exist: the output path is reported first (exit
    2, one line naming the flag and path), so it is checked before anything loads."""
    try:
        argv = eval_args(files, flag, path)
        argv[argv.index("--pretrained_model") + 1] = tmp_path / "no_such_model.pth"
        status, line = run("eval", argv, capsys)
        assert status == 2 and f"{flag} {path}" in line, line
    finally:
        if kind == "readonly":
            path.parent.chmod(0o700)


# ------------------------------------------------------------------------------------- l2l-eval's outputs
@pytest.mark.parametrize("flag", ["--export", "--metrics_json"])
@pytest.mark.parametrize("kind", ["readonly", "dev_full", "fifo", "dir", "below_file"])
def test_eval_output_file_that_cannot_be_written_is_refused_before_the_evaluation(files, tmp_path, capsys, flag,
                                                                                   kind):
    path = _bad_output(kind, tmp_path)
    _eval_refuses_output_before_loading(files, tmp_path, capsys, flag, path, kind)
    assert not (tmp_path / "fifo").exists() or (tmp_path / "fifo").is_fifo()


@pytest.mark.parametrize("kind", ["readonly", "fifo", "file"])
def test_eval_plot_directory_that_cannot_be_written_is_refused(files, tmp_path, capsys, kind):
    if kind == "file":
        (tmp_path / "a_file").write_text("x")
        path = tmp_path / "a_file"
    else:
        path = _bad_output(kind, tmp_path)
    _eval_refuses_output_before_loading(files, tmp_path, capsys, "--plot", path, kind)


@pytest.mark.slow  # one whole evaluation (about 15 s on a CPU, mostly compiling)
def test_eval_write_that_fails_after_the_check_is_one_line(files, tmp_path, capsys, monkeypatch):
    """A disk that fills up during the evaluation: the export's write fails; one line, exit 2, and the
    metrics written before it are complete (written atomically)."""
    from l2l_jax.evaluation import report

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(report, "write_export", full)
    metrics, export = tmp_path / "m.json", tmp_path / "e.jsonl"
    status, line = run("eval", eval_args(files, "--metrics_json", metrics, "--export", export), capsys)
    assert status == 2 and f"--export {export}" in line and "No space left" in line, line
    assert json.loads(metrics.read_text())  # complete
    assert not export.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]  # no temp left


# ------------------------------------------------------------------------------------- other programs' outputs
def test_train_checkpoint_path_fifo(files, tmp_path, capsys):
    os.mkfifo(tmp_path / "fifo")
    status, line = run("train", train_args(files, tmp_path, "--workdir", tmp_path / "fifo"), capsys)
    assert status == 2 and f"--checkpoint_path {tmp_path / 'fifo'}" in line and "FIFO" in line, line


@pytest.mark.parametrize("program", ["train", "eval"])
def test_negative_seed(files, tmp_path, capsys, program):
    argv = train_args(files, tmp_path, "--seed", "-1") if program == "train" else eval_args(files, "--seed", "-1")
    status, line = run(program, argv, capsys)
    assert status == 2 and "--seed -1" in line, line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("kind", ["fifo", "below_file", "readonly"])
def test_pack_out_that_cannot_be_written(files, tmp_path, capsys, kind):
    path = _bad_output(kind, tmp_path)
    try:
        status, line = run("pack", [files["data"] / "val.pkl", "--quiet", "--out", path], capsys)
        assert status == 2 and f"--out {path}" in line, line
    finally:
        if kind == "readonly":
            path.parent.chmod(0o700)


def test_pack_never_replaces_a_directory_that_is_not_a_pack(files, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    status, line = run("pack", [files["data"] / "val.pkl", "--quiet", "--out", mine], capsys)
    assert status == 2 and f"--out {mine}" in line and "not a pack" in line, line
    assert (mine / "thesis.tex").read_text() == "precious"


@pytest.mark.parametrize("case", ["file", "readonly", "num_train_0", "seed_-1", "train.pkl_is_a_dir"])
def test_synth_refuses_before_writing(tmp_path, capsys, case):
    out = tmp_path / "out"
    argv = ["--out", out, "--preset", "tiny", "--quiet"]
    if case == "file":
        out.write_text("x")
    elif case == "readonly":
        out = unwritable_dir(tmp_path) / "out"
        argv[1] = out
    elif case == "num_train_0":
        argv += ["--num_train", "0"]
    elif case == "seed_-1":
        argv += ["--seed", "-1"]
    else:
        (out / "train.pkl").mkdir(parents=True)
    try:
        status, line = run("synth", argv, capsys)
        said = {"num_train_0": "--num_train 0", "seed_-1": "--seed -1",
                "train.pkl_is_a_dir": str(out / "train.pkl")}.get(case, f"--out {out}")
        assert status == 2 and said in line, line
        assert not (out / "image_features").exists()
    finally:
        if case == "readonly":
            out.parent.chmod(0o700)


@pytest.mark.parametrize("kind", ["file", "fifo"])
def test_demo_out_that_cannot_be_a_directory(tmp_path, capsys, kind):
    out = tmp_path / "out"
    if kind == "file":
        out.write_text("x")
    else:
        os.mkfifo(out)
    status, line = run("demo", ["--out", out, "--preset", "tiny"], capsys)
    assert status == 2 and f"--out {out}" in line, line


# ------------------------------------------------------------------------------------- l2l-convert
def _fusion_pth(path: Path, **changes) -> Path:
    sd = {k: torch.from_numpy(np.array(v)) for k, v in manifest_state_dict(FUSION, 3).items()}
    sd.update(changes)
    torch.save({"model": sd}, path)
    return path


def test_convert_zero_class_classifier(tmp_path, capsys):
    pth = _fusion_pth(tmp_path / "zero.pth", **{"net_classifier.classifier.weight": torch.zeros(0, 512),
                                                 "net_classifier.classifier.bias": torch.zeros(0)})
    status, line = run("convert", ["imageaudionet", "--torch", pth, "--out", tmp_path / "m"], capsys)
    assert status == 2 and str(pth) in line and "0 classes" in line, line
    assert not (tmp_path / "m").exists()


def _odd_pth(kind: str, path: Path, files) -> Path:
    """The good preview model with one tensor stored as bfloat16, or sparse."""
    sd = torch.load(files["good_pth"], weights_only=True)["model"]
    w = sd["prediction_fc.weight"]
    sd["prediction_fc.weight"] = w.to(torch.bfloat16) if kind == "bfloat16" else w.to_sparse()
    torch.save({"model": sd}, path)
    return path


@pytest.mark.parametrize("kind", ["bfloat16", "sparse"])
@pytest.mark.parametrize("program", ["convert", "eval"])
def test_pth_with_bfloat16_or_sparse_tensors(files, tmp_path, capsys, kind, program):
    pth = _odd_pth(kind, tmp_path / f"{kind}.pth", files)
    argv = (["preview", "--torch", pth, "--out", tmp_path / "m"] if program == "convert"
            else eval_args(files, "--pretrained_model", pth, "--export", tmp_path / "e.jsonl"))
    if program == "eval":
        argv = argv[:argv.index("--pretrained_model")] + argv[argv.index("--pretrained_model") + 2:]
        argv += ["--pretrained_model", pth]
    status, line = run(program, argv, capsys)
    assert status == 2 and str(pth) in line and "prediction_fc.weight" in line and kind[:6] in line, line
    assert not (tmp_path / "m").exists() and not (tmp_path / "e.jsonl").exists()


def test_convert_bad_input_exits_2(tmp_path, capsys):
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint" * 10)
    status, line = run("convert", ["preview", "--torch", tmp_path / "garbage.pth", "--out", tmp_path / "m"], capsys)
    assert status == 2 and str(tmp_path / "garbage.pth") in line, line


@pytest.mark.parametrize("case", ["out_is_a_file", "out_not_a_model_dir", "export_out_is_a_dir", "export_out_fifo",
                                  "export_out_exists"])
def test_convert_out_that_cannot_take_the_result(files, tmp_path, capsys, case):
    (tmp_path / "a_file").write_text("x")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("precious")
    model = tmp_path / "model"
    assert _program("convert")(["preview", "--torch", str(files["good_pth"]), "--out", str(model)]) == 0
    if case == "export_out_fifo":
        os.mkfifo(tmp_path / "fifo")
    out, argv = {
        "out_is_a_file": (tmp_path / "a_file", ["preview", "--torch", files["good_pth"], "--out", tmp_path / "a_file"]),
        "out_not_a_model_dir": (mine, ["preview", "--torch", files["good_pth"], "--out", mine, "--overwrite"]),
        "export_out_is_a_dir": (mine, ["export", "--flax", model, "--out", mine]),
        "export_out_fifo": (tmp_path / "fifo", ["export", "--flax", model, "--out", tmp_path / "fifo"]),
        "export_out_exists": (tmp_path / "a_file", ["export", "--flax", model, "--out", tmp_path / "a_file"]),
    }[case]
    status, line = run("convert", argv, capsys)
    assert status == 2 and f"--out {out}" in line, line
    assert (mine / "keep.txt").read_text() == "precious" and (tmp_path / "a_file").read_text() == "x"


@pytest.mark.parametrize("program", ["convert", "eval"])
def test_model_dir_without_its_checksum_is_refused(files, tmp_path, capsys, program):
    model = tmp_path / "model"
    assert _program("convert")(["preview", "--torch", str(files["good_pth"]), "--out", str(model)]) == 0
    meta = json.loads((model / "meta.json").read_text())
    del meta["tensors_sha256"]
    (model / "meta.json").write_text(json.dumps(meta))
    argv = (["export", "--flax", model, "--out", tmp_path / "x.pth"] if program == "convert"
            else eval_args(files)[:-2] + ["--pretrained_model", model])
    status, line = run(program, argv, capsys)
    assert status == 2 and str(model) in line and "tensors_sha256" in line, line
    assert not (tmp_path / "x.pth").exists()


# ------------------------------------------------------------------------------------- --config files
CONFIGS = {
    "syntax_error": ("def get_config(:\n    return {}\n", "syntax error at line 1"),
    "non_dict": ("def get_config():\n    return [1, 2]\n", "returned list"),
    "raises": ("def get_config():\n    raise KeyError('oops')\n", "KeyError"),
    "import_fails": ("import no_such_module_here\n", "ModuleNotFoundError"),
    "wrong_type": ("def get_config():\n    return {'episode_length': 'many'}\n", "'episode_length'"),
}


@pytest.mark.parametrize("case", sorted(CONFIGS))
@pytest.mark.parametrize("program", ["train", "eval"])
def test_config_file_that_does_not_give_settings(files, tmp_path, capsys, program, case):
    text, words = CONFIGS[case]
    cfg = tmp_path / f"{case}.py"
    cfg.write_text(text)
    argv = train_args(files, tmp_path) if program == "train" else eval_args(files)
    status, line = run(program, [*argv, "--config", cfg], capsys)
    assert status == 2 and f"--config {cfg}" in line and words in line, line
    assert not (tmp_path / "run").exists()
