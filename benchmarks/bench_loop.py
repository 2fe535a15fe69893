"""Training-loop speed of gradwell against its peers, in one process, on the networks the chapter trains.

Networks (``--network``):

- ``selu100`` (default): 784 inputs, 100 hidden layers of 100 SELU units (LeCun normal), 10
  outputs, SGD with momentum 0.9, batch 32;
- ``default``: what ``gradwell train`` trains by default: 40 inputs (MNIST-1D's), 6 x 256 Swish
  with batch normalization before each activation (no bias before it), Nadam at 0.002, batch 64;
- ``relu20``: 784 inputs, 20 x 100 ReLU with batch normalization before each activation and
  dropout 0.2 after it, SGD with momentum 0.9, batch 32.

Every loop trains the same architecture on the same random data. The plain PyTorch loops and
Lightning train the very modules gradwell builds (laid out flat in one nn.Sequential) with
torch.optim's optimizer (SGD, NAdam); Keras 3 builds the same layers on its torch backend. Each
loop runs rounds of `--steps` optimizer steps (one ``fit`` call, one epoch, per round), in
rotating order so that drift in the machine's load hits all of them alike. It reports the median
steps/s over rounds, the ratio of gradwell's median to each, and the ratio within each round: its
geometric mean over rounds with a 95% t interval, which drift between rounds does not move.

    python benchmarks/bench_loop.py                                 # CPU, the 100-layer SELU net
    python benchmarks/bench_loop.py --network default --steps 100   # the default job's network
    python benchmarks/bench_loop.py --device cuda --batch 1024
    python benchmarks/bench_loop.py --network default --per-call 100 1000  # fit's fixed cost per call

Peers: Keras 3 `fit` on its torch backend, PyTorch Lightning (when installed), a plain PyTorch
loop with a DataLoader, a plain loop with the data on the device; on CUDA also torch.compile
(reduce-overhead) and a hand-written whole-step CUDA graph.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "torch")

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


@dataclass(frozen=True)
class Network:
    """One benchmarked network: gradwell's builder options and optimizer, and the peers' equivalents."""

    inputs: int
    classes: int
    batch: int
    model: dict[str, Any]  # gradwell.models.mlp options
    optimizer: tuple[str, dict[str, Any]]  # gradwell.optim.create name and options
    torch_optimizer: Callable[..., torch.optim.Optimizer]
    keras: Callable[[], tuple[list, Any]] | None = None  # (layers, optimizer), built lazily


def keras_selu100() -> tuple[list, Any]:
    import keras

    dense = [
        keras.layers.Dense(100, activation="selu", kernel_initializer="lecun_normal") for _ in range(100)
    ]
    return dense, keras.optimizers.SGD(0.001, momentum=0.9)


def keras_default() -> tuple[list, Any]:
    import keras

    layers = []
    for _ in range(6):  # BN before the activation, the layer before it without a bias
        dense = keras.layers.Dense(256, use_bias=False, kernel_initializer="he_normal")
        norm = keras.layers.BatchNormalization(momentum=0.99, epsilon=1e-5)
        layers += [dense, norm, keras.layers.Activation("swish")]
    return layers, keras.optimizers.Nadam(0.002)


NETWORKS = {
    "selu100": Network(
        784, 10, 32, {"depth": 100, "width": 100, "activation": "selu"}, ("momentum", {"lr": 0.001}),
        lambda params: torch.optim.SGD(params, lr=0.001, momentum=0.9), keras_selu100,
    ),
    "default": Network(
        40, 10, 64, {"depth": 6, "width": 256, "activation": "swish", "batchnorm": "before"},
        ("nadam", {"lr": 0.002}), lambda params: torch.optim.NAdam(params, lr=0.002), keras_default,
    ),
    "relu20": Network(
        784, 10, 32, {"depth": 20, "width": 100, "activation": "relu", "batchnorm": "before", "dropout": 0.2},
        ("momentum", {"lr": 0.01}), lambda params: torch.optim.SGD(params, lr=0.01, momentum=0.9),
    ),
}  # fmt: skip


def gradwell_model(network: Network, device: torch.device) -> nn.Sequential:
    from gradwell import models

    generator = torch.Generator().manual_seed(0)
    return models.mlp(network.inputs, network.classes, **network.model, generator=generator).to(device)


def flat_model(network: Network, device: torch.device) -> nn.Sequential:
    """gradwell's modules for the network, laid out flat: what a plain PyTorch loop would hold."""
    from gradwell.train.fused import leaves

    return nn.Sequential(*(module for _, module in leaves(gradwell_model(network, device))))


