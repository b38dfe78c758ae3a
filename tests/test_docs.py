"""docs/design.md is the design reference cited by docstrings: every citation must point at a
section that exists, every name in its paper-to-code map must exist, and nothing may cite the
design notes that live outside the repository."""
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DESIGN = ROOT / "docs" / "design.md"
CITED_FROM = ("src", "tests", "benchmarks", "docs", "README.md", "Makefile")
# "docs/design.md §2.5" or "docs/design.md §4.1, §3.3": the group of § numbers after the path
CITATION = re.compile(r"docs/design\.md((?:,?\s*§\d+(?:\.\d+)*)+)")
SECTION = re.compile(r"§(\d+(?:\.\d+)*)")
HEADING = re.compile(r"^(#{2,3}) (\d+(?:\.\d+)?)\.? (.+)$", re.M)
MAP_NAME = re.compile(r"`(scoreinv(?:\.\w+)+)`")


def text_files():
    for entry in CITED_FROM:
        p = ROOT / entry
        paths = [p] if p.is_file() else sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else []
        for q in paths:
            if q == DESIGN or q == Path(__file__).resolve() or ".egg-info" in str(q) or "__pycache__" in q.parts:
                continue
            try:
                yield q, q.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):    # binary files (models, images, arrays)
                continue


def sections(text: str) -> dict[str, str]:
    """Section number -> heading title, from the '## N.' and '### N.M' headings."""
    return {m.group(2): m.group(3).strip() for m in HEADING.finditer(text)}


def citations():
    for path, text in text_files():
        for line_no, line in enumerate(text.splitlines(), 1):
            for m in CITATION.finditer(line):
                for sec in SECTION.findall(m.group(1)):
                    yield f"{path.relative_to(ROOT)}:{line_no}", sec


def test_every_citation_points_at_an_existing_section():
    secs = sections(DESIGN.read_text(encoding="utf-8"))
    found = list(citations())
    assert len(found) >= 40, "the docstrings' citations of docs/design.md were not found"
    missing = [f"{where}: §{sec}" for where, sec in found if sec not in secs]
    assert not missing, f"citations of sections that docs/design.md does not have: {missing}"


def test_code_cites_sections_by_number():
    """A docstring or comment names the section ("docs/design.md §2.5"), so the citation can be checked."""
    loose = [f"{p.relative_to(ROOT)}:{i}" for p, text in text_files()
             if p.relative_to(ROOT).parts[0] in ("src", "benchmarks")
             for i, line in enumerate(text.splitlines(), 1)
             if re.search(r"docs/design\.md(?!\s*§\d)", line)]
    assert not loose, f"cite docs/design.md with a section number (docs/design.md §N.M): {loose}"


def test_no_reference_to_design_notes_outside_the_repository():
    old = "DESIGN" + ".md"       # split so that this file does not match itself
    hits = [f"{p.relative_to(ROOT)}:{i}" for p, text in text_files()
            for i, line in enumerate(text.splitlines(), 1) if old in line or "../shared" in line]
    assert not hits, f"cite docs/design.md instead of the out-of-tree design notes: {hits}"


def test_sections_are_numbered_in_order_and_the_contents_links_resolve():
    text = DESIGN.read_text(encoding="utf-8")
    secs = sections(text)
    keys = [tuple(int(p) for p in k.split(".")) for k in secs]
    assert keys == sorted(keys) and len(set(keys)) == len(keys), keys
    for top in range(1, 9):
        assert str(top) in secs, f"section {top} missing"
    slugs = set()
    for m in HEADING.finditer(text):
        title = f"{m.group(2)}{'.' if m.group(1) == '##' else ''} {m.group(3)}"
        slugs.add(re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-"))
    links = re.findall(r"\]\(#([^)]+)\)", text)
    assert links and not [a for a in links if a not in slugs], [a for a in links if a not in slugs]


def resolve(dotted: str):
    """Import the longest importable module prefix of `dotted`, then getattr the rest."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for name in parts[i:]:
            obj = getattr(obj, name)
        return obj
    raise ModuleNotFoundError(dotted)


def map_names() -> list[str]:
    text = DESIGN.read_text(encoding="utf-8")
    start = text.index("## 5. Paper-to-code map")
    end = text.index("\n## 6.", start)
    return sorted(set(MAP_NAME.findall(text[start:end])))


def test_map_is_not_empty():
    assert len(map_names()) >= 40


@pytest.mark.parametrize("name", map_names())
def test_every_name_in_the_paper_to_code_map_exists(name):
    try:
        obj = resolve(name)
    except (ModuleNotFoundError, AttributeError) as e:
        pytest.fail(f"docs/design.md §5 names {name}, which does not exist ({type(e).__name__}: {e})")
    assert obj is not None
