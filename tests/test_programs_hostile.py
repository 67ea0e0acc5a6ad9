"""Hostile, faulty and careless input through the programs' real ``main(argv)``: l2l-train, l2l-eval, l2l-pack,
l2l-synth, l2l-demo (`l2l_jax.programs`) and l2l-convert (`convert.cli`).

Hostile files: a dataset pickle whose ``__reduce__`` would create a marker file; a feature ``.npy`` holding an
object array whose element pickles such a payload; a torch ``.pth`` zip whose ``data.pkl`` was rewritten to carry
such a payload; a ``.pth`` whose weights hold NaN. Faulty input: flags, paths, a meta.json without variant.
Careless input: output paths that cannot take the output (a read-only place, ``/dev/full``, a FIFO, a directory
or file in the way, a kernel interface under ``/proc``, ``/sys`` or ``/dev`` where root can "write"), checked
before any work for every program; a write that still fails; ``.pth`` files with bfloat16 or sparse tensors or
a 0-class classifier; ``--config`` files that do not run or return no dict; a model directory whose
``meta.json`` lost its checksum; ``--seed -1``. Each run ends with exit status 2 (input errors), one line naming
the flag or file, no traceback, no marker file, never hangs, and writes nothing. Everything fails before
anything compiles (but for one marked slow), on one tiny synthetic dataset shared by the module. What the
libraries do with each input in detail: tests/test_data_hostile.py, tests/test_weights_integrity.py,
tests/test_evaluate.py; l2l-finetune: tests/test_finetune_hostile.py; the multi-host flags:
tests/test_multihost.py.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import signal
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from fixture_inputs import manifest_state_dict

PREVIEW = "manifests/preview_two_C12.json"
FUSION = "manifests/imageaudionet_C12.json"


class _Payload:
    """Unpickling it runs a shell command (creates the marker)."""

    def __init__(self, cmd: str):
        self.cmd = cmd

    def __reduce__(self):
        return os.system, (self.cmd,)


def _save_pth(sd: dict[str, np.ndarray], path: Path) -> Path:
    torch.save({"model": {k: torch.from_numpy(np.array(v)) for k, v in sd.items()}}, path)
    return path


def _tampered_pth(sd: dict[str, np.ndarray], path: Path, marker: Path) -> Path:
    """A real torch zip whose data.pkl member is replaced by a pickle that would run a payload."""
    clean = _save_pth(sd, path.with_suffix(".clean"))
    with zipfile.ZipFile(clean) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as dst:
        names = src.namelist()
        assert any(n.endswith("/data.pkl") for n in names), names
        for name in names:
            data = src.read(name)
            if name.endswith("/data.pkl"):
                data = pickle.dumps({"model": _Payload(f"touch {marker}")}, protocol=2)
            dst.writestr(src.getinfo(name), data)
    clean.unlink()
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The tiny dataset, good weights, and every hostile file of the suite (marker: what a payload creates)."""
    from l2l_jax.data.synthetic import generate

    base = tmp_path_factory.mktemp("hostile")
    data = generate(base / "tiny", preset="tiny", seed=0, progress=False)
    marker = base / "PWNED"
    out = {"base": base, "data": data, "marker": marker}
    preview, fusion = manifest_state_dict(PREVIEW, 3), manifest_state_dict(FUSION, 3)
    out["good_pth"] = _save_pth(preview, base / "good_model.pth")
    # a dataset pickle with a payload
    out["payload_pkl"] = base / "payload_train.pkl"
    out["payload_pkl"].write_bytes(pickle.dumps((["imageAudio_features/v_train_00000.npy"],
                                                 [_Payload(f"touch {marker}")])))
    # a split whose first video's image features are an object array pickling a payload
    objnpy = base / "objnpy"
    shutil.copytree(data, objnpy)
    paths, _ = pickle.loads((data / "train.pkl").read_bytes())  # our own file
    out["object_npy"] = objnpy / "image_features" / Path(paths[0]).name
    with open(out["object_npy"], "wb") as f:
        np.save(f, np.array([_Payload(f"touch {marker}")], dtype=object), allow_pickle=True)
    out["object_pkl"] = objnpy / "train.pkl"
    # .pth files: payload in data.pkl, NaN weights (preview model and fusion net)
    out["tampered_pth"] = _tampered_pth(preview, base / "tampered_model.pth", marker)
    out["tampered_fusion_pth"] = _tampered_pth(fusion, base / "tampered_fusion.pth", marker)
    bad = dict(preview)
    bad["prediction_fc.weight"] = np.array(bad["prediction_fc.weight"])
    bad["prediction_fc.weight"][0, 0] = np.nan
    out["nan_pth"] = _save_pth(bad, base / "nan_model.pth")
    bad = dict(fusion)
    name = next(k for k in bad if bad[k].dtype.kind == "f" and bad[k].ndim == 2)
    bad[name] = np.array(bad[name])
    bad[name][0, 0] = np.inf
    out["nan_fusion_pth"], out["nan_fusion_tensor"] = _save_pth(bad, base / "nan_fusion.pth"), name
    return out


