"""l2l_jax.storage against the local Cloud Storage emulator and on local disk: whole-object writes,
create-only-if-absent (the lock's primitive), ranged reads, moving and removing folders."""

from __future__ import annotations

import threading

import pytest
from etils import epath

from l2l_jax import storage


def test_local_paths_stay_pathlib(tmp_path):
    p = storage.path(str(tmp_path / "a"))
    assert type(p).__module__ == "pathlib" and not storage.is_url(p)
    assert storage.path("file://" + str(tmp_path)) == tmp_path
    assert storage.is_url("gs://b/x") and isinstance(storage.path("gs://b/x"), epath.Path)
    assert storage.display("gs://b/x") == "gs://b/x"


@pytest.mark.parametrize("where", ["local", "gcs"])
def test_write_create_exclusive_ranges_and_trees(where, tmp_path, request):
    if where == "gcs":
        gcs = request.getfixturevalue("gcs")
        root = storage.path(gcs.gs("t"))
    else:
        root = storage.path(tmp_path / "t")
        root.mkdir()
    f = root / "f.bin"
    storage.write_bytes(f, bytes(range(256)) * 4)
    assert f.read_bytes()[:3] == b"\x00\x01\x02"
    before = storage.REQUESTS["gs"]
    assert storage.read_ranges(f, [(1, 4), (300, 302), (0, 0)]) == [b"\x01\x02\x03", bytes([44, 45]), b""]
    if where == "gcs":
        assert storage.REQUESTS["gs"] - before == 3
        with pytest.raises(OSError, match="shorter"):
            storage.read_ranges(f, [(1020, 1030)])

    lock = root / "lock"
    assert storage.create_exclusive(lock, b"first")
    assert not storage.create_exclusive(lock, b"second")
    assert lock.read_bytes() == b"first"

    # two creators at once: exactly one wins
    wins = []
    barrier = threading.Barrier(4)

    def take(i):
        barrier.wait()
        if storage.create_exclusive(root / "race", str(i).encode()):
            wins.append(i)

    threads = [threading.Thread(target=take, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and (root / "race").read_bytes() == str(wins[0]).encode()

    (root / "d" / "e").mkdir(parents=True, exist_ok=True)
    storage.write_text(root / "d" / "e" / "x.txt", "x")
    storage.move_tree(root / "d", root / "moved")
    assert (root / "moved" / "e" / "x.txt").read_text() == "x" and not (root / "d" / "e" / "x.txt").exists()
    storage.remove_tree(root / "moved")
    assert not (root / "moved" / "e" / "x.txt").exists()


def test_output_checks_on_a_bucket(gcs):
    from l2l_jax.errors import ConfigError
    from l2l_jax.outputs import output_dir, output_file

    assert str(output_dir(gcs.gs("run"), "--workdir")) == gcs.gs("run")
    storage.write_text(gcs.gs("run", "a.json"), "{}")
    with pytest.raises(ConfigError, match=r"^--export gs://l2l-test/run: is a folder"):
        output_file(gcs.gs("run"), "--export")
    with pytest.raises(ConfigError, match=r"is an object, not a folder"):
        output_dir(gcs.gs("run", "a.json"), "--plot")
    with pytest.raises(ConfigError, match=r"^--workdir gs://no-such-bucket/run: bucket no-such-bucket does not exist"):
        output_dir("gs://no-such-bucket/run", "--workdir")
