"""`gradwell report`: a run folder as one self-contained HTML page."""

from __future__ import annotations

import argparse

from gradwell.commands.output import console


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "report",
        help="write a run folder's results, doctor and figures as one self-contained HTML page",
        description="Read a run folder of `gradwell train` and write one HTML file that opens offline: "
        "the training path and stop reason, the test metrics, the stability doctor's verdicts with "
        "their evidence and fixes, the learning curves, the doctor's figure (the trained model probed "
        "afresh), the per-layer statistics and the config. A run that diverged gets its error and "
        "verdicts. Prints the path written.",
    )
    parser.add_argument("run_dir", help="a run folder written by gradwell train")
    parser.add_argument(
        "--output", metavar="FILE.html", help="where to write the page (default: RUN_DIR/report.html)"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from gradwell.run_report import write_report

    path = write_report(args.run_dir, args.output)
    console.print(str(path), highlight=False, soft_wrap=True)
    return 0
