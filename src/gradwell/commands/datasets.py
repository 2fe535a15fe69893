"""`gradwell datasets`: the datasets `data.name` accepts, and which downloadable ones are cached."""

from __future__ import annotations

import argparse

from rich.table import Table

from gradwell.commands.output import console


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "datasets",
        help="list the built-in datasets and file formats",
        description="List the datasets `data.name` accepts, and whether the downloadable ones (and "
        "generated MNIST-1D sets) are in the cache. Nothing is downloaded.",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from gradwell.data import describe, generated_cache
    from gradwell.data.download import REGISTRY, cache_root, status

    table = Table(title="built-in datasets and file formats (this command downloads nothing)")
    table.add_column("name")
    table.add_column("description")
    table.add_column("cache")
    for name, description in describe():
        cache = (
            status(name) if name in REGISTRY else generated_cache.status(name) if name == "mnist1d" else ""
        )
        table.add_row(name, description, cache)
    console.print(table)
    console.print(f"cache folder: {cache_root()} (set GRADWELL_DATA to move it)", soft_wrap=True)
    return 0
