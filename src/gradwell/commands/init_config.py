"""`gradwell init-config`: write the chapter's default configuration as a commented TOML file."""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path

from gradwell.commands.output import console


def register(commands: argparse._SubParsersAction) -> None:
    from gradwell.guidelines import KINDS, OPTIMIZER_CHOICES, SCHEDULE_CHOICES  # the help never drifts

    parser = commands.add_parser(
        "init-config",
        help="write the chapter's default deep-network configuration, each choice with its reason",
        description="Write a config for `gradwell train` from the chapter's practical guidelines: He "
        "initialization, ELU (shallow) or Swish (deep), batch normalization for deep nets, early stopping, "
        "AdamW with weight decay, 1cycle; or the self-normalizing variant (LeCun initialization, SELU, no "
        "batch normalization, alpha dropout, Nesterov momentum). Each key is commented with why.",
    )
    parser.add_argument("--depth", type=int, default=6, help="hidden layers (default 6)")
    parser.add_argument("--width", type=int, default=100, help="units per hidden layer (default 100)")
    parser.add_argument(
        "--kind", default="default", choices=[k.replace("_", "-") for k in KINDS], help="which configuration"
    )
    parser.add_argument("--optimizer", choices=OPTIMIZER_CHOICES, help="instead of the kind's own")
    parser.add_argument("--schedule", default="onecycle", choices=SCHEDULE_CHOICES, help="default onecycle")
    parser.add_argument("--data", default="mnist1d", metavar="NAME", help="the data set (default mnist1d)")
    parser.add_argument("--epochs", type=int, default=30, help="at most this many epochs (default 30)")
    parser.add_argument("--out", metavar="FILE.toml", help="write it there (default: print it)")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from gradwell.config import from_dict
    from gradwell.errors import GradwellError
    from gradwell.files import write_atomically
    from gradwell.guidelines import recommend

    recommendation = recommend(
        args.depth,
        args.kind.replace("-", "_"),
        width=args.width,
        optimizer=args.optimizer,
        schedule=args.schedule,
        data=args.data,
        epochs=args.epochs,
    )
    text = recommendation.to_toml()
    if args.out is None:
        sys.stdout.write(text)
        return 0
    out = Path(args.out)
    if out.exists() and not args.force:
        raise GradwellError(f"{out} exists; give another --out, or --force to replace it")
    from_dict(tomllib.loads(text), source="the written config")  # it reads back as a valid config
    write_atomically(out, text.encode())  # whole or not at all: an old file is never left half-written
    console.print(f"wrote {out}: gradwell train {out}", highlight=False)
    return 0
