"""The repository stands alone: every citation of upstream's behaviour points into docs/UPSTREAM.md, and no
file refers to places outside the repository or to an issue tracker.

Citations are `§N`, `section N` / `sections N and M`, `quirk N` / `quirks N-M, K` and sub-section names such
as `§6 "Logs"`. The numbers and headings they must resolve to are read from docs/UPSTREAM.md itself.
"""

from __future__ import annotations

import ast
import re
import subprocess
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SPEC = "docs/UPSTREAM.md"
THIS = Path(__file__).resolve().relative_to(ROOT).as_posix()

#: Where code and documentation cite the spec: (.py and .md files) under these folders, plus these files.
CITING_DIRS = ("l2l_jax/", "convert/", "configs/", "benchmarks/", "tests/", "docs/")
CITING_FILES = ("README.md", "BENCHMARKS.md")

# "4", "3-5", "3-§5", "12-14, 23", "4 and 5" (line breaks allowed inside a list)
_NUMS = r"\d+(?:\s*(?:-|–|,|and|or|to)\s*§?\d+)*"
SECTION_SIGN = re.compile(r"§\s?(" + _NUMS + r")")
SECTION_WORD = re.compile(r"\bsections?\s+(" + _NUMS + r")", re.IGNORECASE)
QUIRK = re.compile(r"\bquirks?\s+(" + _NUMS + r")", re.IGNORECASE)
SUBSECTION = re.compile(r"(?:§\s?|\bsection\s+)(\d+),?\s*\"([^\"\n]+)\"", re.IGNORECASE)
# a bare UPSTREAM.md, not preceded by a path ("docs/UPSTREAM.md") or part of a longer name
BARE_SPEC_NAME = re.compile(r"(?<![\w/.-])UPSTREAM\.md\b")

#: paths and names of places outside the repository (assembled, so that this file does not name them itself)
_OUTSIDE = ("..", "/shared"), ("/work", "/shared"), ("steering", " repo")
OUTSIDE_PATHS = re.compile("|".join(re.escape(a + b) for a, b in _OUTSIDE), re.IGNORECASE)
ISSUE_WORD = re.compile(r"\bissues?\s+#?\d+\b", re.IGNORECASE)
# "#12" as a reference; not "&#39;", "a#1", "url/#1", "##2", nor an all-digit colour literal ("#000000")
ISSUE_HASH = re.compile(r"(?<![\w&#/])#(\d+)\b")
COLOUR_DIGITS = {3, 4, 6, 8}


@cache
def tracked_files() -> tuple[str, ...]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the tracked files are unknown")
    return tuple(p for p in out.decode().split("\0") if p and (ROOT / p).is_file())


@cache
def text_of(path: str) -> str | None:
    """The file's text, or None for a binary file."""
    data = (ROOT / path).read_bytes()
    if b"\0" in data[:8192]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def citing_files() -> list[str]:
    return [p for p in tracked_files()
            if p != THIS and p.endswith((".py", ".md")) and (p.startswith(CITING_DIRS) or p in CITING_FILES)]


def prose_files() -> list[str]:
    return [p for p in tracked_files()
            if p != THIS and not p.startswith("tests/fixtures/") and text_of(p) is not None]


def numbers(spec: str) -> list[int]:
    """'12-14, 23' -> [12, 13, 14, 23]; '3-§5' -> [3, 4, 5]."""
    out: list[int] = []
    for part in re.split(r"\s*(?:,|and|or)\s*", spec):
        ends = [int(n) for n in re.findall(r"\d+", part)]
        if len(ends) == 2:
            out.extend(range(ends[0], ends[1] + 1))
        else:
            out.extend(ends)
    return out


def line_of(text: str, pos: int) -> tuple[int, str]:
    start = text.rfind("\n", 0, pos) + 1
    end = text.find("\n", pos)
    return text.count("\n", 0, pos) + 1, text[start:end if end >= 0 else len(text)].strip()


