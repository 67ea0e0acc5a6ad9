"""The labels CSV of `l2l-extract` (and `l2l-distill`): parsing it into entries, detecting whether the labels
are class indices or class names, and the one-line error naming the line of every problem in it.

The format (``video,label[,split]``, header, normalised video paths, label kinds) is described in the
`l2l_jax.programs.extract` docstring. Nothing here writes a file; every problem is a `ConfigError` raised before
the program does any work.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import posixpath
import re
from collections.abc import Sequence
from pathlib import Path

from l2l_jax.errors import ConfigError, first_line

DEFAULT_SPLIT = "train"  # the one split of a CSV without a split column, unless --split names another


@dataclasses.dataclass(frozen=True)
class Entry:
    """One row of the labels CSV."""

    video: str  # path relative to the VIDEOS folder, normalised (``./a//b.mp4`` -> ``a/b.mp4``)
    name: str
    label: int
    split: str


@dataclasses.dataclass
class LabelTable:
    """The labels CSV read (`parse_labels`): the entries of the splits asked for, and how labels were read."""

    entries: list[Entry]
    class_names: list[str] | None  # None: labels are class indices
    kind: str  # "int" or "name"
    detected: bool  # the kind was detected (``--label_kind auto``), not given
    duplicates: list[str]  # videos named again on a later line with the same label and split (kept once)


LABEL_KINDS = ("auto", "int", "name")
HEADERS = (("video", "label"), ("video", "label", "split"))
# words that make a first line without a file extension a header (to be spelled as HEADERS)
_HEADER_WORDS = {"video", "videos", "filename", "file", "path", "name", "id", "youtube_id", "clip", "label",
                 "labels", "class", "classes", "category", "target", "split"}
_INDEX = re.compile(r"\+?[0-9]+")  # ASCII digits only: str.isdigit() also accepts "²"
_SPLIT = re.compile(r"\w[\w.-]*")
MAX_LABEL = 2**31 - 1


def video_name(rel: str) -> str:
    """``a/b.mp4`` -> ``a__b``: the feature files' stem (of the normalised path, so ``./b.mp4`` -> ``b``)."""
    rel = rel.replace("\\", "/")
    stem = os.path.splitext(posixpath.normpath(rel) if rel else rel)[0]
    return stem.strip("/").replace("/", "__")


def _numberish(x: str) -> bool:
    """`x` reads as a finite number (``-1``, ``1.0``, ``1e3``)."""
    try:
        return math.isfinite(float(x))
    except ValueError:
        return False


def _csv_rows(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, stripped cells) of every non-blank row; a UTF-8 BOM is dropped."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            rows = []
            for r in reader:
                cells = [c.strip() for c in r]
                if any(cells):
                    rows.append((reader.line_num, cells))
            return rows
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ConfigError(f"--labels {path}: unreadable ({first_line(e)}); give a UTF-8 CSV file") from None



def _header(path: Path, line: int, cells: list[str]) -> tuple[str, ...] | None:
    """The header's columns when the first row is a header (checked: it must be one of HEADERS), else None."""
    first = cells[0]
    looks = first.lower() == "video" or (not os.path.splitext(first)[1] and (
        first.lower() in _HEADER_WORDS or (len(cells) > 1 and cells[1].lower() in _HEADER_WORDS)))
    if not looks:
        return None
    got = tuple(c.lower() for c in cells)
    if got not in HEADERS:
        raise ConfigError(f"--labels {path} line {line}: the header {','.join(cells)!r} must be 'video,label' or "
                          "'video,label,split' (or leave the header out)")
    return got


def _video_path(path: Path, line: int, video: str) -> str:
    """The video's path relative to VIDEOS, normalised; refused when it is absolute or leaves VIDEOS."""
    v = video.replace("\\", "/")
    if any(ord(c) < 32 or ord(c) == 127 for c in v):
        raise ConfigError(f"--labels {path} line {line}: the video path {video!r} holds control characters")
    if v.startswith("/") or re.match(r"[A-Za-z]:", v):
        raise ConfigError(f"--labels {path} line {line}: the video path {video!r} is absolute; give it relative "
                          "to VIDEOS")
    norm = posixpath.normpath(v)
    if norm in (".", "..") or norm.startswith("../"):
        raise ConfigError(f"--labels {path} line {line}: the video path {video!r} is not a file inside VIDEOS")
    return norm


def _label_kind(path: Path, raw: list[tuple[int, str]], kind: str) -> tuple[str, bool]:
    """("int" or "name", detected?) for the labels `raw` ((line, label)); raises naming the first bad line."""
    for line, x in raw:
        if not x:
            raise ConfigError(f"--labels {path} line {line}: empty label; give every video a label")
    detected = kind == "auto"
    if kind == "auto":
        index = [_INDEX.fullmatch(x) is not None for _, x in raw]
        if all(index):
            kind = "int"
        elif not any(index) and not any(_numberish(x) for _, x in raw):
            kind = "name"
    if kind == "auto":
        first_at, first = raw[0]
        odd = [(ln, x) for (ln, x), i in zip(raw, index, strict=True) if not i and _numberish(x)]
        either = "fix it, or pass --label_kind int or --label_kind name"
        if odd:
            (line, x), why = odd[0], ("is a number but not a class index (an integer >= 0); fix it, or pass "
                                      "--label_kind name to read every label as a class name")
        elif index[0]:
            line, x = next((ln, x) for (ln, x), i in zip(raw, index, strict=True) if not i)
            why = f"is a class name, but line {first_at}'s {first!r} is a class index; {either}"
        else:
            line, x = next((ln, x) for (ln, x), i in zip(raw, index, strict=True) if i)
            why = f"is a class index, but line {first_at}'s {first!r} is a class name; {either}"
        raise ConfigError(f"--labels {path} line {line}: label {x!r} {why}")
    if kind == "int":
        for line, x in raw:
            if _INDEX.fullmatch(x) is None:
                raise ConfigError(f"--labels {path} line {line}: label {x!r} is not a class index (an integer >= 0); "
                                  "fix it, or pass --label_kind name if the labels are class names")
            if len(x.lstrip("+0")) > 10 or int(x) > MAX_LABEL:  # int() of 5000 digits is refused by Python
                raise ConfigError(f"--labels {path} line {line}: label {x[:20]}{'...' if len(x) > 20 else ''} is too "
                                  "large for a class index")
    return kind, detected


