"""`gradwell diagnose`: the stability doctor on a config's model or on a built-in scenario."""

from __future__ import annotations

import argparse
from datetime import datetime
from pathlib import Path

from rich.table import Table
from rich.text import Text

from gradwell.commands.output import console, print_json, runs_progress
from gradwell.commands.runs import add_runner_options, executor_for


def register(commands: argparse._SubParsersAction) -> None:
    from gradwell.diagnose.scenarios import SCENARIOS  # the list the help gives, so it never drifts

    parser = commands.add_parser(
        "diagnose",
        help="measure a network's activations and gradients, name what is unstable and how to fix it",
        description="Probe a model layer by layer (activations, saturated and dead units, gradient scales, "
        "non-finite values) and print the verdicts with the chapter's fixes. Give a TOML config (the model "
        "of `gradwell train`, probed at initialization or after --epochs of training), a run folder of "
        "`gradwell train` (its trained model) or a built-in "
        "scenario from the literature. With scenarios, the exit status is 1 when a verdict differs "
        "from the expected one.",
    )
    parser.add_argument(
        "config",
        nargs="?",
        help="a TOML config, as for `gradwell train` (default: its default), or a run folder of "
        "`gradwell train` to probe its trained model",
    )
    parser.add_argument(
        "--scenario",
        metavar="NAME",
        help=f"a built-in scenario: {', '.join(SCENARIOS)}, or all of them with 'all'",
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value"
    )
    parser.add_argument(
        "--epochs", type=int, default=0, help="train this many epochs with a Monitor before probing (config)"
    )
    parser.add_argument("--json", action="store_true", help="print the report(s) as JSON")
    parser.add_argument(
        "--plot",
        metavar="FILE.png",
        help="write the doctor's figure there (with several scenarios: FILE-NAME.png for each)",
    )
    tries = parser.add_argument_group(
        "trying the fixes",
        "--try-fixes makes each fix's config change, trains the original and every fixed config on the "
        "same seeds and compares each fix with the original seed by seed (validation accuracy and loss, "
        "95%% intervals, Holm-adjusted verdicts). Writes fixes.json, fixes.png, results.json and, when a "
        "fix helps, best-fix.toml (a config ready to train) to a run folder.",
    )
    tries.add_argument("--try-fixes", action="store_true", help="try each prescribed fix over seeds")
    tries.add_argument("--seeds", type=int, default=5, help="seeds per config, 0..N-1 (default 5)")
    add_runner_options(tries)
    tries.add_argument("--out", help="the run folder (default runs/try-fixes-<timestamp>)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from gradwell.errors import GradwellError

    check_try_options(args)
    if args.scenario is not None:
        if args.config is not None or args.set or args.epochs:
            raise GradwellError("--scenario takes no config, --set or --epochs; give one or the other")
        return run_scenarios(args)
    from gradwell import config as configs
    from gradwell.diagnose import diagnose_config, diagnose_run

    if args.config is not None and Path(args.config).is_dir():
        if args.set or args.epochs or args.try_fixes:
            raise GradwellError(
                "a run folder is probed as trained: it takes no --set, --epochs or --try-fixes (give its "
                "config.toml to try fixes)"
            )
        report = diagnose_run(args.config)
    elif args.try_fixes:
        from gradwell import build

        config = configs.load(args.config, args.set)
        dataset = build.load_data(config)
        report = diagnose_config(config, epochs=args.epochs, dataset=dataset)
        return run_try_fixes(args, config, report, dataset.num_classes)
    else:
        report = diagnose_config(configs.load(args.config, args.set), epochs=args.epochs)
    if args.plot:
        report.plot(args.plot, title=f"gradwell diagnose {args.config or '(default config)'}")
    if args.json:
        print_json(report.to_dict())
    else:
        console.print(report)
    return 0


def run_scenarios(args: argparse.Namespace) -> int:
    from gradwell.diagnose import SCENARIOS, run_scenario
    from gradwell.errors import GradwellError, unknown_name

    if args.scenario != "all" and args.scenario not in SCENARIOS:
        raise unknown_name("scenario", args.scenario, [*SCENARIOS, "all"])
    if args.try_fixes:
        if args.scenario == "all":
            raise GradwellError("--try-fixes takes one scenario, not 'all'")
        from gradwell.diagnose.scenarios import digits

        config = SCENARIOS[args.scenario].config()  # refused before anything runs if it has none
        result = run_scenario(args.scenario)
        if not args.json:
            print_scenario(result)
        return run_try_fixes(args, config, result.report, digits().num_classes)
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    results = [run_scenario(name) for name in names]
    for result in results:
        if args.plot:
            result.report.plot(
                plot_path(args.plot, result.scenario.name, len(results)), title=result.scenario.name
            )
        if not args.json:
            print_scenario(result)
    if args.json:
        print_json([r.to_dict() for r in results] if args.scenario == "all" else results[0].to_dict())
    return 0 if all(r.matches for r in results) else 1


def plot_path(path: str, name: str, count: int) -> Path:
    path = Path(path)
    return path if count == 1 else path.with_name(f"{path.stem}-{name}{path.suffix or '.png'}")


def print_scenario(result) -> None:
    scenario = result.scenario
    mark = Text("matches", style="green") if result.matches else Text("DIFFERS", style="bold red")
    console.rule(f"scenario {scenario.name}")
    console.print(scenario.description, highlight=False)
    console.print(
        Text.assemble(f"expected {scenario.expected}, observed {', '.join(result.observed)}: ", mark)
    )
    if result.training:
        t = result.training
        console.print(f"trained {t['steps']} steps: loss {t['loss_before']:.3g} -> {t['loss_after']:.3g}")
    console.print(result.report)


def check_try_options(args: argparse.Namespace) -> None:
    from gradwell.errors import GradwellError

    if not args.try_fixes:
        given = [f"--{name}" for name in ("workers", "ray", "out") if getattr(args, name) is not None]
        if args.seeds != 5:
            given.insert(0, "--seeds")
        if given:
            raise GradwellError(f"{', '.join(given)} only go with --try-fixes")
    elif args.seeds < 2:
        raise GradwellError(f"--seeds must be at least 2 to give paired intervals; got {args.seeds}")
    elif args.plot:
        raise GradwellError("--try-fixes writes its figure to the run folder (fixes.png); leave out --plot")
    elif args.out is not None and Path(args.out).exists() and any(Path(args.out).iterdir()):
        raise GradwellError(f"--out {args.out} holds files already; give a new or empty folder")


def run_try_fixes(args: argparse.Namespace, config, report, classes: int) -> int:
    """Try the report's fixes over seeds, write the run folder, print the table (or JSON)."""
    from gradwell.experiment.try_fixes import candidates, try_fixes, write_fixes

    if not args.json and args.scenario is None:
        console.print(report)
    runs = (len(candidates(config, report.verdicts)[0]) + 1) * args.seeds
    options = {"classes": classes, "seeds": args.seeds, "workers": args.workers}
    with runs_progress(runs, "trying the fixes") as on_done, executor_for(args) as executor:
        tried = try_fixes(config, report.verdicts, **options, executor=executor, on_done=on_done)
    out = Path(args.out or f"runs/try-fixes-{datetime.now():%Y%m%d-%H%M%S}")
    written = write_fixes(tried, out)
    if args.json:
        print_json({"run_dir": str(out), **tried.to_dict()})
    else:
        print_fixes(tried, written)
    return 0


def print_fixes(tried, written: dict[str, Path]) -> None:
    from gradwell.experiment.report import interval, number

    seeds = len(tried.results.seeds) if tried.results is not None else 0
    table = Table(title=f"fixes tried over {seeds} seeds, paired with the original (fix - original)")
    for column in ("change", tried.metrics[0], "95% CI", tried.metrics[1], "95% CI", "verdict"):
        table.add_column(column)
    for trial in tried.trials:
        acc, loss = trial.accuracy, trial.loss
        table.add_row(
            trial.candidate.label,
            number(acc.mean_difference),
            interval(acc.ci),
            number(loss.mean_difference),
            interval(loss.ci),
            Text(trial.verdict, style={"helps": "green", "hurts": "red"}.get(trial.verdict, "")),
        )
    if tried.trials:
        console.print(table)
    for trial in tried.trials:
        for fix in trial.candidate.fixes:
            console.print(f"{trial.candidate.label}: {fix}", highlight=False)
    for fix, why in tried.untried:
        console.print(f"not tried: {fix}: {why}", highlight=False)
    if not tried.trials:
        console.print("no fix to try" + (" (the model is healthy)" if tried.verdicts == ["healthy"] else ""))
    best = tried.best
    verdict = f"best proven fix: {best.candidate.label}" if best else "no fix proven to help"
    console.print(verdict, highlight=False)
    for what, path in written.items():
        console.print(f"{what}: {path}", highlight=False)
