"""Fixtures shared by the test files (pytest finds them here; test files never import this module).

Helpers that test files import as plain functions stay in their own modules: tests/fixture_inputs.py (the
recorded fixtures' inputs), tests/batch_helpers.py (the collate written plainly), tests/torch_reference.py and
tests/torch_video_reference.py (upstream's networks in torch).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# gcsfs picks its file-system class when first imported: its zonal/hierarchical-bucket variant first asks the
# bucket's type over gRPC, which the test emulator (tests/gcs_emulator.py) does not answer; the plain one is
# what the emulator can serve, whichever test imports gcsfs first.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


@pytest.fixture
def unwritable_dir(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """``unwritable_dir(name="readonly")`` makes a 0o500 directory under the test's `tmp_path` (a place that
    cannot take a program's output) and returns it; it skips the test where such a directory stays writable
    (running as root). Every one made is writable again after the test, so pytest can remove it."""
    made: list[Path] = []

    def make(name: str = "readonly") -> Path:
        d = tmp_path / name
        d.mkdir()
        d.chmod(0o500)
        made.append(d)
        if os.access(d, os.W_OK):
            pytest.skip("running as root: a 0o500 directory stays writable")
        return d

    yield make
    for d in made:
        d.chmod(0o700)


@pytest.fixture
def gcs(monkeypatch: pytest.MonkeyPatch):
    """An in-memory Cloud Storage emulator on 127.0.0.1 (tests/gcs_emulator.py) with its bucket, used by this
    process (gcsfs, TensorStore); `child_env(gcs)` gives the environment for programs run as subprocesses."""
    from gcs_emulator import Emulator, use_in_process

    with Emulator() as emulator:
        use_in_process(emulator, monkeypatch)
        yield emulator