def eval_args(f, *extra) -> list[str]:
    return [str(a) for a in ("--test_dataset_file", f["data"] / "val.pkl", "--num_classes", "12", "--batch_size",
                             "16", "--buckets", "264", "--decode_threads", "2", "--pretrained_model", f["good_pth"],
                             *extra)]


def train_args(f, tmp: Path, *extra) -> list[str]:
    return [str(a) for a in ("--train_dataset_file", f["data"] / "train.pkl", "--num_classes", "12", "--batch_size",
                             "16", "--with_lstm_ce_loss", "--buckets", "264", "--decode_threads", "2", "--workdir",
                             tmp / "run", "--epochs", "1", *extra)]


def _replace(args: list[str], flag: str, value: str) -> list[str]:
    args = list(args)
    if flag in args:
        args[args.index(flag) + 1] = value
    else:
        args += [flag, value]
    return args


def _program(name: str):
    if name == "train":
        from l2l_jax.programs.train import main
    elif name == "eval":
        from l2l_jax.programs.evaluate import main
    elif name == "pack":
        from l2l_jax.programs.pack import main
    elif name == "synth":
        from l2l_jax.programs.synth import main
    elif name == "demo":
        from l2l_jax.programs.demo import main
    else:
        from convert.cli import main
    return main


def run_message(program: str, argv: list, capsys) -> tuple[int, str, str]:
    """(status, the program's one ``l2l-<program>:`` line, its message from that line to the end of stderr) of a
    run that fails on input; no traceback anywhere in its output, and the run gives up within 60 s (a FIFO
    opened for writing would block forever)."""
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
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err, captured.err[-3000:]
    lines = [line for line in captured.err.splitlines() if line.startswith(f"l2l-{program}:")]
    assert len(lines) == 1, captured.err[-3000:]
    return status, lines[0], captured.err[captured.err.index(lines[0]):].strip()


def run(program: str, argv: list, capsys) -> tuple[int, str]:
    """(status, the one ``l2l-<program>:`` line) of `run_message`, the line being the last thing said."""
    status, line, message = run_message(program, argv, capsys)
    assert message == line, message
    return status, line


def _assert_one_line(case: str, message: str) -> None:
    """Last of a case's checks: the message is one line, or, where it lists problems (`MULTI_LINE`), a few:
    the first line, one line per problem and a hint."""
    if case in MULTI_LINE:
        assert len(message.splitlines()) <= 5, message
        return
    assert "\n" not in message, message


# Cases whose message lists the problems it found under its first line (a few lines, each naming a file or
# tensor).
_FEATURES = ("l2l_jax/data (DatasetError of a split check): '1 problem(s) in the dataset <pkl>:' then one line per "
             "bad file and '(use --skip_bad_videos ...)'")
_NONFINITE = ("convert/torch_io or convert/core (ConversionError): '<pth> is not an upstream ... state dict; nothing "
              "was converted:' then '  non-finite values (NaN or inf) (1):' and the tensor names")
