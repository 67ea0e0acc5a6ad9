"""`l2l-eval` end to end on the fixture dataset: upstream's validate() numbers through the CLI (soft and hard,
upstream's recorded starts fed with --start_idx_file), the export equals the model's outputs, the plots are
PNGs, the run directory / .pth lookup, and identical results on 1 and 4 (fake CPU) devices."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import matplotlib.image
import numpy as np
import pytest
from fixture_inputs import clip_features, eval_collate, manifest_state_dict, read_json

from convert.torch_io import write_torch_file
from l2l_jax import evaluate, torch_names
from l2l_jax.model import PreviewConfig, build_model

DATA = read_json("dataset/dataset.json")
VAL = DATA["splits"]["val"]
CASES = {c["name"]: c for c in DATA["validate"]}
ROOT = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def upstream_starts(case: dict) -> dict[int, int]:
    """Dataset index -> the start upstream drew (its batches were the dataset in order, `batch_size` each)."""
    rows = enumerate(case["start_idx_per_batch"])
    return {b * case["batch_size"] + j: s for b, row in rows for j, s in enumerate(row)}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """The fixture val split as .npy files + its pickle + an upstream-format model_final.pth."""
    root = tmp_path_factory.mktemp("fixture_data")
    for m in ("image_features", "audio_features"):
        (root / m).mkdir()
    for name, n, si, sa in zip(VAL["names"], VAL["lengths"], VAL["image_seeds"], VAL["audio_seeds"], strict=True):
        np.save(root / "image_features" / f"{name}.npy", clip_features(si, n))
        np.save(root / "audio_features" / f"{name}.npy", clip_features(sa, n))
    (root / "val.pkl").write_bytes((ROOT / "tests/fixtures/dataset/val.pkl").read_bytes())
    case = CASES["published_soft"]
    (root / "model").mkdir()
    write_torch_file(root / "model" / "model_final.pth", manifest_state_dict(case["manifest"], case["model_seed"]),
                     epoch=3)
    (root / "starts.json").write_text(json.dumps({str(k): v for k, v in upstream_starts(case).items()}))
    return root


def cli_args(root: Path, case: dict, *extra: str) -> list[str]:
    args = ["--test_dataset_file", str(root / "val.pkl"), "--feature_root", str(root), "--batch_size",
            str(case["batch_size"]), "--num_classes", "12", "--episode_length", str(case["E"]),
            "--pretrained_model", str(root / "model" / "model_final.pth"), "--compute_mAP", "--scheduler",
            "--decode_threads", "2", "--buckets", "64"]
    args += ["--with_replacement"] * case["no_repeat"] + ["--mean_feature_as_start"] * case["mean_start"]
    args += ["--feature_interpolate"] * case["interpolate"] + ["--subsample_factor", str(case["subsample"])]
    return args + ["--gt_feature_eval"] * case["hard"] + list(extra)


@pytest.mark.parametrize("name", ["published_soft", "hard"])
def test_cli_reproduces_upstream_validate(dataset, tmp_path, capsys, name):
    case = CASES[name]
    out = tmp_path / "m.json"
    export = tmp_path / "e.jsonl"
    plots = tmp_path / "plots"
    extra = ["--start_idx_file", str(dataset / "starts.json"), "--metrics_json", str(out)]
    if name == "published_soft":
        extra += ["--export", str(export), "--plot", str(plots)]
    assert evaluate.main(cli_args(dataset, case, *extra)) == 0
    m = json.loads(out.read_text())
    for key in ("avgpool_acc", "lstm_acc"):
        assert m[key] == case[key]
    for key in ("avgpool_map", "lstm_map"):
        assert m[key] == pytest.approx(case[key], rel=1e-12, abs=1e-12)
    assert m["num_videos"] == 20
    assert set(m["baselines"]) == {"uniform", "random", "all"}
    assert m["steps_map"]["policy"][-1] == pytest.approx(m["avgpool_map"], abs=1e-6)
    printed = capsys.readouterr().out
    ckpt = str(dataset / "model" / "model_final.pth")
    assert (f"Testing Summary for checkpoint: {ckpt}\nAvgpool Acc: {case['avgpool_acc'] * 100} \n"
            f" LSTM Acc: {case['lstm_acc'] * 100} \n Avgpool mAP: {m['avgpool_map']} \n"
            f" LSTM mAP: {m['lstm_map']}\n") in printed
    if case["hard"]:
        # mean start: the 9 clips chosen at steps 0..8 are fed (no repeats), the last choice is not
        assert m["clips_consumed_per_video"] == 9.0
        assert "clip features consumed per video" in printed
        return
    assert m["clips_consumed_per_video"] is None
    check_export(dataset, case, export)
    check_plots(plots)


def check_export(root: Path, case: dict, export: Path) -> None:
    """Every exported line equals what the model computes on upstream's batches with upstream's starts."""
    lines = [json.loads(x) for x in export.read_text().splitlines()]
    assert [r["id"] for r in lines] == list(range(20))
    assert [r["name"] for r in lines] == VAL["names"]
    assert [r["label"] for r in lines] == VAL["labels"]
    cfg = PreviewConfig(num_classes=12, episode_length=case["E"], mean_feature_as_start=True, with_replacement=True,
                        feature_interpolate=True)
    variables = torch_names.from_state_dict(manifest_state_dict(case["manifest"], case["model_seed"]), "two")
    model = build_model(cfg, "two")
    starts = upstream_starts(case)
    bs = case["batch_size"]
    for b0 in range(0, 20, bs):
        ids = list(range(b0, min(b0 + bs, 20)))
        videos = [(clip_features(VAL["image_seeds"][i], VAL["lengths"][i]),
                   clip_features(VAL["audio_seeds"][i], VAL["lengths"][i])) for i in ids]
        (image, audio), mask = eval_collate(videos)
        out = model.apply(variables, image, audio, mask, jnp.int32(mask.shape[1]),
                          np.array([starts[i] for i in ids], np.int32))
        for r, i in enumerate(ids):
            rec = lines[i]
            assert rec["image_idx"] == np.asarray(out["image_idx"][r]).tolist()
            assert rec["audio_idx"] == np.asarray(out["audio_idx"][r]).tolist()
            np.testing.assert_allclose(rec["modality_w"], np.asarray(out["modality_w"][r]), rtol=0, atol=1e-6)
            assert rec["prediction"] == int(np.argmax(out["avgpool_logits"][r]))
            assert rec["lstm_prediction"] == int(np.argmax(out["lstm_logits"][r]))
            assert rec["start_idx"] == starts[i]


def check_plots(plots: Path) -> None:
    files = sorted(plots.glob("*.png"))
    assert len(files) == 21 and (plots / "map_vs_steps.png") in files
    for f in files:
        assert f.read_bytes()[:8] == PNG_SIGNATURE
        img = matplotlib.image.imread(f)
        assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50


def test_pretrained_model_lookup(dataset, tmp_path):
    from convert.core import convert_file

    kind, path, _ = evaluate.find_checkpoint(dataset / "model")  # a directory of .pth files: the newest
    assert (kind, path) == ("pth", dataset / "model" / "model_final.pth")
    convert_file(path, tmp_path / "converted", "two")
    assert evaluate.find_checkpoint(tmp_path / "converted")[0] == "model_dir"
    v_dir, meta, _ = evaluate.load_model(tmp_path / "converted", "two")
    v_pth, _, _ = evaluate.load_model(path, "two")
    assert meta["num_classes"] == 12
    np.testing.assert_array_equal(v_dir["params"]["rnn"]["weight_hh_v"], v_pth["params"]["rnn"]["weight_hh_v"])
    with pytest.raises(ValueError, match="not a converted model directory"):
        evaluate.find_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such file"):
        evaluate.find_checkpoint(tmp_path / "missing")


_DEVICE_RUN = """
import json, sys
import jax
from l2l_jax import evaluate
assert jax.device_count() == int(sys.argv[1]), jax.devices()
evaluate.main(sys.argv[2:])
"""


def test_one_vs_four_devices(dataset, tmp_path):
    """Random starts (seeded): identical metrics, chosen clips and predictions on 1 and 4 CPU devices; the
    modality weights agree to float32 rounding (XLA's per-shard matmuls may round the last bit differently)."""
    case = CASES["published_soft"]
    results = {}
    for n in (1, 4):
        out, export = tmp_path / f"m{n}.json", tmp_path / f"e{n}.jsonl"
        env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}", "JAX_PLATFORMS": "cpu"}
        args = cli_args(dataset, case, "--seed", "3", "--metrics_json", str(out), "--export", str(export))
        subprocess.run([sys.executable, "-c", _DEVICE_RUN, str(n), *args], check=True, env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
        m = json.loads(out.read_text())
        for k in ("videos_per_second", "compile_seconds", "run_seconds"):
            m.pop(k)
        results[n] = (m, export.read_text())
    assert results[1][0] == results[4][0]
    one, four = ([json.loads(x) for x in results[n][1].splitlines()] for n in (1, 4))
    assert len(one) == len(four) == 20
    for a, b in zip(one, four, strict=True):
        np.testing.assert_allclose(a.pop("modality_w"), b.pop("modality_w"), rtol=0, atol=1e-6)
        assert a == b
