"""`gradwell claims`: the chapter's claims, each tested on built-in data, with verdicts from the data."""

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
        description="Run each of the chapter's claims as a multi-seed experiment on built-in data and "
        "report its verdict (holds / does not hold here / inconclusive) with the paired difference, its "
        "95% interval, the p-value and the number of seeds. The full suite takes up to 15 minutes on 2 "
        "cores, --quick up to 2.",
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

    results = run_claims(args.only, scale, args.workers, on_result=show)
    if args.json:
        print_json([result.to_dict() for result in results])
        return 0
    console.print(claims_table(results, scale))
    return 0


def claims_table(results: list[ClaimResult], scale: str) -> Table:
    from gradwell.experiment.report import interval, number

    seconds = sum(r.seconds for r in results)
    table = Table(title=f"gradwell claims ({scale} scale, {seconds:.0f} s)")
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
