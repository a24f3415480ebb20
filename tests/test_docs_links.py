"""Every relative link and image in the repository's Markdown documents points at a file that exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = sorted(
    p for p in (*ROOT.glob("*.md"), *ROOT.glob("docs/*.md"), *ROOT.glob("bench/*.md")) if p.is_file()
)
LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_documents_found():
    assert {"README.md", "RESULTS_training.md", "design.md"} <= {p.name for p in DOCUMENTS}


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_exist(document):
    missing = []
    for target in LINK.findall(document.read_text(encoding="utf-8")):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue  # a URL or an anchor in the same document
        path = (document.parent / target.split("#", 1)[0]).resolve()
        if not path.exists():
            missing.append(target)
    assert not missing, f"{document.name} links to missing files: {missing}"
