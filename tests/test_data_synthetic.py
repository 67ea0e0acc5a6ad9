"""l2l_jax.data.synthetic: layout, determinism, validity, and that the right 10 clips beat 10 uniform ones."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import numpy as np
import pytest

from l2l_jax.data.index import load_index
from l2l_jax.data.pipeline import BatchLoader
from l2l_jax.data.source import open_split
from l2l_jax.data.synthetic import PRESETS, _world, generate, make_video
from l2l_jax.programs.synth import main


@pytest.fixture(autouse=True)
def _scan_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("L2L_CACHE_DIR", str(tmp_path / "cache"))


def _digest(root):
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def test_tiny_layout_and_contents(tmp_path):
    root = generate(tmp_path / "tiny", preset="tiny", seed=0, progress=False)
    cfg = PRESETS["tiny"]
    truth = json.loads((root / "segments.json").read_text())
    for split, n in (("train", cfg.num_train), ("val", cfg.num_val)):
        idx = load_index(root / f"{split}.pkl")
        assert len(idx) == n and idx.templates[0].endswith(f"imageAudio_features/v_{split}_00000.npy")
        assert np.bincount(idx.labels, minlength=cfg.num_classes).min() >= n // cfg.num_classes
        for d in ("image_features", "audio_features", "imageAudio_features", "r2plus1d152_features"):
            assert len(list((root / d).glob(f"v_{split}_*.npy"))) == n
        for v, lab in zip(truth[split], idx.labels, strict=True):
            assert v["label"] == lab
            for s, e in v["segments"]:
                assert 0 <= s < e <= v["length"] and 2 <= e - s <= 4 or e - s == v["length"]
    for variant in ("two", "single"):
        src = open_split(root / "train.pkl", variant=variant, num_classes=cfg.num_classes, progress=False)
        assert src.kind == "files" and src.width == 512
        lengths = src.lengths
        assert lengths.min() >= cfg.len_min and lengths.max() <= cfg.len_max and lengths.max() > 60
        x = src.read(int(np.argmax(lengths)))
        assert all(a.min() >= 0 and a.shape[1] == 512 for a in x)
        loader = BatchLoader(src, batch_size=16, train=True, process_index=0, process_count=1)
        assert sum(b["valid"].sum() for b in loader.iterator(num_epochs=1)) == cfg.num_train


def test_same_seed_same_bytes(tmp_path):
    a = generate(tmp_path / "a", preset="tiny", seed=4, progress=False)
    b = generate(tmp_path / "b", preset="tiny", seed=4, progress=False)
    c = generate(tmp_path / "c", preset="tiny", seed=5, progress=False)
    assert _digest(a) == _digest(b) != _digest(c)


def test_cli(tmp_path, capsys):
    main(["--out", str(tmp_path / "d"), "--preset", "tiny", "--num_train", "10", "--num_val", "6",
          "--dtype", "float16", "--quiet"])
    assert "10 train / 6 val videos, 6 classes" in capsys.readouterr().out
    assert np.load(tmp_path / "d/image_features/v_val_00005.npy").dtype == np.float16
    assert len(load_index(tmp_path / "d/val.pkl")) == 6


def test_default_preset_is_modest():
    cfg = PRESETS["default"]
    assert 1000 <= cfg.num_train <= 2000 and 300 <= cfg.num_val <= 500 and cfg.dtype == "float16"
    mean_len = cfg.len_median * np.exp(cfg.len_sigma**2 / 2)
    assert (cfg.num_train + cfg.num_val) * mean_len * 512 * 2 * 4 < 400e6  # four feature folders


def _ridge_accuracy(xtr, ytr, xva, yva, classes):
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    a, b = (xtr - mu) / sd, (xva - mu) / sd
    w = np.linalg.solve(a.T @ a + 300 * np.eye(a.shape[1]), a.T @ np.eye(classes)[ytr])
    return float((np.argmax(b @ w, 1) == yva).mean())


def test_the_right_ten_clips_beat_ten_uniform_ones():
    """A linear read-out of the mean image+audio feature of 10 clips: uniformly spaced vs the segment clips
    (then their nearest neighbours). The gap is what a learned preview policy can win."""
    cfg = replace(PRESETS["default"], num_classes=8, num_groups=2)
    world = _world(cfg, 0)
    data = {}
    for split, n in ((1, 400), (2, 200)):
        uni, right, ys = [], [], []
        for i in range(n):
            lab = i % cfg.num_classes
            v = make_video(cfg, world, lab, np.random.default_rng([0, split, i]))
            img, aud, T = v["features"]["image_features"], v["features"]["audio_features"], v["length"]
            seg = np.array([t for s, e in v["segments"] for t in range(s, e)])
            dist = np.abs(np.arange(T)[:, None] - seg[None, :]).min(1)
            for out, idx in ((uni, np.unique(np.linspace(0, T - 1, 10).round().astype(int))),
                             (right, np.argsort(dist, kind="stable")[:10])):
                out.append(np.concatenate([img[idx].mean(0), aud[idx].mean(0)]))
            ys.append(lab)
        data[split] = (np.stack(uni), np.stack(right), np.array(ys))
    acc_uniform = _ridge_accuracy(data[1][0], data[1][2], data[2][0], data[2][2], cfg.num_classes)
    acc_right = _ridge_accuracy(data[1][1], data[1][2], data[2][1], data[2][2], cfg.num_classes)
    assert acc_right > 0.9 and acc_right - acc_uniform > 0.2, (acc_uniform, acc_right)
