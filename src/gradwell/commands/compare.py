"""`gradwell compare`: train configs on the same seeds and compare them honestly."""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from rich.table import Table

from gradwell.commands.output import console, print_json, runs_progress
from gradwell.commands.runs import add_runner_options, executor_for

if TYPE_CHECKING:
    from gradwell.experiment import Results
    from gradwell.experiment.report import Comparison


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "compare",
        help="train configs on the same seeds and compare them with paired statistics",
        description="Train every config with every seed (in parallel processes; small MLPs train all "
        "their seeds at once) and compare each pair seed by seed: mean difference with its 95% "
        "interval, paired t-test and Wilcoxon test, effect size, win rate and a verdict. Writes "
        "results.json, report.md and plots to a run folder.",
    )
    parser.add_argument("configs", nargs="+", metavar="CONFIG", help="TOML configs (two or more to compare)")
    parser.add_argument("--seeds", type=int, default=10, help="number of seeds, 0..N-1 (default 10)")
    parser.add_argument(
        "--metric",
        default="test_accuracy",
        help="what to compare: test_accuracy (default), test_loss, val_accuracy (last epoch), "
        "best_val_accuracy, loss@3 (epoch 3's training loss), ...",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a value in every config, e.g. --set train.epochs=5",
    )
    parser.add_argument(
        "--data",
        metavar="NAME",
        help="train every config on this data set instead of its own (a name gradwell datasets lists: "
        "digits, fashion_mnist, npz:PATH, ...), as --set data.name=NAME: the configs' other data options "
        "are dropped; loaded and checked before anything trains",
    )
    add_runner_options(parser)
    parser.add_argument("--out", help="the run folder (default runs/compare-<timestamp>)")
    parser.add_argument("--json", action="store_true", help="print the comparison as JSON")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from gradwell import config as configs
    from gradwell.errors import GradwellError
    from gradwell.experiment import run as run_experiment
    from gradwell.experiment import write_report

    if args.seeds < 1:
        raise GradwellError(f"--seeds must be at least 1; got {args.seeds}")
    names = [Path(path).stem for path in args.configs]
    if len(set(names)) < len(names):
        names = [f"{name}-{i}" for i, name in enumerate(names, 1)]
    overrides = list(args.set)
    if args.data is not None:
        if any(configs.names_a_section(o) and o.strip().startswith("data.") for o in overrides):
            raise GradwellError("give the data set once: --data or --set data.name, not both")
        overrides.insert(0, f"data.name={json.dumps(args.data)}")  # a TOML string: the name as given
    arms = {name: configs.load(path, overrides) for name, path in zip(names, args.configs, strict=True)}
    if args.data is not None:  # a bad name or file fails here, and a download happens once, not per worker
        from gradwell.experiment.execution import dataset_of

        for config in {json.dumps(c.data, sort_keys=True): c for c in arms.values()}.values():
            dataset_of(config)
    with runs_progress(len(arms) * args.seeds, "training") as on_done, executor_for(args) as executor:
        results = run_experiment(
            arms, seeds=range(args.seeds), workers=args.workers, executor=executor, on_done=on_done
        )
    out = Path(args.out or f"runs/compare-{datetime.now():%Y%m%d-%H%M%S}")
    comparison = write_report(results, out, args.metric)
    if args.json:
        shown = {
            "run_dir": str(out),
            "seeds": results.seeds,
            "seconds": results.seconds,
            "data": results.data,
        }
        print_json({**shown, **comparison.to_dict()})
        return 0
    console.print(config_table(comparison, results))
    if comparison.pairs:
        console.print(pair_table(comparison))
    console.print(f"report: {out / 'report.md'}", highlight=False)
    return 0


def config_table(comparison: Comparison, results: Results) -> Table:
    from gradwell.experiment.report import data_phrase, interval, number

    on = data_phrase(results).removeprefix(",")
    title = f"{comparison.metric} over {len(results.seeds)} seeds{on} ({results.seconds:.0f} s)"
    table = Table(title=title)
    for column in ("config", "path", "ok / failed", "mean ± std", "95% CI"):
        table.add_column(column)
    for label, s in comparison.summaries.items():
        failed = comparison.failed[label]
        table.add_row(
            label,
            comparison.paths[label],
            f"{len(results.runs(label)) - failed} / {failed}",
            f"{number(s.mean)} ± {number(s.std)}",
            interval(s.ci),
        )
    return table


def pair_table(comparison: Comparison) -> Table:
    from gradwell.experiment.report import interval, number

    table = Table(title="paired on seeds (difference = A - B)")
    for column in ("A", "B", "difference", "95% CI", "p (t)", "p (Wilcoxon)", "d_z", "A wins", "verdict"):
        table.add_column(column)
    for p in comparison.pairs:
        shown = p.p_holm if p.p_holm is not None else p.p_t
        table.add_row(
            p.a,
            p.b,
            number(p.mean_difference),
            interval(p.ci),
            number(shown) + (" (Holm)" if p.p_holm is not None else ""),
            number(p.p_wilcoxon),
            number(p.effect_size),
            number(p.win_rate),
            p.verdict,
        )
    return table
