"""The documentation's relative links resolve: every [text](target) in README.md, docs/*.md and slurm/README.md that is
not a URL names a file that exists, and its #anchor a heading of that file (GitHub's slugs). README.md stays short."""

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "slurm" / "README.md"]
LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")  # [text](target) and ![alt](target)
FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)  # fenced code blocks: no links, no headings in them


def without_code(path: Path) -> str:
    return FENCE.sub("", path.read_text(encoding="utf-8"))


def slugs(path: Path) -> set[str]:
    """GitHub's heading anchors: the heading's text, lowercase, punctuation but '-' and '_' removed, spaces to '-';
    a heading that repeats an earlier one's slug gets -1, -2, ..."""
    found, count = set(), {}
    for heading in re.findall(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", without_code(path), flags=re.M):
        text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
        slug = re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")
        n = count.get(slug, 0)
        count[slug] = n + 1
        found.add(slug if n == 0 else f"{slug}-{n}")
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: os.path.relpath(p, ROOT))
def test_relative_links_resolve(page):
    prose = re.sub(r"(`+).+?\1", "", without_code(page))  # inline code: brackets there are not links
    broken = []
    for target in LINK.findall(prose):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, flags=re.I):  # http:, https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        if not dest.exists():
            broken.append(f"{target} (no file {os.path.relpath(dest, ROOT)})")
        elif anchor and (dest.suffix != ".md" or anchor not in slugs(dest)):
            broken.append(f"{target} (no heading #{anchor} in {os.path.relpath(dest, ROOT)})")
    assert not broken, f"{os.path.relpath(page, ROOT)}: broken links: " + ", ".join(broken)


def test_readme_is_short():
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 300
