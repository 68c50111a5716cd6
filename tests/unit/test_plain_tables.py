"""Tables written without a box (output that is not a terminal): flowledger
writes the rows itself, as rich lays them out, since rich measured every cell
again (0.2-0.7 ms a row: `cost --by run` of 69,000 runs took 50 s)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.text import Text

from flowledger.cli import tables
from flowledger.cli.render import out
from flowledger.cli.tables import Col, print_table

# Narrow and wide characters, spaces, an ellipsis: what names and titles hold.
_TEXT = st.text(st.sampled_from(list("ab Z0.-_…éß名前🙂")), max_size=14)


@st.composite
def _tables(draw: Any) -> tuple[Any, ...]:
    n = draw(st.integers(1, 5))
    cols = [Col(draw(_TEXT.filter(bool)), drop=draw(st.integers(0, 3)), key=draw(st.booleans()),
                justify=draw(st.sampled_from(["left", "right", "center"])),
                max_width=draw(st.none() | st.integers(1, 12))) for _ in range(n)]
    cell = _TEXT | _TEXT.map(lambda t: Text(t, style="red"))
    rows = draw(st.lists(st.lists(cell, min_size=n, max_size=n), max_size=6))
    footer = draw(st.lists(st.lists(cell, min_size=n, max_size=n), max_size=1))
    title = draw(st.none() | _TEXT)
    return title, cols, rows, footer, draw(st.integers(20, 120))


def _printed(table: tuple[Any, ...], width: int) -> tuple[str, set[str]]:
    title, cols, rows, footer, _ = table
    out.width = width
    with out.capture() as captured:
        cut = print_table(title, cols, rows, footer)
    return captured.get(), cut


@settings(max_examples=400, deadline=None)
@given(table=_tables())
def test_rows_written_plainly_are_what_rich_writes(table: tuple[Any, ...]) -> None:
    width = out.width
    try:
        mine = _printed(table, table[-1])
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(tables, "_one_line", lambda cell: False)  # rich lays out every row
            theirs = _printed(table, table[-1])
    finally:
        out.width = width
    assert mine == theirs


def test_many_rows_are_written_plainly(monkeypatch: pytest.MonkeyPatch) -> None:
    """The rows of a table that fits do not go through rich's Table; a cell of
    two lines (or a table wider than the output) still does."""
    laid_out: list[int] = []
    monkeypatch.setattr(tables.Table, "add_row",
                        lambda self, *cells, **kw: laid_out.append(len(cells)))
    cols = [Col("run", key=True), Col("cost", key=True, justify="right")]
    with out.capture() as captured:
        print_table("Costs", cols, [[f"{i:08x}", f"{i}.00"] for i in range(1000)])
    assert laid_out == [] and captured.get().count("\n") == 1002
    with out.capture():
        print_table("Costs", cols, [["a\nb", "1.00"]])
    assert laid_out == [2]


@pytest.mark.parametrize("cell", ["[bold]inv-1[/bold]", ":thumbs_up: inv-2", "a\\[b]"])
def test_a_value_is_shown_as_it_is_not_as_markup(cell: str) -> None:
    """Rich reads a str cell as markup and emoji codes: a message id
    `[bold]inv-1[/bold]` was shown `inv-1` on a terminal (and before the plain
    layout, in a pipe too)."""
    width = out.width
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(tables, "_one_line", lambda cell: False)  # rich lays out the row
            shown, _ = _printed((None, [Col("id")], [[cell]], [], 40), 40)
    finally:
        out.width = width
    assert shown.splitlines()[1].rstrip() == cell
