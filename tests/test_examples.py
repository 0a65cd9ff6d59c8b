"""The scripts in examples/ are numbered in the order a newcomer runs them; each runs as documented (in seconds, no
download, no real data) and prints something."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.py"))


def test_examples_are_numbered_in_order():
    numbers = [int(re.match(r"(\d\d)_", p.name).group(1)) for p in EXAMPLES if re.match(r"\d\d_", p.name)]
    assert len(numbers) == len(EXAMPLES), [p.name for p in EXAMPLES]
    assert numbers == list(range(1, len(EXAMPLES) + 1))
    for path in EXAMPLES:
        assert f"python examples/{path.name}" in path.read_text(), f"{path.name}: its docstring shows how to run it"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(path, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # anything an example writes lands in a temporary directory
    code = None
    try:
        runpy.run_path(str(path), run_name="__main__")
    except SystemExit as exc:  # an example may stop early on purpose (a missing optional package), never fail
        code = exc.code
    assert code in (0, None), f"{path.name} exited with {code}"
    assert capsys.readouterr().out.strip(), f"{path.name} printed nothing"
