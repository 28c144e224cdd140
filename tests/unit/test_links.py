"""Every relative link in README.md and docs/*.md resolves: the file exists and, for ``#anchor``
links, the target has that heading (GitHub's slug rule) or an explicit ``<a id>`` anchor. A
reader following the documentation from the README never lands on a missing page or section."""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", ROOT / "tests" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_FENCE = re.compile(r"^\s*(```|~~~)")
_CODE_SPAN = re.compile(r"`[^`]*`")
_LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_HTML_ANCHOR = re.compile(r"<a\s+(?:id|name)=\"([^\"]+)\"", re.IGNORECASE)
_EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)  # http:, https:, mailto:, ...


def _prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks."""
    out, fenced = [], False
    for n, line in enumerate(text.splitlines(), 1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append((n, line))
    return out


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: the rendered text (code, emphasis and link markup
    dropped), lower-cased, punctuation other than ``-`` and ``_`` removed, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
    text = re.sub(r"[`*]", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every anchor ``page`` defines: its headings' slugs (repeats numbered ``-1``, ``-2`` as on
    GitHub) and explicit ``<a id="...">`` / ``<a name="...">`` anchors."""
    seen: Counter[str] = Counter()
    found = set()
    text = page.read_text()
    for _, line in _prose_lines(text):
        m = _HEADING.match(line)
        if m:
            slug = github_slug(m.group(2))
            found.add(slug if not seen[slug] else f"{slug}-{seen[slug]}")
            seen[slug] += 1
    found.update(_HTML_ANCHOR.findall(text))
    return found


def links(page: Path) -> list[tuple[int, str]]:
    """(line number, target) of every relative link and image in ``page``'s prose."""
    out = []
    for n, line in _prose_lines(page.read_text()):
        for target in _LINK.findall(_CODE_SPAN.sub("", line)):
            if not _EXTERNAL.match(target):
                out.append((n, target))
    return out


def broken_links(page: Path, root: Path = ROOT) -> list[str]:
    """What in ``page`` does not resolve, one message per link (``page`` named relative to ``root``)."""
    bad = []
    for n, target in links(page):
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        if not dest.exists():
            bad.append(f"{page.relative_to(root)}:{n}: {target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{page.relative_to(root)}:{n}: {target}: {dest.name} has no heading or anchor #{anchor}")
    return bad


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    bad = broken_links(page)
    assert not bad, "\n".join(bad)


def test_the_readme_links_every_docs_page() -> None:
    """The README is the way in: every page of docs/ is reachable from it."""
    linked = {(ROOT / target.partition("#")[0]).resolve() for _, target in links(ROOT / "README.md")}
    missing = [p.name for p in sorted((ROOT / "docs").glob("*.md")) if p.resolve() not in linked]
    assert not missing, f"README.md links no docs page {missing}"


def test_the_checker_finds_missing_files_and_anchors(tmp_path: Path) -> None:
    """The rules the test above relies on: GitHub's slugs, repeats, explicit anchors, code left
    alone, and a missing file or section reported with its line."""
    assert github_slug("Tensor-parallel instances (`cluster.tp`)") == "tensor-parallel-instances-clustertp"
    assert github_slug("Failures and rerouting (simulator; the fabric: see \"Link failures\")") == \
        "failures-and-rerouting-simulator-the-fabric-see-link-failures"
    assert github_slug("What you get from `netkv simulate`") == "what-you-get-from-netkv-simulate"
    target = tmp_path / "t.md"
    target.write_text("# Title\n## Same\n## Same\n<a id=\"explicit\"></a>\n```\n## not a heading\n```\n")
    assert anchors(target) == {"title", "same", "same-1", "explicit"}
    page = tmp_path / "p.md"
    page.write_text("[ok](t.md#same-1) [ok](t.md#explicit) ![img](t.md) `[code](nowhere.md)` "
                    "[web](https://example.org/x.md)\n"
                    "```\n[fenced](nowhere.md)\n```\n"
                    "[gone](nowhere.md) [no section](t.md#not-a-heading) [self](#title)\n")
    assert [msg.split(": ", 1)[1] for msg in broken_links(page, tmp_path)] == [
        "nowhere.md: no such file", "t.md#not-a-heading: t.md has no heading or anchor #not-a-heading",
        "#title: p.md has no heading or anchor #title"]