@cache
def spec_structure() -> tuple[dict[int, list[str]], list[int]]:
    """{section number: its sub-heading names} and the quirk numbers, in document order (code blocks skipped)."""
    text = (ROOT / SPEC).read_text(encoding="utf-8")
    text = re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)
    sections: dict[int, list[str]] = {}
    quirks: list[int] = []
    current = None
    for line in text.splitlines():
        if m := re.match(r"##\s+§(\d+)\s+\S", line):
            current = int(m.group(1))
            sections[current] = []
        elif (m := re.match(r"###+\s+(.+?)\s*$", line)) and current is not None:
            sections[current].append(m.group(1))
        elif (m := re.match(r"\*\*Quirk (\d+)\.\*\*", line)) and current == 8:
            quirks.append(int(m.group(1)))
    return sections, quirks


def test_upstream_doc_numbers_sections_1_to_8_and_quirks_1_to_30():
    sections, quirks = spec_structure()
    assert list(sections) == list(range(1, 9))
    assert quirks == list(range(1, 31))
    assert all(sections[n] for n in range(1, 8)), "sections 1-7 are split into named sub-sections"


def _citations(pattern: re.Pattern) -> list[tuple[str, int, str, int]]:
    found = []
    for path in citing_files():
        text = text_of(path)
        if text is None:
            continue
        for m in pattern.finditer(text):
            line, content = line_of(text, m.start())
            found.extend((path, line, content, n) for n in numbers(m.group(1)))
    return found


def test_cited_sections_exist_in_upstream_doc():
    sections, _ = spec_structure()
    cited = _citations(SECTION_SIGN) + _citations(SECTION_WORD)
    assert cited, "the code cites sections of docs/UPSTREAM.md"
    bad = sorted({f"{p}:{ln}: {txt}" for p, ln, txt, n in cited if n not in sections})
    assert not bad, "sections cited but missing from docs/UPSTREAM.md:\n" + "\n".join(bad)


def test_cited_quirks_exist_in_upstream_doc():
    _, quirks = spec_structure()
    cited = _citations(QUIRK)
    assert cited, "the code cites quirks of docs/UPSTREAM.md"
    bad = sorted({f"{p}:{ln}: {txt}" for p, ln, txt, n in cited if n not in quirks})
    assert not bad, "quirks cited but missing from docs/UPSTREAM.md §8:\n" + "\n".join(bad)


def test_cited_subsection_names_are_headings_of_that_section():
    sections, _ = spec_structure()
    bad, seen = [], 0
    for path in citing_files():
        text = text_of(path)
        if text is None:
            continue
        for m in SUBSECTION.finditer(text):
            seen += 1
            number, name = int(m.group(1)), m.group(2).strip()
            headings = {h.casefold() for h in sections.get(number, [])}
            if name.casefold() not in headings:
                line, content = line_of(text, m.start())
                bad.append(f"{path}:{line}: {content}")
    assert seen, "the code cites named sub-sections (such as §6 \"Logs\")"
    assert not bad, "sub-sections cited but not headings of that section in docs/UPSTREAM.md:\n" + "\n".join(bad)


def test_spec_is_cited_by_its_path_in_the_repository():
    """Outside docs/ (where the plain file name is a sibling), the spec is named docs/UPSTREAM.md."""
    bad = []
    for path in citing_files():
        text = text_of(path)
        if text is None or path.startswith("docs/"):
            continue
        for m in BARE_SPEC_NAME.finditer(text):
            line, content = line_of(text, m.start())
            bad.append(f"{path}:{line}: {content}")
    assert not bad, "UPSTREAM.md cited without its path docs/UPSTREAM.md:\n" + "\n".join(bad)


def test_no_file_refers_to_paths_outside_the_repository():
    bad = []
    for path in prose_files():
        text = text_of(path)
        for m in OUTSIDE_PATHS.finditer(text):
            line, content = line_of(text, m.start())
            bad.append(f"{path}:{line}: {content}")
    assert not bad, "references to places outside the repository:\n" + "\n".join(bad)


def _issue_references(text: str) -> list[int]:
    positions = [m.start() for m in ISSUE_WORD.finditer(text)]
    for m in ISSUE_HASH.finditer(text):
        quoted = m.start() > 0 and text[m.start() - 1] in "\"'"
        if quoted and len(m.group(1)) in COLOUR_DIGITS:
            continue  # a colour literal such as "#000000"
        positions.append(m.start())
    return sorted(positions)


