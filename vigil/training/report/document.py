"""The report as a document: sections of paragraphs, tables and figures, written as HTML and Markdown."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Table:
    header: list[str]
    rows: list[list[str]]
    highlight: int | None = None  # index of a row to emphasise
    numeric: bool = False  # columns after the first hold numbers (right-aligned)


@dataclass(frozen=True)
class Image:
    file: str
    caption: str


Block = str | Table | Image


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)


CSS = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: #222;
       max-width: 1150px; margin: 2em auto; padding: 0 1.5em; }
h1 { font-size: 1.7em; margin-bottom: .2em; }
h2 { font-size: 1.3em; border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 1.8em; }
nav a { margin-right: 1em; }
table { border-collapse: collapse; margin: .8em 0; font-size: .92em; }
th, td { border: 1px solid #ddd; padding: .3em .65em; text-align: left; vertical-align: top; }
th { background: #f4f5f7; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.highlight td { background: #fff4cc; font-weight: 600; }
table.kv td:first-child { font-weight: 600; background: #f9f9fb; white-space: nowrap; }
figure { margin: 1.2em 0; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: .9em; margin-top: .3em; }
p { max-width: 60em; }
"""


def _anchor(title: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in title.lower()).strip("-")


def render_html(title: str, sections: list[Section]) -> str:
    e = html.escape
    nav = " ".join(f'<a href="#{_anchor(s.title)}">{e(s.title)}</a>' for s in sections)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        f"<nav>{nav}</nav>",
    ]
    for section in sections:
        parts.append(f'<h2 id="{_anchor(section.title)}">{e(section.title)}</h2>')
        parts += [_html_block(block) for block in section.blocks]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _html_block(block: Block) -> str:
    e = html.escape
    if isinstance(block, str):
        return f"<p>{e(block)}</p>"
    if isinstance(block, Image):
        return (
            f'<figure><img src="{e(block.file)}" alt="{e(block.caption)}">'
            f"<figcaption>{e(block.caption)}</figcaption></figure>"
        )
    key_value = not any(block.header)
    lines = [f'<table class="{"kv" if key_value else "grid"}">']
    if not key_value:
        lines.append("<tr>" + "".join(f"<th>{e(h)}</th>" for h in block.header) + "</tr>")
    for i, row in enumerate(block.rows):
        cls = ' class="highlight"' if i == block.highlight else ""
        cells = "".join(
            f"<td{' class=num' if block.numeric and k > 0 else ''}>{e(c)}</td>"
            for k, c in enumerate(row)
        )
        lines.append(f"<tr{cls}>{cells}</tr>")
    lines.append("</table>")
    return "\n".join(lines)


def render_markdown(title: str, sections: list[Section]) -> str:
    parts = [f"# {title}"]
    for section in sections:
        parts.append(f"## {section.title}")
        parts += [_markdown_block(block) for block in section.blocks]
    return "\n\n".join(parts) + "\n"


def _markdown_block(block: Block) -> str:
    if isinstance(block, str):
        return block
    if isinstance(block, Image):
        return f"![{Path(block.file).stem}]({block.file})\n\n*{block.caption}*"

    def cells(row: list[str], bold: bool = False) -> str:
        text = [c.replace("|", "\\|") for c in row]
        if bold:
            text = [f"**{c}**" for c in text]
        return "| " + " | ".join(text) + " |"

    header = block.header if any(block.header) else [" "] * len(block.header)
    rule = ["---", *(("---:" if block.numeric else "---") for _ in header[1:])]
    lines = [cells(header), "|" + "|".join(rule) + "|"]
    lines += [cells(row, i == block.highlight) for i, row in enumerate(block.rows)]
    return "\n".join(lines)
