"""`gradwell transfer`: the chapter's transfer-learning case study, over one seed or many."""

from __future__ import annotations

import argparse

from rich.table import Table

from gradwell.commands.output import console, errors, print_json

COLUMNS = {"a": "A", "b_scratch": "B from scratch", "b_on_a": "B on A", "difference": "B on A - scratch"}


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "transfer",
        help="train model A, reuse it for task B, and compare with B trained from scratch",
        description="Train (or load) model A on some classes, reuse its lower layers for task B (the "
        "held-out classes, with few labels), fine-tune, and report the test accuracy of B from scratch "
        "and B on A, with mean, std and a 95% confidence interval over seeds. See "
        "examples/transfer_case_study.toml.",
    )
    parser.add_argument("config", help="a TOML config: the sections of gradwell train plus [transfer]")
    parser.add_argument(
        "--seeds", type=int, metavar="N", help="run the whole pipeline for N seeds (default: transfer.seeds)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set transfer.limit_train=100 --set train.epochs=5",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(handler=run)


def percent(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.2f}"


def run(args: argparse.Namespace) -> int:
    from gradwell.experiment import transfer_study

    config, options = transfer_study.load_study_config(args.config, args.set)
    table = Table("seed", title="gradwell transfer: test accuracy (%)")
    columns = [key for key in COLUMNS if key != "a" or not options.model_a]
    for key in columns:
        table.add_column(COLUMNS[key], justify="right")

    def show(result: dict[str, float]) -> None:
        if not args.json:
            errors.print(
                f"seed {result['seed']}: " + ", ".join(f"{COLUMNS[k]} {percent(result[k])}" for k in columns)
            )

    result = transfer_study.study(config, options, args.seeds, on_run=show)
    if args.json:
        print_json(result.to_dict())
        return 0
    for run_result in result.runs:
        table.add_row(str(run_result["seed"]), *(percent(run_result[k]) for k in columns))
    table.add_section()
    summaries = [result.summary[k] for k in columns]
    table.add_row("mean", *(percent(s.mean) for s in summaries))
    table.add_row("std", *(percent(s.std) for s in summaries))
    table.add_row("95% CI low", *(percent(s.ci[0] if s.ci else None) for s in summaries))
    table.add_row("95% CI high", *(percent(s.ci[1] if s.ci else None) for s in summaries))
    console.print(f"task A: {result.task_a}\ntask B: {result.task_b}")
    console.print(table)
    return 0
