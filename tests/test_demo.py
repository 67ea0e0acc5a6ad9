"""`l2l-demo` end to end at the tiny preset through its real entry point: every step's files exist and the final
screen names them. The same tiny demo in `--precision fast` reaches the exact run's quality, and the exact-trained
model evaluated in fast precision predicts what it predicts in exact precision."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from l2l_jax import demo

#: The tiny preset validates on 24 videos of 6 classes, so its mAP moves in coarse steps: this bound is looser
#: than the 0.01 measured on the default preset (BENCHMARKS.md).
TINY_MAP_TOLERANCE = 0.05


def _run_demo(root: Path, precision: str) -> str:
    """The tiny demo in `root` (the working directory, as a user runs it); returns what it printed."""
    import contextlib
    import io
    import os

    cwd, buf = Path.cwd(), io.StringIO()
    os.chdir(root)  # the demo prints paths relative to the working directory, as a user types them
    try:
        with contextlib.redirect_stdout(buf):
            assert demo.main(["--out", "runs/demo", "--preset", "tiny", "--precision", precision]) == 0
    finally:
        os.chdir(cwd)
    return buf.getvalue()


@pytest.fixture(scope="module")
def tiny_demos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    """The tiny demo run once per precision: {precision: (output folder, screen)}."""
    runs = {}
    for precision in ("exact", "fast"):
        root = tmp_path_factory.mktemp(precision)
        runs[precision] = (root / "runs" / "demo", _run_demo(root, precision))
    return runs


@pytest.mark.slow
def test_demo_tiny(tiny_demos) -> None:
    out, screen = tiny_demos["exact"]
    for step in range(1, 6):
        assert f"[{step}/5]" in screen
    for cmd in ("$ l2l-synth ", "$ l2l-convert export ", "$ l2l-convert imageaudionet ", "$ l2l-train --config ",
                "$ l2l-eval "):
        assert cmd in screen
    files = {"pth": out / "ImageAudioNet_synthetic.pth", "converted": out / "imageaudionet" / "meta.json",
             "metrics": out / "metrics.json", "export": out / "clips.jsonl", "final": out / "train" / "model_final",
             "checkpoints": out / "train" / "checkpoints", "curves": out / "train" / "curves.png",
             "map_plot": out / "plots" / "map_vs_steps.png", "run_log": out / "train" / "run.log"}
    for name, path in files.items():
        assert path.exists(), name
    assert json.loads(files["converted"].read_text())["variant"] == "imageaudionet"
    assert any((out / "train" / "checkpoints").iterdir())
    assert list((out / "plots").glob("timeline_*.png"))
    metrics = json.loads(files["metrics"].read_text())
    assert metrics["episode_length"] == 10
    assert set(metrics["baselines"]) >= {"uniform", "random", "all"}
    final = screen[screen.rindex("[5/5]"):]
    for line in ("policy (avgpool head)", "uniform (10 evenly spaced clips)", "random (10 random clips)",
                 "all clips averaged", "videos/s"):
        assert line in final
    for path in ("runs/demo/ImageAudioNet_synthetic.pth", "runs/demo/imageaudionet", "runs/demo/train/checkpoints",
                 "runs/demo/train/run.log", "runs/demo/metrics.json", "runs/demo/plots/map_vs_steps.png",
                 "runs/demo/train/curves.png"):
        assert path in final, path
    # a second run reuses the complete dataset
    assert demo._data_complete(out / "data", "tiny", 0)


def _metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


@pytest.mark.slow
def test_fast_precision_trains_to_the_quality_of_exact(tiny_demos) -> None:
    exact, fast = (_metrics(tiny_demos[p][0]) for p in ("exact", "fast"))
    run_dir = tiny_demos["fast"][0] / "train"
    for recorded in (run_dir / "config.json", run_dir / "model_final" / "meta.json"):
        assert json.loads(recorded.read_text())["precision"] == "fast"
    assert abs(fast["avgpool_map"] - exact["avgpool_map"]) <= TINY_MAP_TOLERANCE
    assert fast["avgpool_map"] > fast["baselines"]["uniform"]["map"]


@pytest.mark.slow
def test_exact_model_evaluated_in_fast_precision_predicts_the_same(tiny_demos, tmp_path: Path) -> None:
    from l2l_jax.programs import evaluate

    out = tiny_demos["exact"][0]
    export = tmp_path / "fast.jsonl"
    argv = ["--test_dataset_file", str(out / "data" / "val.pkl"), "--num_classes", "6", "--episode_length", "10",
            "--pretrained_model", str(out / "train" / "model_final"), "--with_replacement",
            "--mean_feature_as_start", "--batch_size", "16", "--precision", "fast", "--export", str(export)]
    assert evaluate.main(argv) == 0
    exact = {r["id"]: r["prediction"] for r in map(json.loads, (out / "clips.jsonl").read_text().splitlines())}
    fast = {r["id"]: r["prediction"] for r in map(json.loads, export.read_text().splitlines())}
    assert exact.keys() == fast.keys()
    assert sum(exact[i] == fast[i] for i in exact) / len(exact) >= 0.97
