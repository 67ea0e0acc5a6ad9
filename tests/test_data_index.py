"""l2l_jax.data.index: restricted unpickling, --feature_root remap, upstream's path derivation."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from fixture_inputs import FIXTURES, clip_features, read_json

from l2l_jax.data.index import (
    DatasetError,
    UnsafePickleError,
    load_index,
    modality_paths,
    remap_root,
    safe_load_pickle,
    write_index,
)

DATASET = read_json("dataset/dataset.json")


def write_fixture_features(root: Path, split: str) -> None:
    """The fixture split's image/audio .npy files under `root` (upstream's layout)."""
    s = DATASET["splits"][split]
    for d in ("image_features", "audio_features"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for name, n, si, sa in zip(s["names"], s["lengths"], s["image_seeds"], s["audio_seeds"], strict=True):
        np.save(root / "image_features" / f"{name}.npy", clip_features(si, n))
        np.save(root / "audio_features" / f"{name}.npy", clip_features(sa, n))


@pytest.mark.parametrize("split", ["train", "val"])
def test_fixture_pickle_remap(tmp_path, split):
    s = DATASET["splits"][split]
    idx = load_index(FIXTURES / s["pickle"], feature_root=tmp_path)
    assert len(idx) == len(s["names"])
    assert idx.labels.tolist() == s["labels"]
    assert idx.ids.tolist() == list(range(len(s["names"])))
    for name, t, (img, aud) in zip(s["names"], idx.templates, idx.paths, strict=True):
        assert t == os.path.join(str(tmp_path), "imageAudio_features", f"{name}.npy")
        assert img == os.path.join(str(tmp_path), "image_features", f"{name}.npy")
        assert aud == os.path.join(str(tmp_path), "audio_features", f"{name}.npy")
    single = load_index(FIXTURES / s["pickle"], variant="single", feature_root=str(tmp_path) + "/")
    assert single.paths[0] == (os.path.join(str(tmp_path), "r2plus1d152_features", f"{s['names'][0]}.npy"),)


def test_fixture_pickle_without_remap_keeps_foreign_prefix():
    idx = load_index(FIXTURES / "dataset/val.pkl")
    assert idx.paths[0] == ("/datasets/ActivityNet/image_features/v_val000.npy",
                            "/datasets/ActivityNet/audio_features/v_val000.npy")


def test_path_derivation_replaces_every_occurrence():
    p = "/x/imageAudio_features/a/imageAudio_features.npy"
    assert modality_paths(p, "two") == ("/x/image_features/a/image_features.npy",
                                        "/x/audio_features/a/audio_features.npy")
    assert modality_paths(p, "single") == ("/x/r2plus1d152_features/a/r2plus1d152_features.npy",)
    assert remap_root("/old/deep/imageAudio_features/v.npy", "/new") == "/new/imageAudio_features/v.npy"
    assert remap_root("/old/imageAudio_features/v.npy", None) == "/old/imageAudio_features/v.npy"
    with pytest.raises(DatasetError, match="imageAudio_features"):
        remap_root("/old/features/v.npy", "/new")


def test_relative_paths_resolve_against_the_pickle_folder(tmp_path):
    write_index(tmp_path / "train.pkl", ["imageAudio_features/a.npy"], [3])
    idx = load_index(tmp_path / "train.pkl")
    assert idx.paths[0][0] == os.path.join(str(tmp_path), "image_features/a.npy")
    assert idx.labels.tolist() == [3]


@pytest.mark.parametrize("protocol", [2, 4])
def test_numpy_integer_labels_are_allowed(tmp_path, protocol):
    data = pickle.dumps((["/r/imageAudio_features/a.npy", "/r/imageAudio_features/b.npy"],
                         [np.int64(4), np.int32(7)]), protocol=protocol)
    (tmp_path / "x.pkl").write_bytes(data)
    idx = load_index(tmp_path / "x.pkl")
    assert idx.labels.tolist() == [4, 7]
    assert safe_load_pickle(pickle.dumps(([], []), protocol=protocol)) == ([], [])


class _Payload:
    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "train.pkl"
    bad.write_bytes(pickle.dumps((["/r/imageAudio_features/a.npy"], [_Payload(f"touch {marker}")])))
    with pytest.raises(UnsafePickleError, match="system"):
        load_index(bad)
    assert not marker.exists()
    # the payload is real: an unrestricted unpickler would have run it
    pickle.loads(bad.read_bytes())
    assert marker.exists()


@pytest.mark.parametrize("obj", [
    np.arange(3),  # numpy arrays need numpy's reconstruct machinery
    np.float64(1.5),  # only integer numpy scalars
    Path,  # a class reference
    eval,
    {1, 2},  # sets are not part of the format either (they reduce via builtins.set in protocol 2)
])
def test_other_globals_are_refused(obj):
    with pytest.raises(UnsafePickleError):
        safe_load_pickle(pickle.dumps((["/r/imageAudio_features/a.npy"], [obj]), protocol=2))


@pytest.mark.parametrize("obj, match", [
    (["/r/imageAudio_features/a.npy"], "pair"),
    ((["/r/imageAudio_features/a.npy"], [1, 2]), "1 paths but 2 labels"),
    ((["/r/features/a.npy"], [1]), "no 'imageAudio_features'"),
    (([3], [1]), "path 0 is int"),
    ((["/r/imageAudio_features/a.npy"], ["x"]), "label 0 is 'x'"),
    ((["/r/imageAudio_features/a.npy"], [1.5]), "label 0 is 1.5"),
    ((["/r/imageAudio_features/a.npy"], [True]), "bool"),
    (("abc", [1]), "must be lists"),
])
def test_malformed_pickles(tmp_path, obj, match):
    (tmp_path / "x.pkl").write_bytes(pickle.dumps(obj))
    with pytest.raises(DatasetError, match=match):
        load_index(tmp_path / "x.pkl")


def test_integral_float_labels_and_subset():
    idx = load_index(FIXTURES / "dataset/train.pkl")
    sub = idx.subset([2, 0])
    assert sub.ids.tolist() == [2, 0]
    assert sub.labels.tolist() == [idx.labels[2], idx.labels[0]]
    assert sub.paths[0] == idx.paths[2]
