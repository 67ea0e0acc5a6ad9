"""`l2l-eval` end to end on the fixture dataset: upstream's validate() numbers through the CLI (soft and hard,
upstream's recorded starts fed with --start_idx_file), the export equals the model's outputs, the plots are
PNGs, the run directory / .pth lookup, and identical results on 1 and 4 (fake CPU) devices. Also the
`Evaluator` (compiles once across runs), the baselines registry, video names of packed splits, and the
one-line errors of bad flags and output paths."""

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

from l2l_jax import config, torch_names, weights
from l2l_jax.data.source import FileSource, PackedSource, open_split
from l2l_jax.errors import WeightsError
from l2l_jax.evaluation import baselines, report
from l2l_jax.evaluation.evaluator import Evaluator
from l2l_jax.model import PreviewConfig, build_model
from l2l_jax.programs import evaluate
from l2l_jax.programs import flags as program_flags
from l2l_jax.torch_io import write_torch_file

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
    from l2l_jax.pth_convert import convert_file

    ref = weights.resolve(dataset / "model")  # a directory of .pth files: the newest
    assert (ref.kind, ref.path) == ("pth", dataset / "model" / "model_final.pth")
    convert_file(ref.path, tmp_path / "converted", "two")
    assert weights.resolve(tmp_path / "converted").kind == "model_dir"
    from_dir = weights.load(tmp_path / "converted", "two")
    from_pth = weights.load(ref.path, "two")
    assert from_dir.meta["num_classes"] == 12
    np.testing.assert_array_equal(from_dir.variables["params"]["rnn"]["weight_hh_v"],
                                  from_pth.variables["params"]["rnn"]["weight_hh_v"])
    with pytest.raises(WeightsError, match="not an upstream .pth"):
        weights.resolve(tmp_path)
    with pytest.raises(WeightsError, match="no such file"):
        weights.resolve(tmp_path / "missing")


def evaluator_parts(dataset: Path, *extra: str):
    """(settings, loaded weights, eval loader) of the fixture split, as l2l-eval builds them."""
    settings = config.settings(program_flags.resolve("eval", cli_args(dataset, CASES["published_soft"], *extra)),
                               "eval")
    source = open_split(settings.data.test_file, **settings.data.split_options(progress=False))
    return settings, weights.eval_weights(settings), settings.eval_loader(source)


def test_evaluator_compiles_once_across_runs(dataset):
    """The training loop's use: one Evaluator, run after every epoch, compiles nothing the second time and
    gives the same numbers."""
    settings, loaded, loader = evaluator_parts(dataset, "--seed", "5")
    model_cfg = settings.model
    ev = Evaluator(build_model(model_cfg, "two"), model_cfg, "two", with_baselines=False, seed=settings.seed,
                   layout=settings.layout)
    first = ev.run(loaded.variables, loader, progress=False)
    second = ev.run(loaded.variables, loader, progress=False)
    assert first.compile_seconds > 0 and second.compile_seconds == 0
    assert first.baselines == second.baselines == {}
    for key in ("avgpool_acc", "lstm_acc", "avgpool_map", "lstm_map", "num_videos"):
        assert first[key] == second[key]
    for key, value in first.videos.items():
        np.testing.assert_array_equal(value, second.videos[key], err_msg=key)


def test_every_registered_baseline_is_reported(dataset, monkeypatch):
    """Adding a baseline is one `register` call: it runs, is measured and gets its row in the table."""
    monkeypatch.setattr(baselines, "BASELINES", dict(baselines.BASELINES))
    monkeypatch.setattr(baselines, "LABELS", dict(baselines.LABELS))

    @baselines.register("first", "first clip only")
    def first_clip(clips: baselines.Clips):
        return clips.features[:, 0]

    settings, loaded, loader = evaluator_parts(dataset)
    model_cfg = settings.model
    ev = Evaluator(build_model(model_cfg, "two"), model_cfg, "two", seed=settings.seed, layout=settings.layout)
    result = ev.run(loaded.variables, loader, progress=False)
    assert list(result.baselines) == list(baselines.BASELINES) == ["uniform", "random", "all", "first"]
    for name in baselines.BASELINES:
        assert 0 <= result.baselines[name]["acc"] <= 1 and result.baselines[name]["map"] is not None, name
        assert f"{name}_logits" in result.videos
    table = report.comparison_table(result)
    for row in ("10 uniformly spaced clips", "10 random clips", "all clips averaged", "first clip only"):
        assert row in table


