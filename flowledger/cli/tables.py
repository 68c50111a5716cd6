"""Tables that read at any width, 80 columns included.

A table is declared as its columns, each saying how much it matters: at a
narrow width the columns that matter least are left out (and a note under the
table names them), and what is left is cut short with an ellipsis, never
wrapped. Key columns (ids, statuses, costs) have a minimum width and are
never cut: a value that is shown can be copied. Output that is not a terminal
gets a plain layout: no box drawing, no colour.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from rich import box
from rich.cells import cell_len, set_cell_size
from rich.table import Table
from rich.text import Text

from flowledger.cli.render import out, plain_layout

Cell = str | Text
Justify = Literal["left", "right", "center"]

# The least a column that may be cut short is given before one is left out.
_SQUEEZED = 8


@dataclass(frozen=True)
class Col:
    """One column. `drop`: 0 is always shown; the higher, the sooner it is left
    out when the width is short. `key`: never cut (ids, statuses, amounts)."""

    header: str
    drop: int = 0
    key: bool = False
    justify: Justify = "left"
    max_width: int | None = None


def _width(cell: Cell) -> int:
    return cell.cell_len if isinstance(cell, Text) else max(
        (cell_len(line) for line in cell.splitlines()), default=0)


def _natural(col: Col, index: int, rows: Sequence[Sequence[Cell]]) -> int:
    widest = max([cell_len(col.header), *(_width(r[index]) for r in rows)])
    return min(widest, col.max_width) if col.max_width else widest


def fitting(cols: Sequence[Col], rows: Sequence[Sequence[Cell]], width: int,
            boxed: bool) -> list[int]:
    """Indexes of the columns shown at `width`: the droppable ones go, most
    droppable first, until what is left fits (key columns whole, others at
    least a few characters)."""
    shown = list(range(len(cols)))
    natural = [_natural(c, i, rows) for i, c in enumerate(cols)]

    def needed(indexes: list[int]) -> int:
        edges = 3 * len(indexes) + 1 if boxed else 2 * len(indexes)
        return edges + sum(natural[i] if cols[i].key else min(natural[i], _SQUEEZED)
                           for i in indexes)

    for i in sorted((i for i, c in enumerate(cols) if c.drop),
                    key=lambda i: (-cols[i].drop, -i)):
        if needed(shown) <= width:
            break
        shown.remove(i)
    return shown


def widths(cols: Sequence[Col], natural: Sequence[int], shown: Sequence[int], width: int,
           boxed: bool) -> dict[int, int]:
    """How wide each shown column is: key columns whole; the others share what is
    left, the narrow ones whole and the wide ones cut to equal shares."""
    edges = 3 * len(shown) + 1 if boxed else 2 * len(shown)
    given = {i: natural[i] for i in shown if cols[i].key}
    rest = sorted((i for i in shown if not cols[i].key), key=lambda i: natural[i])
    room = width - edges - sum(given.values())
    for n, i in enumerate(rest):
        share = max(room // (len(rest) - n), 1)
        given[i] = min(natural[i], share)
        room -= given[i]
    return given


def _as_text(cell: Cell) -> Text:
    """A cell as it reads: rich takes a str for markup (`[bold]`) and emoji
    codes (`:thumbs_up:`), which a message id or a title may hold."""
    return cell if isinstance(cell, Text) else Text(cell)


def _plain(cell: Cell) -> str:
    return cell.plain if isinstance(cell, Text) else cell


def _one_line(cell: Cell) -> bool:
    """A cell the plain layout writes itself: one line of printable text."""
    return _plain(cell).isprintable()


def plain_row(cells: Sequence[Cell], cols: Sequence[Col], sizes: Sequence[int]) -> str:
    """One row as rich lays it out without a box: each cell cut to its width
    with an ellipsis, or padded as its column is justified, two spaces apart."""
    shown = []
    for cell, col, size in zip(cells, cols, sizes, strict=True):
        text = _plain(cell)
        if col.justify != "left":
            text = text.rstrip()
        if cell_len(text) > size:
            text = set_cell_size(text, size - 1) + "…"
        room = size - cell_len(text)
        if col.justify == "right":
            text = " " * room + text
        elif col.justify == "center":
            text = " " * (room // 2) + text + " " * (room - room // 2)
        else:
            text += " " * room
        shown.append(text)
    return "  ".join(shown)


def print_table(title: str | None, cols: Sequence[Col], rows: Sequence[Sequence[Cell]],
                footer: Sequence[Sequence[Cell]] = ()) -> set[str]:
    """The table, fitted to the console's width (see the module docstring).
    Returns the headers of the columns left out or cut at this width, for a
    caller whose column must be read whole to say it under the table."""
    boxed = not plain_layout()
    shown = fitting(cols, [*rows, *footer], out.width, boxed)
    table = Table(title=title, title_justify="left", box=box.HEAVY_HEAD if boxed else None,
                  show_edge=boxed, pad_edge=boxed, header_style="bold" if boxed else "",
                  title_style="bold" if boxed else "")
    everything = [*rows, *footer]
    natural = [_natural(c, i, everything) for i, c in enumerate(cols)]
    sizes = widths(cols, natural, shown, out.width, boxed)
    for i in shown:
        col = cols[i]
        table.add_column(col.header, justify=col.justify, no_wrap=True, overflow="ellipsis",
                         width=sizes[i], min_width=natural[i] if col.key else None)
    laid_out = (not boxed and 2 * len(shown) - 2 + sum(sizes.values()) <= out.width
                and all(_one_line(row[i]) for row in everything for i in shown))
    if laid_out:  # rich measures every cell again: 0.2-0.7 ms a row (ADR 0031)
        out.print(table)  # the title and the header
        if everything:
            out.out("\n".join(plain_row([row[i] for i in shown], [cols[i] for i in shown],
                                         [sizes[i] for i in shown]) for row in everything),
                    highlight=False)
    else:
        for row in rows:
            table.add_row(*(_as_text(row[i]) for i in shown))
        if footer:
            table.add_section()
            for row in footer:
                table.add_row(*(_as_text(row[i]) for i in shown))
        out.print(table)
    left_out = [cols[i].header for i in range(len(cols)) if i not in shown]
    if left_out:
        out.print(Text(f"  (left out at this width: {', '.join(left_out)}; --json has all)",
                       style="dim"), soft_wrap=True)
    return {*left_out, *(cols[i].header for i in shown if sizes[i] < natural[i])}
