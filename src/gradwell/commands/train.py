"""`gradwell train`: train from a TOML config and write a run folder."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from gradwell.commands.output import console, errors, key_value_table, print_error, print_json


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "train",
        help="train a model from a TOML config (default: a deep MLP on MNIST-1D)",
        description="Train a model as a TOML config says and write a run folder (config, metrics, "
        "checkpoints, weights, learning curves). Without a config, trains the default deep network "
        "on MNIST-1D.",
    )
    parser.add_argument(
        "config",
        nargs="?",
        help="a TOML config (sections data, model, optimizer, schedule, train, output); see examples/",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.epochs=5 --set model.activation=selu; "
        "a new data.name, model.kind, optimizer.name or schedule.name starts its section afresh",
    )
    parser.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR from its last good "
        "checkpoint (its config.toml, with any --set applied)",
    )
    parser.add_argument(
        "--nproc",
        type=int,
        metavar="N",
        help="train data-parallel in N processes on this "
        "machine (torchrun; gloo on CPUs, NCCL on GPUs); `torchrun ... -m gradwell train` works too",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(handler=run)


def without_nproc(argv: list[str]) -> list[str]:
    """The command line minus its --nproc option, for the processes torchrun starts."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            kept.append(arg)
    return kept


def run(args: argparse.Namespace) -> int:
    from gradwell import config as configs
    from gradwell import job
    from gradwell.errors import NonFiniteError, ProcessLostError
    from gradwell.run_folder import check_run_folder
    from gradwell.train import distributed
    from gradwell.train.guard import Interrupted
    from gradwell.train.launch import launch, launched

    if args.nproc is not None and "WORLD_SIZE" not in os.environ:
        code, failure = launch(without_nproc(args.argv), args.nproc)
        if failure is not None:
            print_error(failure)
        return code
    distributed.init_from_environment()

    try:
        if args.resume is not None:
            run_dir = check_run_folder(args.resume)
            result = job.run(configs.load(run_dir / "config.toml", args.set), run_dir=run_dir, resume=True)
        else:
            result = job.run(configs.load(args.config, args.set))
    except ProcessLostError as error:
        if distributed.is_main() and not launched():  # under --nproc, the launcher says it all
            print_error(error)
        return 1
    except NonFiniteError as error:
        if distributed.is_main():  # every process of a data-parallel run stops with the same error
            print_error(error)
            if error.doctor is not None:
                console.print(error.doctor.summary())
        return 1
    except Interrupted as interrupt:
        if distributed.is_main():
            errors.print(str(interrupt), highlight=False)
            if interrupt.checkpoint is not None:
                run_dir = Path(interrupt.checkpoint).parent.parent
                errors.print(f"go on with: gradwell train --resume {run_dir}")
        return 128 + interrupt.signum
    if distributed.is_main():
        show(result, args.json)
    return 0


def show(result: Any, as_json: bool) -> None:
    """The finished run: its folder, final and test metrics, and the doctor's verdicts."""
    if as_json:
        print_json(result.to_dict())
        return
    final = result.epochs[-1] if result.epochs else {}
    rows = [
        ("dataset", result.dataset.name),
        ("epochs", f"{len(result.epochs)} ({result.stop_reason})"),
        ("time", f"{result.seconds:.1f} s"),
    ]
    if result.lr_find is not None:  # schedule.max_lr = "find"
        found = result.lr_find
        rows.append(("max_lr found", f"{found['max_lr']:.4g} (the learning-rate finder's {found['rule']})"))
    rows += [
        (f"final {k}", f"{final[k]:.4f}")
        for k in ("loss", "accuracy", "val_loss", "val_accuracy")
        if k in final
    ]
    rows += [(f"test {k}", f"{v:.4f}") for k, v in result.test.items()]
    console.print(key_value_table(f"gradwell train: {result.run_dir}", rows))
    if result.doctor is not None:
        console.print(result.doctor.summary())
