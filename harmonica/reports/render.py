"""Sections -> Markdown and HTML through the jinja2 templates shipped in harmonica/reports/templates/.

The templates hold the markup; this module loads them (as package data, through importlib), and gives
them a few filters: `kind` (which block or inline value), `plain` (a number or text as shown),
`md_escape`, `squash` (whitespace collapsed), `inline_html` (the paragraphs' little inline Markdown as
HTML) and `figure_div` (a plotly figure).
"""

from __future__ import annotations

import functools
import html
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jinja2
from markupsafe import Markup

from harmonica.reports.common import fmt_num
from harmonica.reports.figures import figure_div, plotly_js
from harmonica.reports.model import Section, md_escape

PACKAGE, TEMPLATES = "harmonica.reports", "templates"
MARKDOWN, HTML = "report.md.j2", "report.html.j2"


def plain(value: Any) -> str:
    """A table cell or list item as text: numbers through fmt_num (None as "—"), anything else as str."""
    if value is None or isinstance(value, (int, float)):
        return fmt_num(value)
    return str(value)


def inline_html(md_text: str) -> Markup:
    """The little inline Markdown the report writes (`code`, **bold**, [text](href)) as HTML."""
    out = html.escape(md_text, quote=False).replace("\\|", "|")
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    out = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", out)
    return Markup(re.sub(r"\[([^\]]+)\]\(([^)\s]+)\)", r'<a href="\2">\1</a>', out))


def kind(value: Any) -> str:
    """'paragraph', 'table', 'code', 'audio', ... for the model's types; 'plain' for text and numbers."""
    return "plain" if value is None or isinstance(value, (str, int, float)) else type(value).__name__.lower()


@functools.cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader(PACKAGE, TEMPLATES),
        autoescape=jinja2.select_autoescape(["html.j2"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(kind=kind, plain=plain, md_escape=md_escape, squash=lambda s: " ".join(str(s).split()),
                       inline_html=inline_html, figure_div=lambda f: Markup(figure_div(f)))
    return env


def render_markdown(title: str, sections: Sequence[Section], generated: str) -> str:
    text = environment().get_template(MARKDOWN).render(title=title, sections=sections, generated=generated)
    return text.rstrip() + "\n"


def render_html(title: str, sections: Sequence[Section], generated: str, media: Mapping[str, str | None]) -> str:
    """media: artifact path -> data URI of the audio and images the sections show (None: not embedded)."""
    return environment().get_template(HTML).render(title=title, sections=sections, generated=generated,
                                                   media=media, plotly_js=Markup(plotly_js()))
