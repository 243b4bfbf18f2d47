"""The documentation cannot rot: every Python block of the README and of docs/ runs, in page order with one
namespace per page (a page is one test, so xdist never splits it); a block that cannot run says why in an
HTML comment right above it (`<!-- no-run: downloads the release file -->`, invisible on the page); the
generated reference pages equal what docs/generate.py makes from the code now. Flags of shell blocks are
checked by tests/test_doc_commands.py, the built site in a browser by tests/test_docs_site.py."""
from __future__ import annotations

import importlib.util
import os
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
NO_RUN = re.compile(r"^<!--\s*no-run:\s*(\S.*?)\s*-->$")


def python_blocks(text: str) -> list[tuple[int, str, str | None]]:
    """(first line, code, why it does not run or None) of every ```python block, in page order."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            above = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            reason = NO_RUN.match(above)
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
            blocks.append((i + 2, "\n".join(lines[i + 1:end]), reason.group(1) if reason else None))
            i = end
        i += 1
    return blocks


def _workspace(tmp_path: Path) -> Path:
    """A folder that looks like the repository's root to the examples (train_scripts/, reports/, and
    ../shared beside it), where whatever they write is thrown away."""
    work = tmp_path / "repo"
    work.mkdir()
    for name in ("train_scripts", "reports", "timm_bcos"):
        (work / name).symlink_to(ROOT / name)
    if (ROOT.parent / "shared").exists():
        (tmp_path / "shared").symlink_to(ROOT.parent / "shared")
    return work


RUNNABLE = [p for p in PAGES if any(reason is None for _, _, reason in python_blocks(p.read_text()))]


@pytest.mark.parametrize("page", RUNNABLE, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_python_examples_of_a_page_run(page, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(_workspace(tmp_path))
    monkeypatch.syspath_prepend(str(Path.cwd()))
    namespace = {"__name__": f"docs_{page.stem}"}
    for line, code, reason in python_blocks(page.read_text()):
        if reason is not None:
            continue
        try:
            exec(compile(code, f"{page.relative_to(ROOT)}:{line}", "exec"), namespace)
        except Exception as error:
            raise AssertionError(f"{page.relative_to(ROOT)}, the block at line {line} failed: "
                                 f"{type(error).__name__}: {error}") from error


def test_the_block_reader_finds_blocks_and_reasons():
    text = ("text\n```python\nx = 1\n```\n<!-- no-run: needs a GPU -->\n\n```python\ny = 2\n```\n"
            "```bash\nmake test\n```\n")
    assert python_blocks(text) == [(3, "x = 1", None), (8, "y = 2", "needs a GPU")]
    assert len(RUNNABLE) >= 10, f"only {len(RUNNABLE)} pages with runnable examples: the reader is broken"


def test_the_generated_reference_pages_match_the_code():
    spec = importlib.util.spec_from_file_location("docs_generate", ROOT / "docs" / "generate.py")
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    assert generate.drifted() == [], "run `python docs/generate.py` and commit the pages it rewrites"


def test_the_readme_is_a_landing_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150, f"README.md has {len(readme.splitlines())} lines (at most 150)"
    for needed in ("make demo", "make test", "make docs", "reports/cifar10_demo.png"):
        assert needed in readme, f"the README lacks {needed!r}"
