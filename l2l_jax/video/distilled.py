"""The output folder of `l2l-distill`: written once training ends, read back by ``l2l-extract
--weights_imageaudionet`` and ``l2l-distill --init``, its files checked against the checksums its report records.

DIR holds

- ``visualnet.pth`` and ``audionet.pth``: the trained trunks as upstream's VisualNet / AudioNet state dicts
  (``{"model": state dict}``);
- ``ImageAudioNet_<name>.pth``: the fusion net + classifier in upstream's checkpoint format, and ``imageaudionet/``,
  the same as a converted model directory (its ``meta.json`` records its tensors' checksum, `l2l_jax.model_dir`);
- ``distill.json``: the run's report, written last; its ``"files"`` maps each file above (``imageaudionet/`` by
  its ``meta.json``) to its SHA-256.

`load_distilled` checks every recorded file before it reads one, so a folder whose files are not of one run (a
copy mixing two folders, a run stopped between writing its weights and its report, a file replaced by hand) is
refused naming the file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from l2l_jax import variants
from l2l_jax.data.index import BadFileError
from l2l_jax.data.source import file_sha256
from l2l_jax.errors import L2LError, WeightsError
from l2l_jax.model_dir import META_FILE, load_model_dir, save_model_dir
from l2l_jax.outputs import atomic_write_text
from l2l_jax.pth_convert import export_checkpoint
from l2l_jax.torch_io import read_state_dict, write_torch_file
from l2l_jax.video import convert as C

VISUAL_FILE, AUDIO_FILE, FUSION_DIR, REPORT_FILE = "visualnet.pth", "audionet.pth", "imageaudionet", "distill.json"
FUSION_META = f"{FUSION_DIR}/{META_FILE}"
#: what `load_distilled` reads: each must be recorded in the report and match
NEEDED = (VISUAL_FILE, AUDIO_FILE, FUSION_META)


def write_distilled(out: Path, visual: dict, audio: dict, fusion: dict, num_classes: int, name: str,
                    meta: Mapping[str, Any]) -> dict[str, Path]:
    """The trained networks -> ``visualnet.pth``, ``audionet.pth``, ``ImageAudioNet_<name>.pth`` and
    ``imageaudionet/`` in `out` (each written atomically); returns their paths."""
    paths = {"visualnet": write_torch_file(out / VISUAL_FILE, C.visualnet_to_state_dict(visual, "upstream")),
             "audionet": write_torch_file(out / AUDIO_FILE, C.audionet_to_state_dict(audio, "upstream"))}
    fmeta = {"variant": variants.IMAGEAUDIONET, "num_classes": num_classes, "feature_dim": variants.FUSION_WIDTH,
             **meta}
    ckpt = export_checkpoint(fusion, fmeta)
    paths["pth"] = write_torch_file(out / f"ImageAudioNet_{name}.pth", ckpt.pop("model"), **ckpt)
    paths["imageaudionet"] = save_model_dir(out / FUSION_DIR, fusion, fmeta, overwrite=True)
    return paths


def file_checksums(out: Path, paths: Mapping[str, Path]) -> dict[str, str]:
    """{path relative to `out`: SHA-256} of the files `write_distilled` wrote (a model directory by its
    ``meta.json``, which holds its tensors' checksum)."""
    sums = {}
    for path in paths.values():
        file = path / META_FILE if path.is_dir() else path
        sums[file.relative_to(out).as_posix()] = file_sha256(file)
    return sums


def write_report(out: Path, report: Mapping[str, Any], paths: Mapping[str, Path]) -> dict[str, Any]:
    """``distill.json``: `report` plus ``"files"`` (`file_checksums`), written atomically and last."""
    full = {**report, "files": file_checksums(out, paths)}
    atomic_write_text(out / REPORT_FILE, json.dumps(full, indent=1) + "\n")
    return full


def verify_distilled(root: Path, flag: str) -> dict[str, Any]:
    """The report of the output folder `root` after checking that every file it records is there with the
    recorded SHA-256; else a `WeightsError` naming `flag`, the folder and the file. Returns the report."""
    where = f"{flag} {root}"
    missing = [n for n in (VISUAL_FILE, AUDIO_FILE, FUSION_DIR, REPORT_FILE) if not (root / n).exists()]
    if missing:
        raise WeightsError(f"{where}: not a distillation output folder (no {', '.join(missing)})")
    again = "run the distillation that made the folder again (the same command), or use an intact output folder"
    try:
        report = json.loads((root / REPORT_FILE).read_text(encoding="utf-8"))
        recorded = report["files"]
        if not isinstance(recorded, dict) or not all(isinstance(v, str) for v in recorded.values()):
            raise TypeError
    except (OSError, ValueError, KeyError, TypeError):
        raise WeightsError(f"{where}: {REPORT_FILE} records no checksums of the folder's files (unreadable, or "
                           f"written by an older version); {again}") from None
    for rel in [*NEEDED, *sorted(set(recorded) - set(NEEDED))]:
        if rel not in recorded:
            raise WeightsError(f"{where}: {REPORT_FILE} records no checksum of {rel}; {again}")
        if os.path.isabs(rel) or ".." in Path(rel).parts:
            raise WeightsError(f"{where}: {REPORT_FILE} names {rel!r}, not a file of the folder; {again}")
        path = root / rel
        if rel not in NEEDED and not path.exists():
            continue  # ImageAudioNet_<name>.pth: not read here; a folder without it still loads
        try:
            ok = path.is_file() and file_sha256(path) == recorded[rel]
        except (OSError, BadFileError):
            ok = False
        if not ok:
            raise WeightsError(f"{where}: {rel} is not the file {REPORT_FILE} records (its SHA-256 differs: the "
                               f"folder's files are not of one run); {again}")
    return report


def load_distilled(path: str | os.PathLike, flag: str = "--weights_imageaudionet") -> tuple[dict, dict, dict, dict]:
    """A distillation output folder -> (VisualNet variables, AudioNet variables, ImageAudioClassifier variables,
    its meta), after `verify_distilled`: ``visualnet.pth`` and ``audionet.pth`` read weights-only and strictly,
    ``imageaudionet/`` checked against its checksum. Every problem is a `WeightsError` naming `flag`."""
    root = Path(path)
    verify_distilled(root, flag)
    try:
        visual = C.visualnet_from_state_dict(read_state_dict(root / VISUAL_FILE)[0], what=VISUAL_FILE)
        audio = C.audionet_from_state_dict(read_state_dict(root / AUDIO_FILE)[0], what=AUDIO_FILE)
        fusion, meta = load_model_dir(root / FUSION_DIR)
    except L2LError as e:
        raise WeightsError(f"{flag} {root}: {e}") from None
    if meta.get("variant") != variants.IMAGEAUDIONET:
        raise WeightsError(f"{flag} {root}: {FUSION_DIR}/ holds variant {meta.get('variant')!r}, expected "
                           f"{variants.IMAGEAUDIONET}")
    return visual, audio, fusion, meta


__all__ = ["AUDIO_FILE", "FUSION_DIR", "REPORT_FILE", "VISUAL_FILE", "file_checksums", "load_distilled",
           "verify_distilled", "write_distilled", "write_report"]
