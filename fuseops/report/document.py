"""The report's document: sections of markdown and PNGs, written as index.md and index.html."""

from __future__ import annotations

import html
import os
from dataclasses import dataclass, field


@dataclass
class Section:
    title: str
    body: str = ""  # markdown
    images: list[tuple[str, str]] = field(default_factory=list)  # (file name in out_dir, caption)
    summary: list[str] = field(default_factory=list)  # one-line findings for the terminal
    seconds: float = 0.0


def write_markdown(out_dir: str, title: str, preamble: str, sections: list[Section]) -> str:
    lines = [f"# {title}", "", preamble, "", "## Contents", ""]
    lines += [f"{i}. [{s.title}](#{_anchor(s.title)})" for i, s in enumerate(sections, 1)]
    for section in sections:
        lines += ["", f"## {section.title}", "", section.body.rstrip(), ""]
        for name, caption in section.images:
            lines += [f"![{caption}]({name})", "", f"*{caption}*", ""]
        lines.append(f"<sub>stage time: {section.seconds:.1f} s</sub>")
    path = os.path.join(out_dir, "index.md")
    with open(path, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    return path


def _anchor(title: str) -> str:
    return "".join(c for c in title.lower().replace(" ", "-") if c.isalnum() or c == "-")


def write_html(out_dir: str, title: str, preamble: str, sections: list[Section]) -> str:
    """A plain HTML page with the same content, for viewing without a markdown renderer.

    Markdown tables are converted; other markdown is shown as preformatted text.
    """
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}"
             "img{max-width:100%}</style></head><body>",
             f"<h1>{html.escape(title)}</h1><p>{html.escape(preamble)}</p>"]
    for section in sections:
        parts.append(f"<h2>{html.escape(section.title)}</h2>")
        parts.append(_markdown_to_html(section.body))
        for name, caption in section.images:
            parts.append(f"<figure><img src='{html.escape(name)}'><figcaption>{html.escape(caption)}</figcaption>"
                         "</figure>")
    parts.append("</body></html>")
    path = os.path.join(out_dir, "index.html")
    with open(path, "w") as handle:
        handle.write("\n".join(parts))
    return path


def _markdown_to_html(text: str) -> str:
    out, table, para = [], [], []

    def flush_table():
        if table:
            rows = [r for r in table if not set(r.replace("|", "").strip()) <= {"-", ":"}]
            cells = [[html.escape(c.strip()) for c in r.strip().strip("|").split("|")] for r in rows]
            out.append("<table>" + "".join(
                "<tr>" + "".join(f"<{'th' if i == 0 else 'td'}>{c}</{'th' if i == 0 else 'td'}>" for c in row)
                + "</tr>" for i, row in enumerate(cells)) + "</table>")
            table.clear()

    def flush_para():
        if para:
            out.append("<pre>" + html.escape("\n".join(para)) + "</pre>")
            para.clear()

    for line in text.splitlines():
        if line.strip().startswith("|"):
            flush_para()
            table.append(line)
        else:
            flush_table()
            if line.strip():
                para.append(line)
            else:
                flush_para()
    flush_table()
    flush_para()
    return "\n".join(out)
