"""Training-loop speed on the chapter's network, gradwell against its peers, in one process.

The network: 784 inputs, 100 hidden layers of 100 SELU units (LeCun normal), 10 outputs, SGD with
momentum 0.9. Every loop trains the same architecture on the same random data; each runs rounds
of `--steps` optimizer steps, in rotating order so that drift in the machine's load hits all of
them alike, and the median steps/s over rounds is reported with the ratio of gradwell to each.

    python benchmarks/bench_loop.py                       # CPU, batch 32
    python benchmarks/bench_loop.py --device cuda --batch 1024

Peers: Keras 3 `fit` on its torch backend, PyTorch Lightning (when installed), a plain PyTorch
loop with a DataLoader, a plain loop with the data on the device; on CUDA also torch.compile
(reduce-overhead) and a hand-written whole-step CUDA graph.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

os.environ.setdefault("KERAS_BACKEND", "torch")

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

DEPTH, WIDTH, INPUTS, CLASSES = 100, 100, 784, 10
LR, MOMENTUM = 0.001, 0.9


def torch_model(device: torch.device) -> nn.Sequential:
    layers: list[nn.Module] = []
    features = INPUTS
    for _ in range(DEPTH):
        linear = nn.Linear(features, WIDTH)
        nn.init.normal_(linear.weight, std=features**-0.5)
        nn.init.zeros_(linear.bias)
        layers += [linear, nn.SELU()]
        features = WIDTH
    layers.append(nn.Linear(features, CLASSES))
    return nn.Sequential(*layers).to(device)


def plain_loop(x, y, batch, device, loader: bool) -> Callable[[int], None]:
    model = torch_model(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)

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


def gradwell_loop(x, y, batch, device, compile: bool = False) -> Callable[[int], None]:
    from gradwell import models, optim
    from gradwell.data import Dataset, Split
    from gradwell.train import fit

    model = models.mlp(INPUTS, CLASSES, depth=DEPTH, width=WIDTH, activation="selu").to(device)
    optimizer = optim.create("momentum", model.parameters(), lr=LR)
    empty = Split(x[:0], y[:0])

    def train(steps: int) -> None:
        data = Dataset(Split(x[: steps * batch], y[: steps * batch]), empty, empty, CLASSES, "random")
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


def keras_loop(x, y, batch) -> Callable[[int], None]:
    import keras

    layers = [keras.Input((INPUTS,))]
    layers += [
        keras.layers.Dense(WIDTH, activation="selu", kernel_initializer="lecun_normal") for _ in range(DEPTH)
    ]
    model = keras.Sequential([*layers, keras.layers.Dense(CLASSES)])
    model.compile(
        optimizer=keras.optimizers.SGD(LR, momentum=MOMENTUM),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    xs, ys = x.cpu().numpy(), y.cpu().numpy()

    def train(steps: int) -> None:
        model.fit(xs[: steps * batch], ys[: steps * batch], batch_size=batch, epochs=1, verbose=0)

    return train


def lightning_loop(x, y, batch, device) -> Callable[[int], None] | None:
    try:
        import lightning as L
    except ImportError:
        return None

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = torch_model(torch.device("cpu"))

        def training_step(self, batch_data, index):
            xb, yb = batch_data
            return nn.functional.cross_entropy(self.model(xb), yb)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=LR, momentum=MOMENTUM)

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


def cuda_graph_loop(x, y, batch, device) -> Callable[[int], None]:
    """The whole step (forward, backward, SGD) captured by hand in one CUDA graph: torch's recipe."""
    model = torch_model(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
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


def compiled_loop(x, y, batch, device) -> Callable[[int], None]:
    model = torch_model(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
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
    return {name: statistics.median(values) for name, values in rates.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=150, help="optimizer steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip", nargs="*", default=[], help="loops to leave out, e.g. keras lightning")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    samples = args.steps * args.batch
    x = torch.randn(samples, INPUTS, device=device)
    y = torch.randint(0, CLASSES, (samples,), device=device)
    loops: dict[str, Callable[[int], None] | None] = {
        "gradwell fit": gradwell_loop(x, y, args.batch, device),
        "plain PyTorch loop, DataLoader": plain_loop(x, y, args.batch, device, loader=True),
        "plain PyTorch loop, data on device": plain_loop(x, y, args.batch, device, loader=False),
        "PyTorch Lightning": None if "lightning" in args.skip else lightning_loop(x, y, args.batch, device),
        "Keras 3 fit, torch backend": None if "keras" in args.skip else keras_loop(x, y, args.batch),
    }
    if device.type == "cuda":
        loops["gradwell fit, compiled"] = gradwell_loop(x, y, args.batch, device, compile=True)
        loops["torch.compile, reduce-overhead"] = compiled_loop(x, y, args.batch, device)
        loops["whole step in one CUDA graph"] = cuda_graph_loop(x, y, args.batch, device)
    loops = {name: loop for name, loop in loops.items() if loop is not None}
    rates = measure(loops, args.steps, args.rounds, device)
    ours = rates["gradwell fit"]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} threads"
    print(
        f"{name}, batch {args.batch}, {args.rounds} rounds of {args.steps} steps, torch {torch.__version__}"
    )
    print(f"{'loop':40s} {'steps/s':>9s} {'gradwell / loop':>16s}")
    for loop, rate in sorted(rates.items(), key=lambda item: -item[1]):
        print(f"{loop:40s} {rate:9.1f} {ours / rate:15.2f}x")


if __name__ == "__main__":
    main()