MULTI_LINE = {"object_npy-train": _FEATURES, "object_npy-eval": _FEATURES, "object_npy-pack": _FEATURES,
              "nan_pth-train-pretrained": _NONFINITE, "nan_pth-train-fusion": _NONFINITE, "nan_pth-eval": _NONFINITE,
              "nan_pth-convert-preview": _NONFINITE, "nan_pth-convert-imageaudionet": _NONFINITE}


# name -> (program, the file the message must name, argv builder, words the message must hold)
def _hostile_cases(f, tmp: Path) -> dict:
    return {
        # a dataset pickle with a __reduce__ payload
        "payload_pkl-train": ("train", f["payload_pkl"], train_args(f, tmp, "--train_dataset_file",
                                                                     str(f["payload_pkl"])), "unsafe"),
        "payload_pkl-train-test_split": ("train", f["payload_pkl"],
                                         train_args(f, tmp, "--test_dataset_file", str(f["payload_pkl"])), "unsafe"),
        "payload_pkl-eval": ("eval", f["payload_pkl"], _replace(eval_args(f), "--test_dataset_file",
                                                                str(f["payload_pkl"])), "unsafe"),
        "payload_pkl-pack": ("pack", f["payload_pkl"], [str(f["payload_pkl"]), "--quiet", "--out", str(tmp / "p")],
                             "unsafe"),
        # a feature .npy holding an object array (pickled payload)
        "object_npy-train": ("train", f["object_npy"], _replace(train_args(f, tmp), "--train_dataset_file",
                                                                str(f["object_pkl"])), "object array"),
        "object_npy-eval": ("eval", f["object_npy"], _replace(eval_args(f), "--test_dataset_file",
                                                              str(f["object_pkl"])), "object array"),
        "object_npy-pack": ("pack", f["object_npy"], [str(f["object_pkl"]), "--quiet", "--out", str(tmp / "p")],
                            "object array"),
        # a .pth whose data.pkl carries a payload
        "tampered_pth-train-pretrained": ("train", f["tampered_pth"],
                                          train_args(f, tmp, "--pretrained_model", str(f["tampered_pth"])), ""),
        "tampered_pth-train-fusion": ("train", f["tampered_fusion_pth"],
                                      train_args(f, tmp, "--weights_audioImageModel", str(f["tampered_fusion_pth"])),
                                      ""),
        "tampered_pth-eval": ("eval", f["tampered_pth"], _replace(eval_args(f), "--pretrained_model",
                                                                  str(f["tampered_pth"])), ""),
        "tampered_pth-convert-preview": ("convert", f["tampered_pth"],
                                         ["preview", "--torch", str(f["tampered_pth"]), "--out", str(tmp / "c")], ""),
        "tampered_pth-convert-imageaudionet": ("convert", f["tampered_fusion_pth"],
                                               ["imageaudionet", "--torch", str(f["tampered_fusion_pth"]), "--out",
                                                str(tmp / "c")], ""),
        # NaN weights
        "nan_pth-train-pretrained": ("train", f["nan_pth"], train_args(f, tmp, "--pretrained_model",
                                                                        str(f["nan_pth"])), "prediction_fc.weight"),
        "nan_pth-train-fusion": ("train", f["nan_fusion_pth"],
                                 train_args(f, tmp, "--weights_audioImageModel", str(f["nan_fusion_pth"])),
                                 f["nan_fusion_tensor"]),
        "nan_pth-eval": ("eval", f["nan_pth"], _replace(eval_args(f), "--pretrained_model", str(f["nan_pth"])),
                         "prediction_fc.weight"),
        "nan_pth-convert-preview": ("convert", f["nan_pth"], ["preview", "--torch", str(f["nan_pth"]), "--out",
                                                              str(tmp / "c")], "prediction_fc.weight"),
        "nan_pth-convert-imageaudionet": ("convert", f["nan_fusion_pth"],
                                          ["imageaudionet", "--torch", str(f["nan_fusion_pth"]), "--out",
                                           str(tmp / "c")], f["nan_fusion_tensor"]),
    }


