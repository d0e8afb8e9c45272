"""The manual: every relative link in README.md and docs/*.md reaches a file (and, with a #fragment,
a heading of it), the README stays a front page, and its test command is the one CI runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")  # [text](target "title"), ![alt](target)
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks (a `# comment` in a bash block is not a heading)."""
    out, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append(line)
    return out


def anchors(path: Path) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces to hyphens, -1, -2 for repeats."""
    seen: dict[str, int] = {}
    for line in prose_lines(path.read_text()):
        m = HEADING.match(line)
        if not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", m.group(2).strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        if n:
            seen[f"{slug}-{n}"] = 1
    return set(seen)


def relative_links(path: Path) -> list[str]:
    links = []
    for line in prose_lines(path.read_text()):
        links += LINK.findall(INLINE_CODE.sub("", line))
    return [t for t in links if not re.match(r"^[a-z][a-z0-9+.-]*:", t, re.I)]  # http:, https:, mailto:


def broken_links(path: Path) -> list[str]:
    broken = []
    for target in relative_links(path):
        file, _, fragment = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            broken.append(f"{target} (no such file: {dest})")
        elif fragment and dest.is_file() and dest.suffix == ".md" and fragment not in anchors(dest):
            broken.append(f"{target} (no heading #{fragment} in {dest.name})")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(page: Path) -> None:
    assert not broken_links(page)


def test_a_broken_link_is_found(tmp_path: Path) -> None:
    """The check above can fail: a missing file, a missing heading, but not a link inside code."""
    (tmp_path / "there.md").write_text("# A heading: `with code`\n\n```bash\n# not a heading\n```\n")
    page = tmp_path / "page.md"
    page.write_text("[ok](there.md) [ok](there.md#a-heading-with-code) ![img](missing.png)\n"
                    "[gone](there.md#not-a-heading) [web](https://example.org/x.md) `[code](nowhere.md)`\n"
                    "```\n[fenced](nowhere.md)\n```\n")
    assert [b.split(" ")[0] for b in broken_links(page)] == ["missing.png", "there.md#not-a-heading"]


def test_the_readme_is_a_front_page() -> None:
    """At most 200 lines; the rest of the manual lives in docs/."""
    assert len((REPO / "README.md").read_text().splitlines()) <= 200


def test_the_readme_test_command_is_the_one_ci_runs() -> None:
    """.ci/run runs README command 2 literally: the line after its `# README command 2:` comment
    must be a line of the README's first code block."""
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    command = ci[ci.index("# README command 2:") + 1].strip()
    readme = (REPO / "README.md").read_text()
    first_block = readme.split("```bash\n", 1)[1].split("```", 1)[0]
    assert command in [line.strip() for line in first_block.splitlines()]