def plain_loop(network: Network, x, y, batch, device, loader: bool) -> Callable[[int], None]:
    model = flat_model(network, device)
    optimizer = network.torch_optimizer(model.parameters())

    def train(steps: int) -> None:
        if loader:
            batches = DataLoader(
                TensorDataset(x[: steps * batch], y[: steps * batch]), batch_size=batch, shuffle=True
            )
        else:
            order = torch.randperm(steps * batch, device=device)
            batches = (
                (x[order[i : i + batch]], y[order[i : i + batch]]) for i in range(0, steps * batch, batch)
            )
        for xb, yb in batches:
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(xb.to(device)), yb.to(device)).backward()
            optimizer.step()

    return train


def gradwell_loop(network: Network, x, y, batch, device, compile: bool = False) -> Callable[[int], None]:
    from gradwell import optim
    from gradwell.data import Dataset, Split
    from gradwell.train import fit

    model = gradwell_model(network, device)
    name, options = network.optimizer
    optimizer = optim.create(name, model.parameters(), **options)
    empty = Split(x[:0], y[:0])

    def train(steps: int) -> None:
        data = Dataset(Split(x[: steps * batch], y[: steps * batch]), empty, empty, network.classes, "random")
        fit(
            model,
            data,
            optimizer=optimizer,
            epochs=1,
            batch_size=batch,
            progress=False,
            device=device,
            compile=compile,
        )

    return train


def keras_loop(network: Network, x, y, batch) -> Callable[[int], None] | None:
    if network.keras is None:
        return None
    import keras

    layers, optimizer = network.keras()
    model = keras.Sequential([keras.Input((network.inputs,)), *layers, keras.layers.Dense(network.classes)])
    model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    xs, ys = x.cpu().numpy(), y.cpu().numpy()

    def train(steps: int) -> None:
        model.fit(xs[: steps * batch], ys[: steps * batch], batch_size=batch, epochs=1, verbose=0)

    return train


def lightning_loop(network: Network, x, y, batch, device) -> Callable[[int], None] | None:
    try:
        import lightning as L
    except ImportError:
        return None

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = flat_model(network, torch.device("cpu"))

        def training_step(self, batch_data, index):
            xb, yb = batch_data
            return nn.functional.cross_entropy(self.model(xb), yb)

        def configure_optimizers(self):
            return network.torch_optimizer(self.parameters())

    module = Module()
    accelerator = "gpu" if device.type == "cuda" else "cpu"

    def train(steps: int) -> None:
        trainer = L.Trainer(
            max_epochs=1,
            accelerator=accelerator,
            devices=1,
            logger=False,
            enable_progress_bar=False,
            enable_checkpointing=False,
            enable_model_summary=False,
        )
        loader = DataLoader(
            TensorDataset(x[: steps * batch].cpu(), y[: steps * batch].cpu()), batch_size=batch, shuffle=True
        )
        trainer.fit(module, loader)

    return train


def cuda_graph_loop(network: Network, x, y, batch, device) -> Callable[[int], None]:
    """The whole step (forward, backward, SGD) captured by hand in one CUDA graph: torch's recipe."""
    model = flat_model(network, device)
    optimizer = network.torch_optimizer(model.parameters())
    static_x, static_y = x[:batch].clone(), y[:batch].clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            optimizer.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(static_x), static_y).backward()
            optimizer.step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    optimizer.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        nn.functional.cross_entropy(model(static_x), static_y).backward()
        optimizer.step()

    def train(steps: int) -> None:
        order = torch.randperm(steps * batch, device=device)
        for i in range(0, steps * batch, batch):
            static_x.copy_(x[order[i : i + batch]])
            static_y.copy_(y[order[i : i + batch]])
            graph.replay()

    return train


def compiled_loop(network: Network, x, y, batch, device) -> Callable[[int], None]:
    model = flat_model(network, device)
    optimizer = network.torch_optimizer(model.parameters())
    forward = torch.compile(model, mode="reduce-overhead")

    def train(steps: int) -> None:
        order = torch.randperm(steps * batch, device=device)
        for i in range(0, steps * batch, batch):
            optimizer.zero_grad()
            nn.functional.cross_entropy(forward(x[order[i : i + batch]]), y[order[i : i + batch]]).backward()
            optimizer.step()

    return train


