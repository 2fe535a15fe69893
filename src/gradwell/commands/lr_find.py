"""`gradwell lr-find`: the learning-rate finder on a config's model, over seeds: a table, a PNG, JSON."""

from __future__ import annotations

import argparse
from pathlib import Path

from gradwell.commands.output import console, key_value_table, print_json


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "lr-find",
        help="grow the learning rate exponentially and suggest one, over several seeds",
        description="Build a config's model and optimizer as `gradwell train` does, grow the learning rate "
        "exponentially from 1e-5 to 10 over a few hundred steps (the chapter's method) once per seed, stop "
        "when the smoothed loss passes 4x its minimum, and suggest rates: the minimum / 10, the steepest "
        "descent and fastai's valley, saying when they disagree by more than 3x, and suggesting none when "
        "the curve is too flat or the seeds' curves too noisy. Writes the curves as a PNG and JSON; "
        "nothing is trained for good.",
    )
    parser.add_argument(
        "config", nargs="?", help="a TOML config, as for `gradwell train` (default: its default)"
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value"
    )
    parser.add_argument(
        "--seeds", type=int, default=3, help="searches, each from the same initial weights (3)"
    )
    parser.add_argument("--steps", type=int, default=200, help="steps per search (200)")
    parser.add_argument("--out", default="lr_find", metavar="STEM", help="writes STEM.png and STEM.json")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    from gradwell import build
    from gradwell import config as configs
    from gradwell.errors import GradwellError
    from gradwell.train.lr_find import NOISY, lr_find

    if args.seeds < 1:
        raise GradwellError(f"--seeds must be a positive int; got {args.seeds}")
    config = configs.load(args.config, args.set)
    if config.schedule.get("max_lr") == build.FIND:  # the search is this command's: not once more before it
        schedule = {key: value for key, value in config.schedule.items() if key != "max_lr"}
        config = dataclasses.replace(config, schedule=schedule)
    recipe = build.recipe(config)
    model = recipe.model()
    recipe.check(model)
    found = lr_find(
        model, recipe.dataset, recipe.optimizer(model), steps=args.steps, seeds=range(args.seeds),
        batch_size=config.train.batch_size, loss=config.train.loss,
    )  # fmt: skip
    stem = Path(args.out)
    found.plot(stem.with_suffix(".png"), title=f"gradwell lr-find {args.config or '(default config)'}")
    stem.with_suffix(".json").write_text(json.dumps(found.to_dict(), indent=2))
    if args.json:
        print_json(found.to_dict())
        return 0
    rows = [(name, "none" if lr is None else f"{lr:.3g}") for name, lr in found.suggestions.items()]
    rows.append(("verdict", found.verdict))
    if found.noise is not None:
        rows.append(("seeds' spread", f"{found.noise:.2f} of the fall (noisy above {NOISY:g})"))
    rows += [("warning", text) for text in found.warnings]
    rows += [(f"seed {c.seed}", f"{len(c.lrs)} steps; {c.stopped}") for c in found.curves]
    rows.append(("written", f"{stem.with_suffix('.png')}, {stem.with_suffix('.json')}"))
    console.print(key_value_table(f"gradwell lr-find {args.config or '(default config)'}", rows))
    return 0
