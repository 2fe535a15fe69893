"""The fast path: which path runs and why, and that the graph-ready step trains like the eager one.

CUDA graph capture itself needs a GPU: `test_cuda_graph_path_matches_eager` runs where one is
present. Everything the captured step depends on (capturable optimizers, a device-tensor learning
rate updated in place by schedules, on-device metrics) runs here on the CPU.
"""

import logging

import pytest
import torch
from test_train import blobs

from gradwell import models, optim
from gradwell.train import fit
from gradwell.train.cuda_graph import GraphedStep, prepare_for_capture, restore_after_capture
from gradwell.train.options import TrainOptions
from gradwell.train.paths import choose
from gradwell.train.step import Metrics, StepContext, make_step

CUDA = torch.device("cuda")


def model_and_optimizer(name="nadam", **options):
    model = models.mlp(8, 3, hidden=[16, 16], batchnorm="before", generator=torch.Generator().manual_seed(0))
    return model, optim.create(name, model.parameters(), **options)


def choose_path(device, optimizer, scheduler, fast=True):
    """The path `fit` would choose for the test model on `device` (no CUDA call is made)."""
    options = TrainOptions(epochs=1, fast=fast)
    sample = (torch.zeros(32, 8), torch.zeros(32, dtype=torch.long))
    context = StepContext(models.mlp(8, 3, hidden=[4], batchnorm="before"), optimizer, scheduler,
                          Metrics(torch.device("cpu")), options, device, sample)  # fmt: skip
    return choose(context)[0]


def test_path_choice_says_why():
    model, optimizer = model_and_optimizer()
    assert choose_path(torch.device("cpu"), optimizer, None).reason.startswith(
        "CUDA graphs need a CUDA device"
    )
    assert choose_path(CUDA, optimizer, None, fast=False).name == "eager"
    chosen = choose_path(CUDA, optimizer, optim.schedule("exponential", optimizer, s=10))
    assert chosen.name == "cuda-graph" and "last partial batch runs eagerly" in str(chosen)
    torch_sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    assert choose_path(CUDA, torch_sgd, None).reason == "SGD has no capturable mode"
    assert choose_path(CUDA, torch.optim.Adam(model.parameters(), capturable=True), None).name == "cuda-graph"
    cycling = optim.schedule("onecycle", optimizer, max_lr=0.1, total_steps=10)
    assert "changes momentum" in choose_path(CUDA, optimizer, cycling).reason
    steady = optim.schedule("onecycle", optimizer, max_lr=0.1, total_steps=10, cycle_momentum=False)
    assert choose_path(CUDA, optimizer, steady).name == "cuda-graph"


def test_fit_logs_and_records_the_path(caplog):
    model, optimizer = model_and_optimizer()
    with caplog.at_level(logging.INFO, logger="gradwell.train.loop"):
        history = fit(model, blobs(n=64), optimizer=optimizer, epochs=1, progress=False)
    assert "training path: fused-mlp (Linear, BatchNorm, dropout and activation layers" in caplog.text
    assert history.path.startswith("training path: fused-mlp")
    softplus = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Softplus(), torch.nn.Linear(16, 3))
    optimizer = optim.create("nadam", softplus.parameters())
    history = fit(softplus, blobs(n=64), optimizer=optimizer, epochs=1, progress=False)
    assert history.path.startswith("training path: eager (CUDA graphs need a CUDA device")
    assert "the fused MLP step does not apply: 1 (Softplus) is not a Linear" in history.path


def train_steps(prepared, name, clip, schedule, steps=12):
    """Losses and final weights of `steps` training steps, optionally in capturable form."""
    model, optimizer = model_and_optimizer(name, **clip)
    scheduler = optim.schedule(*schedule[:1], optimizer, **schedule[1]) if schedule else None
    if prepared:
        prepare_for_capture(optimizer, torch.device("cpu"))
        assert isinstance(optimizer.param_groups[0]["lr"], torch.Tensor)
    metrics = Metrics(torch.device("cpu"))
    step = make_step(model, torch.nn.functional.cross_entropy, optimizer, metrics, max_norm=2.0, l2=1e-3)
    data = blobs(n=steps * 16)
    losses = []
    with torch.random.fork_rng():
        torch.manual_seed(0)
        for i in range(steps):
            losses.append(
                step(data.train.x[i * 16 : (i + 1) * 16], data.train.y[i * 16 : (i + 1) * 16]).clone()
            )
            if scheduler is not None:
                scheduler.step()
    return torch.stack(losses), model.state_dict(), metrics, optimizer


