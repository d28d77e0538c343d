"""Rendering: the jinja2 templates are package data, the Markdown and HTML they make of hand-built sections,
and the reports package reaches the store only through harmonica/tracking."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from importlib import resources
from pathlib import Path
import pytest

import harmonica
from harmonica.reports.model import (
    Alert, ArtifactLink, Audio, Bullets, Code, Heading, Labelled, Note, NotLogged, Paragraph, Picture, Section,
    Spectrogram, Table,
)
from harmonica.reports.render import HTML, MARKDOWN, PACKAGE, TEMPLATES, render_html, render_markdown

PKG = Path(harmonica.__file__).resolve().parent
ROOT = PKG.parent

SECTIONS = [
    Section("Overview").add(
        Table(["field", "value"], [("Run", "a | b"), ("Run id", Code("abc")), ("n", 0.123456789), ("none", None)],
              cls="kv"),
        Alert("Warning: <dirty> tree"), Labelled("Description", "two\n  lines <b>"),
    ),
    Section("Audio samples").add(
        Paragraph("Latest `x`, **bold** [link](report.html#a).", html="Latest only."),
        Paragraph("Markdown only.", html=""),
        Table(["sample", "spec", "missing"], [(Audio("s/a.wav"), Spectrogram("s/a.png"), NotLogged("s/c.wav")),
                                              (Audio("s/big.wav"), Spectrogram("s/big.png"), "—")]),
        Heading("Files"), Bullets([ArtifactLink("audio/a.wav"), "plain | text"]), Note("nothing <here>"),
    ),
]
MEDIA = {"s/a.wav": "data:audio/wav;base64,AAAA", "s/a.png": "data:image/png;base64,BBBB", "s/big.wav": None,
         "s/big.png": None}


def test_the_templates_are_package_data():
    templates = resources.files(PACKAGE).joinpath(TEMPLATES)
    for name in (MARKDOWN, HTML, "report.css"):
        assert templates.joinpath(name).is_file(), name


@pytest.mark.slow
def test_a_built_wheel_ships_the_templates(tmp_path):
    """setuptools' package-data includes the templates: a non-editable install has them too."""
    src = tmp_path / "src"
    shutil.copytree(PKG, src / "harmonica", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                           "--no-index", "-w", str(tmp_path / "dist"), str(src)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("harmonica-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    for name in (MARKDOWN, HTML, "report.css"):
        assert f"harmonica/reports/templates/{name}" in shipped, name


def test_markdown_of_hand_built_sections():
    md = render_markdown("Run report: r (train_nar)", SECTIONS, "2026-01-01 00:00:00 UTC")
    assert md == """# Run report: r (train_nar)

_Generated 2026-01-01 00:00:00 UTC by `harmonica report`; interactive curves and playable audio in \
[report.html](report.html)._

## Overview

| field | value |
|---|---|
| Run | a \\| b |
| Run id | `abc` |
| n | 0.1235 |
| none | — |

> **Warning: <dirty> tree**

**Description:** two lines <b>

## Audio samples

Latest `x`, **bold** [link](report.html#a).

Markdown only.

| sample | spec | missing |
|---|---|---|
| [s/a.wav](../s/a.wav) | (in report.html) | s/c.wav |
| [s/big.wav](../s/big.wav) | (in report.html) | — |

### Files

- [audio/a.wav](../audio/a.wav)
- plain \\| text

_nothing <here>_
"""


def test_html_of_hand_built_sections_escapes_text_and_embeds_media():
    page = render_html("Run <report>", SECTIONS, "now", MEDIA)
    assert page.startswith("<!DOCTYPE html>") and page.count("<script") == 1  # plotly.js inlined once
    assert "<title>Run &lt;report&gt;</title>" in page and '<nav><a href="#overview">Overview</a>' in page
    for fragment in (
        '<table class="kv"><thead><tr><th>field</th><th>value</th></tr></thead>',
        "<td>a | b</td>", "<td><code>abc</code></td>", "<td>0.1235</td>", "<td>—</td>",
        '<p class="warn">&#9888; Warning: &lt;dirty&gt; tree</p>',
        "<p><b>Description:</b> two\n  lines &lt;b&gt;</p>",
        "<p>Latest only.</p>",
        '<audio controls preload="metadata" src="data:audio/wav;base64,AAAA" title="s/a.wav"></audio>'
        '<br><span class="path">s/a.wav</span>',
        '<img class="spec" alt="s/a.png" src="data:image/png;base64,BBBB">',
        "<td>s/big.wav</td><td>s/big.png</td>",  # too large to embed: the path
        "<td>s/c.wav (not logged)</td>",
        '<h3>Files</h3>', '<li><a href="../audio/a.wav">audio/a.wav</a></li><li>plain | text</li>',
        '<p class="none">nothing &lt;here&gt;</p>',
    ):
        assert fragment in page, fragment
    assert "Markdown only" not in page


def test_the_reports_package_does_not_import_mlflow():
    found = []
    for path in sorted((PKG / "reports").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            found += [f"{path.relative_to(PKG)}:{node.lineno}" for m in mods if m.split(".")[0] == "mlflow"]
    assert not found, "mlflow imported under harmonica/reports (read through harmonica.tracking.read):\n" + \
        "\n".join(found)


def test_a_picture_is_embedded_in_the_html_and_linked_in_the_markdown():
    pictures = [Section("Key curves").add(Picture("images/a~b+step+8.png", "`a/b` at step 8 <x>"),
                                          Picture("images/big.png", "too big"))]
    media = {"images/a~b+step+8.png": "data:image/png;base64,CCCC", "images/big.png": None}
    assert list(pictures[0].media()) == ["images/a~b+step+8.png", "images/big.png"]
    page = render_html("r", pictures, "now", media)
    assert ('<figure class="picture"><img alt="images/a~b+step+8.png" src="data:image/png;base64,CCCC">'
            "<figcaption><code>a/b</code> at step 8 &lt;x&gt;</figcaption></figure>") in page
    assert '<p class="none">too big: images/big.png (not embedded)</p>' in page
    md = render_markdown("r", pictures, "now")
    assert "`a/b` at step 8 <x> (in report.html): [images/a~b+step+8.png](../images/a~b+step+8.png)" in md
