"""Terminal output: progress bars and tables on stderr (stdout stays free for data)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

#: not a terminal (logs, CI, pipes): wide enough that graph names and tables never wrap
console = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 200)


def warn(msg: str) -> None:
    console.print(f"[bold yellow]warning:[/] {escape(msg)}")


def info(msg: str) -> None:
    console.print(escape(msg))


@contextlib.contextmanager
def progress(total: int, description: str, enabled: bool = True) -> Iterator:
    """A progress bar; yields ``advance(label)``. Disabled (or not a terminal): prints nothing."""
    if not enabled:
        yield lambda label="": None
        return
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[label]}"),
        console=console,
        transient=False,
        disable=not sys.stderr.isatty(),
    )
    with bar:
        task = bar.add_task(description, total=total, label="")

        def advance(label: str = "") -> None:
            bar.update(task, advance=1, label=label)
            if not sys.stderr.isatty() and label:
                console.print(f"  {description}: {label}")

        yield advance


@contextlib.contextmanager
def status(what: str) -> Iterator:
    """A one-line status for long steps; yields ``say(message)``, which also logs each step."""
    with console.status(what) as st:

        def say(msg: str) -> None:
            st.update(f"{what}: {escape(msg)}")
            console.print(f"[dim]{what}:[/] {escape(msg)}")

        yield say


def table(title: str, columns: list[str], rows: list[list[str]]) -> Table:
    t = Table(title=escape(title), title_justify="left")
    for i, c in enumerate(columns):
        t.add_column(escape(c), justify="left" if i == 0 else "right")
    for r in rows:
        t.add_row(*(escape(str(x)) for x in r))
    return t
