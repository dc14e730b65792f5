"""Printing tables in the terminal: rich when installed, plain text otherwise."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print ``rows`` under ``columns``; every cell is shown with ``str``."""
    cells = [[str(c) for c in row] for row in rows]
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max([len(col)] + [len(r[i]) for r in cells]) for i, col in enumerate(columns)]
        print(title)
        print("  ".join(col.ljust(w) for col, w in zip(columns, widths)))
        print("  ".join("-" * w for w in widths))
        for row in cells:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths)))
        return
    table = Table(title=title)
    for col in columns:
        table.add_column(col)
    for row in cells:
        table.add_row(*row)
    # Piped output (a log, CI) gets a wide console so that tables do not wrap into tall cells.
    Console(width=None if sys.stdout.isatty() else 160).print(table)


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """The same table as GitHub markdown, for docs and reports."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
