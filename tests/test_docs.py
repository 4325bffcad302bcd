"""The docs/ folder is what code points readers to: every ``docs/...`` path cited in code (and every link
between the docs) exists, and no code cites a file outside the repository (a reader of a clone has only
the clone)."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CODE = sorted([p for folder in ("benchmark", "methods", "tasks", "tests") for p in (ROOT / folder).rglob("*.py")]
              + [ROOT / "Makefile", ROOT / "pyproject.toml"])
OUTSIDE = re.compile(r"(?<![\w.])/(?:work|opt)/|shared/reference|\.\./")  # absolute or parent-relative paths
DOCS_PATH = re.compile(r"\bdocs/[\w./-]*\w")
MD_NAME = re.compile(r"(?<![\w/.-])([\w-]+\.md)\b")  # a bare file name such as baselines.md


def cited(pattern):
    """(file, line number, match) for every match of ``pattern`` in the project's code, this file excepted."""
    for path in CODE:
        if path == Path(__file__).resolve():
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for m in pattern.finditer(line):
                yield f"{path.relative_to(ROOT)}:{n}", m.group(m.lastindex or 0)


def test_the_docs_exist():
    for name in ("methods.md", "results-schema.md", "memory.md", "datasets.md"):
        assert (ROOT / "docs" / name).is_file(), name


def test_every_docs_path_cited_in_code_exists():
    refs = list(cited(DOCS_PATH))
    assert refs, "no code cites docs/: the pattern is broken"
    assert [(where, ref) for where, ref in refs if not (ROOT / ref).exists()] == []


def test_no_code_cites_a_path_outside_the_repository():
    assert list(cited(OUTSIDE)) == []


def test_every_markdown_file_named_in_code_is_in_the_repository():
    """A bare ``name.md`` must be a file of the repository (docs/, the README, a table under results/)."""
    known = {p.name for folder in (ROOT, ROOT / "docs", ROOT / "results") for p in folder.glob("*.md")}
    assert [(where, name) for where, name in cited(MD_NAME) if name not in known] == []


@pytest.mark.parametrize("doc", sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"], ids=lambda p: p.name)
def test_links_between_docs_resolve(doc):
    links = re.findall(r"\]\(([^)#\s]+)\)", doc.read_text(encoding="utf-8"))
    local = [link for link in links if "://" not in link]
    assert [link for link in local if not (doc.parent / link).exists()] == []
