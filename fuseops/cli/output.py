"""Output helpers of the CLIs, benchmarks and report: progress bars and CSV tables."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence


class _NoBar:
    """Stands in for a tqdm bar when progress is off or tqdm is not installed."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int, desc: str, unit: str, enabled: bool = True):
    """A tqdm bar over ``total`` steps (tqdm is optional: without it, or disabled, a no-op)."""
    if enabled:
        try:
            from tqdm import tqdm
        except ImportError:
            return _NoBar()
        return tqdm(total=total, desc=desc, unit=unit)
    return _NoBar()


def write_csv(out_dir: str, name: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """``rows`` under ``columns`` as ``out_dir/name``; returns the path."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, name)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows(rows)
    return path


def show_results(title: str, columns: Sequence[str], rows: Sequence[Sequence[object]], markdown: bool,
                 out_dir: str | None, csv_name: str) -> None:
    """A benchmark's result: the terminal table, the markdown table when asked for, and
    ``out_dir/csv_name`` when ``out_dir`` is given."""
    from fuseops.cli.table import markdown_table, print_table

    print_table(title, columns, rows)
    if markdown:
        print(markdown_table(columns, rows))
    if out_dir:
        print(f"wrote {write_csv(out_dir, csv_name, columns, rows)}")
