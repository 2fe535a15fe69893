"""`gradwell diagnose`: the stability doctor on a config's model or on a built-in scenario."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.text import Text

from gradwell.commands.output import console, print_json


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
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from gradwell.errors import GradwellError

    if args.scenario is not None:
        if args.config is not None or args.set or args.epochs:
            raise GradwellError("--scenario takes no config, --set or --epochs; give one or the other")
        return run_scenarios(args)
    from gradwell import config as configs
    from gradwell.diagnose import diagnose_config, diagnose_run

    if args.config is not None and Path(args.config).is_dir():
        if args.set or args.epochs:
            raise GradwellError("a run folder is probed as trained: it takes no --set or --epochs")
        report = diagnose_run(args.config)
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
    from gradwell.errors import unknown_name

    if args.scenario != "all" and args.scenario not in SCENARIOS:
        raise unknown_name("scenario", args.scenario, [*SCENARIOS, "all"])
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