def parse_labels(path: str | os.PathLike, splits: Sequence[str] | None, kind: str = "auto") -> LabelTable:
    """The labels CSV (format: the `l2l_jax.programs.extract` docstring), restricted to `splits` (None: all;
    without a split column, the one split named, default train). `kind`: "int" (class indices), "name" (class
    names, indexed by their sorted order) or "auto" (int when every label is an integer >= 0, name when no label
    is a number, else an error). Every problem is a `ConfigError` naming the file and line."""
    path = Path(path)
    if kind not in LABEL_KINDS:
        raise ConfigError(f"--label_kind {kind!r}: expected one of {', '.join(LABEL_KINDS)}")
    if not path.is_file():
        raise ConfigError(f"--labels {path}: " + ("not a regular file (a folder, FIFO or device); give the CSV file"
                                                   if path.exists() else "no such file"))
    rows = _csv_rows(path)
    header = _header(path, *rows[0]) if rows else None
    if header is not None:
        rows = rows[1:]
    if not rows:
        raise ConfigError(f"--labels {path}: no rows (expected lines 'video,label[,split]')")
    width = len(header) if header is not None else len(rows[0][1])
    for line, cells in rows:
        if len(cells) != width or width not in (2, 3):
            expect = f"{width} fields, as the {'header' if header else 'first row'}" if width in (2, 3) else \
                "2 (video,label) or 3 (video,label,split) fields"
            raise ConfigError(f"--labels {path} line {line}: {','.join(cells)!r} does not have {expect}")
    has_split = width == 3
    if not has_split and splits is not None and len(splits) != 1:
        raise ConfigError(f"--labels {path} has no split column: --split must name one split for all its videos")
    one_split = (splits[0] if splits else DEFAULT_SPLIT) if not has_split else None
    # one row per video: a repeat with the same label and split is dropped, a conflicting one refused
    first: dict[str, tuple[int, list[str]]] = {}
    unique, duplicates = [], []
    for line, cells in rows:
        video = _video_path(path, line, cells[0])
        split = cells[2] if has_split else one_split
        if not split or _SPLIT.fullmatch(split) is None:
            raise ConfigError(f"--labels {path} line {line}: invalid split {split!r} (letters, digits, '_', '-', '.')")
        if video in first:
            line0, cells0 = first[video]
            if cells0[1:] != cells[1:]:
                raise ConfigError(f"--labels {path}: lines {line0} and {line} both name the video {video!r} with "
                                  "different labels or splits; keep one")
            duplicates.append(video)
            continue
        first[video] = (line, cells)
        unique.append((line, video, cells[1], split))
    kind, detected = _label_kind(path, [(line, label) for line, _, label, _ in unique], kind)
    names: list[str] | None = None
    if kind == "name":
        names = sorted({label for _, _, label, _ in unique})
        index = {n: i for i, n in enumerate(names)}
    entries, seen = [], {}
    for line, video, label, split in unique:
        name = video_name(video)
        if name in seen:
            raise ConfigError(f"--labels {path}: lines {seen[name][0]} ({seen[name][1]!r}) and {line} ({video!r}) "
                              f"both give the feature name {name!r}; names must be unique")
        seen[name] = (line, video)
        if splits is not None and split not in splits:
            continue
        entries.append(Entry(video, name, index[label] if names is not None else int(label), split))
    if not entries:
        raise ConfigError(f"--labels {path}: no video in the split(s) {', '.join(splits or [])}")
    return LabelTable(entries, names, kind, detected, duplicates)


def read_labels(path: str | os.PathLike, splits: Sequence[str] | None,
                kind: str = "auto") -> tuple[list[Entry], list[str] | None]:
    """`parse_labels` as (entries, class names or None for integer labels)."""
    table = parse_labels(path, splits, kind)
    return table.entries, table.class_names


def describe_labels(table: LabelTable) -> str:
    """One line saying how the labels were read (printed by l2l-extract)."""
    how = "detected" if table.detected else "--label_kind"
    if table.kind == "int":
        text = f"labels: class indices ({how}; --label_kind name reads them as class names)"
    else:
        text = (f"labels: {len(table.class_names or [])} class names, numbered in sorted order ({how}; "
                "written to classes.json)")
    if table.duplicates:
        text += f"; {len(table.duplicates)} repeated line(s) kept once: {', '.join(table.duplicates[:5])}"
    return text


__all__ = ["DEFAULT_SPLIT", "HEADERS", "LABEL_KINDS", "MAX_LABEL", "Entry", "LabelTable", "describe_labels",
           "parse_labels", "read_labels", "video_name"]
