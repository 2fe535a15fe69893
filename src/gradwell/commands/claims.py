"""`gradwell claims`: the chapter's claims, each tested on MNIST-1D (or --data), with verdicts from data."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from rich.table import Table

from gradwell.commands.output import console, errors, print_json

if TYPE_CHECKING:
    from gradwell.experiment.claims import ClaimResult


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "claims",
        help="test the chapter's claims on built-in data (He init, SELU, BN, clipping, optimizers, ...)",
        description="Run each of the chapter's claims as a multi-seed experiment on MNIST-1D (or --data) and "
        "report its verdict (holds / does not hold here / inconclusive) with the paired difference, its "
        "95% interval, the p-value and the number of seeds. The full suite takes up to 15 minutes on 2 "
        "cores, --quick up to 2 (on MNIST-1D: other data sets take longer).",
    )
    parser.add_argument("--quick", action="store_true", help="fewer seeds and epochs (within 2 minutes)")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="for testing only: a tiny scale (seconds) whose verdicts mean nothing",
    )
    parser.add_argument(
        "--only", action="append", metavar="NAME", help="run only this claim (a name or number; repeatable)"
    )
    parser.add_argument(
        "--data",
        metavar="NAME",
        help="run on this data set instead of MNIST-1D (a name gradwell datasets lists: digits, "
        "fashion_mnist, npz:PATH, ...); its training and validation splits are subsampled, with a fixed "
        "seed, to the sizes MNIST-1D's have at the scale (3600 and 400 at full scale), its test split kept",
    )
    parser.add_argument("--workers", type=int, help="worker processes (default: one per core; 0: none)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from gradwell.experiment.claims import find, run_claims

    find(args.only)  # an unknown name fails before anything trains
    scale = "smoke" if args.smoke else "quick" if args.quick else "full"

    def show(result: ClaimResult) -> None:
        if not args.json:
            errors.print(
                f"{result.number:>2}. {result.claim.name}: {result.verdict} ({result.seconds:.0f} s)",
                highlight=False,
            )

    def announce(data: dict) -> None:
        if not args.json:
            errors.print(f"data: {data['name']}, {data['sampling']}", highlight=False)

    results = run_claims(args.only, scale, args.workers, on_result=show, data=args.data, on_data=announce)
    if args.json:
        print_json([result.to_dict() for result in results])
        return 0
    console.print(claims_table(results, scale))
    return 0


def claims_table(results: list[ClaimResult], scale: str) -> Table:
    from gradwell.experiment.report import interval, number

    seconds = sum(r.seconds for r in results)
    data = results[0].to_dict()["data"] if results else {}
    on = f"{data['name']}, " if data else ""
    caption = f"data: {data['name']}, {data['sampling']}" if "sampling" in data else None
    table = Table(title=f"gradwell claims ({scale} scale, {on}{seconds:.0f} s)", caption=caption)
    for column in ("#", "claim", "verdict", "part: verdict", "difference [95% CI]", "p", "seeds"):
        table.add_column(column)
    for result in results:
        for i, (part, comparison, verdict) in enumerate(result.parts):
            first = i == 0
            p = comparison.p_holm if comparison.p_holm is not None else comparison.p_t
            table.add_row(
                str(result.number) if first else "",
                result.claim.name if first else "",
                result.verdict if first else "",
                f"{part.describe()}: {verdict}",
                f"{number(comparison.mean_difference)} {interval(comparison.ci)}",
                number(p),
                str(comparison.n),
                end_section=i == len(result.parts) - 1,
            )
    return table
