"""What a report section is, independent of how it is rendered: a title and a list of blocks.

Blocks: paragraphs (light inline Markdown: `code`, **bold**, [text](href)), notes ("nothing to show"),
alerts, a labelled text, tables, bullet lists, sub-headings, figures (curves with their table) and
pictures (a run's image artifact with a caption).
Table cells and bullet items are plain values (text, numbers, None) or the inline kinds below; audio
and spectrograms name a run artifact, which the HTML embeds and the Markdown links.
The templates (templates/report.md.j2, templates/report.html.j2) render these; render.py holds the
filters they use.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field


# ------------------------------------------------------------------------------ inline values


@dataclass(frozen=True)
class _Text:
    text: str


@dataclass(frozen=True)
class _Artifact:
    path: str


class Code(_Text):
    """Monospace text (a metric key, a run id)."""


class ArtifactLink(_Artifact):
    """A link to an artifact of the reported run, relative to `report/` where the report is logged."""


class Audio(_Artifact):
    """A run artifact to play: an audio player in the HTML, a link in the Markdown."""


class Spectrogram(_Artifact):
    """A run artifact image: shown in the HTML, "(in report.html)" in the Markdown."""


class NotLogged(_Artifact):
    """An artifact path the run refers to but did not log."""


Inline = Code | ArtifactLink | Audio | Spectrogram | NotLogged | str | float | int | None


# ------------------------------------------------------------------------------ blocks


@dataclass(frozen=True)
class Paragraph:
    """Inline Markdown; `html` is the HTML's own version of it ("" leaves it out of the HTML)."""

    md: str
    html: str | None = None

    @property
    def html_text(self) -> str:
        return self.md if self.html is None else self.html


class Note(_Text):
    """A plain sentence, e.g. why a section has nothing to show."""


class Alert(_Text):
    """A warning the reader must not miss."""


@dataclass(frozen=True)
class Labelled:
    """`label: text`, the text shown as written (e.g. a run's description)."""

    label: str
    text: str


@dataclass(frozen=True)
class Table:
    headers: Sequence[str]
    rows: Sequence[Sequence[Inline]]
    cls: str = ""


@dataclass(frozen=True)
class Bullets:
    items: Sequence[Inline]


class Heading(_Text):
    """A sub-heading inside a section."""


@dataclass(frozen=True)
class Series:
    """One metric's history: step -> value (the last value logged at a step)."""

    key: str
    steps: Sequence[int]
    values: Sequence[float]


@dataclass(frozen=True)
class Figure:
    """Curves (an interactive plot in the HTML) and their key numbers (a table, in both)."""

    title: str
    series: Sequence[Series]
    table: Table
    floor: float | None = None  # a horizontal line: the collapse monitor's floor
    events: Sequence[int] = ()  # vertical lines: steps of collapse events


@dataclass(frozen=True)
class Picture:
    """A run artifact image on its own with a caption: shown in the HTML, linked in the Markdown."""

    path: str
    caption: str


Block = Paragraph | Note | Alert | Labelled | Table | Bullets | Heading | Figure | Picture


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)

    def add(self, *blocks: Block) -> Section:
        self.blocks.extend(blocks)
        return self

    @property
    def anchor(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.title.lower()).strip("-")

    def media(self) -> Iterator[str]:
        """The run artifacts this section shows (audio and images), for the HTML to embed."""
        for block in self.blocks:
            if isinstance(block, Picture):
                yield block.path
                continue
            table = block.table if isinstance(block, Figure) else block
            values = [c for row in table.rows for c in row] if isinstance(table, Table) else (
                block.items if isinstance(block, Bullets) else ())
            yield from (v.path for v in values if isinstance(v, (Audio, Spectrogram)))


def md_escape(text: str) -> str:
    """Text for a Markdown table cell or list item: whitespace collapsed, `|` escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def md_link(path: str) -> str:
    """Inline Markdown linking a run artifact from `report/`, where the report is logged."""
    return f"[{md_escape(path)}](../{path})"


def run_ref(name: str, run_id: str) -> str:
    """Inline Markdown naming a run: `name (`run id`)`."""
    return f"{md_escape(name)} (`{run_id}`)"
