"""Hostile and damaged inputs: every bad dataset file is a typed `DatasetError` (an `L2LError`) naming the
file, nothing in a pickle runs, nothing hangs on a FIFO, and a pack whose sources changed is not used."""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import stat
import threading
from pathlib import Path

import numpy as np
import pytest
from fixture_inputs import FIXTURES
from test_data_index import write_fixture_features

from l2l_jax.data import fingerprint as FP
from l2l_jax.data.index import BadFileError, DatasetError, UnsafePickleError, load_index, safe_load_pickle, write_index
from l2l_jax.data.pack import pack_pickle
from l2l_jax.data.source import FileSource, PackedSource, StalePackWarning, open_split, read_pack_sources
from l2l_jax.data.validate import check_split
from l2l_jax.errors import L2LError
from l2l_jax.programs.pack import main as pack_main

HANG_LIMIT = 30  # seconds; anything that waits on a FIFO would never finish


@pytest.fixture(autouse=True)
def _scan_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("L2L_CACHE_DIR", str(tmp_path / "cache"))


class _Payload:
    """Unpickling this runs a shell command (it reduces to os.system)."""

    def __init__(self, cmd: str):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


def _good(n=12, width=512, seed=0):
    return np.abs(np.random.default_rng(seed).standard_normal((n, width))).astype(np.float32)


