"""MkDocs hook: the pages' maths as MathML, converted when the site is built.

``pymdownx.arithmatex`` (generic mode) wraps ``$...$`` in ``<span class="arithmatex">\\(...\\)</span>``
and ``$$...$$`` in ``<div class="arithmatex">\\[...\\]</div>`` and leaves the typesetting to a
script in the reader's browser. This hook converts those spans to MathML with ``latex2mathml``
instead, which browsers render themselves: the maths then reads offline, with no script and no
network access.
"""

from __future__ import annotations

import html
import re
from typing import Any

from latex2mathml.converter import convert

_INLINE = re.compile(r'<span class="arithmatex">\\\((.+?)\\\)</span>', re.DOTALL)
_BLOCK = re.compile(r'<div class="arithmatex">\\\[(.+?)\\\]</div>', re.DOTALL)


def _mathml(tex: str, display: str) -> str:
    return convert(html.unescape(tex).strip(), display=display)


def on_page_content(content: str, **kwargs: Any) -> str:
    """Replace arithmatex's TeX spans in a page's HTML with MathML."""
    content = _BLOCK.sub(lambda m: f'<div class="arithmatex">{_mathml(m.group(1), "block")}</div>', content)
    return _INLINE.sub(lambda m: f'<span class="arithmatex">{_mathml(m.group(1), "inline")}</span>', content)
