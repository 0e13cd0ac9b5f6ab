"""Every relative link in README.md and docs/**/*.md points at a file that
exists and, for `file.md#anchor` and `#anchor`, at a heading of that file
(GitHub's heading anchors)."""

import re
import unicodedata
from pathlib import Path

import pytest

from conftest import REPO

FENCE = re.compile(r"^(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
INLINE_CODE = re.compile(r"`[^`]*`")
# [text](target) or [text](target "title"); images too (![alt](src)).
LINK = re.compile(r"\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto:, ...


def markdown_files(repo: Path) -> list[Path]:
    return [repo / "README.md", *sorted((repo / "docs").rglob("*.md"))]


def prose_lines(text: str):
    """(line number, line) outside fenced code blocks."""
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line.lstrip()):
            fenced = not fenced
            continue
        if not fenced:
            yield number, line


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the text (links and code reduced to
    their text), lower case, every character but letters, digits, marks,
    `_`, `-` and spaces dropped, spaces turned into hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "").lower()
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LMN")
    return kept.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for _, line in prose_lines(path.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        out.add(base if count == 0 else f"{base}-{count}")
    return out


def broken_links(path: Path) -> list[str]:
    problems = []
    for number, line in prose_lines(path.read_text(encoding="utf-8")):
        for target in LINK.findall(INLINE_CODE.sub("", line)):
            if EXTERNAL.match(target):
                continue
            file_part, _, anchor = target.partition("#")
            dest = (path.parent / file_part).resolve() if file_part else path
            where = f"{path.name}:{number}: {target}"
            if not dest.exists():
                problems.append(f"{where}: no such file {dest}")
            elif anchor:
                if dest.suffix != ".md" or not dest.is_file():
                    problems.append(f"{where}: an anchor into {dest.name}, not a Markdown file")
                elif anchor not in anchors(dest):
                    problems.append(f"{where}: no heading '#{anchor}' in {dest.name}")
    return problems


def test_slug_follows_github():
    assert slug("Bitstream files and the `licbench` command") == "bitstream-files-and-the-licbench-command"
    assert slug("Metrics: which library computes each") == "metrics-which-library-computes-each"
    assert slug("VTM, HM and BPG binaries") == "vtm-hm-and-bpg-binaries"
    assert slug("How DVC's records stay true") == "how-dvcs-records-stay-true"
    assert slug("What `make run` gives") == "what-make-run-gives"
    assert slug("Training: resume, schedules, DDP") == "training-resume-schedules-ddp"


def test_checker_finds_broken_links(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A\n\n## Part two\n\n## Part two\n", encoding="utf-8")
    (tmp_path / "README.md").write_text(
        "# T\n\n## Here\n\n"
        "[ok](docs/a.md) [ok](docs/a.md#part-two) [ok](docs/a.md#part-two-1) [ok](#here)\n"
        "[web](https://example.org/x.md#nowhere) `[code](missing.md)`\n"
        "```\n[fenced](missing.md)\n```\n"
        "[gone](docs/b.md) [bad anchor](docs/a.md#part-three) [self](#there)\n",
        encoding="utf-8")
    problems = broken_links(tmp_path / "README.md")
    assert len(problems) == 3, problems
    assert "no such file" in problems[0] and "docs/b.md" in problems[0]
    assert "no heading '#part-three' in a.md" in problems[1]
    assert "no heading '#there' in README.md" in problems[2]


@pytest.mark.parametrize("path", markdown_files(REPO), ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(path):
    assert not broken_links(path), "\n".join(broken_links(path))
