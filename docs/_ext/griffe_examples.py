"""Griffe extension for the API reference: pbeh's docstrings title their doctests ``Example:`` (or
``Example (note):``); Google style only knows ``Examples:``. Renaming the title before parsing makes the doctests
render as code (and keeps their output, such as ``[(0, 1), (2, 3)]``, from being read as Markdown links)."""

from __future__ import annotations

import re
from typing import Any

import griffe

_TITLE = re.compile(r"^(?P<indent>[ \t]*)Example(?: \((?P<note>[^)\n]*)\))?:[ \t]*$", re.MULTILINE)


def _retitle(match: re.Match[str]) -> str:
    note = match.group("note")
    indent = match.group("indent")
    return f"{indent}Examples:" if not note else f"{indent}{note[0].upper()}{note[1:]}.\n\n{indent}Examples:"


class ExampleSections(griffe.Extension):
    """Rename ``Example:`` sections to ``Examples:`` in every docstring, before griffe parses it."""

    def on_instance(self, *, obj: Any, **kwargs: Any) -> None:
        docstring = getattr(obj, "docstring", None)
        if docstring is not None and "Example" in docstring.value:
            docstring.value = _TITLE.sub(_retitle, docstring.value)
