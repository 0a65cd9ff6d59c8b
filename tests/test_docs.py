"""Every code block of the documentation runs: ``python`` blocks in order, one namespace per page; ``bash`` blocks
line by line (``pbeh ...`` through the command line in-process, ``python examples/...`` with runpy). ``shell`` blocks
are installation commands, which CI runs itself (.ci/run); ``text`` blocks are output. The site itself is built by
``mkdocs build --strict`` in CI; here a test checks that the navigation names every page that exists."""

from __future__ import annotations

import logging
import re
import runpy
import shlex
from pathlib import Path

import pytest
import torch
from conftest import SHARED_DATA

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(p for p in DOCS.rglob("*.md") if "_ext" not in p.parts)
FENCE = re.compile(r"^```(?P<lang>[\w+-]*)[^\n]*\n(?P<body>.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
RUNNABLE = {"python", "bash"}
NOT_RUN = {"shell", "text", "console", ""}


def blocks(page: Path) -> list[tuple[str, str, int]]:
    text = page.read_text(encoding="utf-8")
    return [(m["lang"], m["body"], text.count("\n", 0, m.start()) + 1) for m in FENCE.finditer(text)]


def test_every_block_has_a_known_language():
    for page in PAGES:
        for lang, _, line in blocks(page):
            assert lang in RUNNABLE | NOT_RUN | {"yaml", "json", "toml"}, f"{page.name}:{line}: unknown block {lang!r}"


def test_shell_blocks_are_installation_commands():
    for page in PAGES:
        for lang, body, line in blocks(page):
            if lang == "shell":
                for command in body.strip().splitlines():
                    assert command.split()[0] in ("pip", "python3", "python"), f"{page.name}:{line}: {command}"


def _run_bash(body: str, where: str) -> None:
    from pbeh.cli import main

    for raw in body.splitlines():
        line = raw.split("  #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        argv = shlex.split(line)
        if argv[0] == "pbeh":
            code = main(argv[1:])
            torch.set_num_threads(1)
            logging.getLogger("pbeh").propagate = True
            assert code == 0, f"{where}: {line!r} exited with {code}"
        elif argv[:1] == ["python"] and argv[1].startswith("examples/"):
            runpy.run_path(str(ROOT / argv[1]), run_name="__main__")
        else:
            pytest.fail(f"{where}: {line!r}: a bash block in the docs runs only pbeh and python examples/...")


# Pages of other authors whose python blocks are signatures or real-data runs of minutes: not run here yet. Their
# authors make the blocks runnable and small (signatures fenced as ``text``), then remove the page from this list.
NOT_RUN_YET: dict[str, str] = {}
RUN_PAGES = [
    p
    for p in PAGES
    if any(lang in RUNNABLE for lang, _, _ in blocks(p)) and str(p.relative_to(DOCS)) not in NOT_RUN_YET
]


def test_pages_not_run_yet_still_exist():
    assert set(NOT_RUN_YET) <= {str(p.relative_to(DOCS)) for p in PAGES}


@pytest.mark.parametrize("page", RUN_PAGES, ids=lambda p: str(p.relative_to(DOCS)))
def test_page_blocks_run(page, tmp_path, monkeypatch):
    # cwd: a fresh folder whose ../shared/data is the real data when it exists (as in the development checkout)
    work = tmp_path / "work"
    work.mkdir()
    if SHARED_DATA.is_dir():
        (tmp_path / "shared").mkdir()
        (tmp_path / "shared" / "data").symlink_to(SHARED_DATA)
    monkeypatch.chdir(work)
    namespace: dict = {"__name__": "__docs__"}
    try:
        for lang, body, line in blocks(page):
            where = f"{page.relative_to(DOCS)}:{line}"
            if lang == "python":
                exec(compile(body, where, "exec"), namespace)
            elif lang == "bash":
                _run_bash(body, where)
    finally:
        torch.set_num_threads(1)
        import pbeh

        pbeh.show_progress(False)
        logging.getLogger("pbeh").propagate = True


def _pbeh_modules() -> list[str]:
    import pkgutil

    import pbeh

    return sorted(m.name for m in pkgutil.walk_packages(pbeh.__path__, "pbeh.") if not m.name.endswith("__main__"))


@pytest.mark.parametrize("module", _pbeh_modules())
def test_docstring_examples_run(module, tmp_path, monkeypatch):
    """Every ``>>>`` example in pbeh's docstrings runs and prints what it says."""
    import doctest
    import importlib

    monkeypatch.chdir(tmp_path)
    try:
        result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS, verbose=False)
    finally:
        torch.set_num_threads(1)
    assert result.failed == 0, f"{module}: {result.failed} of {result.attempted} docstring examples failed"


# Public names whose docstrings have no example yet (their modules' owners add one, then remove the name here).
NO_EXAMPLE_YET: set[str] = set()


def test_every_public_name_has_a_docstring_example():
    import inspect

    import pbeh

    missing = {
        name
        for name in pbeh.__all__
        if not name.startswith("__") and ">>>" not in (inspect.getdoc(getattr(pbeh, name)) or "")
    }
    assert missing <= NO_EXAMPLE_YET, f"public names without a docstring example: {sorted(missing - NO_EXAMPLE_YET)}"


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    """The README's Python example (its bash blocks are the install and test commands that CI itself runs)."""
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__readme__"}
    python_blocks = [(body, line) for lang, body, line in blocks(ROOT / "README.md") if lang == "python"]
    assert python_blocks
    try:
        for body, line in python_blocks:
            exec(compile(body, f"README.md:{line}", "exec"), namespace)
    finally:
        torch.set_num_threads(1)


def test_the_navigation_lists_every_page_and_every_listed_page_exists():
    yaml = pytest.importorskip("yaml")

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("", lambda loader, suffix, node: None)  # material's !!python tags
    config = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=Loader)

    def files(node) -> list[str]:
        if isinstance(node, str):
            return [node]
        if isinstance(node, list):
            return [f for item in node for f in files(item)]
        if isinstance(node, dict):
            return [f for value in node.values() for f in files(value)]
        return []

    listed = files(config["nav"])
    pages = {str(p.relative_to(DOCS)) for p in PAGES}
    assert sorted(set(listed) - pages) == [], "the nav names pages that do not exist"
    assert sorted(pages - set(listed)) == [], "pages missing from the nav (add them to mkdocs.yml)"
