"""The built documentation site, read as a browser would: its HTML, not its Markdown.

The site is built once (``mkdocs build --strict`` into a temporary folder) and every page is
checked: nothing the Markdown or the docstrings meant for the build leaks into the page (snippet
markers, ``:::`` directives, TeX), no absolute path of the machine it was built on shows, every
``Examples`` section of the API reference is highlighted code, and every internal link, anchor and
image resolves to a file of the site.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Absolute paths of machines pages must never show: the checkout's own, and the usual roots.
MACHINE_PATHS = re.compile("|".join([re.escape(str(ROOT)), r"/work/", r"/tmp/", r"/home/\w", r"/root/"]))


class _Page(HTMLParser):
    """Links, image sources, element ids and visible text of one HTML page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[str] = []
        self.images: list[str] = []
        self.ids: set[str] = set()
        self.text: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if values.get("id"):
            self.ids.add(values["id"])
        if tag == "a" and values.get("href"):
            self.links.append(values["href"])
        if tag == "img" and values.get("src"):
            self.images.append(values["src"])
        if tag in ("script", "style"):
            self._skip += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style") and self._skip:
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.text.append(data)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site, built once for every test of this module."""
    pytest.importorskip("mkdocs", reason="the docs extra is not installed (pip install -e '.[docs]')")
    pytest.importorskip("mkdocstrings_handlers.python", reason="mkdocstrings[python] is not installed")
    pytest.importorskip("material", reason="mkdocs-material is not installed")
    out = tmp_path_factory.mktemp("docs") / "site"
    mkdocs = shutil.which("mkdocs")
    command = [mkdocs] if mkdocs else [sys.executable, "-m", "mkdocs"]
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "ORT_DISABLE_TELEMETRY": "1"}
    result = subprocess.run(
        [*command, "build", "--strict", "--site-dir", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    return out


@pytest.fixture(scope="module")
def pages(site) -> dict[Path, tuple[str, _Page]]:
    """Every HTML page of the site (404 excluded): its source and what the parser read from it."""
    found = {}
    for path in sorted(site.rglob("*.html")):
        if path.name == "404.html":
            continue
        html = path.read_text(encoding="utf-8")
        parsed = _Page()
        parsed.feed(html)
        found[path] = (html, parsed)
    assert len(found) > 20, f"only {len(found)} pages built"
    return found


def _target(site: Path, page: Path, url: str) -> tuple[Path, str] | None:
    """The file of ``site`` an internal ``url`` on ``page`` points to, and its fragment; ``None``
    for an external URL."""
    parts = urlsplit(url)
    if parts.scheme or parts.netloc or url.startswith(("mailto:", "data:", "javascript:")):
        return None
    path = unquote(parts.path)
    if not path:
        return page, parts.fragment
    target = (site / path.lstrip("/")) if path.startswith("/") else (page.parent / path)
    target = Path(os.path.normpath(target))
    if target.is_dir() or path.endswith("/"):
        target = target / "index.html"
    return target, parts.fragment


def test_no_build_markup_leaks_into_a_page(pages):
    """No snippet marker, ``:::`` directive or unconverted TeX is left in any page's text."""
    leaks = []
    for path, (html, parsed) in pages.items():
        text = "".join(parsed.text)
        for marker in ("--8<--", "::: "):
            if marker in text:
                leaks.append(f"{path.name} in {path.parent.name}: {marker!r}")
        if re.search(r'class="arithmatex">\\[(\[]', html):
            leaks.append(f"{path.parent.name}: TeX not converted to MathML")
    assert not leaks, "build markup shown on pages:\n  " + "\n  ".join(leaks)


def test_no_page_shows_an_absolute_machine_path(pages, site):
    """Captured outputs name files relative to the project or the user's environment."""
    found = []
    for path, (_, parsed) in pages.items():
        for match in MACHINE_PATHS.finditer("".join(parsed.text)):
            found.append(f"{path.relative_to(site)}: {match.group(0)!r}")
    assert not found, "absolute paths of a machine on pages:\n  " + "\n  ".join(found)


def test_every_examples_section_is_highlighted_code(pages, site):
    """An ``Examples:`` section of a docstring renders as a code block, never as quote bars."""
    reference = {p: v for p, v in pages.items() if "reference" in p.relative_to(site).parts}
    sections = 0
    broken = []
    for path, (html, _) in reference.items():
        for match in re.finditer(r'<span class="doc-section-title">Examples:</span>', html):
            sections += 1
            following = html[match.end() : match.end() + 400]
            if '<div class="highlight">' not in following and "highlight" not in following:
                broken.append(f"{path.relative_to(site)} at {match.start()}")
        if re.search(r"<blockquote>\s*<blockquote>", html):
            broken.append(f"{path.relative_to(site)}: nested quote bars (a docstring's '>>>' read as Markdown)")
        if 'class="admonition example"' in html or "<summary>Example</summary>" in html:
            broken.append(f"{path.relative_to(site)}: an 'Example:' section (Griffe wants 'Examples:')")
    assert sections >= 4, f"only {sections} Examples sections found in the API reference"
    assert not broken, "Examples sections not rendered as code:\n  " + "\n  ".join(broken)


def test_every_internal_link_anchor_and_image_resolves(pages, site):
    """Every ``href`` and ``src`` inside the site points to a built file, and a link's fragment to
    an element id of its target page."""
    ids = {path: parsed.ids for path, (_, parsed) in pages.items()}
    broken = []
    for path, (_, parsed) in pages.items():
        for kind, urls in (("link", parsed.links), ("image", parsed.images)):
            for url in urls:
                target = _target(site, path, url)
                if target is None:
                    continue
                file, fragment = target
                where = f"{path.relative_to(site)}: {kind} {url!r}"
                if not file.is_file():
                    broken.append(f"{where} (no file {file.relative_to(site) if site in file.parents else file})")
                elif fragment and file in ids and fragment not in ids[file]:
                    broken.append(f"{where} (no id {fragment!r} on the target page)")
    assert not broken, "broken internal links or images:\n  " + "\n  ".join(broken)


def test_the_cli_reference_is_the_commands_help(pages, site):
    """The ``lto`` command's page lists every verb with its options, generated from click."""
    html, parsed = pages[site / "reference" / "cli" / "index.html"]
    text = " ".join("".join(parsed.text).split())
    for verb in ("lto demo", "lto inspect", "lto bench cl", "lto bench plot", "lto meta-train"):
        assert verb in text, f"{verb!r} missing from the CLI reference"
    assert "--scenario" in text and "--out" in text
