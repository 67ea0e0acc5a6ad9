"""l2l_jax.data.source: per-file reads (windows, strides, float16, Fortran order) and open_split."""

from __future__ import annotations

import numpy as np
import pytest
from fixture_inputs import FIXTURES, clip_features, read_json
from test_data_index import write_fixture_features

from l2l_jax.data.index import DatasetError, write_index
from l2l_jax.data.source import open_split

DATASET = read_json("dataset/dataset.json")


def test_fixture_split_reads_exactly(tmp_path):
    write_fixture_features(tmp_path, "train")
    src = open_split(FIXTURES / "dataset/train.pkl", num_classes=12, feature_root=tmp_path, cache=False,
                     progress=False)
    s = DATASET["splits"]["train"]
    assert src.kind == "files" and len(src) == 24 and src.width == 512 and src.dtype == np.float32
    assert src.lengths.tolist() == s["lengths"] and src.labels.tolist() == s["labels"]
    assert src.names == s["names"]
    for i in (0, 2, 7):
        img, aud = src.read(i)
        np.testing.assert_array_equal(img, clip_features(s["image_seeds"][i], s["lengths"][i]))
        np.testing.assert_array_equal(aud, clip_features(s["audio_seeds"][i], s["lengths"][i]))
    full = clip_features(s["image_seeds"][2], s["lengths"][2])
    for start, stop, step in ((5, 17, 1), (3, 40, 2), (0, 49, 3), (48, 49, 1)):
        np.testing.assert_array_equal(src.read(2, start, stop, step)[0], full[start:stop:step])
    with pytest.raises(DatasetError, match="label 11 not in"):
        open_split(FIXTURES / "dataset/train.pkl", num_classes=11, feature_root=tmp_path, cache=False,
                   progress=False)


def test_float16_and_fortran_files_read_as_float32(tmp_path):
    (tmp_path / "image_features").mkdir()
    (tmp_path / "audio_features").mkdir()
    x = clip_features(1, 30)
    np.save(tmp_path / "image_features/a.npy", x.astype(np.float16))
    np.save(tmp_path / "audio_features/a.npy", np.asfortranarray(x))
    write_index(tmp_path / "p.pkl", ["imageAudio_features/a.npy"], [0])
    src = open_split(tmp_path / "p.pkl", num_classes=1, cache=False, progress=False)
    img, aud = src.read(0, 4, 20, 2)
    assert img.dtype == aud.dtype == np.float32
    np.testing.assert_array_equal(img, x.astype(np.float16)[4:20:2].astype(np.float32))
    np.testing.assert_array_equal(aud, x[4:20:2])


def test_bad_files_stop_open_split_unless_skipped(tmp_path):
    write_fixture_features(tmp_path, "val")
    np.save(tmp_path / "audio_features/v_val003.npy", clip_features(1, 5))
    kw = dict(num_classes=12, feature_root=tmp_path, cache=False, progress=False)
    with pytest.raises(DatasetError, match="v_val003.npy: modality lengths differ"):
        open_split(FIXTURES / "dataset/val.pkl", **kw)
    src = open_split(FIXTURES / "dataset/val.pkl", skip_bad_videos=True, **kw)
    assert len(src) == 19 and 3 not in src.ids.tolist()


def test_a_file_changed_after_the_scan_is_caught(tmp_path):
    write_fixture_features(tmp_path, "val")
    src = open_split(FIXTURES / "dataset/val.pkl", num_classes=12, feature_root=tmp_path, cache=False,
                     progress=False)
    np.save(tmp_path / "image_features/v_val004.npy", np.zeros((16, 512), np.float64))
    with pytest.raises(DatasetError, match="file changed"):
        src.read(4)
