"""`l2l-demo` end to end at the tiny preset through its real entry point: every step's files exist and the final
screen names them. The same tiny demo in `--precision fast` reaches the exact run's quality, and the exact-trained
model evaluated in fast precision predicts what it predicts in exact precision. Fast checks: the programs' import
graph (steps shared, no circle, no `convert`), the distill preset's teacher, the timeline's step labels."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from l2l_jax.programs import demo

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
    truth = list((out / "plots" / "truth").glob("timeline_*.png"))  # the policy over the true segments
    assert len(truth) == min(demo.TRUTH_TIMELINES, metrics["num_videos"])
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


def test_demo_imports_no_convert_and_shares_its_steps() -> None:
    """The presets share `demo_steps` (which imports neither preset), and the demo never imports `convert/`:
    l2l-convert runs as its own process."""
    code = ("import sys; import l2l_jax.programs.demo_steps; assert 'l2l_jax.programs.demo' not in sys.modules; "
            "assert 'l2l_jax.programs.demo_distill' not in sys.modules; import l2l_jax.programs.demo; "
            "assert not any(m == 'convert' or m.startswith('convert.') for m in sys.modules), 'convert imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert demo.PRESETS["distill"]["train"] is demo.demo_distill.SETTINGS["train"]


def test_demo_bad_out_is_one_line(tmp_path: Path, capsys) -> None:
    (tmp_path / "f").write_text("")
    assert demo.main(["--out", str(tmp_path / "f")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("l2l-demo: --out ")


def test_distill_teacher_names_every_clip() -> None:
    """The distill preset's teacher: the video's class (strongly) where the class's shape is seen and its tone
    heard, the scene's class (weakly) everywhere else, the silent distractor included; every clip has one
    top-1 class, so agreement with it is measured on every clip."""
    from l2l_jax.programs import demo_distill as DD
    from l2l_jax.video import decode as D

    spec = DD.SETTINGS["videos"]
    assert spec["val"] >= 48
    for v in DD.video_specs(0)[:: 7]:
        plan = D.synthetic_clip_plan(v["label"], spec["classes"], v["seconds"], v["seed"])
        rows = DD.teacher_rows(plan, spec["classes"], v["seconds"])
        s0, s1 = plan["segment"]
        top = np.sort(rows, axis=1)
        assert rows.shape == (v["seconds"], spec["classes"]) and np.all(top[:, -1] > top[:, -2])
        assert np.all(rows[s0:s1].argmax(1) == v["label"]) and np.all(rows[s0:s1].max(1) == DD.TEACHER_SCALE)
        outside = [t for t in range(v["seconds"]) if not s0 <= t < s1]
        assert np.all(rows[outside].argmax(1) == plan["scene"] % spec["classes"])
        assert np.all(rows[outside].max(1) == DD.SCENE_SCALE) and DD.SCENE_SCALE < DD.TEACHER_SCALE


def test_timeline_labels_of_neighbouring_clips_do_not_overlap(tmp_path: Path) -> None:
    from l2l_jax.evaluation import plots

    # labels 8 points wide, clips 5 points apart: neighbours and repeats go up a level, far ones stay down
    xs, widths = [0.0, 5.0, 10.0, 5.0, 100.0], [8.0] * 5
    levels = plots.label_levels(xs, widths)
    assert levels[4] == 0 and len({levels[0], levels[1], levels[3]}) == 3 and levels[2] != levels[1]
    for i in range(len(xs)):
        for j in range(i):
            if levels[i] == levels[j]:
                assert abs(xs[i] - xs[j]) >= widths[i] + plots.LABEL_GAP - 1e-9
    out = plots.timeline(tmp_path / "t.png", num_clips=30, rows={"image": [4, 5, 6, 5, 20], "audio": [4, 4, 5, 6, 7]},
                         spans=[(4, 7, "class segment"), (20, 22, "distractor")])
    assert out.stat().st_size > 1000
