"""Terminal output of the command line: results (tables, reports, JSON) on stdout, progress, status
and warnings on stderr, so that ``varrt plan show fastvar > plan.txt`` keeps only the plan.

Library modules never print: they log (``logging.getLogger("varrt...")``) or report steps through a
``say`` callback; :func:`configure_logging` sends the log to stderr for the command line."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Iterator

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

#: progress, status, warnings; not a terminal (logs, CI, pipes): wide enough that names never wrap
console = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 200)
#: results: tables, reports
out = Console(highlight=False, width=None if sys.stdout.isatty() else 200)


def configure_logging(quiet: bool = False) -> None:
    """The library's log lines on stderr (warnings only under --quiet)."""
    from rich.logging import RichHandler

    logger = logging.getLogger("varrt")
    logger.handlers = [RichHandler(console=console, show_time=False, show_path=False, markup=False)]
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False


def result(renderable) -> None:
    """A result on stdout: a table, or text as it is (markdown reports keep their lines unwrapped)."""
    if isinstance(renderable, str):
        sys.stdout.write(renderable if renderable.endswith("\n") else renderable + "\n")
        sys.stdout.flush()
    else:
        out.print(renderable)


def print_json(data) -> None:
    """Machine-readable results on stdout: plain JSON, no colour or wrapping."""
    sys.stdout.write(json.dumps(data, indent=1, default=str) + "\n")
    sys.stdout.flush()


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
    with bar:  # descriptions name backend and policy in brackets: escaped, not read as markup tags
        task = bar.add_task(escape(description), total=total, label="")

        def advance(label: str = "") -> None:
            bar.update(task, advance=1, label=escape(label))
            if not sys.stderr.isatty() and label:
                console.print(f"  {escape(description)}: {escape(label)}")

        yield advance


@contextlib.contextmanager
def status(what: str, enabled: bool = True) -> Iterator:
    """A one-line status for long steps; yields ``say(message)``, which also prints each step
    (disabled, e.g. under --quiet: prints nothing)."""
    if not enabled:
        yield lambda _m: None
        return
    with console.status(escape(what)) as st:

        def say(msg: str) -> None:
            st.update(f"{escape(what)}: {escape(msg)}")
            console.print(f"[dim]{escape(what)}:[/] {escape(msg)}")

        yield say


def table(title: str, columns: list[str], rows: list[list[str]]) -> Table:
    t = Table(title=escape(title), title_justify="left")
    for i, c in enumerate(columns):
        t.add_column(escape(c), justify="left" if i == 0 else "right")
    for r in rows:
        t.add_row(*(escape(str(x)) for x in r))
    return t
