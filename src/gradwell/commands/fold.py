"""`gradwell fold`: a trained run's BatchNorm layers folded away for inference, checked and timed."""

from __future__ import annotations

import argparse

from gradwell.commands.output import console, key_value_table, print_json


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "fold",
        help="fold a trained run's BatchNorm layers into their neighbours for faster inference",
        description="Load a run folder of `gradwell train`, fold every BatchNorm it can into the layer "
        "before or after it, check on the run's test split that the folded model computes what the trained "
        "one does, time a forward pass of each, and write RUN_DIR/model_folded.safetensors. Nothing is "
        "written when the check fails.",
    )
    parser.add_argument("run_dir", help="a run folder written by gradwell train")
    parser.add_argument("--out", metavar="FILE.safetensors", help="where to write the folded weights")
    parser.add_argument(
        "--batch-size", type=int, default=1, help="batch size of the latency measurement (default: 1)"
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from gradwell.errors import GradwellError
    from gradwell.inference import fold_run

    if args.batch_size < 1:
        raise GradwellError(f"--batch-size must be a positive int; got {args.batch_size}")
    result = fold_run(args.run_dir, out=args.out, batch_size=args.batch_size)
    if args.json:
        print_json(result.to_dict())
        return 0
    trained, folded = result.test
    rows = [
        (
            "BatchNorm layers folded",
            f"{len(result.folded)}: {', '.join(result.folded)}" if result.folded else "none",
        ),
        *(("left in place", reason) for reason in result.left),
        ("parameters and buffers", f"{result.stored_numbers[0]:,} -> {result.stored_numbers[1]:,}"),
        ("largest output difference", f"{result.max_difference:.3g}"),
        *((f"test {name}", f"{trained[name]:.4f} -> {folded[name]:.4f}") for name in trained),
        (
            f"forward pass, batch {result.batch_size}",
            f"{result.latency[0] * 1e6:,.1f} us -> {result.latency[1] * 1e6:,.1f} us "
            f"({result.speedup:.2f}x, {result.threads} thread{'s' if result.threads > 1 else ''})",
        ),
        ("written", str(result.path)),
    ]
    console.print(key_value_table(f"gradwell fold {args.run_dir}", rows))
    return 0
