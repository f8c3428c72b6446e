"""The documentation's Python examples run as tests, so an example that breaks fails CI.

Every fenced ```` ```python ```` block of the pages in ``DOCS`` is one test, named by page and line.
Conventions, written as HTML comments (invisible once rendered) on the line before a block:

- ``<!-- not-a-test -->``: an intentional fragment, not run (keep it rare);
- ``<!-- slow -->``: the block loads models; the test is marked ``slow``.

A block whose first line is ``# name.py`` is also the module ``name``: every such block of the page is
saved to a folder on ``sys.path`` first, so the page's other blocks can ``import name``; its own test
imports it. Each block runs in a namespace of its own.
"""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = ["docs/plugins.md"]

FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)
MODULE = re.compile(r"#\s*([A-Za-z_]\w*)\.py\s*$")


def _blocks(doc: str) -> list[tuple[int, str, str]]:
    """(line, source, mark) of each python block of ``doc``; mark is the comment before it, or ''."""
    text = (REPO / doc).read_text(encoding="utf-8")
    blocks = []
    for match in FENCE.finditer(text):
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1].strip()
        mark = before if before.startswith("<!--") else ""
        blocks.append((text.count("\n", 0, match.start()) + 1, match.group(1), mark))
    return blocks


def _module_name(source: str) -> str | None:
    match = MODULE.fullmatch(source.split("\n", 1)[0].strip())
    return match.group(1) if match else None


def _cases():
    for doc in DOCS:
        for line, source, mark in _blocks(doc):
            if mark == "<!-- not-a-test -->":
                continue
            marks = [pytest.mark.slow] if mark == "<!-- slow -->" else []
            yield pytest.param(doc, line, source, id=f"{doc}:{line}", marks=marks)


@pytest.fixture
def page_modules(tmp_path, monkeypatch):
    """Save the ``# name.py`` blocks of a page as modules on ``sys.path``; forget them afterwards."""
    saved: list[str] = []

    def save(doc: str) -> None:
        for _, source, _ in _blocks(doc):
            name = _module_name(source)
            if name is not None:
                (tmp_path / f"{name}.py").write_text(source, encoding="utf-8")
                saved.append(name)
        monkeypatch.syspath_prepend(str(tmp_path))

    yield save
    for name in saved:
        sys.modules.pop(name, None)


def test_every_page_has_examples():
    for doc in DOCS:
        assert _blocks(doc), f"{doc}: no ```python blocks found (did the fence syntax change?)"


@pytest.mark.parametrize(("doc", "line", "source"), list(_cases()))
def test_doc_example_runs(doc, line, source, page_modules):
    page_modules(doc)
    name = _module_name(source)
    if name is not None:
        importlib.import_module(name)
        return
    code = compile(source, f"{doc}:{line}", "exec")
    exec(code, {"__name__": f"doc_example_{line}"})
