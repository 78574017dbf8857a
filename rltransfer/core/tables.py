"""Terminal tables: drawn by rich within 100 columns, long cells wrapped at spaces."""

from __future__ import annotations

TABLE_WIDTH = 100
"""Columns the terminal tables fit in."""


def text_table(
    rows: list[list[str]] | list[tuple[str, ...]], title: str = "", width: int = TABLE_WIDTH
) -> str:
    """`rows` (the first is the header) as a plain-text table of at most `width` columns, drawn by rich."""
    import io

    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(
        title=Text(title) if title else None, box=box.SIMPLE_HEAD, title_justify="left", pad_edge=False
    )
    words = [
        max(len(word) for row in rows for word in (str(row[i]).split() or [""])) for i in range(len(rows[0]))
    ]
    # a column is never narrower than its longest word (names and numbers stay whole, text wraps at spaces), as
    # long as the columns fit side by side at all
    fits = sum(words) + 3 * len(words) <= width
    for index, cell in enumerate(rows[0]):
        table.add_column(Text(cell), overflow="fold", min_width=words[index] if fits else None)
    for row in rows[1:]:
        table.add_row(*(Text(str(cell)) for cell in row))  # Text: brackets in a cell are not rich markup
    console = Console(file=io.StringIO(), width=width, color_system=None, highlight=False, emoji=False)
    console.print(table)
    return "\n".join(line.rstrip() for line in console.file.getvalue().splitlines())
