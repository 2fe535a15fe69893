"""The fused MLP step against autograd: same gradients, same training, same checkpoints."""

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from gradwell import models, optim
from gradwell.activations import ELU, GELU, LeakyReLU, PReLU, RReLU, Swish
from gradwell.data import Dataset, Split
from gradwell.norm import BatchNorm
from gradwell.train import fit
from gradwell.train.fused import FusedStep, Plan, kernel, plan, why_not_fused
from gradwell.train.fused_ops import onednn_linear
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

ONEDNN = onednn_linear()  # the kernel itself: the tests count its calls through a wrapper


def mlp(activation="selu", **options):
    model = models.mlp(
        (2, 4),
        3,
        hidden=[12, 12, 12],  # two 12 x 12 layers: their weight gradients are one batched product
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
    assert [group.weights.shape for group in step.groups] == [(2, 12, 12)]
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        assert torch.allclose(
            p.grad if p.grad is not None else step.grads[id(p)], q.grad, rtol=1e-12, atol=1e-14
        ), name


@pytest.mark.parametrize("batched_below", [None, 0], ids=["one-bmm", "one-mm-per-layer"])
def test_each_shape_of_layer_gets_its_weight_gradients_from_one_batched_product(batched_below, monkeypatch):
    from gradwell.regularize import l1_l2_penalty
    from gradwell.train import fused_ops

    if batched_below is not None:  # as for large layers, where one product per layer is faster
        monkeypatch.setattr(fused_ops, "BATCHED_BELOW", batched_below)

    def net():  # 6 x 6 layers twice, a lone 6 -> 5, 5 x 5 twice: two groups
        generator = torch.Generator().manual_seed(1)
        return models.mlp(
            (2, 4), 3, hidden=[6, 6, 6, 5, 5, 5], activation="elu", generator=generator
        ).double()

    reference, model = net(), net()
    data = blobs64()
    x, y = data.train.x[:32], data.train.y[:32]
    weights = [m.weight for m in reference.modules() if isinstance(m, nn.Linear)]
    (nn.functional.cross_entropy(reference(x), y) + l1_l2_penalty(weights, 1e-3, 1e-2)).backward()
    sgd = optim.create("sgd", model.parameters(), lr=0.0)
    step = FusedStep(model, nn.functional.cross_entropy, sgd, Metrics(torch.device("cpu")), l1=1e-3, l2=1e-2)
    step(x, y)
    assert [tuple(group.weights.shape) for group in step.groups] == [(2, 6, 6), (2, 5, 5)]
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        assert torch.equal(p, q), name  # the flat buffer's grouped layout holds each parameter as it was
        assert torch.allclose(step.grads[id(p)], q.grad, rtol=1e-12, atol=1e-14), name


@pytest.mark.parametrize(
    ("loss_fn", "target"),
    [
        (nn.functional.cross_entropy, torch.tensor([0, 2, 1, 2, 0, 1])),  # by hand: torch's kernels
        (nn.functional.cross_entropy, torch.full((6, 3), 1 / 3, dtype=torch.float64)),  # soft labels
        (nn.functional.mse_loss, torch.zeros(6, 3, dtype=torch.float64)),
    ],
    ids=["labels", "soft-labels", "mse"],
)
def test_the_loss_and_its_gradient_are_autograds_bit_for_bit(loss_fn, target):
    model = mlp()
    step = FusedStep(model, loss_fn, optim.create("sgd", model.parameters()), Metrics(torch.device("cpu")))
    logits = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        loss, grad = step.loss_and_grad(logits, target)
    leaf = logits.clone().requires_grad_()
    expected = loss_fn(leaf, target)
    expected.backward()
    assert torch.equal(loss, expected.detach()) and torch.equal(grad, leaf.grad)
    assert not loss.requires_grad


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
        ("adam", {"clipnorm": 0.01}),
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


def test_clipnorm_clips_each_parameter_on_the_fused_path_and_is_the_optimizers_again_after():
    _, optimizer, clipped = train(True, "adam", epochs=1, clipnorm=0.01)
    _, _, free = train(True, "adam", epochs=1)
    assert clipped.path.startswith("training path: fused-mlp")
    assert clipped.epochs[0]["loss"] != pytest.approx(free.epochs[0]["loss"], rel=1e-3)  # it clipped
    assert optimizer.clip == ("clipnorm", 0.01)


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


def test_the_user_view_lends_views_of_the_flat_state_and_takes_them_back_without_a_copy():
    model = mlp()
    optimizer = optim.create("nadam", model.parameters())
    step = FusedStep(model, nn.functional.cross_entropy, optimizer, Metrics(torch.device("cpu")))
    data = blobs64()
    step(data.train.x[:16], data.train.y[:16])
    flat = optimizer.state[step.flat]["exp_avg"]
    first = step.params[0]
    with step.user_view():
        lent = optimizer.state[first]
        assert lent["exp_avg"].untyped_storage().data_ptr() == flat.untyped_storage().data_ptr()
        lent["exp_avg"].add_(1.0)  # in place, as an eager step in the view would
        counters = [optimizer.state[p]["step"] for p in step.params]
        assert len({id(c) for c in counters}) == len(counters)  # each parameter counts its own steps
    assert optimizer.state[step.flat]["exp_avg"] is flat and float(flat[0]) == float(
        lent["exp_avg"].flatten()[0]
    )
    with step.user_view():
        optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))  # new tensors: rebuilt from them
    rebuilt = optimizer.state[step.flat]["exp_avg"]
    assert rebuilt is not flat and torch.equal(rebuilt, flat)
    step.close()
    kept = optimizer.state[first]["exp_avg"]
    assert kept.untyped_storage().data_ptr() != rebuilt.untyped_storage().data_ptr()  # copies for good
    assert torch.equal(kept.reshape(-1), rebuilt[: first.numel()])


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
    for options in ({"batchnorm": "before"}, {"batchnorm": "after", "dropout": 0.2}, {"dropout": 0.2}):
        assert isinstance(plan(mlp("relu", **options)), Plan)  # BatchNorm and dropout are fused now
    softplus = nn.Sequential(nn.Linear(4, 3), nn.Softplus())
    assert plan(softplus) == "1 (Softplus) is not a Linear, BatchNorm, Dropout or an elementwise activation"
    frozen = mlp("relu", batchnorm="before")
    frozen.hidden2.norm.frozen = True
    assert (
        plan(frozen)
        == "hidden2.norm (BatchNorm) is frozen (it normalizes with its moving statistics in training)"
    )
    lazy = nn.Sequential(nn.Linear(4, 3), BatchNorm(None), nn.ReLU())
    assert plan(lazy) == "1 (BatchNorm) is lazy and not built yet"
    twice = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Tanh())
    assert plan(twice) == "2 (Tanh) follows another activation, not a Linear, BatchNorm or Dropout"
    assert plan(nn.Sequential(nn.ReLU(), nn.Linear(4, 3))) == (
        "0 (ReLU) follows the input, not a Linear, BatchNorm or Dropout"  # it would work in place on x
    )
    sequence = torch.zeros(8, 5, 4)  # (batch, time, features) with no Flatten: not (batch, features)
    assert why_not_fused(twice[:2], optimizer, sequence) == (
        "its inputs of shape (5, 4) do not reach it as (batch, features)"
    )
    assert why_not_fused(model, optim.create("adam", model.parameters(), clipnorm=1.0)) is None
    assert why_not_fused(model, optimizer, bf16=True) == "bf16 not supported by the fused step"
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
        (RReLU(), True), (PReLU(), True), (PReLU(5, init=-0.3), True), (ELU(0.5), True), (nn.ELU(), True),
        (nn.SELU(), True), (nn.CELU(), False), (nn.Sigmoid(), True), (nn.Tanh(), True), (GELU(), True),
        (GELU("tanh"), True), (GELU("sigmoid"), True), (nn.GELU(approximate="tanh"), True),
        (Swish(), True), (Swish(1.5), True), (Swish(0.8, learnable=True), True),
        (Swish(learnable=True, num_parameters=5), True), (nn.SiLU(), True), (nn.Mish(), True),
        (nn.Softplus(), False), (nn.Softmax(-1), False), (nn.Identity(), True),
        (IdentitySubclass(), True), (nn.Linear(2, 2), False),
    ],
    ids=repr,
)  # fmt: skip
def test_kernel_of_every_activation_equals_autograd(module, fused, generator):
    module.double()
    found = kernel(module)
    assert (found is not None) == fused
    if found is None:
        return
    z = torch.randn(6, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(6, 5, generator=generator, dtype=torch.float64)
    torch.manual_seed(2)  # RReLU draws its slopes: the same ones, from the same generator
    expected = module(z)
    expected.backward(grad)
    torch.manual_seed(2)
    a = found.forward(z.detach().clone())
    assert torch.allclose(a, expected, rtol=1e-12, atol=1e-14)
    dz = found.backward(grad, z.detach() if found.needs_z else None, a)
    assert torch.allclose(dz, z.grad, rtol=1e-12, atol=1e-14)
    learned = [p for p in module.parameters()]
    assert [found.parameter] == learned if learned else found.parameter is None
    if learned:
        assert torch.allclose(
            found.parameter_grad(grad, z.detach(), a), learned[0].grad, rtol=1e-12, atol=1e-14
        )


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


def passes_threads(monkeypatch, serial_below=None):
    """torch's numbers of threads in the activations' forward and backward of a fused fit on 2
    threads, and after it."""
    from gradwell.train import fused_ops

    seen = []
    for name in ("forward", "backward"):
        method = getattr(fused_ops.ActivationLayer, name)

        def spy(self, *args, method=method):
            seen.append(torch.get_num_threads())
            return method(self, *args)

        monkeypatch.setattr(fused_ops.ActivationLayer, name, spy)
    if serial_below is not None:
        monkeypatch.setattr(fused_ops, "SERIAL_BELOW", serial_below)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        model = mlp()
        fit(
            model,
            blobs64(),
            optimizer=optim.create("nadam", model.parameters()),
            epochs=1,
            batch_size=32,
            progress=False,
        )
        return set(seen), torch.get_num_threads()
    finally:
        torch.set_num_threads(threads)


def test_small_networks_run_their_passes_on_one_thread_and_give_the_threads_back(monkeypatch):
    assert passes_threads(monkeypatch) == ({1}, 2)  # products of at most 32 x 12 x 12 multiply-adds
    assert passes_threads(monkeypatch, serial_below=0) == ({2}, 2)


def test_the_number_of_threads_comes_back_after_an_error():
    from gradwell.train.fused_ops import one_thread

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.raises(RuntimeError), one_thread():
            assert torch.get_num_threads() == 1
            raise RuntimeError("inside the passes")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


def test_one_thread_when_most_multiply_adds_are_in_small_products():
    from gradwell.train.fused_ops import SERIAL_BELOW, runs_serial

    small, large = SERIAL_BELOW // 10, SERIAL_BELOW * 2
    assert runs_serial([large] + [small] * 20)  # a wide first layer, many small ones
    assert not runs_serial([small] * 2 + [large] * 2)
    assert not runs_serial([SERIAL_BELOW] * 3)  # at the line: torch's threads


def onednn_trained(monkeypatch, onednn_from, dtype=torch.float32, steps=4):
    """A BN + Swish net after `steps` fused Nadam steps with fused_ops.ONEDNN_FROM = `onednn_from`:
    its parameters, the losses, and the batch sizes of the oneDNN products it took."""
    from gradwell.train import fused_ops

    taken = []

    def counted(x, *args):
        taken.append(len(x))
        return ONEDNN(x, *args)

    monkeypatch.setattr(fused_ops, "onednn_linear", lambda: counted)
    monkeypatch.setattr(fused_ops, "ONEDNN_FROM", onednn_from)
    model = network(dtype=dtype, activation="swish", batchnorm="before")
    step = FusedStep(
        model, nn.functional.cross_entropy, optim.create("nadam", model.parameters(), lr=0.01),
        Metrics(torch.device("cpu")),
    )  # fmt: skip
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(steps, 16, 2, 4, generator=generator)
    y = torch.randint(0, 3, (steps, 16), generator=generator)
    losses = [step(xb.to(dtype), yb).item() for xb, yb in zip(x, y, strict=True)]
    step.close()
    return [p.detach().clone() for p in model.parameters()], losses, taken


@pytest.mark.skipif(
    ONEDNN is None,
    reason="this build of torch has no oneDNN kernel (torch.ops.mkldnn._linear_pointwise)",
)
def test_float32_products_from_onednn_from_are_onednns_and_train_as_mkls_do(monkeypatch):
    mkl, mkl_losses, none_taken = onednn_trained(monkeypatch, float("inf"))
    onednn, onednn_losses, taken = onednn_trained(monkeypatch, 0)
    assert none_taken == [] and taken == [16] * 7 * 4  # 4 layers forward, 3 backward (not the data's)
    assert onednn_losses == pytest.approx(mkl_losses, rel=1e-5)
    for a, b in zip(mkl, onednn, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)
    # at the line, the two 12 x 12 layers' products are oneDNN's (forward and backward), the smaller
    # 8 -> 12 and 12 -> 3 ones MKL's; float64 ones always MKL's (oneDNN has no float64 kernel)
    assert onednn_trained(monkeypatch, 16 * 12 * 12, steps=1)[2] == [16] * 4
    assert onednn_trained(monkeypatch, 0, dtype=torch.float64, steps=1)[2] == []


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


# batch normalization, dropout and the l1/l2 penalties on the fused path


@pytest.mark.parametrize(("center", "scale"), [(True, True), (False, True), (True, False), (False, False)])
def test_fused_batchnorm_equals_the_eager_layer_and_autograd_in_float64(center, scale, generator):
    from gradwell.train.fused_ops import BatchNormLayer, MovingStatistics

    eager, fused = (BatchNorm(5, center=center, scale=scale).double() for _ in range(2))
    with torch.no_grad():
        for norm in (eager, fused):
            for p in norm.parameters():
                p.copy_(torch.linspace(-1.5, 2.0, 5, dtype=torch.float64))
    x = torch.randn(7, 5, generator=generator, dtype=torch.float64) * 3 + 1
    dy = torch.randn(7, 5, generator=generator, dtype=torch.float64)
    leaf = x.clone().requires_grad_()
    expected = eager(leaf)
    expected.backward(dy)
    grads = {id(p): torch.zeros_like(p) for p in fused.parameters()}
    moving = MovingStatistics([fused])
    layer = BatchNormLayer(fused, grads, moving)
    y, saved = layer.forward(x)
    moving.update()  # the fused step updates every layer's moving statistics after the forward pass
    dx = layer.backward(dy, saved, True)
    assert torch.equal(y, expected) and torch.equal(dx, leaf.grad)  # the eager layer's, bit for bit
    for p, q in zip(fused.parameters(), eager.parameters(), strict=True):
        assert torch.equal(grads[id(p)], q.grad)
    for name in ("running_mean", "running_var"):
        assert torch.equal(getattr(fused, name), getattr(eager, name))
    # and the chapter's equations, written out in float64
    r = torch.rsqrt(x.var(0, correction=0) + fused.eps)
    x_hat, gamma = (x - x.mean(0)) * r, fused.weight if scale else torch.ones(5, dtype=torch.float64)
    dbeta, dgamma = dy.sum(0), (dy * x_hat).sum(0)
    assert torch.allclose(y, x_hat * gamma + (fused.bias if center else 0), rtol=1e-12, atol=1e-13)
    assert torch.allclose(dx, gamma * r * (dy - (dbeta + x_hat * dgamma) / len(x)), rtol=1e-10, atol=1e-12)
    if scale:
        assert torch.allclose(grads[id(fused.weight)], dgamma, rtol=1e-12, atol=1e-13)
    y.fill_(0.0)  # an in-place activation after the layer must leave what its backward keeps alone
    assert torch.equal(layer.backward(dy, saved, True), dx)


def test_every_batchnorm_layers_moving_statistics_equal_the_eager_layers_bit_for_bit():
    def net():  # two layers with their own momentum: one update after the forward serves both
        torch.manual_seed(0)
        layers = [nn.Linear(8, 6), BatchNorm(6, momentum=0.9), nn.ReLU(), nn.Linear(6, 6, bias=False)]
        return nn.Sequential(*layers, BatchNorm(6, momentum=0.5), nn.ReLU(), nn.Linear(6, 3)).double()

    eager, fused = net(), net()
    data = blobs64()
    x, y = data.train.x[:16].flatten(1), data.train.y[:16]
    eager(x)
    sgd = optim.create("sgd", fused.parameters(), lr=0.0)
    FusedStep(fused, nn.functional.cross_entropy, sgd, Metrics(torch.device("cpu")))(x, y)
    for (name, value), other in zip(eager.named_buffers(), fused.buffers(), strict=True):
        assert torch.equal(value, other), name


@pytest.mark.parametrize("module", [nn.Dropout(0.3), nn.AlphaDropout(0.2)], ids=repr)
def test_fused_dropout_draws_the_eager_masks(module, generator):
    from gradwell.train.fused_ops import AlphaDropoutLayer, DropoutLayer

    layer = (DropoutLayer if isinstance(module, nn.Dropout) else AlphaDropoutLayer)(module.p)
    x = torch.randn(40, 30, generator=generator, dtype=torch.float64)
    dy = torch.randn(40, 30, generator=generator, dtype=torch.float64)
    leaf = x.clone().requires_grad_()
    torch.manual_seed(3)
    expected = module(leaf)
    expected.backward(dy)
    torch.manual_seed(3)
    y, saved = layer.forward(x)
    assert torch.equal(y, expected) and torch.equal(layer.backward(dy, saved, True), leaf.grad)


def network(seed=0, dtype=torch.float64, **options):
    model = models.mlp(
        (2, 4), 3, hidden=[12, 12, 12], generator=torch.Generator().manual_seed(seed), **options
    )
    return model.to(dtype)


def trained(model, fast, epochs=2, **options):
    optimizer = optim.create("nadam", model.parameters(), lr=0.01)
    history = fit(
        model,
        blobs64(),
        optimizer=optimizer,
        epochs=epochs,
        batch_size=16,
        fast=fast,
        progress=False,
        **options,
    )
    return history


@pytest.mark.parametrize(
    ("model", "train"),
    [
        ({"activation": "swish", "batchnorm": "before"}, {}),  # the default job's network
        ({"activation": "elu", "batchnorm": "after", "input_batchnorm": True}, {}),
        ({"activation": "relu", "dropout": 0.2, "batchnorm": "before"}, {"l1": 1e-3, "l2": 1e-2}),
        ({"activation": "selu", "dropout": 0.1}, {"max_norm": 1.0}),  # AlphaDropout
        ({"activation": "prelu", "batchnorm": "before"}, {}),  # a learned alpha
        ({"activation": "swish", "activation_options": {"learnable": True}}, {"l2": 1e-3}),  # a learned beta
        ({"activation": "rrelu", "dropout": 0.2}, {}),  # random slopes, drawn as the eager module draws them
    ],
    ids=[
        "bn-before",
        "bn-after+input",
        "dropout+l1+l2",
        "alpha-dropout+max-norm",
        "prelu",
        "learnable-swish",
        "rrelu",
    ],
)
def test_fit_with_batchnorm_dropout_and_penalties_is_fused_and_equals_eager(model, train):
    runs = [(network(**model), fast) for fast in (False, True)]
    histories = [trained(net, fast, **train) for net, fast in runs]
    assert histories[1].path.startswith("training path: fused-mlp"), histories[1].path
    assert histories[0].path.startswith("training path: eager")
    for a, b in zip(histories[0].epochs, histories[1].epochs, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-10) and a["val_loss"] == pytest.approx(
            b["val_loss"], rel=1e-10
        )
    (eager, _), (fused, _) = runs
    for (key, value), other in zip(eager.state_dict().items(), fused.state_dict().values(), strict=True):
        assert torch.allclose(value, other, rtol=1e-9, atol=1e-12), key  # moving statistics included


@settings(max_examples=12, deadline=None)
@given(
    hidden=st.lists(st.integers(2, 9), min_size=1, max_size=3),
    activation=st.sampled_from([*ACTIVATIONS, "prelu", "rrelu", "gelu_sigmoid"]),
    batchnorm=st.sampled_from([None, "before", "after"]),
    dropout=st.sampled_from([0.0, 0.25]),
    penalties=st.sampled_from([{}, {"l1": 1e-3}, {"l2": 1e-2}]),
    seed=st.integers(0, 2**16),
)
@pytest.mark.filterwarnings("ignore::gradwell.selfnorm.SelfNormalizationWarning")  # SELU with l1 or BN
def test_any_small_network_trains_fused_as_it_trains_eagerly(
    hidden, activation, batchnorm, dropout, penalties, seed
):
    def net():
        return models.mlp(
            (2, 4), 3, hidden=hidden, activation=activation, batchnorm=batchnorm, dropout=dropout,
            generator=torch.Generator().manual_seed(seed),
        ).double()  # fmt: skip

    eager, fused = net(), net()
    histories = [
        trained(model, fast, epochs=1, **penalties) for model, fast in ((eager, False), (fused, True))
    ]
    assert histories[1].path.startswith("training path: fused-mlp"), histories[1].path
    assert histories[0].metric("loss") == pytest.approx(histories[1].metric("loss"), rel=1e-9)
    for (key, value), other in zip(eager.state_dict().items(), fused.state_dict().values(), strict=True):
        assert torch.allclose(value, other, rtol=1e-8, atol=1e-11), key


def test_a_diverging_batchnorm_net_fails_on_the_fused_path_as_it_fails_eagerly():
    from gradwell.errors import NonFiniteError

    data = blobs64(n=256)
    data = Dataset(
        Split(data.train.x.float(), data.train.y), Split(data.val.x.float(), data.val.y), data.test, 3, "b"
    )
    messages = []
    for fast in (
        False,
        True,
    ):  # the batch variance overflows float32 first: statistics in float64, as torch's
        model = models.mlp(
            (2, 4), 3, hidden=[16, 16], batchnorm="before", generator=torch.Generator().manual_seed(0)
        )
        optimizer = optim.create("sgd", model.parameters(), lr=1e8)
        with pytest.raises(NonFiniteError) as caught:
            fit(model, data, optimizer=optimizer, epochs=2, batch_size=32, seed=7, fast=fast, progress=False)
        messages.append(str(caught.value))
    assert messages[0] == messages[1] and "non-finite at step" in messages[0]


def test_the_penalties_apply_on_the_steps_a_callback_samples_eagerly():
    from gradwell.diagnose import Monitor

    monitors = [Monitor(every=3), Monitor(every=3)]
    nets = [network(activation="relu", batchnorm="before") for _ in monitors]
    histories = [
        trained(net, fast, callbacks=[monitor], l1=1e-3, l2=1e-2)
        for net, fast, monitor in zip(nets, (False, True), monitors, strict=True)
    ]
    assert histories[1].path.startswith("training path: fused-mlp")
    for value, other in zip(nets[0].state_dict().values(), nets[1].state_dict().values(), strict=True):
        assert torch.allclose(value, other, rtol=1e-9, atol=1e-12)
    assert monitors[1].history().steps == monitors[0].history().steps