def test_issue_reference_patterns():
    word, mark = "issue", "#"  # assembled, so that this file holds no reference itself
    assert _issue_references(f"as agreed in {word} 3 item 2") and _issue_references(f"({word.title()} {mark}12)")
    assert _issue_references("fixed by #45.") and _issue_references("see #7, then")
    for clean in ('color="#000000"', "x = 1  # noqa: E501", "&#39;", "page#12", "url/#3", "## 2. Batching",
                  "an issue with 3 videos", "#{i}", "color: #1f77b4"):
        assert not _issue_references(clean), clean


def test_no_file_refers_to_an_issue_tracker():
    bad = []
    for path in prose_files():
        text = text_of(path)
        for pos in _issue_references(text):
            line, content = line_of(text, pos)
            bad.append(f"{path}:{line}: {content}")
    assert not bad, "issue-tracker references (say what is meant instead):\n" + "\n".join(bad)


# ------------------------------------------------------------------------------------------------ the module map
DESIGN = "docs/DESIGN.md"
MAP_HEADING = "## The module map"
#: a path the map names: a module or folder of the package, of convert/ or of configs/, in backticks
MAP_PATH = re.compile(r"`((?:l2l_jax|convert|configs)/[\w./-]*)`")
MAP_FLOOR = re.compile(r"###\s+(\d+)\.")
MAP_ROW = re.compile(r"\|\s*`([\w./-]+)`\s*\|")


@cache
def module_map() -> str:
    """The module-map section of docs/DESIGN.md (up to the next second-level heading)."""
    text = (ROOT / DESIGN).read_text(encoding="utf-8")
    assert MAP_HEADING in text, f"{DESIGN} has no section {MAP_HEADING!r}"
    start = text.index(MAP_HEADING)
    end = text.find("\n## ", start + len(MAP_HEADING))
    return text[start:end if end >= 0 else len(text)]


def package_modules() -> list[str]:
    """Every module of the package (its .py files but the packages' __init__.py) and the l2l-convert program."""
    found = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "l2l_jax").rglob("*.py")
                   if p.name != "__init__.py" and "__pycache__" not in p.parts)
    return [*found, "convert/cli.py"]


def map_floors() -> dict[str, int]:
    """{module: its floor} from the map's tables, each under a ``### N. ...`` heading."""
    floors: dict[str, int] = {}
    floor = None
    for line in module_map().splitlines():
        if m := MAP_FLOOR.match(line):
            floor = int(m.group(1))
        elif (m := MAP_ROW.match(line)) and floor is not None and m.group(1).endswith(".py"):
            floors[m.group(1)] = floor
    return floors


def test_module_map_names_every_module():
    named = set(MAP_PATH.findall(module_map()))
    missing = [m for m in package_modules() if m not in named]
    assert not missing, f"modules missing from the module map of {DESIGN}:\n" + "\n".join(missing)


def test_module_map_names_only_paths_that_exist():
    named = sorted(set(MAP_PATH.findall(module_map())))
    assert len(named) >= len(package_modules())
    gone = [p for p in named if not (ROOT / p).exists()]
    assert not gone, f"the module map of {DESIGN} names paths that do not exist:\n" + "\n".join(gone)


def _imported_modules(path: str) -> set[str]:
    """The package files `path` imports (anywhere in it), as repository paths."""
    package = Path(path).parent.parts
    out = set()
    for node in ast.walk(ast.parse((ROOT / path).read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package[:len(package) - node.level + 1], *([base] if base else [])])
            names = [base, *(f"{base}.{a.name}" for a in node.names)]
        else:
            continue
        for name in names:
            target = ROOT.joinpath(*name.split("."))
            for candidate in (target.with_suffix(".py"), target / "__init__.py"):
                if name.startswith(("l2l_jax", "convert")) and candidate.is_file():
                    out.add(candidate.relative_to(ROOT).as_posix())
                    break
    return out


def test_module_map_floors_hold():
    """A module imports nothing from a higher floor of the map (functions' imports included)."""
    floors = map_floors()
    assert len(floors) >= len(package_modules())
    bad = [f"{m} (floor {f}) imports {t} (floor {floors[t]})"
           for m, f in sorted(floors.items()) for t in sorted(_imported_modules(m)) if floors.get(t, 0) > f]
    assert not bad, f"imports that run up the floors of {DESIGN}'s module map:\n" + "\n".join(bad)
