"""Weights are checked: non-finite tensors are refused at conversion and at load (naming the tensor), a
converted directory carries a checksum of its tensors that loading verifies, and a meta.json that lies
(missing field, wrong variant, wrong class count) is a clear `WeightsError` naming the directory."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fixture_inputs import manifest_state_dict

from convert.cli import main as convert_main
from l2l_jax import model_dir, weights
from l2l_jax import pth_convert as core
from l2l_jax.errors import WeightsError
from l2l_jax.integrity import nonfinite_tensors, tensor_checksum
from l2l_jax.torch_io import ConversionError


def _state_dict() -> dict[str, np.ndarray]:
    return manifest_state_dict("manifests/preview_two_C12.json", 3)


def _save_pth(sd: dict[str, np.ndarray], path: Path) -> Path:
    torch.save({"model": {k: torch.from_numpy(v.copy()) for k, v in sd.items()}}, path)
    return path


def _converted(tmp_path: Path) -> Path:
    variables, meta = core.variables_from_state_dict(_state_dict(), "two", "test")
    return model_dir.save_model_dir(tmp_path / "m", variables, meta)


def test_checksum_changes_with_any_bit_and_nonfinite_are_named():
    tree = {"params": {"a": {"kernel": np.ones((2, 3), np.float32)}, "b": np.zeros(4, np.float32)}}
    ref = tensor_checksum(tree)
    flipped = {"params": {"a": {"kernel": np.ones((2, 3), np.float32)}, "b": np.zeros(4, np.float32)}}
    flipped["params"]["b"].view(np.uint32)[2] ^= 1
    assert tensor_checksum(flipped) != ref
    assert nonfinite_tensors(tree) == []
    tree["params"]["a"]["kernel"][1, 2] = np.nan
    assert nonfinite_tensors(tree) == ["params/a/kernel"]


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_conversion_refuses_a_nonfinite_tensor_and_names_it(tmp_path, capsys, bad):
    sd = _state_dict()
    sd["prediction_fc.weight"][0, 0] = bad
    pth = _save_pth(sd, tmp_path / "model_final.pth")
    with pytest.raises(ConversionError, match="non-finite.*\n.*prediction_fc.weight"):
        core.load_upstream(pth, "two")
    assert convert_main(["preview", "--torch", str(pth), "--out", str(tmp_path / "out")]) != 0
    assert "prediction_fc.weight" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    with pytest.raises(WeightsError, match="prediction_fc.weight"):
        weights.load(pth, "two", "--pretrained_model")


def test_converted_directory_verifies_its_checksum(tmp_path):
    d = _converted(tmp_path)
    meta = json.loads((d / "meta.json").read_text())
    assert len(meta["tensors_sha256"]) == 64
    variables, _ = model_dir.load_model_dir(d)  # intact: loads
    meta["tensors_sha256"] = "0" * 64
    (d / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(model_dir.NotAModelDirError, match="checksum"):
        model_dir.load_model_dir(d)
    with pytest.raises(WeightsError, match="checksum"):
        weights.load(d, "two", "--pretrained_model")


def test_flipped_bytes_in_a_data_file_are_detected(tmp_path):
    d = _converted(tmp_path)
    data = [p for p in (d / "variables").rglob("*") if p.is_file() and p.stat().st_size > 4096]
    assert data, "no data file in the orbax directory"
    victim = max(data, key=lambda p: p.stat().st_size)
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 0x40
    victim.write_bytes(bytes(raw))
    with pytest.raises(model_dir.NotAModelDirError):
        model_dir.load_model_dir(d)


@pytest.mark.parametrize("edit,message", [
    (lambda m: m.pop("variant"), "lacks \\['variant'\\]"),
    (lambda m: m.update(variant="single"), "not those of a 'single' model"),
    (lambda m: m.update(num_classes=7), "num_classes 7"),
    (lambda m: m.update(variant="three"), "unknown variant"),
])
def test_a_meta_json_that_lies_is_a_clear_error(tmp_path, edit, message):
    d = _converted(tmp_path)
    meta = json.loads((d / "meta.json").read_text())
    edit(meta)
    (d / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(WeightsError, match=message) as e:
        model_dir.load_model_dir(d)
    assert str(d) in str(e.value)


def test_nonfinite_tensors_are_refused_when_saving_a_model_directory(tmp_path):
    variables, meta = core.variables_from_state_dict(_state_dict(), "two", "test")
    variables["params"]["rnn"]["bias_ih"][3] = np.inf
    with pytest.raises(WeightsError, match="params/rnn/bias_ih"):
        model_dir.save_model_dir(tmp_path / "m", variables, meta)
    assert not (tmp_path / "m").exists()
