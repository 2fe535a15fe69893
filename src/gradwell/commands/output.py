"""The command line's output layer: rich consoles for results (stdout) and messages (stderr).

Neither console parses markup: what gradwell prints holds the user's own text (paths, names,
values such as ``exp[v2]`` or ``[/bold]``), which must come out as written. Style is given as
rich Text instead.
"""

from __future__ import annotations

import json
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