HOSTILE = ["payload_pkl-train", "payload_pkl-train-test_split", "payload_pkl-eval", "payload_pkl-pack",
           "object_npy-train", "object_npy-eval", "object_npy-pack",
           "tampered_pth-train-pretrained", "tampered_pth-train-fusion", "tampered_pth-eval",
           "tampered_pth-convert-preview", "tampered_pth-convert-imageaudionet",
           "nan_pth-train-pretrained", "nan_pth-train-fusion", "nan_pth-eval", "nan_pth-convert-preview",
           "nan_pth-convert-imageaudionet"]


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_file_through_every_program(files, tmp_path, capsys, case):
    program, path, argv, words = _hostile_cases(files, tmp_path)[case]
    status, line, message = run_message(program, argv, capsys)
    assert status == 2, message
    assert str(path) in message and words in message, message
    assert not files["marker"].exists(), "a payload ran"
    assert not (tmp_path / "c").exists() and not (tmp_path / "p").exists()  # nothing written
    assert not (tmp_path / "run" / "model_final").exists()
    assert not (tmp_path / "run" / ".lock").exists()  # the run directory's lock is released on errors too
    _assert_one_line(case, message)


def test_the_payloads_are_real(files, tmp_path):
    """Each hostile file does run its payload when read without restrictions (so the suite tests something)."""
    marker = files["marker"]
    for load in (lambda: pickle.loads(files["payload_pkl"].read_bytes()),
                 lambda: np.load(files["object_npy"], allow_pickle=True),
                 lambda: torch.load(files["tampered_pth"], weights_only=False)):
        assert not marker.exists()
        load()
        assert marker.exists()
        marker.unlink()


# ---------------------------------------------------------------------------------------------- faulty input
def _model_dir_without_variant(tmp: Path) -> Path:
    from l2l_jax import model_dir
    from l2l_jax.pth_convert import variables_from_state_dict

    variables, meta = variables_from_state_dict(manifest_state_dict(PREVIEW, 3), "two", "test")
    out = model_dir.save_model_dir(tmp / "model_no_variant", variables, meta)
    meta_file = out / "meta.json"
    meta = json.loads(meta_file.read_text())
    del meta["variant"]
    meta_file.write_text(json.dumps(meta))
    return out


def _faulty_cases(f, tmp: Path) -> dict:
    """name -> (program, argv, what the message must name)."""
    (tmp / "a_file").write_text("x")
    (tmp / "a_dir").mkdir()
    missing = tmp / "missing.pkl"
    cases = {
        "episode_length_0-train": ("train", train_args(f, tmp, "--episode_length", "0"), "--episode_length 0"),
        "episode_length_0-eval": ("eval", eval_args(f, "--episode_length", "0"), "--episode_length 0"),
        "batch_size_0-train": ("train", train_args(f, tmp, "--batch_size", "0"), "--batch_size 0"),
        "batch_size_0-eval": ("eval", eval_args(f, "--batch_size", "0"), "--batch_size 0"),
        "print_freq_0-train": ("train", train_args(f, tmp, "--print_freq", "0"), "--print_freq 0"),
        "print_freq_0-eval": ("eval", eval_args(f, "--print_freq", "0"), "--print_freq 0"),
        "keep_checkpoints_0-train": ("train", train_args(f, tmp, "--keep_checkpoints", "0"), "--keep_checkpoints 0"),
        "no_loss_flag-train": ("train", [a for a in train_args(f, tmp) if a != "--with_lstm_ce_loss"],
                               "--with_avgpool_ce_loss"),
        "checkpoint_path_is_a_file-train": ("train", _replace(train_args(f, tmp), "--workdir", str(tmp / "a_file")),
                                            str(tmp / "a_file")),
        "missing_dataset-train": ("train", _replace(train_args(f, tmp), "--train_dataset_file", str(missing)),
                                  str(missing)),
        "missing_dataset-eval": ("eval", _replace(eval_args(f), "--test_dataset_file", str(missing)), str(missing)),
        "missing_dataset-pack": ("pack", [str(missing), "--quiet"], str(missing)),
        "plot_is_a_file-eval": ("eval", eval_args(f, "--plot", str(tmp / "a_file")), "--plot"),
        "export_is_a_dir-eval": ("eval", eval_args(f, "--export", str(tmp / "a_dir")), "--export"),
        "meta_without_variant-train": ("train", None, "meta.json"),
        "meta_without_variant-eval": ("eval", None, "meta.json"),
        "meta_without_variant-convert_export": ("convert", None, "meta.json"),
    }
    return cases


