"""Tables on the console (``status``), drawn by rich (it ships with typer).

Plain text: no borders, no markup, two spaces between columns. On a terminal a long last column
wraps within the terminal's width; in a pipe or a log nothing wraps or is cut, so every row stays
one greppable line.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from rich.console import Console
from rich.table import Table
from rich.text import Text

#: Width of the console off a terminal: wide enough that no row is ever wrapped.
UNLIMITED = 1_000_000


@dataclass(frozen=True)
class Column:
    header: str
    justify: Literal["left", "right"] = "left"
    min_width: int | None = None


def print_table(columns: Sequence[Column], rows: Sequence[Sequence[str]], *, header: bool = True) -> None:
    """Print ``rows`` under ``columns`` to standard output; a cell may hold several lines."""
    console = Console(file=sys.stdout, highlight=False, markup=False, emoji=False)
    if not console.is_terminal:
        console = Console(file=sys.stdout, highlight=False, markup=False, emoji=False, width=UNLIMITED)
    table = Table(box=None, show_header=header, header_style="", pad_edge=False, padding=(0, 1))
    for c in columns:
        table.add_column(c.header, justify=c.justify, min_width=c.min_width, overflow="fold")
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))
    with console.capture() as capture:
        console.print(table)
    for line in capture.get().splitlines():
        print(line.rstrip(), file=sys.stdout, flush=True)
