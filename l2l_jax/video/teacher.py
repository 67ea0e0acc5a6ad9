"""A teacher's clip class scores for `l2l-distill`, from files in upstream's one-``.npy``-per-video layout.

``TEACHER/<name>.npy`` (``<name>`` as `l2l-extract` names videos) holds one row per clip, float (T, W):

- the teacher's logits (W = C classes), or
- the teacher's features (W = D, e.g. upstream's released ``r2plus1d152_features``) with ``--teacher_head
  FILE``, a linear head mapping them to logits: ``.npz`` with ``weight`` (C, D) and ``bias`` (C,), or a
  ``.pth`` state dict holding exactly one 2-D ``*weight`` and one 1-D ``*bias`` (read weights-only).

When a teacher file has another number of rows than the video has clips (the teacher cut the video into clips
of its own), clip k of T takes teacher row ``floor(k * T_teacher / T)``: the one covering the same time.
Files are opened only when regular, with ``allow_pickle=False``; every problem (missing file, wrong rank or
width, non-finite values) is collected and reported at once, naming the files.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from l2l_jax.errors import ConfigError, WeightsError
from l2l_jax.torch_io import read_state_dict

HEAD_SUFFIXES = (".npz", ".pth", ".pt")


def read_head(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(weight (C, D) float32, bias (C,) float32) of a linear head file (see the module docstring); C and D
    at least 1."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--teacher_head {path}: " + ("not a regular file" if path.exists() else "no such file"))
    if path.suffix not in HEAD_SUFFIXES or not zipfile.is_zipfile(path):
        raise ConfigError(f"--teacher_head {path}: not a linear head file (an .npz of 'weight' and 'bias', or a "
                          "torch .pth / .pt state dict, both zip archives)")
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                weight, bias = np.asarray(z["weight"]), np.asarray(z["bias"])
        except (OSError, ValueError, KeyError, EOFError) as e:
            raise WeightsError(f"--teacher_head {path}: needs arrays 'weight' (C, D) and 'bias' (C,) ({e})") from None
    else:
        sd, _ = read_state_dict(path)
        ws = [k for k, v in sd.items() if k.endswith("weight") and np.ndim(v) == 2]
        bs = [k for k, v in sd.items() if k.endswith("bias") and np.ndim(v) == 1]
        if len(ws) != 1 or len(bs) != 1:
            raise WeightsError(f"--teacher_head {path}: needs exactly one 2-D *weight and one 1-D *bias tensor; "
                               f"found {len(ws)} and {len(bs)}")
        weight, bias = np.asarray(sd[ws[0]]), np.asarray(sd[bs[0]])
    if weight.ndim != 2 or bias.shape != (weight.shape[0],) or not np.issubdtype(weight.dtype, np.floating):
        raise WeightsError(f"--teacher_head {path}: weight {weight.shape} and bias {bias.shape} do not make a "
                           "linear head (C, D) + (C,)")
    if weight.shape[0] < 1 or weight.shape[1] < 1:
        raise WeightsError(f"--teacher_head {path}: weight {weight.shape}: a head needs at least one class and one "
                           "input")
    if not (np.isfinite(weight).all() and np.isfinite(bias).all()):
        raise WeightsError(f"--teacher_head {path}: non-finite values")
    return weight.astype(np.float32), bias.astype(np.float32)


def check_teacher(teacher_dir: str | os.PathLike, names: list[str],
                  head: tuple[np.ndarray, np.ndarray] | None = None) -> int:
    """The class count C of the teacher files of the videos `names`, after checking them all (before any work):
    each present, regular, float (T, W) with T and W at least 1, finite, one W for all (W = the head's input
    width with a head). Every problem is collected into one `ConfigError`."""
    return _open_teacher(Path(teacher_dir), names, head)[1]


def _open_teacher(teacher_dir: Path, names: list[str], head: tuple[np.ndarray, np.ndarray] | None
                  ) -> tuple[list[np.ndarray], int]:
    """(the teacher files of `names`, memory-mapped; the class count): `check_teacher`'s checks."""
    if not teacher_dir.is_dir():
        raise ConfigError(f"--teacher {teacher_dir}: not a directory")
    problems: list[str] = []
    arrays: list[np.ndarray | None] = []
    widths = set()
    for name in names:
        path = teacher_dir / f"{name}.npy"
        if not path.is_file():
            problems.append(f"{path}: {'no such file' if not path.exists() else 'not a regular file'}")
            arrays.append(None)
            continue
        try:
            x = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            problems.append(f"{path}: unreadable ({type(e).__name__})")
            arrays.append(None)
            continue
        if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1 or not np.issubdtype(x.dtype, np.floating):
            problems.append(f"{path}: shape {x.shape} dtype {x.dtype}, expected float (T, C) or (T, D), T and C "
                            "or D at least 1")
            arrays.append(None)
            continue
        if not all(np.isfinite(x[s:s + 4096]).all() for s in range(0, len(x), 4096)):
            problems.append(f"{path}: non-finite values")
        widths.add(x.shape[1])
        arrays.append(x)
    if len(widths) > 1:
        problems.append(f"the teacher files have different widths {sorted(widths)}")
    want = None if head is None else head[0].shape[1]
    if want is not None and widths and widths != {want}:
        problems.append(f"the teacher files are {sorted(widths)} wide, but --teacher_head takes {want}")
    if not names:
        problems.append("no video to read a teacher file for")
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ConfigError(f"--teacher {teacher_dir}: {'; '.join(problems[:5])}{more}")
    return arrays, head[0].shape[0] if head is not None else widths.pop()


def teacher_logits(teacher_dir: str | os.PathLike, names: list[str], clips: list[int], out: str | os.PathLike,
                   head: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """(sum(clips), C) float32 teacher logits, one row per clip of the videos `names` (with `clips` clips each),
    written to the ``.npy`` file `out` and returned memory-mapped (host memory stays bounded)."""
    teacher_dir = Path(teacher_dir)
    arrays, num_classes = _open_teacher(teacher_dir, names, head)
    logits = np.lib.format.open_memmap(Path(out), mode="w+", dtype=np.float32, shape=(sum(clips), num_classes))
    row = 0
    for name, x, n in zip(names, arrays, clips, strict=True):
        pick = (np.arange(n) * x.shape[0]) // n
        y = np.asarray(x[pick], np.float32)
        if head is not None:
            y = y @ head[0].T + head[1]
        if not np.isfinite(y).all():
            raise ConfigError(f"--teacher {teacher_dir / (name + '.npy')}: non-finite values")
        logits[row:row + n] = y
        row += n
    logits.flush()
    return logits


__all__ = ["HEAD_SUFFIXES", "check_teacher", "read_head", "teacher_logits"]