FAULTY = ["episode_length_0-train", "episode_length_0-eval", "batch_size_0-train", "batch_size_0-eval",
          "print_freq_0-train", "print_freq_0-eval", "keep_checkpoints_0-train", "no_loss_flag-train",
          "checkpoint_path_is_a_file-train", "missing_dataset-train", "missing_dataset-eval", "missing_dataset-pack",
          "plot_is_a_file-eval", "export_is_a_dir-eval", "meta_without_variant-train", "meta_without_variant-eval",
          "meta_without_variant-convert_export"]


@pytest.mark.parametrize("case", FAULTY)
def test_faulty_input(files, tmp_path, capsys, case):
    program, argv, said = _faulty_cases(files, tmp_path)[case]
    if case.startswith("meta_without_variant"):
        model = _model_dir_without_variant(tmp_path)
        argv = {"train": train_args(files, tmp_path, "--pretrained_model", str(model)),
                "eval": _replace(eval_args(files), "--pretrained_model", str(model)),
                "convert": ["export", "--flax", str(model), "--out", str(tmp_path / "out.pth")]}[program]
        said = str(model)
    status, line, message = run_message(program, argv, capsys)
    assert status == 2, message
    assert said in line, message
    assert not (tmp_path / "run" / "model_final").exists() and not (tmp_path / "out.pth").exists()
    _assert_one_line(case, message)


UNWRITABLE = ["train", "eval-export", "eval-plot", "pack", "convert"]


@pytest.mark.parametrize("case", UNWRITABLE)
def test_unwritable_output_directory(files, tmp_path, capsys, unwritable_dir, case):
    ro = unwritable_dir()
    argv = {"train": _replace(train_args(files, tmp_path), "--workdir", str(ro / "run")),
            "eval-export": eval_args(files, "--export", str(ro / "x.jsonl")),
            "eval-plot": eval_args(files, "--plot", str(ro / "plots")),
            "pack": [str(files["data"] / "val.pkl"), "--quiet", "--out", str(ro / "val.pack")],
            "convert": ["preview", "--torch", str(files["good_pth"]), "--out", str(ro / "m")]}[case]
    program = case.split("-")[0]
    status, line, message = run_message(program, argv, capsys)
    assert status == 2, message
    assert str(ro) in line, message
    _assert_one_line(case, message)


#: Kernel interfaces where root can "write" (or create) files: refused by prefix or file system, as anyone.
KERNEL_PLACES = {"proc_new": "/proc/l2l_out", "proc_file": "/proc/sys/vm/drop_caches",
                 "sys_new": "/sys/kernel/l2l_out", "sys_file": "/sys/kernel/mm/transparent_hugepage/enabled",
                 "dev_new": "/dev/l2l_out", "dev_stdout": "/dev/stdout"}