def test_video_names_of_file_and_packed_splits(dataset, tmp_path):
    from l2l_jax.data.pack import pack_pickle

    files = open_split(dataset / "val.pkl", num_classes=12, feature_root=dataset, progress=False)
    pack = pack_pickle(dataset / "val.pkl", tmp_path / "val.pack", feature_root=dataset, num_classes=12,
                       progress=False)
    packed = open_split(pack, num_classes=12, progress=False)
    assert isinstance(files, FileSource) and isinstance(packed, PackedSource)
    want = dict(enumerate(VAL["names"]))
    assert report.video_names(files) == want
    assert report.video_names(packed) == want


def test_export_of_a_packed_split_names_the_videos(dataset, tmp_path):
    """l2l-eval on a packed split (which has no per-file paths) still exports every video's name."""
    from l2l_jax.data.pack import pack_pickle

    pack = pack_pickle(dataset / "val.pkl", tmp_path / "val.pack", feature_root=dataset, num_classes=12,
                       float16=True, progress=False)
    export = tmp_path / "e.jsonl"
    args = cli_args(dataset, CASES["published_soft"], "--export", str(export))
    args[args.index("--test_dataset_file") + 1] = str(pack)
    assert evaluate.main(args) == 0
    lines = [json.loads(x) for x in export.read_text().splitlines()]
    assert [r["id"] for r in lines] == list(range(20))
    assert [r["name"] for r in lines] == VAL["names"]


def _bad_arguments(dataset: Path, tmp: Path) -> dict[str, tuple[str, list[str]]]:
    """name -> (the flag the message must name, the arguments replaced or added)."""
    (tmp / "a_file").write_text("x")
    (tmp / "a_dir").mkdir()
    (tmp / "bad.json").write_text("[1, 2]")
    return {
        "plot_is_a_file": ("--plot", ["--plot", str(tmp / "a_file")]),
        "export_is_a_dir": ("--export", ["--export", str(tmp / "a_dir")]),
        "metrics_json_is_a_dir": ("--metrics_json", ["--metrics_json", str(tmp / "a_dir")]),
        "metrics_json_below_a_file": ("--metrics_json", ["--metrics_json", str(tmp / "a_file" / "m.json")]),
        "no_test_dataset_file": ("--test_dataset_file", ["--test_dataset_file", ""]),
        "missing_test_dataset_file": ("--test_dataset_file", ["--test_dataset_file", str(tmp / "none.pkl")]),
        "not_a_dataset_pickle": ("--test_dataset_file", ["--test_dataset_file", str(tmp / "a_file")]),
        "bad_start_idx_file": ("--start_idx_file", ["--start_idx_file", str(tmp / "bad.json")]),
        "missing_pretrained_model": ("--pretrained_model", ["--pretrained_model", str(tmp / "none.pth")]),
        "wrong_num_classes": ("--num_classes", ["--num_classes", "7"]),
    }


@pytest.mark.parametrize("name", ["plot_is_a_file", "export_is_a_dir", "metrics_json_is_a_dir",
                                  "metrics_json_below_a_file", "no_test_dataset_file", "missing_test_dataset_file",
                                  "not_a_dataset_pickle", "bad_start_idx_file", "missing_pretrained_model",
                                  "wrong_num_classes"])
def test_input_errors_are_one_line_and_exit_2(dataset, tmp_path, capsys, name):
    flag, change = _bad_arguments(dataset, tmp_path)[name]
    args = cli_args(dataset, CASES["published_soft"])
    for key, value in zip(change[::2], change[1::2], strict=True):
        if key in args:
            args[args.index(key) + 1] = value
        else:
            args += [key, value]
    assert evaluate.main(args) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("l2l-eval: ") and flag in err, err
    assert "\n" not in err and "Traceback" not in captured.err + captured.out, err
    assert "Testing Summary" not in captured.out  # nothing was evaluated


def test_no_model_is_upstreams_message(capsys):
    assert evaluate.main(["--test_dataset_file", "val.pkl"]) == 0
    assert capsys.readouterr().out == "No model for validation - failing!!!\n"


_DEVICE_RUN = """
import json, sys
import jax
from l2l_jax.programs import evaluate
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
