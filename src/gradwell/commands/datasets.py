"""`gradwell datasets`: the datasets `data.name` accepts."""

from __future__ import annotations

import argparse

from rich.table import Table

from gradwell.commands.output import console


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "datasets",
        help="list the built-in datasets and file formats",
        description="List the datasets `data.name` accepts. Nothing is downloaded.",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from gradwell.data import describe

    table = Table(title="built-in datasets and file formats (nothing is downloaded)")
    table.add_column("name")
    table.add_column("description")
    for name, description in describe():
        table.add_row(name, description)
    console.print(table)
    return 0
