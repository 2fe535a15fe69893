"""The command line's output layer: rich consoles for results (stdout) and messages (stderr).

Neither console parses markup: what gradwell prints holds the user's own text (paths, names,
values such as ``exp[v2]`` or ``[/bold]``), which must come out as written. Style is given as
rich Text instead.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

console = Console(markup=False)
errors = Console(stderr=True, markup=False, soft_wrap=True)  # a path in a message stays one piece


def print_error(message: object) -> None:
    """``error: MESSAGE`` on stderr, the message exactly as it reads."""
    errors.print(Text.assemble(("error: ", "bold red"), str(message)), highlight=False)


def print_json(data: Any) -> None:
    """Machine-readable output: plain JSON on stdout, nothing else."""
    console.file.write(json.dumps(data, indent=2, default=str) + "\n")


def key_value_table(title: str, rows: list[tuple[str, str]]) -> Table:
    table = Table(title=title, show_header=False)
    for row in rows:
        table.add_row(*row)
    return table


@contextmanager
def runs_progress(total: int, what: str) -> Iterator[Callable[[list[Any]], None]]:
    """A progress bar on stderr counting an experiment's finished runs out of `total`; yields the
    runner's ``on_done``. stdout stays for the results (and the JSON of --json)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn(what), BarColumn(), MofNCompleteColumn(), TextColumn("runs"), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(what, total=total)
        yield lambda records: progress.advance(task, len(records))
