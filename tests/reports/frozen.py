"""Frozen report output: the Markdown, an outline of the HTML and the `harmonica compare` tables of real
tiny runs, normalised (run ids, times, durations, hashes, paths), kept under tests/reports/frozen/.

Written once from the code before the report refactor (data -> sections -> templates); the refactor must
reproduce them. A deliberate change to what a report says rewrites them with
`HARMONICA_WRITE_FROZEN=1 pytest tests/reports/test_frozen.py -m ''` and shows up in the diff.
"""

from __future__ import annotations

import difflib
import html.parser
import os
import re
from collections.abc import Mapping
from pathlib import Path

FROZEN = Path(os.environ.get("HARMONICA_FROZEN_DIR") or Path(__file__).with_name("frozen"))
WRITE = os.environ.get("HARMONICA_WRITE_FROZEN") == "1"

_RULES: tuple[tuple[str, str], ...] = (
    (r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(\.\d+)?( UTC)?", "<time>"),
    (r"\b\d+(\.\d+)? s\b|\b\d+ min \d{2} s\b|\b\d+ h \d{2} min\b", "<duration>"),
    (r"\b(git|commit) [0-9a-f]{7,40}\b", r"\1 <commit>"),
    (r"\b[0-9a-f]{40}\b", "<sha>"),
    (r"\b[0-9a-f]{10}/[0-9a-f]{10}\b", "<commit>/<hash>"),  # a checkpoint's code_version
)


def _ids(text: str, ids: Mapping[str, str]) -> str:
    for run_id, label in sorted(ids.items(), key=lambda kv: -len(kv[0])):
        text = text.replace(run_id, f"<{label}>").replace(run_id[:12], f"<{label}:12>")
        text = text.replace(run_id[:8], f"<{label}:8>").replace(run_id[:6], f"<{label}:6>")
    return text


def normalise(text: str, ids: Mapping[str, str], paths: Mapping[str, str], tree: bool = True) -> str:
    """Run ids -> their labels, local paths -> labels, times, durations, commits -> placeholders; the
    tags that depend on the working tree and the machine (config/source hash, version) -> placeholders.
    tree: the runs were made by this test tree, so whether it is dirty shows (dirty flag, warning, the
    promote step's allowed-dirty notes): those are dropped."""
    if tree:
        text = _tree_state(text)
    # a logged image's file name: images/<key>+step+<n>+timestamp+<ms>+<uuid>.png
    text = re.sub(r"\+timestamp\+\d+\+(<uuid>|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})",
                  "+timestamp+<ms>+<uuid>", text)
    for path, label in sorted(paths.items(), key=lambda kv: -len(kv[0])):
        text = text.replace(path, f"<{label}>")
    text = re.sub(r"<tmp>/([A-Za-z_]+?)\d+/", r"<tmp>/\1/", text)  # pytest numbers its temp dirs
    text = _ids(text, ids)
    for pattern, repl in _RULES:
        text = re.sub(pattern, repl, text)
    text = re.sub(r"(source hash |source |config hash |\| Config hash \| |config hash `)[0-9a-f]{8,64}",
                  r"\1<hash>", text)
    # config hashes (16 hex), cache fingerprints (12), step keys (20): they hash paths and the source tree
    text = re.sub(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*\d)[0-9a-f]{12,64}\b", "<hash>", text)
    text = re.sub(r"\b(\w+-demo)-[0-9a-f]{6,8}\b", r"\1-<key>", text)  # pipeline step runs: <stage>-<project>-<key>
    text = re.sub(r"harmonica \d+\.\d+\.\d+\S*", "harmonica <version>", text)
    return _asr_figures(text)


_NUMBER = re.compile(r"\d+(\.\d+)?")


def _asr_figures(text: str) -> str:
    """The numbers of the evaluate table's WER and CER rows -> <n>, their layout kept: whisper's reading of the
    tiny test models' babble differs between CPUs (stop 35: CER 0.97 on one host, 1 on another for the same
    audio), and the reports' structure, not whisper's kernels, is what the frozen files hold."""
    text = re.sub(r"^\| (WER|CER) \|.*$", lambda m: _NUMBER.sub("<n>", m.group(0)), text, flags=re.M)  # markdown
    return re.sub(r"^(WER|CER)\n</td>\n((?:<td>\n[^\n]*\n</td>\n)+)",  # an HTML outline's table row
                  lambda m: m.group(1) + "\n</td>\n" + _NUMBER.sub("<n>", m.group(2)), text, flags=re.M)


def _tree_state(text: str) -> str:
    text = re.sub(r"\| Git dirty \| (yes|no|unknown) \|", "| Git dirty | <dirty> |", text)
    text = re.sub(r"(Git dirty\n</td>\n<td>\n)(yes|no|unknown)\n", r"\1<dirty>\n", text)  # an HTML outline
    text = re.sub(r"^(git_commit|dirty)( +).*$", r"\1\2<tree>", text, flags=re.M)  # a compare table
    text = re.sub(r"\n> \*\*Warning: this run was made from a working tree with uncommitted changes[^\n]*\n\n",
                  "\n", text)
    text = re.sub(r"<p class='warn'>\n\S* ?Warning: this run was made from a working tree[^\n]*\n</p>\n", "", text)
    text = re.sub(r"(-dirty|-unknown)/", "/", text)  # a checkpoint's code_version
    return re.sub(r"\s*- provenance \(allowed by --allow-dirty\): [^()]*? ran from a dirty git tree \([^)]*\)", "",
                  text)


class _Outline(html.parser.HTMLParser):
    """Tags with their attributes and the text between them, one per line, whitespace collapsed; the
    inlined plotly.js, base64 payloads and plotly's random div ids are replaced by placeholders."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.lines: list[str] = []
        self._in: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        shown = []
        for k, v in attrs:
            v = v or ""
            if v.startswith("data:"):
                v = v.split(",", 1)[0] + ",<base64>"
            shown.append(f"{k}={v!r}")
        self.lines.append(f"<{tag}{' ' if shown else ''}{' '.join(shown)}>")
        self._in.append(tag)

    def handle_endtag(self, tag: str) -> None:
        self.lines.append(f"</{tag}>")
        if self._in and self._in[-1] == tag:
            self._in.pop()

    def handle_data(self, data: str) -> None:
        text = " ".join(data.split())
        if not text:
            return
        if self._in and self._in[-1] == "script":
            if "plotly.js v" in text[:2000]:
                text = "<plotly.js " + re.search(r"plotly\.js v[\d.]+", text).group(0) + ">"
            else:
                text = _plot_script(text)
        elif self._in and self._in[-1] == "style":
            text = "<css>"
        self.lines.append(text)


def _plot_script(text: str) -> str:
    """A figure's newPlot call: its trace names, title and marks, not its numbers or random ids."""
    traces = re.findall(r'"name":"([^"]+)"', text)
    title = re.search(r'"title":\{"text":"([^"]+)"', text)
    marks = re.findall(r'"text":"(collapse[^"]*)"', text)
    log_y = '"type":"log"' in text
    return f"<figure {title.group(1) if title else '?'}: traces={traces} marks={marks} log_y={log_y}>"


def html_outline(text: str, ids: Mapping[str, str], paths: Mapping[str, str], tree: bool = True) -> str:
    parser = _Outline()
    parser.feed(text)
    outline = "\n".join(parser.lines) + "\n"
    outline = re.sub(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", "<uuid>", outline)
    return normalise(outline, ids, paths, tree)


def check(name: str, text: str) -> str | None:
    """Compare with (or, with HARMONICA_WRITE_FROZEN=1, write) tests/reports/frozen/<name>; the diff, if any."""
    path = FROZEN / name
    if WRITE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return None
    if not path.exists():
        return f"{path} missing: write it with HARMONICA_WRITE_FROZEN=1"
    want = path.read_text(encoding="utf-8")
    if text == want:
        return None
    diff = "".join(difflib.unified_diff(want.splitlines(True), text.splitlines(True), f"frozen/{name}", "now", n=2))
    return f"{name} differs from the frozen output:\n{diff[:4000]}"
