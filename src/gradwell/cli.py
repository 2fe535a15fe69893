"""The command line: parse, call the library, print. All logic lives in the library."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from rich.logging import RichHandler

from gradwell.commands import (
    claims,
    compare,
    datasets,
    diagnose,
    fold,
    init_config,
    lr_find,
    report,
    train,
    transfer,
)
from gradwell.commands.output import errors, print_error
from gradwell.errors import GradwellError

COMMANDS = (train, init_config, datasets, transfer, diagnose, fold, compare, claims, report, lr_find)


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(
        prog="gradwell",
        description="Train deep neural networks that actually learn: the chapter's techniques, a stability "
        "doctor and honest multi-seed experiments.",
    )
    main.add_argument("-v", "--verbose", action="store_true", help="log each epoch and more detail")
    commands = main.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(commands)
    return main


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    args.argv = argv
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=errors, show_time=False, show_path=False)],
    )
    logging.captureWarnings(True)  # a library warning reads like any other message, not as source lines
    try:
        return args.handler(args)
    except GradwellError as error:
        from gradwell.train import distributed

        if distributed.is_main():  # under torchrun every process fails alike: say it once
            print_error(error)
        return 2
    except KeyboardInterrupt as interrupt:  # gradwell.train.guard.Interrupted says where it saved
        errors.print(str(interrupt) or "interrupted", highlight=False)
        return 130


if __name__ == "__main__":
    sys.exit(main())
