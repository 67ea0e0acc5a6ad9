"""Dataset pickles, per-video features, validation caches and packs on gs:// (the in-process emulator): the
same arrays and batches as on local disk, bounded requests per batch, meta.json written last."""

from __future__ import annotations

import json

import fsspec
import numpy as np
import pytest
from fixture_inputs import clip_features
from test_data_pipeline import LENGTHS as ALL_LENGTHS
from test_data_pipeline import C, assert_batches_equal, loader

from l2l_jax import storage
from l2l_jax.data import source as source_mod
from l2l_jax.data import validate
from l2l_jax.data.index import BadFileError, DatasetError, load_index, write_index
from l2l_jax.data.pack import pack_pickle
from l2l_jax.data.source import PackedSource, StalePackWarning, open_split, pack_problem
from l2l_jax.data.validate import check_split
from l2l_jax.programs.pack import main as pack_main

LENGTHS = ALL_LENGTHS[:12]  # 12 videos of 3 to 320 clips: two batches of 8, few requests (fast)
K = 2  # modality arrays of the two-modality variant (image, audio): read_ranges calls per batch


@pytest.fixture(autouse=True)
def _scan_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("L2L_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """The pipeline's mixed-length split (image/audio) on local disk."""
    root = tmp_path_factory.mktemp("mixed")
    for d in ("image_features", "audio_features"):
        (root / d).mkdir()
    for i, n in enumerate(LENGTHS):
        np.save(root / "image_features" / f"v{i}.npy", clip_features(1000 + i, n))
        np.save(root / "audio_features" / f"v{i}.npy", clip_features(2000 + i, n))
    write_index(root / "train.pkl", [f"imageAudio_features/v{i}.npy" for i in range(len(LENGTHS))],
                [i % C for i in range(len(LENGTHS))])
    return root


def upload(local_dir, url: str) -> str:
    """Every file under `local_dir` to the folder `url`; returns `url`."""
    for p in sorted(local_dir.rglob("*")):
        if p.is_file():
            storage.write_bytes(f"{url}/{p.relative_to(local_dir).as_posix()}", p.read_bytes())
    return url


def batches(src, *, train: bool, epochs: int = 1, **kw) -> list[dict]:
    ld = loader(src, train=train, reuse_buffers=False, **kw)
    return [ld.make_batch(e, b) for e in range(epochs) for b in range(ld.batches_per_epoch)]


def assert_bitwise_equal(xs: list[dict], ys: list[dict]) -> None:
    assert len(xs) == len(ys)
    for a, b in zip(xs, ys, strict=True):
        assert_batches_equal(a, b)
        for k in a:
            assert a[k].tobytes() == b[k].tobytes(), k


def open_local(local, **kw):
    return open_split(local / "train.pkl", num_classes=C, progress=False, **kw)


def test_pickle_and_features_on_bucket_read_as_local(gcs, local):
    root = upload(local, gcs.gs("mixed"))
    index = load_index(f"{root}/train.pkl")
    assert index.paths[3] == (f"{root}/image_features/v3.npy", f"{root}/audio_features/v3.npy")
    files = open_split(f"{root}/train.pkl", num_classes=C, packed=False, cache=False, progress=False)
    ref = open_local(local, packed=False, cache=False)
    assert files.lengths.tolist() == ref.lengths.tolist() == LENGTHS and files.names == ref.names
    for i in (0, 5, 11):
        for x, y in zip(files.read(i), ref.read(i), strict=True):
            assert x.tobytes() == y.tobytes()
    assert_bitwise_equal(batches(files, train=True, epochs=2), batches(ref, train=True, epochs=2))
    assert_bitwise_equal(batches(files, train=False, subsample=3), batches(ref, train=False, subsample=3))
    # a local pickle whose features are remapped onto the bucket with --feature_root
    remapped = open_split(local / "train.pkl", num_classes=C, feature_root=root, packed=False, cache=False,
                          progress=False)
    assert remapped.index.paths[0][0] == f"{root}/image_features/v0.npy"
    assert_bitwise_equal(batches(remapped, train=False), batches(ref, train=False))


def test_pack_on_bucket_reads_identical_batches_in_bounded_requests(gcs, local, monkeypatch, capsys):
    root = upload(local, gcs.gs("mixed"))
    assert pack_main([f"{root}/train.pkl", "--quiet"]) == 0  # the default pack dir: beside the pickle
    assert f"-> {root}/train.pack " in capsys.readouterr().out
    names = {p.name for p in storage.path(f"{root}/train.pack").iterdir()}
    assert {"meta.json", "sources.json", "image.npy", "audio.npy", "offsets.npy"} <= names
    packed = open_split(f"{root}/train.pkl", num_classes=C, progress=False)
    assert isinstance(packed, PackedSource) and packed.remote and packed.reads_whole_batch
    pack_pickle(local / "train.pkl", progress=False)
    ref = open_local(local)
    assert isinstance(ref, PackedSource) and not ref.remote and not ref.reads_whole_batch

    calls = []
    real = storage.read_ranges
    monkeypatch.setattr(storage, "read_ranges", lambda p, r: calls.append(len(r)) or real(p, r))  # counted
    for train, kw in ((True, {"epochs": 2}), (False, {}), (False, {"subsample": 2, "chunk_groups": 2})):
        ref_batches = batches(ref, train=train, **kw)
        assert not calls  # the local pack reads through pread, never storage.read_ranges
        before = storage.REQUESTS["gs"]
        got = batches(packed, train=train, **kw)
        assert_bitwise_equal(got, ref_batches)
        # every batch: one read_ranges call per modality array (K); each call carries at most one range per
        # video of the batch (8), fewer where videos lie together; in the split's order (evaluation) the whole
        # batch is one range per array, so at most K requests
        assert len(calls) == K * len(got)
        assert max(calls) <= (8 if train else 1)
        assert storage.REQUESTS["gs"] - before == sum(calls)
        calls.clear()


def test_pack_to_explicit_url_float16(gcs, local):
    out = gcs.gs("packs", "train16.pack")
    assert pack_main([str(local / "train.pkl"), "--quiet", "--float16", "--out", out]) == 0
    packed = open_split(out, num_classes=C, progress=False)
    assert packed.remote and packed.dtype == np.float16
    ref = pack_pickle(local / "train.pkl", local / "ref16.pack", float16=True, progress=False)
    assert_bitwise_equal(batches(packed, train=True), batches(PackedSource(ref), train=True))


def test_validation_cache_on_bucket_written_and_reused(gcs, local, monkeypatch):
    root = upload(local, gcs.gs("mixed"))
    cache = gcs.gs("caches", "scan.json")
    index = load_index(f"{root}/train.pkl")
    first = check_split(index, num_classes=C, cache=cache, progress=False)
    data = json.loads(storage.path(cache).read_bytes())
    assert data["version"] == validate.CACHE_VERSION and len(data["files"]) == 2 * len(LENGTHS)
    fp = first.fingerprints[f"{root}/image_features/v0.npy"]
    info = fsspec.core.url_to_fs(f"{root}/image_features/v0.npy")[0].info("l2l-test/mixed/image_features/v0.npy")
    assert (fp.size, fp.mtime_ns) == (int(info["size"]), int(info["generation"]))  # size and generation
    with monkeypatch.context() as m:
        m.setattr(validate, "inspect_file", lambda p: pytest.fail(f"scanned {p} again"))
        again = check_split(index, num_classes=C, cache=cache, progress=False)  # every file from the cache
    assert again.lengths.tolist() == first.lengths.tolist() and again.fingerprints == first.fingerprints
    with gcs.deny_writes(), pytest.raises(DatasetError, match=r"^gs://l2l-test/caches/denied\.json: the validation "
                                                              r"scan's cache could not be written \([^\n]*\)$"):
        check_split(index, num_classes=C, cache=gcs.gs("caches", "denied.json"), progress=False)
    # the default cache (local, keyed by the pickle's URL) is reused too
    check_split(index, num_classes=C, progress=False)
    with monkeypatch.context() as m:
        m.setattr(validate, "inspect_file", lambda p: pytest.fail(f"scanned {p} again"))
        check_split(index, num_classes=C, progress=False)


def test_changed_object_makes_the_pack_stale(gcs, local):
    root = upload(local, gcs.gs("mixed"))
    pack_pickle(f"{root}/train.pkl", progress=False)
    assert pack_problem(f"{root}/train.pack", f"{root}/train.pkl", "two", None) is None
    storage.write_bytes(f"{root}/audio_features/v4.npy", (local / "audio_features" / "v4.npy").read_bytes())
    why = pack_problem(f"{root}/train.pack", f"{root}/train.pkl", "two", None)
    assert f"1 of {2 * len(LENGTHS)}" in why and "v4.npy: overwritten (the object's generation changed)" in why
    with pytest.warns(StalePackWarning):
        src = open_split(f"{root}/train.pkl", num_classes=C, cache=False, progress=False)
    assert src.kind == "files"


def test_pack_without_meta_json_is_not_a_pack(gcs, local, monkeypatch):
    root = upload(local, gcs.gs("mixed"))
    pack = f"{root}/train.pack"
    fs = fsspec.core.url_to_fs(pack)[0]  # gcsfs: fail the upload at meta.json
    put = fs.put_file

    def put_but_meta(lpath, rpath, *a, **k):
        if rpath.endswith("meta.json"):
            raise OSError("connection reset")
        return put(lpath, rpath, *a, **k)

    with monkeypatch.context() as m, pytest.raises(DatasetError, match=r"pack could not be written .*no meta\.json"):
        m.setattr(fs, "put_file", put_but_meta)
        pack_pickle(f"{root}/train.pkl", progress=False)
    assert storage.path(f"{pack}/image.npy").exists() and not storage.path(f"{pack}/meta.json").exists()
    src = open_split(f"{root}/train.pkl", num_classes=C, cache=False, progress=False)  # silently per-file
    assert src.kind == "files"
    with pytest.raises(DatasetError, match="no packed copy at gs://l2l-test/mixed/train.pack"):
        open_split(f"{root}/train.pkl", num_classes=C, packed=True, progress=False)
    with pytest.raises(DatasetError, match=r"train\.pack: not a packed split"):
        open_split(pack, num_classes=C, progress=False)
    # l2l-pack again replaces the half-written pack, meta.json last; a folder of something else it refuses
    assert pack_main([f"{root}/train.pkl", "--quiet"]) == 0
    storage.write_text(f"{root}/other/notes.txt", "mine")
    assert pack_main([f"{root}/train.pkl", "--quiet", "--out", f"{root}/other"]) == 2
    assert open_split(f"{root}/train.pkl", num_classes=C, progress=False).kind == "packed"


def test_missing_object_or_bucket_is_one_line(gcs, local, capsys):
    for url, why in ((gcs.gs("nope", "train.pkl"), "missing object"),
                     ("gs://no-such-bucket/train.pkl", "bucket no-such-bucket does not exist (or these "
                                                       "credentials cannot see it)")):
        with pytest.raises(BadFileError) as e:
            load_index(url)
        assert str(e.value) == f"{url}: cannot read the dataset pickle: {why}"
        with pytest.raises(DatasetError) as e:
            open_split(url, num_classes=C, progress=False)
        assert str(e.value) == f"{url}: cannot read the dataset pickle: {why}"
        assert pack_main([url, "--quiet"]) == 2
        err = capsys.readouterr().err
        # l2l-pack checks its output first (the pack beside the pickle): the bucket is named there
        assert err.count("\n") == 1 and url.rsplit("/", 1)[0] in err and why in err
    root = upload(local, gcs.gs("mixed"))
    storage.path(f"{root}/audio_features/v2.npy").unlink()
    with pytest.raises(DatasetError, match=r"gs://l2l-test/mixed/audio_features/v2\.npy: missing object"):
        check_split(load_index(f"{root}/train.pkl"), num_classes=C, cache=False, progress=False)
    pack_pickle(f"{root}/train.pkl", progress=False, skip_bad_videos=True)
    storage.path(f"{root}/train.pack/audio.npy").unlink()
    with pytest.raises(DatasetError) as e:
        source_mod.PackedSource(f"{root}/train.pack")
    assert "\n" not in str(e.value) and str(e.value).startswith(f"{root}/train.pack/audio.npy: missing object")


def test_denied_upload_is_one_line(gcs, local):
    with gcs.deny_writes(), pytest.raises(DatasetError) as e:
        pack_pickle(local / "train.pkl", gcs.gs("denied.pack"), progress=False)
    assert "\n" not in str(e.value) and str(e.value).startswith("gs://l2l-test/denied.pack: the pack could not")
    assert not storage.path(gcs.gs("denied.pack", "meta.json")).exists()
