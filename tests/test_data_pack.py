"""l2l_jax.data.pack: packed splits read like per-file ones; float16; transparent pick-up; the CLI."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from test_data_index import write_fixture_features
from test_data_pipeline import LENGTHS, assert_batches_equal, loader, root  # noqa: F401 - root is a fixture

from l2l_jax.data.index import DatasetError, write_index
from l2l_jax.data.pack import pack_pickle
from l2l_jax.data.source import PackedSource, StalePackWarning, default_pack_dir, open_split
from l2l_jax.programs.pack import main


@pytest.fixture(autouse=True)
def _scan_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("L2L_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture()
def split(root, tmp_path):  # noqa: F811
    """A private copy of the pipeline's mixed-length split (packing writes beside the pickle)."""
    dst = tmp_path / "mixed"
    shutil.copytree(root, dst)
    return dst


@pytest.mark.parametrize("variant", ["two", "single"])
def test_packed_batches_equal_per_file_batches(split, variant):
    width = 512 if variant == "two" else 48
    files = open_split(split / "train.pkl", variant=variant, num_classes=5, width=width, cache=False,
                       progress=False)
    out = pack_pickle(split / "train.pkl", variant=variant, width=width, progress=False)
    assert out == default_pack_dir(split / "train.pkl") == split / "train.pack"
    packed = open_split(split / "train.pkl", variant=variant, num_classes=5, width=width, progress=False)
    assert isinstance(packed, PackedSource) and packed.dtype == np.float32
    assert packed.lengths.tolist() == LENGTHS and packed.names == files.names
    np.testing.assert_array_equal(packed.labels, files.labels)
    for train in (True, False):
        for sub in (1, 2):
            a, b = loader(files, train=train, subsample=sub), loader(packed, train=train, subsample=sub)
            for x, y in zip(a.iterator(num_epochs=1), b.iterator(num_epochs=1), strict=True):
                assert_batches_equal(x, y)


def test_float16_pack(split):
    files = open_split(split / "train.pkl", num_classes=5, cache=False, progress=False)
    out = pack_pickle(split / "train.pkl", split / "half", float16=True, progress=False)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["dtype"] == "float16" and meta["total_clips"] == sum(LENGTHS)
    size32 = sum(f.stat().st_size for f in (split / "image_features").glob("*.npy"))
    assert (out / "image.npy").stat().st_size < 0.51 * size32
    half = open_split(out, num_classes=5, progress=False)
    a, b = loader(files).make_batch(0, 0), loader(half).make_batch(0, 0)
    assert b["image"].dtype == np.float16 and b["mask"].dtype == np.float32
    np.testing.assert_allclose(b["image"].astype(np.float32), a["image"], rtol=1e-3, atol=1e-3)
    for k in ("mask", "label", "index", "valid", "length"):
        np.testing.assert_array_equal(a[k], b[k])


def test_float16_overflow_is_refused(tmp_path):
    for d in ("image_features", "audio_features"):
        (tmp_path / d).mkdir()
    np.save(tmp_path / "image_features/a.npy", np.full((12, 512), 1e6, np.float32))
    np.save(tmp_path / "audio_features/a.npy", np.ones((12, 512), np.float32))
    write_index(tmp_path / "p.pkl", ["imageAudio_features/a.npy"], [0])
    with pytest.raises(DatasetError, match="overflows float16"):
        pack_pickle(tmp_path / "p.pkl", float16=True, progress=False)
    assert not (tmp_path / "p.pack").exists()
    pack_pickle(tmp_path / "p.pkl", progress=False)  # float32 is fine


def test_stale_or_foreign_packs_are_not_used(split):
    pkl = split / "train.pkl"
    pack_pickle(pkl, progress=False)
    assert open_split(pkl, num_classes=5, progress=False).kind == "packed"
    assert open_split(pkl, num_classes=5, packed=False, cache=False, progress=False).kind == "files"
    with pytest.raises(DatasetError, match="single"):
        open_split(split / "train.pack", variant="single", num_classes=5, progress=False)
    with pytest.raises(DatasetError, match="width 512; expected 48"):
        open_split(split / "train.pack", num_classes=5, width=48, progress=False)
    with pytest.raises(DatasetError, match="label 4 not in"):
        open_split(pkl, num_classes=4, progress=False)
    # another --feature_root, or a changed pickle: the pack is out of date
    with pytest.warns(StalePackWarning, match="out of date .* packed without --feature_root, not with"):
        assert open_split(pkl, num_classes=5, feature_root=split, cache=False, progress=False).kind == "files"
    write_index(pkl, [f"imageAudio_features/v{i}.npy" for i in range(3)], [0, 1, 2])
    with pytest.warns(StalePackWarning, match="not packed from .*train.pkl as it is now"):
        assert len(open_split(pkl, num_classes=5, cache=False, progress=False)) == 3
    with pytest.raises(DatasetError, match="was not packed from"):
        open_split(pkl, num_classes=5, packed=True, progress=False)
    shutil.rmtree(split / "train.pack")
    with pytest.raises(DatasetError, match="run l2l-pack"):
        open_split(pkl, num_classes=5, packed=True, progress=False)


def test_cli_packs_fixture_splits_and_refuses_bad_ones(tmp_path, capsys):
    from fixture_inputs import FIXTURES

    write_fixture_features(tmp_path, "train")
    write_fixture_features(tmp_path, "val")
    for s in ("train", "val"):
        shutil.copy(FIXTURES / f"dataset/{s}.pkl", tmp_path / f"{s}.pkl")
    assert main([str(tmp_path / "train.pkl"), str(tmp_path / "val.pkl"), "--feature_root", str(tmp_path),
                 "--num_classes", "12", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "24 videos" in out and "20 videos" in out
    src = open_split(tmp_path / "val.pkl", num_classes=12, feature_root=tmp_path, progress=False)
    assert src.kind == "packed" and src.names[0] == "v_val000"
    np.save(tmp_path / "image_features/v_train005.npy", np.zeros((3, 512), np.float64))
    capsys.readouterr()
    assert main([str(tmp_path / "train.pkl"), "--feature_root", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"l2l-pack: 1 problem(s) in the dataset {tmp_path / 'train.pkl'}:")
    assert "v_train005.npy: dtype float64" in err
    assert main([str(tmp_path / "train.pkl"), "--feature_root", str(tmp_path), "--quiet", "--skip_bad_videos",
                 "--out", str(tmp_path / "t")]) == 0
    assert "23 videos" in capsys.readouterr().out
    assert 5 not in PackedSource(tmp_path / "t").ids.tolist()
