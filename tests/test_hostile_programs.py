"""Hostile and faulty input through every program that reads it, by the programs' real ``main(argv)``:
l2l-train (`l2l_jax.train.main`), l2l-eval (`l2l_jax.evaluate.main`), l2l-pack (`l2l_jax.data.pack.main`),
l2l-convert (`convert.cli.main`).

Payloads: a dataset pickle whose ``__reduce__`` would create a marker file; a feature ``.npy`` holding an object
array whose element pickles such a payload; a torch ``.pth`` zip whose ``data.pkl`` was rewritten to carry such a
payload; a ``.pth`` whose weights hold NaN. Each run must end with a non-zero status (2 for input errors), one
line naming the file, no traceback, and no marker file. Then the faulty-input classes (flags, paths, a
meta.json without variant). Everything fails before anything compiles, on one tiny synthetic dataset shared by
the module. What the libraries do with each input in detail: tests/test_data_hostile.py,
tests/test_weights_integrity.py, tests/test_evaluate.py.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from fixture_inputs import manifest_state_dict
from path_helpers import unwritable_dir

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


def _train_args(f, tmp: Path, *extra: str) -> list[str]:
    return ["--train_dataset_file", str(f["data"] / "train.pkl"), "--num_classes", "12", "--batch_size", "16",
            "--with_lstm_ce_loss", "--buckets", "264", "--decode_threads", "2", "--workdir", str(tmp / "run"),
            "--epochs", "1", *extra]


def _eval_args(f, *extra: str) -> list[str]:
    return ["--test_dataset_file", str(f["data"] / "val.pkl"), "--num_classes", "12", "--batch_size", "16",
            "--buckets", "264", "--decode_threads", "2", "--pretrained_model", str(f["good_pth"]), *extra]


def _replace(args: list[str], flag: str, value: str) -> list[str]:
    args = list(args)
    if flag in args:
        args[args.index(flag) + 1] = value
    else:
        args += [flag, value]
    return args


def _program(name: str):
    if name == "train":
        from l2l_jax.train import main
    elif name == "eval":
        from l2l_jax.evaluate import main
    elif name == "pack":
        from l2l_jax.data.pack import main
    else:
        from convert.cli import main
    return main


def _run(program: str, argv: list[str], capsys) -> tuple[int, str, str]:
    """(status, the program's ``l2l-<program>:`` line, its message from that line to the end of stderr); no
    traceback anywhere in its output, and the message is the last thing it says."""
    capsys.readouterr()
    status = _program(program)(argv)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err, captured.err[-3000:]
    lines = [line for line in captured.err.splitlines() if line.startswith(f"l2l-{program}:")]
    assert len(lines) == 1, captured.err[-3000:]
    message = captured.err[captured.err.index(lines[0]):].strip()
    return status, lines[0], message


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
        "payload_pkl-train": ("train", f["payload_pkl"], _train_args(f, tmp, "--train_dataset_file",
                                                                     str(f["payload_pkl"])), "unsafe"),
        "payload_pkl-train-test_split": ("train", f["payload_pkl"],
                                         _train_args(f, tmp, "--test_dataset_file", str(f["payload_pkl"])), "unsafe"),
        "payload_pkl-eval": ("eval", f["payload_pkl"], _replace(_eval_args(f), "--test_dataset_file",
                                                                str(f["payload_pkl"])), "unsafe"),
        "payload_pkl-pack": ("pack", f["payload_pkl"], [str(f["payload_pkl"]), "--quiet", "--out", str(tmp / "p")],
                             "unsafe"),
        # a feature .npy holding an object array (pickled payload)
        "object_npy-train": ("train", f["object_npy"], _replace(_train_args(f, tmp), "--train_dataset_file",
                                                                str(f["object_pkl"])), "object array"),
        "object_npy-eval": ("eval", f["object_npy"], _replace(_eval_args(f), "--test_dataset_file",
                                                              str(f["object_pkl"])), "object array"),
        "object_npy-pack": ("pack", f["object_npy"], [str(f["object_pkl"]), "--quiet", "--out", str(tmp / "p")],
                            "object array"),
        # a .pth whose data.pkl carries a payload
        "tampered_pth-train-pretrained": ("train", f["tampered_pth"],
                                          _train_args(f, tmp, "--pretrained_model", str(f["tampered_pth"])), ""),
        "tampered_pth-train-fusion": ("train", f["tampered_fusion_pth"],
                                      _train_args(f, tmp, "--weights_audioImageModel", str(f["tampered_fusion_pth"])),
                                      ""),
        "tampered_pth-eval": ("eval", f["tampered_pth"], _replace(_eval_args(f), "--pretrained_model",
                                                                  str(f["tampered_pth"])), ""),
        "tampered_pth-convert-preview": ("convert", f["tampered_pth"],
                                         ["preview", "--torch", str(f["tampered_pth"]), "--out", str(tmp / "c")], ""),
        "tampered_pth-convert-imageaudionet": ("convert", f["tampered_fusion_pth"],
                                               ["imageaudionet", "--torch", str(f["tampered_fusion_pth"]), "--out",
                                                str(tmp / "c")], ""),
        # NaN weights
        "nan_pth-train-pretrained": ("train", f["nan_pth"], _train_args(f, tmp, "--pretrained_model",
                                                                        str(f["nan_pth"])), "prediction_fc.weight"),
        "nan_pth-train-fusion": ("train", f["nan_fusion_pth"],
                                 _train_args(f, tmp, "--weights_audioImageModel", str(f["nan_fusion_pth"])),
                                 f["nan_fusion_tensor"]),
        "nan_pth-eval": ("eval", f["nan_pth"], _replace(_eval_args(f), "--pretrained_model", str(f["nan_pth"])),
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
    status, line, message = _run(program, argv, capsys)
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
        "episode_length_0-train": ("train", _train_args(f, tmp, "--episode_length", "0"), "--episode_length 0"),
        "episode_length_0-eval": ("eval", _eval_args(f, "--episode_length", "0"), "--episode_length 0"),
        "batch_size_0-train": ("train", _train_args(f, tmp, "--batch_size", "0"), "--batch_size 0"),
        "batch_size_0-eval": ("eval", _eval_args(f, "--batch_size", "0"), "--batch_size 0"),
        "print_freq_0-train": ("train", _train_args(f, tmp, "--print_freq", "0"), "--print_freq 0"),
        "print_freq_0-eval": ("eval", _eval_args(f, "--print_freq", "0"), "--print_freq 0"),
        "keep_checkpoints_0-train": ("train", _train_args(f, tmp, "--keep_checkpoints", "0"), "--keep_checkpoints 0"),
        "no_loss_flag-train": ("train", [a for a in _train_args(f, tmp) if a != "--with_lstm_ce_loss"],
                               "--with_avgpool_ce_loss"),
        "checkpoint_path_is_a_file-train": ("train", _replace(_train_args(f, tmp), "--workdir", str(tmp / "a_file")),
                                            str(tmp / "a_file")),
        "missing_dataset-train": ("train", _replace(_train_args(f, tmp), "--train_dataset_file", str(missing)),
                                  str(missing)),
        "missing_dataset-eval": ("eval", _replace(_eval_args(f), "--test_dataset_file", str(missing)), str(missing)),
        "missing_dataset-pack": ("pack", [str(missing), "--quiet"], str(missing)),
        "plot_is_a_file-eval": ("eval", _eval_args(f, "--plot", str(tmp / "a_file")), "--plot"),
        "export_is_a_dir-eval": ("eval", _eval_args(f, "--export", str(tmp / "a_dir")), "--export"),
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
        argv = {"train": _train_args(files, tmp_path, "--pretrained_model", str(model)),
                "eval": _replace(_eval_args(files), "--pretrained_model", str(model)),
                "convert": ["export", "--flax", str(model), "--out", str(tmp_path / "out.pth")]}[program]
        said = str(model)
    status, line, message = _run(program, argv, capsys)
    assert status == 2, message
    assert said in line, message
    assert not (tmp_path / "run" / "model_final").exists() and not (tmp_path / "out.pth").exists()
    _assert_one_line(case, message)


UNWRITABLE = ["train", "eval-export", "eval-plot", "pack", "convert"]


@pytest.mark.parametrize("case", UNWRITABLE)
def test_unwritable_output_directory(files, tmp_path, capsys, case):
    ro = unwritable_dir(tmp_path)
    try:
        argv = {"train": _replace(_train_args(files, tmp_path), "--workdir", str(ro / "run")),
                "eval-export": _eval_args(files, "--export", str(ro / "x.jsonl")),
                "eval-plot": _eval_args(files, "--plot", str(ro / "plots")),
                "pack": [str(files["data"] / "val.pkl"), "--quiet", "--out", str(ro / "val.pack")],
                "convert": ["preview", "--torch", str(files["good_pth"]), "--out", str(ro / "m")]}[case]
        program = case.split("-")[0]
        status, line, message = _run(program, argv, capsys)
        assert status == 2, message
        assert str(ro) in line, message
        _assert_one_line(case, message)
    finally:
        ro.chmod(0o700)
