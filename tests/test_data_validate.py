"""l2l_jax.data.validate: every bad input is reported (file + reason, all at once), skipping, the scan cache."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
from fixture_inputs import FIXTURES, read_json
from test_data_index import write_fixture_features

from l2l_jax.data import validate as V
from l2l_jax.data.index import DatasetError, load_index, write_index

DATASET = read_json("dataset/dataset.json")


def test_fixture_split_is_clean(tmp_path):
    write_fixture_features(tmp_path, "val")
    idx = load_index(FIXTURES / "dataset/val.pkl", feature_root=tmp_path)
    res = V.check_split(idx, num_classes=12, cache=tmp_path / "cache.json", progress=False)
    assert res.problems == []
    assert res.lengths.tolist() == DATASET["splits"]["val"]["lengths"]
    assert res.width == 512 and len(res.index) == 20


def _good(n=12, width=512, dtype=np.float32):
    return np.abs(np.random.default_rng(n).standard_normal((n, width))).astype(dtype)


BAD_CASES = {
    # name: (image array or writer, audio array, label, expected reason fragment)
    "missing": (None, _good(), 0, "missing file"),
    "garbage": (b"not numpy at all", _good(), 0, "not a .npy file"),
    "objects": (np.array([{"a": 1}], dtype=object), _good(), 0, "cannot load"),
    "oned": (np.ones(512, np.float32), _good(), 0, "expected a 2-D array"),
    "threed": (np.ones((2, 3, 512), np.float32), _good(), 0, "expected a 2-D array"),
    "f64": (_good().astype(np.float64), _good(), 0, "dtype float64; expected float32 or float16"),
    "ints": (np.ones((12, 512), np.int32), _good(), 0, "dtype int32"),
    "narrow": (_good(width=256), _good(width=256), 0, "width 256; expected 512"),
    "empty": (np.zeros((0, 512), np.float32), np.zeros((0, 512), np.float32), 0, "no clips (T = 0)"),
    "nan": (np.where(np.arange(512) == 7, np.nan, 1.0)[None].repeat(12, 0).astype(np.float32), _good(), 0,
            "non-finite"),
    "inf": (_good(), np.full((12, 512), np.inf, np.float16), 0, "non-finite"),
    "mismatch": (_good(12), _good(11), 0, "modality lengths differ (image_features T=12, audio_features T=11)"),
    "truncated": (np.save, _good(), 0, "file truncated"),
    "label_hi": (_good(), _good(), 5, "label 5 not in [0, 5)"),
    "label_neg": (_good(), _good(), -1, "label -1 not in [0, 5)"),
}


def _write(path, x):
    if x is None:
        return
    if x is np.save:  # a valid file cut short
        np.save(path, _good())
        path.write_bytes(path.read_bytes()[:-100])
        return
    if isinstance(x, bytes):
        path.write_bytes(x)
    elif x.dtype == object:
        with open(path, "wb") as f:
            np.save(f, x, allow_pickle=True)
    else:
        np.save(path, x)


def make_bad_split(root):
    (root / "image_features").mkdir(parents=True)
    (root / "audio_features").mkdir()
    names = ["ok_a", *BAD_CASES, "ok_half"]
    labels = []
    for name in names:
        if name.startswith("ok"):
            dt = np.float16 if name == "ok_half" else np.float32
            img, aud, lab = _good(dtype=dt), _good(dtype=dt), 1
        else:
            img, aud, lab, _ = BAD_CASES[name]
        _write(root / "image_features" / f"{name}.npy", img)
        _write(root / "audio_features" / f"{name}.npy", aud)
        labels.append(lab)
    write_index(root / "train.pkl", [f"imageAudio_features/{n}.npy" for n in names], labels)
    return names


def test_every_problem_reported_at_once(tmp_path):
    names = make_bad_split(tmp_path)
    idx = load_index(tmp_path / "train.pkl")
    with pytest.raises(DatasetError) as e:
        V.check_split(idx, num_classes=5, cache=False, progress=False)
    msg = str(e.value)
    # one line per bad file: narrow and empty are bad in both modalities
    assert f"{len(BAD_CASES) + 2} problem(s)" in msg and "--skip_bad_videos" in msg
    lines = msg.splitlines()
    for name, (*_, reason) in BAD_CASES.items():
        vid = names.index(name)
        hits = [ln for ln in lines if f"[{vid}]" in ln]
        assert len(hits) == (2 if name in ("narrow", "empty") else 1), (name, hits)
        assert all(reason in h for h in hits), (name, hits)
        folder = "imageAudio_features" if name.startswith("label") else (
            "audio_features" if name == "inf" else "image_features")
        assert os.path.join(folder, f"{name}.npy") in hits[0]


def test_skip_bad_videos_drops_and_counts(tmp_path, capsys):
    names = make_bad_split(tmp_path)
    idx = load_index(tmp_path / "train.pkl")
    res = V.check_split(idx, num_classes=5, skip_bad_videos=True, cache=False, progress=False)
    assert capsys.readouterr().out.startswith(f"skip_bad_videos: dropped {len(BAD_CASES)} of {len(names)} videos")
    assert res.index.ids.tolist() == [0, len(names) - 1]  # pickle rows survive
    assert res.lengths.tolist() == [12, 12]
    assert len(res.problems) == len(BAD_CASES) + 2


def test_single_variant_width(tmp_path):
    (tmp_path / "r2plus1d152_features").mkdir()
    np.save(tmp_path / "r2plus1d152_features/a.npy", _good(width=48))
    np.save(tmp_path / "r2plus1d152_features/b.npy", _good(width=64))
    write_index(tmp_path / "s.pkl", ["imageAudio_features/a.npy", "imageAudio_features/b.npy"], [0, 1])
    idx = load_index(tmp_path / "s.pkl", variant="single")
    lengths, width, problems = V.scan(idx, num_classes=2, width=48, cache=False, progress=False)
    assert width == 48 and lengths.tolist() == [12, -1] and "width 64; expected 48" in problems[0].reason
    idx3 = idx.subset([0, 0, 1])
    lengths, width, problems = V.scan(idx3, num_classes=2, width=None, cache=False, progress=False)
    assert width == 48 and len(problems) == 1  # None: the most common width is expected


def test_cache_makes_rescan_read_nothing(tmp_path, monkeypatch):
    write_fixture_features(tmp_path, "train")
    idx = load_index(FIXTURES / "dataset/train.pkl", feature_root=tmp_path)
    cache = tmp_path / "scan.json"
    calls = []
    real = V.inspect_file
    monkeypatch.setattr(V, "inspect_file", lambda p: calls.append(p) or real(p))
    V.check_split(idx, num_classes=12, cache=cache, progress=False)
    assert len(calls) == 48
    calls.clear()
    V.check_split(idx, num_classes=12, cache=cache, progress=False)
    assert calls == []
    # a changed file (size and mtime) is scanned again, and its new problem is found
    p = idx.paths[3][1]
    np.save(p, np.full((24, 512), np.nan, np.float32))
    st = os.stat(p)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(DatasetError, match="non-finite"):
        V.check_split(idx, num_classes=12, cache=cache, progress=False)
    assert calls == [p]


def test_default_cache_location(tmp_path, monkeypatch):
    monkeypatch.setenv("L2L_CACHE_DIR", str(tmp_path / "c"))
    write_fixture_features(tmp_path, "val")
    idx = load_index(FIXTURES / "dataset/val.pkl", feature_root=tmp_path)
    V.check_split(idx, num_classes=12, progress=False)
    files = list((tmp_path / "c" / "scan").glob("*.json"))
    assert len(files) == 1 and len(pickle.dumps(files[0].read_text())) > 1000
