"""The fused MLP step against autograd: same gradients, same training, same checkpoints."""

import pytest
import torch
from torch import nn

from gradwell import models, optim
from gradwell.activations import ELU, GELU, LeakyReLU, PReLU, RReLU, Swish
from gradwell.data import Dataset, Split
from gradwell.train import fit
from gradwell.train.fused import FusedStep, kernel, plan, why_not_fused
from gradwell.train.step import Metrics

ACTIVATIONS = [
    "relu",
    "leaky_relu",
    "elu",
    "selu",
    "sigmoid",
    "tanh",
    "gelu",
    "gelu_tanh",
    "swish",
    "mish",
    "linear",
]


def mlp(activation="selu", **options):
    model = models.mlp(
        (2, 4),
        3,
        hidden=[16, 12, 8],
        activation=activation,
        generator=torch.Generator().manual_seed(0),
        **options,
    )
    return model.double()


def blobs64(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(3, 2, 4, generator=g, dtype=torch.float64) * 2
    y = torch.randint(0, 3, (n,), generator=g)
    x = centers[y] + torch.randn(n, 2, 4, generator=g, dtype=torch.float64)
    return Dataset(Split(x, y), Split(x[:24], y[:24]), Split(x[:0], y[:0]), 3, "blobs64")


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_fused_gradients_equal_autograd(activation):
    reference = mlp(activation)
    model = mlp(activation)
    data = blobs64()
    x, y = data.train.x[:32], data.train.y[:32]
    nn.functional.cross_entropy(reference(x), y).backward()
    step = FusedStep(
        model,
        nn.functional.cross_entropy,
        optim.create("sgd", model.parameters(), lr=0.0),
        Metrics(torch.device("cpu")),
    )
    step(x, y)
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        assert torch.allclose(
            p.grad if p.grad is not None else step.grads[id(p)], q.grad, rtol=1e-12, atol=1e-14
        ), name


def train(
    fast,
    name="nadam",
    schedule=None,
    epochs=3,
    callbacks=(),
    checkpoint_dir=None,
    resume=False,
    max_norm=None,
    **options,
):
    model = mlp("elu")
    if name == "torch-sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    else:
        optimizer = optim.create(name, model.parameters(), **options)
    scheduler = optim.schedule(schedule[0], optimizer, **schedule[1]) if schedule else None
    history = fit(
        model,
        blobs64(),
        optimizer=optimizer,
        scheduler=scheduler,
        epochs=epochs,
        batch_size=16,
        fast=fast,
        callbacks=callbacks,
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        max_norm=max_norm,
        progress=False,
    )
    return model, optimizer, history


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("sgd", {"lr": 0.05}),
        ("momentum", {"lr": 0.02, "clipvalue": 0.5}),
        ("nesterov", {"global_clipnorm": 1.0}),
        ("adagrad", {"lr": 0.05}),
        ("rmsprop", {}),
        ("adam", {}),
        ("nadam", {"lr": 0.005}),
        ("adamw", {}),
        ("torch-sgd", {}),
    ],
)
def test_fit_on_the_fused_path_equals_the_eager_path(name, options):
    eager_model, eager_optimizer, eager = train(False, name, **dict(options))
    model, optimizer, fused = train(True, name, **dict(options))
    assert fused.path.startswith("training path: fused-mlp") and eager.path.startswith("training path: eager")
    for a, b in zip(eager.epochs, fused.epochs, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-10) and a["val_loss"] == pytest.approx(
            b["val_loss"]
        )
    for (key, value), other in zip(
        eager_model.state_dict().items(), model.state_dict().values(), strict=True
    ):
        assert torch.allclose(value, other, rtol=1e-10, atol=1e-12), key
    # afterwards the optimizer holds the model's own parameters with per-parameter state again
    assert optimizer.param_groups[0]["params"] == list(model.parameters())
    for p, q in zip(eager_model.parameters(), model.parameters(), strict=True):
        for key, value in eager_optimizer.state[p].items():
            assert torch.allclose(torch.as_tensor(optimizer.state[q][key]), torch.as_tensor(value)), key


def test_schedules_max_norm_and_sampled_eager_steps_on_the_fused_path():
    from gradwell.diagnose import Monitor

    monitors = [Monitor(every=5), Monitor(every=5)]
    runs = [
        train(
            fast, "momentum", schedule=("exponential", {"s": 7}), max_norm=0.8, lr=0.03, callbacks=[monitor]
        )
        for fast, monitor in zip((False, True), monitors, strict=True)
    ]
    (eager_model, _, eager), (model, _, fused) = runs
    assert fused.path.startswith("training path: fused-mlp")
    assert fused.metric("lr") == eager.metric("lr")
    for value, other in zip(eager_model.state_dict().values(), model.state_dict().values(), strict=True):
        assert torch.allclose(value, other, rtol=1e-10, atol=1e-12)
    assert model.hidden1.linear.weight.norm(dim=1).max() <= 0.8 + 1e-9
    sampled = [monitor.history().steps for monitor in monitors]
    assert sampled[0] == sampled[1] and len(sampled[0]) > 2