@pytest.fixture
def bad_output(tmp_path, unwritable_dir):
    """``bad_output(kind)``: a path that cannot take an output file (kinds: readonly, dev_full, fifo, dir,
    below_file, and the `KERNEL_PLACES`)."""
    def make(kind: str) -> Path:
        if kind in KERNEL_PLACES:
            path = Path(KERNEL_PLACES[kind])
            if not os.path.lexists(path if not kind.endswith("_new") else path.parent):
                pytest.skip(f"no {path} here")
            return path
        if kind == "readonly":
            return unwritable_dir() / "x.out"
        if kind == "dev_full":
            if not os.path.exists("/dev/full"):
                pytest.skip("no /dev/full here")
            return Path("/dev/full")
        if kind == "fifo":
            os.mkfifo(tmp_path / "fifo")
            return tmp_path / "fifo"
        if kind == "dir":
            (tmp_path / "a_dir").mkdir()
            return tmp_path / "a_dir"
        (tmp_path / "a_file").write_text("x")
        return tmp_path / "a_file" / "x.out"

    return make


def _eval_refuses_output_before_loading(files, tmp_path, capsys, flag: str, path, kind: str) -> None:
    """l2l-eval with `flag` naming `path` and weights that do not exist: the output path is reported first (exit
    2, one line naming the flag and path), so it is checked before anything loads. A kernel interface is
    refused as such (running as root too) and nothing is created there."""
    argv = eval_args(files, flag, path)
    argv[argv.index("--pretrained_model") + 1] = tmp_path / "no_such_model.pth"
    status, line = run("eval", argv, capsys)
    assert status == 2 and f"{flag} {path}" in line, line
    if kind in KERNEL_PLACES:
        assert "kernel interface" in line, line
        assert not kind.endswith("_new") or not os.path.lexists(path)


# ------------------------------------------------------------------------------------- l2l-eval's outputs
@pytest.mark.parametrize("flag", ["--export", "--metrics_json"])
@pytest.mark.parametrize("kind", ["readonly", "dev_full", "fifo", "dir", "below_file", *KERNEL_PLACES])
def test_eval_output_file_that_cannot_be_written_is_refused_before_the_evaluation(files, tmp_path, capsys,
                                                                                   bad_output, flag, kind):
    path = bad_output(kind)
    _eval_refuses_output_before_loading(files, tmp_path, capsys, flag, path, kind)
    assert not (tmp_path / "fifo").exists() or (tmp_path / "fifo").is_fifo()


@pytest.mark.parametrize("kind", ["readonly", "fifo", "file", "proc_new", "sys_new", "dev_new"])
def test_eval_plot_directory_that_cannot_be_written_is_refused(files, tmp_path, capsys, bad_output, kind):
    if kind == "file":
        (tmp_path / "a_file").write_text("x")
        path = tmp_path / "a_file"
    else:
        path = bad_output(kind)
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
def test_pack_out_that_cannot_be_written(files, capsys, bad_output, kind):
    path = bad_output(kind)
    status, line = run("pack", [files["data"] / "val.pkl", "--quiet", "--out", path], capsys)
    assert status == 2 and f"--out {path}" in line, line


def test_pack_never_replaces_a_directory_that_is_not_a_pack(files, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    status, line = run("pack", [files["data"] / "val.pkl", "--quiet", "--out", mine], capsys)
    assert status == 2 and f"--out {mine}" in line and "not a pack" in line, line
    assert (mine / "thesis.tex").read_text() == "precious"


@pytest.mark.parametrize("case", ["file", "readonly", "num_train_0", "seed_-1", "train.pkl_is_a_dir"])
def test_synth_refuses_before_writing(tmp_path, capsys, unwritable_dir, case):
    out = tmp_path / "out"
    argv = ["--out", out, "--preset", "tiny", "--quiet"]
    if case == "file":
        out.write_text("x")
    elif case == "readonly":
        out = unwritable_dir() / "out"
        argv[1] = out
    elif case == "num_train_0":
        argv += ["--num_train", "0"]
    elif case == "seed_-1":
        argv += ["--seed", "-1"]
    else:
        (out / "train.pkl").mkdir(parents=True)
    status, line = run("synth", argv, capsys)
    said = {"num_train_0": "--num_train 0", "seed_-1": "--seed -1",
            "train.pkl_is_a_dir": str(out / "train.pkl")}.get(case, f"--out {out}")
    assert status == 2 and said in line, line
    assert not (out / "image_features").exists()


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
