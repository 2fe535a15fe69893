"""Step time of gradwell's optimizers against torch.optim's (run by hand, not a test).

    python benchmarks/bench_optim.py [--depth 100] [--width 100] [--samples 30] [--threads 1]

The parameters are those of the chapter's deep MLP: `depth` Linear(width, width) layers, about
1M float32 parameters in 200 tensors for the defaults, with random gradients set once. Only
``optimizer.step()`` is timed. Each gradwell optimizer runs beside torch's foreach implementation
of the same update and its single-tensor one (a loop over tensors, torch's default on the CPU),
each on its own copy of the parameters; samples are interleaved in alternating order so that
drifts in machine load hit all of them alike, and the table gives medians and the ratios
gradwell / torch.
The last row adds global-norm clipping: gradwell's ``global_clipnorm`` against
``torch.nn.utils.clip_grad_norm_`` followed by the step.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch

from gradwell.optim import create

Step = Callable[[], object]

# name -> (gradwell optimizer name and options, torch optimizer class and options); the same
# hyperparameters where both have them, so that both do the same work
PAIRS = {
    "SGD momentum": (("momentum", {}), (torch.optim.SGD, {"lr": 0.01, "momentum": 0.9})),
    "SGD nesterov": (("nesterov", {}), (torch.optim.SGD, {"lr": 0.01, "momentum": 0.9, "nesterov": True})),
    "AdaGrad": (("adagrad", {}), (torch.optim.Adagrad, {"lr": 0.001})),
    "RMSProp": (("rmsprop", {}), (torch.optim.RMSprop, {"lr": 0.001, "alpha": 0.9})),
    "Adam": (("adam", {}), (torch.optim.Adam, {"lr": 0.001})),
    "AdaMax": (("adamax", {}), (torch.optim.Adamax, {"lr": 0.001})),
    "Nadam": (("nadam", {}), (torch.optim.NAdam, {"lr": 0.001})),
    "AdamW": (("adamw", {}), (torch.optim.AdamW, {"lr": 0.001, "weight_decay": 0.004})),
    "Adam + global clip": (("adam", {"global_clipnorm": 1.0}), (torch.optim.Adam, {"lr": 0.001})),
}


def parameters(depth: int, width: int, device: str) -> list[torch.Tensor]:
    """The weights and biases of `depth` Linear(width, width) layers, each with a random gradient."""
    generator = torch.Generator().manual_seed(0)
    params = []
    for _ in range(depth):
        for shape in ((width, width), (width,)):
            p = torch.randn(shape, generator=generator).to(device)
            p.grad = torch.randn(shape, generator=generator).to(device)
            params.append(p)
    return params


def copies(params: list[torch.Tensor]) -> list[torch.Tensor]:
    result = []
    for p in params:
        q = p.clone()
        q.grad = p.grad.clone()
        result.append(q)
    return result


def steps(name: str, params: list[torch.Tensor]) -> dict[str, Step]:
    """One step function per contender, each on its own copy of the parameters."""
    (ours, options), (torch_class, torch_options) = PAIRS[name]
    contenders = {"gradwell": create(ours, copies(params), **options).step}
    for label, foreach in (("torch foreach", True), ("torch for-loop", False)):
        optimizer = torch_class(copies(params), **torch_options, foreach=foreach)
        contenders[label] = clipped(optimizer, foreach) if "global_clipnorm" in options else optimizer.step
    return contenders


def clipped(optimizer: torch.optim.Optimizer, foreach: bool) -> Step:
    params = optimizer.param_groups[0]["params"]

    def step() -> None:
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=foreach)
        optimizer.step()

    return step


def time_steps(
    contenders: dict[str, Step], samples: int, calls: int, sync: Callable[[], None]
) -> dict[str, float]:
    """Median seconds per step of each contender, samples interleaved in alternating order."""
    times: dict[str, list[float]] = {label: [] for label in contenders}
    for step in contenders.values():
        for _ in range(3):
            step()
    sync()
    order = list(contenders.items())
    for sample in range(samples):
        for label, step in order if sample % 2 else reversed(order):
            start = time.perf_counter()
            for _ in range(calls):
                step()
            sync()
            times[label].append((time.perf_counter() - start) / calls)
    return {label: statistics.median(values) for label, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=100)
    parser.add_argument("--width", type=int, default=100)
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--calls", type=int, default=5, help="steps per timed sample")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    params = parameters(args.depth, args.width, args.device)

    print(
        f"{sum(p.numel() for p in params):,} float32 parameters in {len(params)} tensors, {args.device}, "
        f"{args.threads} thread(s), torch {torch.__version__}, Python {platform.python_version()}, "
        f"median of {args.samples} x {args.calls} steps"
    )
    columns = ("gradwell", "torch foreach", "torch for-loop")
    print(
        f"{'optimizer':<20}{'gradwell ms':>12}{'foreach ms':>12}{'ratio':>7}{'for-loop ms':>13}{'ratio':>7}"
    )
    for name in PAIRS:
        medians = time_steps(steps(name, params), args.samples, args.calls, sync)
        ours, foreach, loop = (medians[label] * 1e3 for label in columns)
        print(
            f"{name:<20}{ours:>12.3f}{foreach:>12.3f}{ours / foreach:>7.2f}{loop:>13.3f}{ours / loop:>7.2f}"
        )


if __name__ == "__main__":
    main()