def test_resume_on_the_fused_path_is_exact_and_checkpoints_match_the_eager_format(tmp_path):
    schedule = ("exponential", {"s": 7})
    whole, _, _ = train(True, "adam", schedule=schedule, epochs=4, checkpoint_dir=tmp_path / "whole")
    train(True, "adam", schedule=schedule, epochs=2, checkpoint_dir=tmp_path / "parts")
    resumed, _, history = train(
        True, "adam", schedule=schedule, epochs=4, checkpoint_dir=tmp_path / "parts", resume=True
    )
    assert all(torch.equal(whole.state_dict()[k], resumed.state_dict()[k]) for k in whole.state_dict())
    eager_resumed, _, _ = train(
        False, "adam", schedule=schedule, epochs=4, checkpoint_dir=tmp_path / "parts", resume=True
    )  # the eager path continues from the fused path's checkpoint
    for key, value in whole.state_dict().items():
        assert torch.allclose(eager_resumed.state_dict()[key], value, rtol=1e-10), key
    assert history.path.startswith("training path: fused-mlp")


def test_what_the_fused_step_does_not_take_is_named():
    model = mlp()
    optimizer = optim.create("adam", model.parameters())
    assert why_not_fused(model, optimizer) is None
    assert "BatchNorm" in plan(mlp("relu", batchnorm="before"))
    assert "Dropout" in plan(mlp(dropout=0.2, activation="relu"))
    assert "AlphaDropout" in plan(mlp(dropout=0.2))
    assert "PReLU" in plan(mlp("prelu"))
    assert why_not_fused(model, optim.create("adam", model.parameters(), clipnorm=1.0)) == (
        "clipnorm clips each tensor on its own"
    )
    assert why_not_fused(model, optimizer, l2=True, bf16=True) == "l2, bf16 not supported by the fused step"
    groups = [
        {"params": list(model.output.parameters()), "lr": 0.1},
        {"params": [p for n, p in model.named_parameters() if not n.startswith("output")]},
    ]
    assert "several parameter groups" in why_not_fused(model, optim.create("adam", groups))
    model.hidden1.linear.weight.requires_grad_(False)
    assert "frozen" in why_not_fused(model, optimizer)


class ReLUSubclass(nn.ReLU):
    """A subclass may compute another function: not fused, as before the activation records."""


class IdentitySubclass(nn.Identity):
    pass


@pytest.mark.parametrize(
    ("module", "fused"),
    [
        (nn.ReLU(), True), (ReLUSubclass(), False), (LeakyReLU(0.1), True), (nn.LeakyReLU(0.3), True),
        (RReLU(), False), (PReLU(), False), (ELU(0.5), True), (nn.ELU(), True), (nn.SELU(), True),
        (nn.CELU(), False), (nn.Sigmoid(), True), (nn.Tanh(), True), (GELU(), True),
        (GELU("tanh"), True), (GELU("sigmoid"), False), (nn.GELU(approximate="tanh"), True),
        (Swish(), True), (Swish(1.5), False), (Swish(learnable=True), False), (nn.SiLU(), True),
        (nn.Mish(), True), (nn.Softplus(), False), (nn.Softmax(-1), False), (nn.Identity(), True),
        (IdentitySubclass(), True), (nn.Linear(2, 2), False),
    ],
    ids=repr,
)  # fmt: skip
def test_kernel_fuses_the_modules_it_always_did(module, fused, generator):
    found = kernel(module)
    assert (found is not None) == fused
    if found is None:
        return
    z = torch.randn(6, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(6, 5, generator=generator, dtype=torch.float64)
    expected = module(z)
    expected.backward(grad)
    a = found.forward(z.detach().clone())
    assert torch.allclose(a, expected, rtol=1e-12, atol=1e-14)
    dz = found.backward(grad, z.detach() if found.needs_z else None, a)
    assert torch.allclose(dz, z.grad, rtol=1e-12, atol=1e-14)


class LARS(torch.optim.Optimizer):
    """SGD scaled per tensor by ||w|| / ||g|| (You et al., 2017): a per-tensor update."""

    def __init__(self, params, lr=0.1):
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    trust = p.norm() / p.grad.norm().clamp(min=1e-12)
                    p.sub_(group["lr"] * trust * p.grad)


def test_a_per_tensor_optimizer_trains_eagerly_and_says_why(caplog):
    reason = (
        "LARS does not declare an elementwise update (gradwell.optim.is_elementwise): "
        "the fused step would apply it to one flat tensor"
    )
    model = mlp("relu")
    assert why_not_fused(model, LARS(model.parameters())) == reason
    with caplog.at_level("INFO", logger="gradwell.train"):
        history = fit(
            model, blobs64(), optimizer=LARS(model.parameters(), lr=0.01), epochs=1, batch_size=16,
            device="cpu", progress=False,
        )  # fmt: skip
    assert history.path.startswith("training path: eager") and reason in history.path
    assert reason in caplog.text