def measure(loops: dict[str, Callable[[int], None]], steps: int, rounds: int, device: torch.device) -> dict:
    rates: dict[str, list[float]] = {name: [] for name in loops}
    for train in loops.values():  # warm-up: first calls, compilation, graph capture
        train(max(steps // 4, 5))
    for r in range(rounds):
        names = list(loops)
        for name in names[r % len(names) :] + names[: r % len(names)]:
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            loops[name](steps)
            if device.type == "cuda":
                torch.cuda.synchronize()
            rates[name].append(steps / (time.perf_counter() - started))
    return rates


def per_call(network: Network, batch: int, sizes: list[int], rounds: int, device: torch.device) -> None:
    """gradwell fit's steps/s on epochs of each size in `sizes`, one model throughout: what its
    fixed cost per call (checks, set-up, the first step) takes from short runs.

    Each round trains the same number of steps at every size (ten 100-step fits against one
    1000-step fit), in rotating order, so that the machine's drift reaches each size alike.
    """
    longest = max(sizes)
    samples = longest * batch
    x = torch.randn(samples, network.inputs, device=device)
    y = torch.randint(0, network.classes, (samples,), device=device)
    train = gradwell_loop(network, x, y, batch, device)
    rates: dict[int, list[float]] = {size: [] for size in sizes}
    train(max(min(sizes) // 4, 5))
    for r in range(rounds):
        for size in sizes[r % len(sizes) :] + sizes[: r % len(sizes)]:
            calls = max(longest // size, 1)
            started = time.perf_counter()
            for _ in range(calls):
                train(size)
            rates[size].append(calls * size / (time.perf_counter() - started))
    header = f"{'steps per fit':>14s} {'steps/s':>9s} {'/ longest':>10s}"
    print(f"{header}   per round: geomean (95% CI) [min, max]")
    for size in sizes:
        rate = statistics.median(rates[size])
        ratio = rate / statistics.median(rates[longest])
        print(f"{size:14d} {rate:9.1f} {ratio:10.3f}   {within_rounds(rates[size], rates[longest])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", choices=list(NETWORKS), default="selu100")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, help="batch size (default: the network's)")
    parser.add_argument("--steps", type=int, default=150, help="optimizer steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip", nargs="*", default=[], help="loops to leave out, e.g. keras lightning")
    parser.add_argument(
        "--per-call", nargs="+", type=int, metavar="STEPS",
        help="instead: gradwell fit alone on epochs of these sizes (e.g. 100 1000), steps/s of each",
    )  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device, network = torch.device(args.device), NETWORKS[args.network]
    batch = args.batch or network.batch
    if args.per_call:
        print(f"{args.network}, batch {batch}, {args.rounds} rounds, torch {torch.__version__}")
        per_call(network, batch, sorted(args.per_call), args.rounds, device)
        return
    samples = args.steps * batch
    x = torch.randn(samples, network.inputs, device=device)
    y = torch.randint(0, network.classes, (samples,), device=device)
    loops: dict[str, Callable[[int], None] | None] = {
        "gradwell fit": gradwell_loop(network, x, y, batch, device),
        "plain PyTorch loop, DataLoader": plain_loop(network, x, y, batch, device, loader=True),
        "plain PyTorch loop, data on device": plain_loop(network, x, y, batch, device, loader=False),
        "PyTorch Lightning": None
        if "lightning" in args.skip
        else lightning_loop(network, x, y, batch, device),
        "Keras 3 fit, torch backend": None if "keras" in args.skip else keras_loop(network, x, y, batch),
    }
    if device.type == "cuda":
        loops["gradwell fit, compiled"] = gradwell_loop(network, x, y, batch, device, compile=True)
        loops["torch.compile, reduce-overhead"] = compiled_loop(network, x, y, batch, device)
        loops["whole step in one CUDA graph"] = cuda_graph_loop(network, x, y, batch, device)
    loops = {name: loop for name, loop in loops.items() if loop is not None}
    report(measure(loops, args.steps, args.rounds, device), args, batch, device)


def within_rounds(ours: list[float], theirs: list[float]) -> str:
    """The ratio within each round (gradwell's and the loop's rates one cycle of the rotation apart
    at most): its geometric mean with a 95% t interval over rounds, and its range. This is the part
    of the comparison that drift in the machine's speed between rounds does not move."""
    from gradwell.experiment.stats import summarize

    paired = [a / b for a, b in zip(ours, theirs, strict=True)]
    summary = summarize([math.log(r) for r in paired])
    low, high = (math.exp(v) for v in summary.ci) if summary.ci else (math.nan, math.nan)
    return f"{math.exp(summary.mean):.2f}x ({low:.2f}-{high:.2f}) [{min(paired):.2f}, {max(paired):.2f}]"


def report(rates: dict[str, list[float]], args: argparse.Namespace, batch: int, device: torch.device) -> None:
    """Median steps/s per loop, the ratio of the medians, and the ratio within rounds (`within_rounds`)."""
    ours = rates["gradwell fit"]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} threads"
    rounds = f"{args.rounds} rounds of {args.steps} steps"
    print(f"{args.network} on {name}, batch {batch}, {rounds}, torch {torch.__version__}")
    print(f"{'loop':40s} {'steps/s':>9s} {'gradwell / loop':>16s}   per round: geomean (95% CI) [min, max]")
    mine = statistics.median(ours)
    for loop, values in sorted(rates.items(), key=lambda item: -statistics.median(item[1])):
        rate = statistics.median(values)
        print(f"{loop:40s} {rate:9.1f} {mine / rate:15.2f}x   {within_rounds(ours, values)}")


if __name__ == "__main__":
    main()
