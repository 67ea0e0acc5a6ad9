"""`l2l-demo` end to end at the tiny preset through its real entry point: every step's files exist and the final
screen names them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from l2l_jax import demo


@pytest.mark.slow
def test_demo_tiny(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)  # the demo prints paths relative to the working directory, as a user types them
    assert demo.main(["--out", "runs/demo", "--preset", "tiny"]) == 0
    screen = capsys.readouterr().out
    out = tmp_path / "runs" / "demo"
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
