"""Places that cannot take a program's output, shared by the hostile-input tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def unwritable_dir(tmp: Path) -> Path:
    """A 0o500 directory under `tmp`; skips the test where such a directory stays writable (running as root)."""
    d = tmp / "readonly"
    d.mkdir()
    d.chmod(0o500)
    if os.access(d, os.W_OK):
        d.chmod(0o700)
        pytest.skip("running as root: a 0o500 directory stays writable")
    return d