@pytest.mark.parametrize("name", ["momentum", "nesterov", "rmsprop", "adam", "nadam", "adamw", "adagrad"])
@pytest.mark.parametrize(
    ("clip", "schedule"),
    [
        ({}, None),
        ({"global_clipnorm": 0.5}, ("exponential", {"s": 5})),
        ({"clipnorm": 0.1}, ("power", {"s": 3})),
        ({"clipvalue": 0.01}, ("piecewise", {"boundaries": [4, 8], "values": [0.01, 0.005, 0.001]})),
    ],
)
def test_the_capturable_step_trains_like_the_eager_step(name, clip, schedule):
    eager_losses, eager_weights, eager_metrics, _ = train_steps(False, name, clip, schedule)
    losses, weights, metrics, optimizer = train_steps(True, name, clip, schedule)
    assert torch.allclose(losses, eager_losses, rtol=1e-5, atol=1e-7)
    for key, value in eager_weights.items():
        assert torch.allclose(weights[key].float(), value.float(), rtol=1e-5, atol=1e-6), key
    assert float(metrics.loss_sum) == pytest.approx(float(eager_metrics.loss_sum), rel=1e-5)
    restore_after_capture(optimizer, [False])
    assert isinstance(optimizer.param_groups[0]["lr"], float) and not optimizer.param_groups[0]["capturable"]


def test_metrics_find_the_first_non_finite_step_without_reading_the_device():
    metrics = Metrics(torch.device("cpu"))
    metrics.start_epoch(step=100)
    for loss in (1.0, 2.0, float("nan"), 3.0, float("inf")):
        metrics.add(torch.tensor(loss), torch.tensor(1), count=2)
    logs, first = metrics.read()
    assert first == 102 and logs["accuracy"] == 0.5 and int(metrics.step) == 105


def test_a_graphed_step_runs_other_batch_sizes_and_sampled_steps_eagerly():
    calls = []

    def step(x, y):
        calls.append(len(x))
        return x.sum()

    graphed = GraphedStep(step, torch.zeros(4, 2), torch.zeros(4))
    graphed(torch.ones(3, 2), torch.zeros(3))
    graphed(torch.ones(4, 2), torch.zeros(4), eager=True)
    assert calls == [3, 4] and graphed.graph is None and graphed.calls == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graph capture needs a CUDA device")
@pytest.mark.parametrize("name", ["momentum", "adam", "nadam"])
def test_cuda_graph_path_matches_eager(name):
    results = []
    for fast in (False, True):
        model, optimizer = model_and_optimizer(name, global_clipnorm=1.0)
        model.cuda()
        scheduler = optim.schedule("exponential", optimizer, s=20)
        history = fit(
            model,
            blobs(n=200),
            optimizer=optimizer,
            scheduler=scheduler,
            epochs=3,
            batch_size=32,
            device="cuda",
            fast=fast,
            progress=False,
        )
        results.append((history, model.state_dict()))
    (eager, eager_weights), (graph, graph_weights) = results
    assert graph.path.startswith("training path: cuda-graph")
    for a, b in zip(eager.metric("loss"), graph.metric("loss"), strict=True):
        assert a == pytest.approx(b, rel=1e-4)
    for key, value in eager_weights.items():
        assert torch.allclose(graph_weights[key].float(), value.float(), rtol=1e-4, atol=1e-5), key


def test_a_path_is_one_entry_in_the_table_that_fit_asks():
    from gradwell.train.step import EagerPath, EagerStep

    class EvenBatches:
        name, description, device_types = "even-batches", "a toy path for even batch sizes", None

        def refusal(self, context):
            return None if context.options.batch_size % 2 == 0 else "the batch size is odd"

        def build(self, context):
            return EagerStep(context.eager_step())

    model, optimizer = model_and_optimizer()
    cpu = torch.device("cpu")
    for batch, expected in ((32, "training path: even-batches (a toy path for even batch sizes)"),
                            (31, "training path: eager (the batch size is odd)")):  # fmt: skip
        sample = (torch.zeros(batch, 8), torch.zeros(batch, dtype=torch.long))
        options = TrainOptions(epochs=1, batch_size=batch)
        context = StepContext(model, optimizer, None, Metrics(cpu), options, cpu, sample)
        decision, path = choose(context, paths=(EvenBatches(), EagerPath()))
        assert str(decision) == expected
    step = path.build(context)
    assert step(*sample).dim() == 0
    step.close()