def _two_video_split(root: Path, n=12) -> Path:
    """A two-modality split of videos a and b under `root`; returns the pickle."""
    for d in ("image_features", "audio_features"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(("a", "b")):
        np.save(root / "image_features" / f"{name}.npy", _good(n, seed=2 * i))
        np.save(root / "audio_features" / f"{name}.npy", _good(n, seed=2 * i + 1))
    write_index(root / "p.pkl", ["imageAudio_features/a.npy", "imageAudio_features/b.npy"], [0, 1])
    return root / "p.pkl"


def _fifos_under(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if stat.S_ISFIFO(os.lstat(p).st_mode)]


def _no_hang(fn, *, fifo_root: Path):
    """Run `fn` in a thread; fail (after unblocking any reader of a FIFO under `fifo_root`) if it hangs."""
    out: dict = {}

    def target():
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            out["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(HANG_LIMIT)
    if t.is_alive():
        for fifo in _fifos_under(fifo_root):  # a writer releases a reader blocked in open()
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
        t.join(5)
        pytest.fail(f"{fn} hung on a non-regular file")
    if "error" in out:
        raise out["error"]
    return out.get("value")


def _assert_dataset_error(e: BaseException, *names: object) -> str:
    assert isinstance(e, DatasetError) and isinstance(e, L2LError) and isinstance(e, ValueError)
    msg = str(e)
    for name in names:
        assert str(name) in msg, (name, msg)
    return msg


# ----- 1. damaged dataset pickles: a DatasetError naming the file -----

_GOOD_PICKLE = pickle.dumps((["/r/imageAudio_features/a.npy"] * 3, [1, 2, 3]), protocol=2)


@pytest.mark.parametrize("data, detail", [
    (b"", "empty file"),
    (_GOOD_PICKLE[: len(_GOOD_PICKLE) // 2], "truncated"),  # UnpicklingError before
    (b"this is a text file\n", "not a readable dataset pickle"),
    (bytes(range(256)) * 4, "not a readable dataset pickle"),
    (b"\x80\x09.", "unsupported pickle protocol"),  # ValueError before
    (b"\x80\x04\x8d\xff\xff\xff\xff\xff\xff\xff\xff", "BINUNICODE exceeds"),  # OverflowError before
    (b"\x80\x02cnumpy\ndtype\nK\x01\x85R.", "numpy.dtype(1) refused"),  # a refused global (UnsafePickleError)
])
def test_damaged_pickles_are_dataset_errors_naming_the_file(tmp_path, data, detail):
    p = tmp_path / "train.pkl"
    p.write_bytes(data)
    with pytest.raises(DatasetError) as e:
        load_index(p)
    msg = _assert_dataset_error(e.value, p, detail)
    assert "dataset pickle" in msg
    # the same through open_split and l2l-pack
    with pytest.raises(DatasetError, match=re.escape(detail)):
        open_split(p, num_classes=5, progress=False)


@pytest.mark.parametrize("label, detail", [
    (2**70, "label 1 is 1180591620717411303424, too large"),  # OverflowError before
    (-(2**70), "too large"),
    (1e30, "too large"),
    (float("nan"), "label 1 is nan"),
    ("x" * 500, "..."),  # long reprs are cut short
])
def test_out_of_range_labels_name_the_file(tmp_path, label, detail):
    p = tmp_path / "train.pkl"
    p.write_bytes(pickle.dumps((["/r/imageAudio_features/a.npy", "/r/imageAudio_features/b.npy"], [0, label])))
    with pytest.raises(DatasetError) as e:
        load_index(p)
    msg = _assert_dataset_error(e.value, p, detail)
    assert len(msg) < 300


def test_missing_directory_and_nul_paths(tmp_path):
    with pytest.raises(DatasetError) as e:
        load_index(tmp_path / "nope.pkl")
    _assert_dataset_error(e.value, tmp_path / "nope.pkl", "missing file")
    with pytest.raises(DatasetError) as e:
        load_index(tmp_path)
    _assert_dataset_error(e.value, tmp_path, "not a regular file (a directory)")
    p = tmp_path / "nul.pkl"
    p.write_bytes(pickle.dumps((["/r/imageAudio_features/a\x00.npy"], [0])))
    with pytest.raises(DatasetError) as e:
        load_index(p)
    _assert_dataset_error(e.value, p, "NUL")


def test_error_types():
    assert issubclass(DatasetError, L2LError) and issubclass(DatasetError, ValueError)
    assert issubclass(UnsafePickleError, DatasetError) and issubclass(UnsafePickleError, pickle.UnpicklingError)
    assert issubclass(BadFileError, DatasetError)
    with pytest.raises(DatasetError, match="source.pkl: not a readable dataset pickle"):
        safe_load_pickle(b"garbage", source="source.pkl")


# ----- a pickle with a payload: refused everywhere, nothing runs -----

def _payload_pickle(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "pwned"
    bad = tmp_path / "train.pkl"
    bad.write_bytes(pickle.dumps((["/r/imageAudio_features/a.npy"], [_Payload(f"touch {marker}")])))
    return bad, marker


def test_payload_pickle_is_refused_by_load_index_open_split_and_pack(tmp_path, capsys):
    bad, marker = _payload_pickle(tmp_path)
    with pytest.raises(UnsafePickleError) as e:
        load_index(bad)
    _assert_dataset_error(e.value, bad, "system", "refused without running it")
    with pytest.raises(UnsafePickleError) as e:
        open_split(bad, num_classes=5, progress=False)
    _assert_dataset_error(e.value, bad, "system")
    capsys.readouterr()
    assert pack_main([str(bad), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"l2l-pack: {bad}: unsafe dataset pickle") and len(err.strip().splitlines()) == 1
    assert not marker.exists() and not (tmp_path / "train.pack").exists()
    pickle.loads(bad.read_bytes())  # the payload is real: an unrestricted unpickler runs it
    assert marker.exists()


# ----- 5. object-dtype .npy: refused by name, never unpickled -----

def _object_npy(path: Path, marker: Path) -> None:
    with open(path, "wb") as f:
        np.save(f, np.array([_Payload(f"touch {marker}")], dtype=object), allow_pickle=True)


def test_object_npy_is_refused_without_running_its_payload(tmp_path):
    pkl = _two_video_split(tmp_path)
    marker = tmp_path / "pwned"
    bad = tmp_path / "image_features" / "b.npy"
    _object_npy(bad, marker)
    idx = load_index(pkl)
    with pytest.raises(DatasetError) as e:
        check_split(idx, num_classes=2, cache=False, progress=False)
    msg = _assert_dataset_error(e.value, bad, "object array", "refused without unpickling")
    assert str(pkl) in msg
    with pytest.raises(DatasetError, match="object array"):
        pack_pickle(pkl, progress=False)
    assert not marker.exists()
    # in a pack, too
    pkl2 = _two_video_split(tmp_path / "clean")
    out = pack_pickle(pkl2, progress=False)
    _object_npy(out / "image.npy", marker)
    with pytest.raises(DatasetError) as e:
        PackedSource(out)
    _assert_dataset_error(e.value, out / "image.npy", "object array", "refused without unpickling", "re-run l2l-pack")
    assert not marker.exists()
    np.load(bad, allow_pickle=True)  # the payload is real
    assert marker.exists()


# ----- 4. non-regular files are reported, never opened, and nothing hangs -----

def test_fifo_in_place_of_a_feature_file_is_reported_not_opened(tmp_path):
    pkl = _two_video_split(tmp_path)
    fifo = tmp_path / "audio_features" / "b.npy"
    fifo.unlink()
    os.mkfifo(fifo)
    idx = load_index(pkl)
    with pytest.raises(DatasetError) as e:
        _no_hang(lambda: check_split(idx, num_classes=2, cache=False, progress=False), fifo_root=tmp_path)
    _assert_dataset_error(e.value, fifo, "not a regular file (a FIFO)")
    res = _no_hang(lambda: check_split(idx, num_classes=2, skip_bad_videos=True, cache=False, progress=False),
                   fifo_root=tmp_path)
    assert res.index.ids.tolist() == [0]
    # l2l-pack refuses it too
    with pytest.raises(DatasetError, match="b.npy: not a regular file"):
        _no_hang(lambda: pack_pickle(pkl, progress=False), fifo_root=tmp_path)


def test_a_file_swapped_for_a_fifo_after_the_scan_is_not_opened_by_reads(tmp_path):
    pkl = _two_video_split(tmp_path)
    src = open_split(pkl, num_classes=2, cache=False, progress=False)
    assert isinstance(src, FileSource)
    src.read(1)  # headers parsed and kept
    victim = tmp_path / "image_features" / "b.npy"
    victim.unlink()
    os.mkfifo(victim)
    with pytest.raises(BadFileError) as e:
        _no_hang(lambda: src.read(1), fifo_root=tmp_path)
    _assert_dataset_error(e.value, victim, "not a regular file (a FIFO)", "file changed?")
    fresh = FileSource(check_split(load_index(tmp_path / "p.pkl"), num_classes=2, skip_bad_videos=True,
                                   cache=False, progress=False))
    assert len(fresh) == 1


def test_fifo_pickle_and_fifo_cache_do_not_hang(tmp_path, monkeypatch):
    fifo = tmp_path / "train.pkl"
    os.mkfifo(fifo)
    with pytest.raises(DatasetError) as e:
        _no_hang(lambda: load_index(fifo), fifo_root=tmp_path)
    _assert_dataset_error(e.value, fifo, "not a regular file (a FIFO)")
    with pytest.raises(DatasetError, match="not a regular file"):
        _no_hang(lambda: open_split(fifo, num_classes=2, progress=False), fifo_root=tmp_path)
    # a scan cache that is a FIFO is ignored (and replaced)
    pkl = _two_video_split(tmp_path / "s")
    cache = tmp_path / "scan.json"
    os.mkfifo(cache)
    res = _no_hang(lambda: check_split(load_index(pkl), num_classes=2, cache=cache, progress=False),
                   fifo_root=tmp_path)
    assert len(res.index) == 2 and cache.is_file()


@pytest.mark.parametrize("kind", ["directory", "device", "socket"])
def test_other_non_regular_files(tmp_path, kind):
    pkl = _two_video_split(tmp_path)
    bad = tmp_path / "image_features" / "a.npy"
    bad.unlink()
    if kind == "directory":
        bad.mkdir()
    elif kind == "device":
        if not os.path.exists("/dev/zero"):
            pytest.skip("no /dev/zero")
        os.symlink("/dev/zero", bad)  # followed by stat: a character device, never read
    else:
        import socket

        short = Path(f"/tmp/l2l{os.getpid()}.sock")
        sock = socket.socket(socket.AF_UNIX)
        try:
            sock.bind(str(short))
        except OSError:
            pytest.skip("cannot bind a unix socket")
        os.symlink(short, bad)
    try:
        with pytest.raises(DatasetError) as e:
            _no_hang(lambda: check_split(load_index(pkl), num_classes=2, cache=False, progress=False),
                     fifo_root=tmp_path)
        expected = {"directory": "a directory", "device": "a character device", "socket": "a socket"}[kind]
        _assert_dataset_error(e.value, bad, f"not a regular file ({expected})")
    finally:
        if kind == "socket":
            sock.close()
            short.unlink()


# ----- 3. the scan cache is keyed on content, not only size and mtime -----

@pytest.mark.parametrize("clips", [12, 200])  # 24 KiB: hashed whole; 400 KiB: header and samples
def test_rewrite_with_size_and_mtime_restored_is_scanned_again(tmp_path, clips):
    pkl = _two_video_split(tmp_path, n=clips)
    if clips > 100:
        assert (tmp_path / "image_features/a.npy").stat().st_size > FP.FULL_HASH_MAX
    cache = tmp_path / "scan.json"
    idx = load_index(pkl)
    check_split(idx, num_classes=2, cache=cache, progress=False)
    p = tmp_path / "audio_features" / "a.npy"
    st = p.stat()
    np.save(p, np.full((clips, 512), np.nan, np.float32))
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (p.stat().st_size, p.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    with pytest.raises(DatasetError) as e:
        check_split(idx, num_classes=2, cache=cache, progress=False)
    _assert_dataset_error(e.value, p, "non-finite")


def test_fingerprint_is_cheap_and_shared(tmp_path, monkeypatch):
    # a large file: a header block and a few samples, never the whole file
    blocks = FP.sample_offsets(10**9)
    assert sum(n for _, n in blocks) <= FP.HEAD_BYTES + FP.NUM_SAMPLES * FP.SAMPLE_BYTES
    assert blocks[0] == (0, FP.HEAD_BYTES) and blocks[-1] == (10**9 - FP.SAMPLE_BYTES, FP.SAMPLE_BYTES)
    assert FP.sample_offsets(1000) == [(0, 1000)]
    big = tmp_path / "big.npy"
    np.save(big, _good(2000))  # 4 MB
    read = []
    real_open = FP.open_regular

    class Counting:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def read(self, n):
            b = self.f.read(n)
            read.append(len(b))
            return b

        def __getattr__(self, name):
            return getattr(self.f, name)

    monkeypatch.setattr(FP, "open_regular", lambda p, buffering=-1: Counting(real_open(p, buffering)))
    fp = FP.fingerprint(big)
    assert sum(read) <= 8192 and fp.size == big.stat().st_size
    # a size or mtime change is found from stat alone (nothing read)
    read.clear()
    assert "size changed" in FP.what_changed(big, FP.Fingerprint(fp.size + 1, fp.mtime_ns, fp.digest))
    assert "mtime" in FP.what_changed(big, FP.Fingerprint(fp.size, fp.mtime_ns + 1, fp.digest))
    assert read == []
    assert FP.what_changed(big, fp) is None
    assert "content changed" in FP.what_changed(big, FP.Fingerprint(fp.size, fp.mtime_ns, "0" * 32))
    with pytest.raises(BadFileError, match="missing file"):
        FP.fingerprint(tmp_path / "nope.npy")


# ----- 2. a pack whose sources changed is not used -----

@pytest.fixture()
def packed(tmp_path):
    pkl = _two_video_split(tmp_path / "d", n=150)  # 300 KiB files: sampled fingerprints
    out = pack_pickle(pkl, progress=False)
    assert open_split(pkl, num_classes=2, progress=False).kind == "packed"
    sources = read_pack_sources(out)
    assert sorted(sources) == sorted(os.path.abspath(p) for paths in load_index(pkl).paths for p in paths)
    return pkl, out


def _changed(pkl: Path, p: Path, how: str) -> None:
    st = p.stat()
    if how == "rewritten":
        np.save(p, _good(150, seed=99))
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 2 * 10**9))  # a new mtime even on coarse clocks
    elif how == "rewritten, size and mtime restored":
        np.save(p, _good(150, seed=99))
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    elif how == "shorter":
        np.save(p, _good(100, seed=1))
        np.save(p.parent.parent / "audio_features" / p.name, _good(100, seed=2))
    elif how == "touched":
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


@pytest.mark.parametrize("how, reason", [
    ("rewritten", "modified (mtime changed)"),
    ("rewritten, size and mtime restored", "content changed (size and mtime unchanged)"),
    ("shorter", "size changed"),
    ("touched", "modified (mtime changed)"),
])
def test_a_pack_whose_source_changed_is_not_used(packed, how, reason):
    pkl, out = packed
    victim = pkl.parent / "image_features" / "b.npy"
    _changed(pkl, victim, how)
    with pytest.warns(StalePackWarning) as w:
        src = open_split(pkl, num_classes=2, cache=False, progress=False)
    msg = str(w[0].message)
    assert str(out) in msg and f"{victim}: {reason}" in msg and "re-run l2l-pack" in msg, msg
    assert src.kind == "files"  # the per-file features, as they are now
    np.testing.assert_array_equal(src.read(1)[0], np.load(victim))
    # named explicitly, or required: an error naming the pack and the file
    with pytest.raises(DatasetError) as e:
        open_split(out, num_classes=2, progress=False)
    _assert_dataset_error(e.value, out, victim, reason, "re-run l2l-pack")
    with pytest.raises(DatasetError) as e:
        open_split(pkl, num_classes=2, packed=True, progress=False)
    _assert_dataset_error(e.value, out, victim, "re-run l2l-pack")
    # re-packing makes it current again
    pack_pickle(pkl, progress=False)
    assert open_split(pkl, num_classes=2, progress=False).kind == "packed"


def test_a_pack_whose_source_disappeared_is_not_used(packed):
    pkl, out = packed
    gone = pkl.parent / "audio_features" / "a.npy"
    gone.unlink()
    with pytest.warns(StalePackWarning, match=f"{gone}: missing file"):
        with pytest.raises(DatasetError) as e:  # the per-file split then reports the missing file
            open_split(pkl, num_classes=2, cache=False, progress=False)
    _assert_dataset_error(e.value, gone, "missing file")
    with pytest.warns(StalePackWarning):
        src = open_split(pkl, num_classes=2, cache=False, skip_bad_videos=True, progress=False)
    assert src.kind == "files" and src.ids.tolist() == [1]
    with pytest.raises(DatasetError, match="1 of 4 source feature file"):
        open_split(out, num_classes=2, progress=False)
    # a FIFO in place of a source: reported as changed, not opened
    os.mkfifo(gone)
    with pytest.raises(DatasetError, match="not a regular file"):
        _no_hang(lambda: open_split(out, num_classes=2, progress=False), fifo_root=pkl.parent)


def test_many_changed_sources_are_summarised(tmp_path):
    (tmp_path / "r2plus1d152_features").mkdir()
    names = [f"v{i}" for i in range(9)]
    for i, n in enumerate(names):
        np.save(tmp_path / "r2plus1d152_features" / f"{n}.npy", _good(3, 48, seed=i))
    write_index(tmp_path / "s.pkl", [f"imageAudio_features/{n}.npy" for n in names], [0] * 9)
    out = pack_pickle(tmp_path / "s.pkl", variant="single", width=48, progress=False)
    for n in names:
        (tmp_path / "r2plus1d152_features" / f"{n}.npy").unlink()
    with pytest.raises(DatasetError) as e:
        open_split(out, variant="single", num_classes=1, width=48, progress=False)
    msg = _assert_dataset_error(e.value, "9 of 9 source feature file(s)", "and 4 more",
                                "l2l-pack " + str(tmp_path / "s.pkl") + " --variant single")
    assert msg.count("missing file") == 5


def test_old_packs_without_fingerprints_are_not_used(packed):
    pkl, out = packed
    meta = json.loads((out / "meta.json").read_text())
    meta["version"] = 1
    (out / "meta.json").write_text(json.dumps(meta))
    (out / "sources.json").unlink()
    with pytest.warns(StalePackWarning, match="older l2l-pack .* cannot be checked .* re-run l2l-pack"):
        assert open_split(pkl, num_classes=2, cache=False, progress=False).kind == "files"
    with pytest.raises(DatasetError) as e:
        open_split(out, num_classes=2, progress=False)
    _assert_dataset_error(e.value, out, "format v1", "re-run l2l-pack")
    # a current-format pack whose record of sources is damaged cannot be checked either
    pack_pickle(pkl, progress=False)
    (out / "sources.json").write_text("{not json")
    with pytest.warns(StalePackWarning, match="sources.json: unreadable"):
        assert open_split(pkl, num_classes=2, cache=False, progress=False).kind == "files"
    with pytest.raises(DatasetError, match="sources.json: unreadable"):
        open_split(out, num_classes=2, progress=False)


def test_damaged_pack_files_are_dataset_errors(packed):
    pkl, out = packed
    (out / "offsets.npy").write_bytes(b"garbage")
    with pytest.raises(DatasetError) as e:
        open_split(out, num_classes=2, progress=False)
    _assert_dataset_error(e.value, out / "offsets.npy", "not a .npy file", "re-run l2l-pack")
    np.save(out / "offsets.npy", np.array([0, 5, 7], np.int64))
    with pytest.raises(DatasetError, match="do not agree"):
        open_split(out, num_classes=2, progress=False)
    (out / "meta.json").write_text("[]")
    with pytest.raises(DatasetError, match="not a packed split"):
        open_split(out, num_classes=2, progress=False)


def test_fixture_split_pack_records_every_source(tmp_path):
    write_fixture_features(tmp_path, "val")
    shutil.copy(FIXTURES / "dataset" / "val.pkl", tmp_path / "val.pkl")
    out = pack_pickle(tmp_path / "val.pkl", feature_root=tmp_path, num_classes=12, progress=False)
    assert len(read_pack_sources(out)) == 40
    src = open_split(tmp_path / "val.pkl", num_classes=12, feature_root=tmp_path, progress=False)
    assert src.kind == "packed"
