"""Griffe extension that lets the API reference show the docstrings as the code writes them.

* A ``#:`` comment block above an assignment becomes that attribute's docstring: the code
  documents constants and dataclass fields the Sphinx way, which Griffe does not read by itself.
* Sphinx roles in docstrings (``:class:`StepGraph```, ``:func:`~pkg.f```) become Markdown code
  spans, since the site renders docstrings as Markdown.
* Indexing written in prose, such as ``R[T][j]``, is kept from reading as a Markdown reference
  link (``[text][label]``) by escaping the second bracket outside code spans.
"""

from __future__ import annotations

import ast
import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|data|mod|exc|obj):`~?([^`]+)`")
_CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.DOTALL)


def _markdown_safe(text: str) -> str:
    """Sphinx roles as code spans; ``][`` outside code spans escaped."""
    text = _ROLE.sub(lambda m: f"`{m.group(0).split('`')[1].lstrip('~').rsplit('.', 1)[-1] if '`~' in m.group(0) else m.group(1)}`", text)
    out, last = [], 0
    for span in _CODE_SPAN.finditer(text):
        out.append(text[last : span.start()].replace("][", "]\\["))
        out.append(span.group(0))
        last = span.end()
    out.append(text[last:].replace("][", "]\\["))
    return "".join(out)


class CommentDocstrings(griffe.Extension):
    """Attach ``#:`` comments as docstrings and make docstrings safe to render as Markdown."""

    def on_attribute_instance(self, *, node: Any, attr: griffe.Attribute, agent: Any, **kwargs: Any) -> None:
        """Give ``attr`` the ``#:`` comment block right above its assignment, if it has no docstring."""
        if attr.docstring is not None or not isinstance(node, ast.AST) or not hasattr(agent, "code"):
            return
        lines = agent.code.splitlines()
        row = node.lineno - 2
        block: list[str] = []
        while row >= 0 and lines[row].strip().startswith("#:"):
            block.insert(0, lines[row].strip()[2:].strip())
            row -= 1
        if block:
            attr.docstring = griffe.Docstring(
                "\n".join(block),
                lineno=row + 2,
                endlineno=node.lineno - 1,
                parent=attr,
                parser=agent.docstring_parser,
                parser_options=agent.docstring_options,
            )

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        """Make every docstring of the package safe to render as Markdown (see the module docstring)."""
        stack: list[griffe.Object] = [pkg]
        while stack:
            obj = stack.pop()
            if obj.docstring is not None:
                obj.docstring.value = _markdown_safe(obj.docstring.value)
            stack.extend(m for m in obj.members.values() if not m.is_alias)
