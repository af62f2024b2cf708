"""What a new user reads first works (issue #12).

asgi-perf is on no package index yet, so no install line may send a user
there; the README's sections are reachable from its table of contents; the
first snippet that names a budgets file says what that file is.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
# `pip install asgi-perf`, `"asgi-perf[locust]"`: the name alone means an index.
_FROM_AN_INDEX = re.compile(
    r"""pip install\s+(?:-\S+\s+)*['"]?asgi[-_]perf(?:\[[^\]]*\])?['"]?(?![\[\w-])(?!\s*@)"""
)


def readme_lines() -> list[str]:
    return README.read_text(encoding="utf-8").splitlines()


def headings() -> list[tuple[int, str]]:
    """(level, text) of every heading outside fenced code blocks."""
    out = []
    fenced = False
    for line in readme_lines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (match := re.match(r"^(#{1,6}) (.+)$", line)):
            out.append((len(match[1]), match[2].strip()))
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation out, spaces to hyphens."""
    text = heading.lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def test_no_install_line_points_at_a_package_index() -> None:
    text = README.read_text(encoding="utf-8")
    assert _FROM_AN_INDEX.findall(text) == []
    # How to install it instead: a checkout, a path, or a git URL.
    assert "pip install -e '.[cli]'" in text
    assert "pip install '/path/to/asgi_perf[cli,locust]'" in text
    assert "pip install 'asgi-perf[cli] @ git+https://github.com/<owner>/asgi_perf'" in text


@pytest.mark.parametrize("missing", ["rich", "httpx"])
def test_the_clis_missing_extra_message_can_be_followed(missing: str) -> None:
    code = (
        f"import sys; sys.modules[{missing!r}] = None\n"
        "from asgi_perf.cli import main\n"
        "sys.exit(main(['stats', 'http://127.0.0.1:9']))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2, result.stderr
    line = result.stderr.strip()
    assert line.startswith(f"asgi-perf: error: {missing} is missing: pip install httpx rich")
    assert "pip install -e '.[cli]'" in line
    assert _FROM_AN_INDEX.findall(line) == []


def test_the_table_of_contents_reaches_every_section() -> None:
    lines = readme_lines()
    start = lines.index("## Contents")
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("## "))
    # Near the top: before the first section it lists.
    assert start < 80
    toc = "\n".join(lines[start:end])
    links = re.findall(r"\]\(#([^)]+)\)", toc)
    anchors = {slug(text) for _, text in headings()}
    assert [a for a in links if a not in anchors] == []
    sections = [slug(text) for level, text in headings() if level == 2 and text != "Contents"]
    assert [s for s in sections if s not in links] == []


def test_the_first_budgets_snippet_says_what_the_file_is() -> None:
    lines = readme_lines()
    first = next(i for i, line in enumerate(lines) if 'budgets="perf-budgets.toml"' in line)
    note = " ".join(lines[first : first + 16])
    assert "](#budgets)" in note  # what the file must contain
    assert "working directory" in note  # where it is looked up
    assert "missing" in note and "503" in note and "strict=True" in note  # and without it
