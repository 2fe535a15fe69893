"""gradwell.optim's optimizers: float64 references, torch and Keras oracles, state, clipping, errors."""

import copy
import io
import math

import numpy as np
import pytest
import reference
import torch
from conftest import rel_error

from gradwell.errors import GradwellError
from gradwell.optim import (
    OPTIMIZERS,
    SGD,
    AdaGrad,
    Adam,
    AdaMax,
    AdamW,
    GradwellOptimizer,
    Nadam,
    RMSProp,
    create,
    schedule,
)

F64 = torch.float64

# name -> (class, reference, hyperparameters): values away from the defaults, so that every term
# shows (an eps large enough for its placement to matter, a fast Nadam momentum schedule)
ADAM_FAMILY = {"lr": 0.01, "betas": (0.8, 0.95), "eps": 1e-3}
CASES = {
    "sgd": (SGD, reference.sgd, {"lr": 0.05}),
    "momentum": (SGD, reference.sgd, {"lr": 0.02, "momentum": 0.9}),
    "nesterov": (SGD, reference.sgd, {"lr": 0.02, "momentum": 0.9, "nesterov": True}),
    "adagrad": (AdaGrad, reference.adagrad, {"lr": 0.1, "eps": 1e-2}),
    "rmsprop": (RMSProp, reference.rmsprop, {"lr": 0.01, "rho": 0.8, "eps": 1e-3}),
    "adam": (Adam, reference.adam, ADAM_FAMILY),
    "adamax": (AdaMax, reference.adamax, ADAM_FAMILY),
    "nadam": (Nadam, reference.nadam, {**ADAM_FAMILY, "momentum_decay": 0.05}),
    "adamw": (AdamW, reference.adamw, {**ADAM_FAMILY, "weight_decay": 0.1}),
}


def quadratic(generator, n=12, condition=500.0):
    """0.5 theta^T A theta - b^T theta, A with eigenvalues from 5 / condition to 5, theta in two tensors."""
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=F64))
    a = q @ torch.diag(torch.logspace(math.log10(5 / condition), math.log10(5), n, dtype=F64)) @ q.T
    b = torch.randn(n, generator=generator, dtype=F64)
    theta0 = [torch.randn(shape, generator=generator, dtype=F64) for shape in ((3, 2), (6,))]

    def grads(params):
        flat = torch.cat([p.reshape(-1) for p in params])
        g = a.to(flat.dtype) @ flat - b.to(flat.dtype)
        return [
            piece.reshape(p.shape)
            for piece, p in zip(g.split([p.numel() for p in params]), params, strict=True)
        ]

    return theta0, grads


def mlp(generator):
    """Mean squared error of a 4-16-16-2 tanh network on one fixed batch."""
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 16),
        torch.nn.Tanh(),
        torch.nn.Linear(16, 16),
        torch.nn.Tanh(),
        torch.nn.Linear(16, 2),
    ).double()
    names = [name for name, _ in model.named_parameters()]
    theta0 = [0.5 * torch.randn(p.shape, generator=generator, dtype=F64) for p in model.parameters()]
    x = torch.randn(32, 4, generator=generator, dtype=F64)
    y = torch.randn(32, 2, generator=generator, dtype=F64)

    def grads(params):
        params = [p.detach().requires_grad_() for p in params]
        out = torch.func.functional_call(
            model, dict(zip(names, params, strict=True)), (x.to(params[0].dtype),)
        )
        return list(torch.autograd.grad(((out - y.to(out.dtype)) ** 2).mean(), params))

    return theta0, grads


PROBLEMS = {"quadratic": quadratic, "mlp": mlp}


def gentle(hp):
    """The MLP's hyperparameters: with lr 0.01 and b2 0.95 the Adam family's steps amplify rounding
    differences chaotically there over 100 steps, so it gets lr 0.003 and the default betas."""
    return {**hp, "lr": 0.003, "betas": (0.9, 0.999)} if "betas" in hp else hp


def flat(params):
    return torch.cat([p.detach().reshape(-1).to(F64) for p in params])


def steps_(optimizer, params, grad_fn, steps):
    """Run `steps` updates with gradients from grad_fn(params); return the trajectory (steps, n)."""
    trajectory = []
    for _ in range(steps):
        for p, g in zip(params, grad_fn(params), strict=True):
            p.grad = g.to(p.dtype)
        optimizer.step()
        trajectory.append(flat(params))
    return torch.stack(trajectory)


def run(make, theta0, grad_fn, steps=100, dtype=F64):
    params = [t.clone().to(dtype) for t in theta0]
    return steps_(make(params), params, grad_fn, steps)


def run_reference(fn, hp, theta0, grad_fn, steps=100):
    """The reference trajectory (steps, n) and the gradients it met."""
    thetas = [t.numpy().copy() for t in theta0]
    states = [{} for _ in thetas]
    trajectory, gradients = [], []
    for _ in range(steps):
        grads = grad_fn([torch.from_numpy(t) for t in thetas])
        gradients.append(grads)
        thetas = [fn(t, g.numpy(), s, **hp) for t, g, s in zip(thetas, grads, states, strict=True)]
        trajectory.append(np.concatenate([t.reshape(-1) for t in thetas]))
    return torch.from_numpy(np.stack(trajectory)), gradients


@pytest.mark.parametrize("problem", PROBLEMS)
@pytest.mark.parametrize("name", CASES)
def test_float64_matches_the_reference(name, problem, generator):
    cls, fn, hp = CASES[name]
    hp = hp if problem == "quadratic" else gentle(hp)
    theta0, grad_fn = PROBLEMS[problem](generator)
    expected, _ = run_reference(fn, hp, theta0, grad_fn)
    assert rel_error(expected[-1], expected[0]) > 0.05  # the run goes somewhere
    assert rel_error(run(lambda p: cls(p, **hp), theta0, grad_fn), expected) < 1e-12


@pytest.mark.parametrize("problem", PROBLEMS)
@pytest.mark.parametrize("name", CASES)
def test_float32_follows_the_reference(name, problem, generator):
    # The reference's own gradients, replayed in float32, so that only the optimizer's arithmetic
    # differs; 100 float32 roundings of theta accumulate to about 1e-6 (the bound is 2e-6).
    cls, fn, hp = CASES[name]
    hp = hp if problem == "quadratic" else gentle(hp)
    theta0, grad_fn = PROBLEMS[problem](generator)
    theta0 = [t.float().double() for t in theta0]
    expected, gradients = run_reference(fn, hp, theta0, grad_fn)
    replay = iter(gradients)
    ours = run(lambda p: cls(p, **hp), theta0, lambda _: next(replay), dtype=torch.float32)
    assert rel_error(ours, expected) < 2e-6


TORCH_ORACLES = {
    "momentum": lambda p: torch.optim.SGD(p, lr=0.02, momentum=0.9),
    "nesterov": lambda p: torch.optim.SGD(p, lr=0.02, momentum=0.9, nesterov=True),
    "adam": lambda p: torch.optim.Adam(p, **ADAM_FAMILY),
    "adamw": lambda p: torch.optim.AdamW(p, **ADAM_FAMILY, weight_decay=0.1),
    "nadam": lambda p: torch.optim.NAdam(p, **ADAM_FAMILY, momentum_decay=0.05),
}


@pytest.mark.parametrize("name", TORCH_ORACLES)
def test_torch_computes_the_same_trajectory(name, generator):
    cls, _, hp = CASES[name]
    theta0, grad_fn = quadratic(generator)
    default = torch.get_default_dtype()
    torch.set_default_dtype(F64)  # torch keeps NAdam's mu_product in the default dtype
    try:
        expected = run(TORCH_ORACLES[name], theta0, grad_fn)
    finally:
        torch.set_default_dtype(default)
    assert rel_error(run(lambda p: cls(p, **hp), theta0, grad_fn), expected) < 1e-12


@pytest.fixture
def keras():
    import keras

    floatx = keras.config.floatx()
    keras.config.set_floatx("float64")  # Keras's learning-rate variable follows floatx
    yield keras
    keras.config.set_floatx(floatx)


def run_keras(keras, optimizer, theta0, grad_fn, steps=100):
    variables = [keras.Variable(t.numpy()) for t in theta0]
    trajectory = []
    for _ in range(steps):
        values = [v.value.detach().clone() for v in variables]  # torch tensors on Keras's torch backend
        optimizer.apply_gradients(zip(grad_fn(values), variables, strict=True))
        trajectory.append(torch.cat([v.value.detach().reshape(-1) for v in variables]))
    return torch.stack(trajectory)


KERAS_ORACLES = {
    "momentum": lambda k: k.optimizers.SGD(learning_rate=0.02, momentum=0.9),
    "nesterov": lambda k: k.optimizers.SGD(learning_rate=0.02, momentum=0.9, nesterov=True),
    # Keras starts the accumulator at 0.1 unless told otherwise
    "adagrad": lambda k: k.optimizers.Adagrad(learning_rate=0.1, initial_accumulator_value=0.0, epsilon=1e-2),
    "rmsprop": lambda k: k.optimizers.RMSprop(learning_rate=0.01, rho=0.8, epsilon=1e-3),
    "adamax": lambda k: k.optimizers.Adamax(learning_rate=0.01, beta_1=0.8, beta_2=0.95, epsilon=1e-3),
}


@pytest.mark.parametrize("name", KERAS_ORACLES)
def test_keras_computes_the_same_trajectory(name, keras, generator):
    cls, _, hp = CASES[name]
    theta0, grad_fn = quadratic(generator)
    expected = run_keras(keras, KERAS_ORACLES[name](keras), theta0, grad_fn)
    assert rel_error(run(lambda p: cls(p, **hp), theta0, grad_fn), expected) < 1e-12


def test_nesterov_reformulation_equals_the_look_ahead_form(generator):
    # the reformulation's parameters are the look-ahead points theta + beta m of the chapter's form
    theta0, grad_fn = quadratic(generator)
    theta = flat(theta0).numpy()

    def grad_at(point):  # the quadratic's gradient takes theta in one piece as well
        return grad_fn([torch.from_numpy(point)])[0].numpy()

    state, look_ahead = {}, []
    for _ in range(100):
        theta = reference.sgd_lookahead(theta, grad_at, state, lr=0.02, momentum=0.9)
        look_ahead.append(theta + 0.9 * state["m"])
    ours = run(lambda p: SGD(p, lr=0.02, momentum=0.9, nesterov=True), theta0, grad_fn)
    assert rel_error(ours, np.stack(look_ahead)) < 1e-12


def lr_for(hp, capturable):
    return {**hp, "lr": torch.tensor(hp["lr"], dtype=F64)} if capturable else hp


@pytest.mark.parametrize("name", CASES)
def test_capturable_and_per_tensor_runs_match_the_default(name, generator):
    cls, _, hp = CASES[name]
    theta0, grad_fn = quadratic(generator)
    expected = run(lambda p: cls(p, **hp), theta0, grad_fn)
    capturable = run(lambda p: cls(p, **lr_for(hp, True), capturable=True), theta0, grad_fn)
    assert rel_error(capturable, expected) < 1e-12
    assert torch.equal(run(lambda p: cls(p, **hp, foreach=False), theta0, grad_fn), expected)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_a_capturable_step_reads_no_value_from_the_device(name):
    # On the meta device every read of a value (.item(), .tolist(), a branch on a tensor) raises,
    # as a host synchronization would break a CUDA graph capture.
    params = [torch.empty(3, 2, device="meta"), torch.empty(4, device="meta")]
    for p in params:
        p.grad = torch.empty_like(p)
    optimizer = create(name, params, lr=torch.tensor(0.01), capturable=True, global_clipnorm=1.0)
    optimizer.param_groups[0]["lr"] = torch.tensor(0.01, device="meta")  # checked on the host above
    optimizer.step()
    optimizer.step()
    assert optimizer.last_grad_norm.device.type == "meta"
    assert all(v.device.type == "meta" for state in optimizer.state.values() for v in state.values())


def test_a_copied_optimizer_keeps_its_clipping(generator):
    params = [torch.randn(4, generator=generator, dtype=F64)]
    params[0].grad = 100 * torch.randn(4, generator=generator, dtype=F64)
    optimizer = copy.deepcopy(SGD(params, lr=1.0, global_clipnorm=1.0))
    before = optimizer.param_groups[0]["params"][0].clone()
    optimizer.step()
    assert (
        rel_error((before - optimizer.param_groups[0]["params"][0]).norm(), torch.tensor(1.0, dtype=F64))
        < 1e-12
    )


@pytest.mark.parametrize("capturable", [False, True])
@pytest.mark.parametrize("name", CASES)
def test_state_dict_round_trip_continues_identically(name, capturable, generator):
    cls, _, hp = CASES[name]
    theta0, grad_fn = quadratic(generator)

    def make(params):
        return cls(params, **lr_for(hp, capturable), capturable=capturable)

    expected = run(make, theta0, grad_fn, steps=12)
    params = [t.clone() for t in theta0]
    first = make(params)
    steps_(first, params, grad_fn, 5)
    saved = io.BytesIO()
    torch.save(first.state_dict(), saved)
    saved.seek(0)
    resumed_params = [p.clone() for p in params]
    resumed = make(resumed_params)
    resumed.load_state_dict(torch.load(saved))
    assert torch.equal(steps_(resumed, resumed_params, grad_fn, 7)[-1], expected[-1])
    assert resumed.param_groups[0]["lr"] is not first.param_groups[0]["lr"]


@pytest.mark.parametrize("name", CASES)
def test_groups_and_dtypes_are_updated_each_on_their_own(name, generator):
    # one group mixing float32 and float64, a second group with its own lr: each parameter ends
    # where it would alone
    cls, _, hp = CASES[name]
    starts = [
        torch.randn(shape, generator=generator, dtype=dtype)
        for shape, dtype in (((3, 2), torch.float32), ((6,), F64), ((4,), F64))
    ]
    gradients = [
        [torch.randn(s.shape, generator=generator, dtype=s.dtype) for s in starts] for _ in range(10)
    ]
    params = [s.clone() for s in starts]
    together = cls([{"params": params[:2]}, {"params": params[2:], "lr": hp["lr"] / 2}], **hp)
    for step in gradients:
        for p, g in zip(params, step, strict=True):
            p.grad = g
        together.step()
    for i, start in enumerate(starts):
        alone = [start.clone()]
        optimizer = cls(alone, **{**hp, "lr": hp["lr"] / 2 if i == 2 else hp["lr"]})
        for step in gradients:
            alone[0].grad = step[i]
            optimizer.step()
        assert torch.equal(alone[0], params[i])


@pytest.mark.parametrize("name", ["adam", "adamax", "nadam"])
def test_a_parameter_without_gradient_keeps_its_own_step_count(name, generator):
    cls, fn, hp = CASES[name]
    params = [torch.randn(5, generator=generator, dtype=F64) for _ in range(2)]
    theta, state = params[1].numpy().copy(), {}
    optimizer = cls(params, **hp)
    for step in range(10):
        for i, p in enumerate(params):
            p.grad = torch.randn(5, generator=generator, dtype=F64) if i == 0 or step % 2 == 0 else None
        if params[1].grad is not None:
            theta = fn(theta, params[1].grad.numpy(), state, **hp)
        optimizer.step()
    assert optimizer.state[params[1]]["step"].item() == 5
    assert rel_error(params[1], theta) < 1e-12


def test_sgd_keeps_the_learning_rate_inside_the_velocity(generator):
    # with a schedule, m keeps what earlier rates put in it: unlike torch.optim.SGD
    theta0, grad_fn = quadratic(generator)
    lrs = [reference.power_lr(t, 0.02, s=10) for t in range(50)]
    state, thetas = [{}, {}], [t.numpy().copy() for t in theta0]
    expected = []
    for lr in lrs:
        grads = grad_fn([torch.from_numpy(t) for t in thetas])
        thetas = [
            reference.sgd(t, g.numpy(), s, lr=lr, momentum=0.9)
            for t, g, s in zip(thetas, grads, state, strict=True)
        ]
        expected.append(np.concatenate([t.reshape(-1) for t in thetas]))

    def scheduled(optimizer):
        params = [t.clone() for t in theta0]
        optimizer = optimizer(params)
        scheduler = schedule("power", optimizer, s=10)
        trajectory = []
        for _ in lrs:
            trajectory.append(steps_(optimizer, params, grad_fn, 1)[0])
            scheduler.step()
        return torch.stack(trajectory)

    ours = scheduled(lambda p: SGD(p, lr=0.02, momentum=0.9))
    assert rel_error(ours, np.stack(expected)) < 1e-12
    assert rel_error(scheduled(lambda p: torch.optim.SGD(p, lr=0.02, momentum=0.9)), ours) > 1e-3


# --- clipping inside the optimizer ---


def random_gradients(generator):
    """Gradients of three tensors at scales from 1e-3 to 1e4."""
    shapes = ((5, 4), (7,), (3,))
    scales = 10 ** (7 * torch.rand(3, generator=generator, dtype=F64) - 3)
    return [
        scale * torch.randn(shape, generator=generator, dtype=F64)
        for shape, scale in zip(shapes, scales, strict=True)
    ]


def clipped_update(option, grads):
    """The update of SGD with lr 1 from zero: minus the clipped gradients; and the optimizer."""
    params = [torch.zeros_like(g) for g in grads]
    optimizer = SGD(params, lr=1.0, **option)
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()
    optimizer.step()
    return [-p for p in params], optimizer


def test_clipnorm_bounds_each_tensor_and_keeps_its_direction(generator):
    for _ in range(20):
        grads = random_gradients(generator)
        update, optimizer = clipped_update({"clipnorm": 1.5}, grads)
        for u, g in zip(update, grads, strict=True):
            assert u.norm() <= 1.5 * (1 + 1e-12)
            assert rel_error(u, g * min(1.0, 1.5 / g.norm().item())) < 1e-12
        assert optimizer.last_grad_norm is None


def test_global_clipnorm_bounds_the_global_norm_and_keeps_the_direction(generator):
    for _ in range(20):
        grads = random_gradients(generator)
        norm = torch.cat([g.reshape(-1) for g in grads]).norm()
        update, optimizer = clipped_update({"global_clipnorm": 1.5}, grads)
        assert torch.cat([u.reshape(-1) for u in update]).norm() <= 1.5 * (1 + 1e-12)
        for u, g in zip(update, grads, strict=True):
            assert rel_error(u, g * min(1.0, 1.5 / norm.item())) < 1e-12
        assert rel_error(optimizer.last_grad_norm, norm) < 1e-12


def test_clipvalue_bounds_every_element(generator):
    for _ in range(20):
        grads = random_gradients(generator)
        update, _ = clipped_update({"clipvalue": 1.5}, grads)
        for u, g in zip(update, grads, strict=True):
            assert torch.equal(u, g.clamp(-1.5, 1.5))


def test_the_chapters_clipping_example():
    # [0.9, 100.0] clipped at 1: by value it points almost along the second axis, by norm it keeps
    # its direction (the chapter's printed values as golden numbers)
    g = torch.tensor([0.9, 100.0], dtype=F64)
    (by_value,), _ = clipped_update({"clipvalue": 1.0}, [g])
    (by_norm,), _ = clipped_update({"clipnorm": 1.0}, [g])
    assert torch.equal(by_value, torch.tensor([0.9, 1.0], dtype=F64))
    assert rel_error(by_norm, g / g.norm()) < 1e-15
    assert rel_error(by_norm, torch.tensor([0.00899964, 0.9999595], dtype=F64)) < 1e-7


def test_adam_sees_the_clipped_gradients(generator):
    theta0, grad_fn = quadratic(generator)
    theta0 = [30 * t for t in theta0]  # far away, so that clipping is active at first

    def clipped(params):
        grads = grad_fn(params)
        norm = torch.cat([g.reshape(-1) for g in grads]).norm()
        return [g * min(1.0, 2.0 / norm.item()) for g in grads]

    expected, _ = run_reference(reference.adam, ADAM_FAMILY, theta0, clipped, steps=30)
    ours = run(lambda p: Adam(p, **ADAM_FAMILY, global_clipnorm=2.0), theta0, grad_fn, steps=30)
    assert rel_error(ours, expected) < 1e-12


# --- names and bad input ---


def test_create_builds_each_named_optimizer():
    params = [torch.nn.Parameter(torch.ones(2))]
    for name in OPTIMIZERS:
        assert isinstance(create(name, params), CASES[name][0])
    group = create("nesterov", params, lr=0.1).param_groups[0]
    assert (group["lr"], group["momentum"], group["nesterov"]) == (0.1, 0.9, True)
    assert create("momentum", params).param_groups[0]["momentum"] == 0.9
    assert create("adamw", params, global_clipnorm=1.0).clip == ("global_clipnorm", 1.0)


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda p: SGD(p, lr=-0.1), ["lr", "-0.1", "[0, inf)"]),
        (lambda p: SGD(p, lr=float("nan")), ["lr", "nan"]),
        (lambda p: Adam(p, lr=float("inf")), ["lr", "inf"]),
        (lambda p: SGD(p, lr=torch.ones(2)), ["lr", "(2,)"]),
        (lambda p: SGD(p, momentum=1.0), ["momentum", "1.0", "[0, 1)"]),
        (lambda p: SGD(p, momentum=-0.5), ["momentum", "-0.5", "[0, 1)"]),
        (lambda p: RMSProp(p, rho=1.0), ["rho", "1.0", "[0, 1)"]),
        (lambda p: Adam(p, betas=(0.9, 1.0)), ["beta2", "1.0", "[0, 1)"]),
        (lambda p: Nadam(p, betas=0.9), ["betas", "pair", "0.9"]),
        (lambda p: AdaGrad(p, eps=-1e-10), ["eps", "-1e-10"]),
        (lambda p: AdamW(p, weight_decay=-0.1), ["weight_decay", "-0.1"]),
        (lambda p: SGD(p, clipnorm=1.0, clipvalue=0.5), ["clipvalue=0.5", "clipnorm=1.0", "exclude"]),
        (lambda p: Adam(p, global_clipnorm=0.0), ["global_clipnorm", "0.0", "(0, inf)"]),
        (lambda p: create("adm", p), ["'adm'", "did you mean 'adam'", "adamw"]),
        (lambda p: create("adam", p, momentum=0.9), ["'momentum'", "betas", "global_clipnorm"]),
        (lambda p: create("sgd", p, lr="fast"), ["lr", "'fast'", "number"]),
        (lambda p: SGD(p).add_param_group({"params": [torch.zeros(1)], "lr": -1.0}), ["lr", "-1.0"]),
    ],
)
def test_bad_input_names_the_value_and_what_is_valid(make, words):
    with pytest.raises(GradwellError) as error:
        make([torch.nn.Parameter(torch.ones(2))])
    for word in words:
        assert word in str(error.value)


@pytest.mark.parametrize(
    ("make", "key"),
    [
        (lambda p: SGD(p, lr=1e39), "SGD lr = 1e+39"),
        (lambda p: Adam(p, eps=1e39), "Adam eps = 1e+39"),
        (lambda p: AdamW(p, weight_decay=1e308), "AdamW weight_decay = 1e+308"),
        (lambda p: SGD(p, clipvalue=1e39), "clipvalue = 1e+39"),
        (lambda p: RMSProp(p, global_clipnorm=1e39), "global_clipnorm = 1e+39"),
    ],
)
def test_a_number_beyond_float32_is_refused_before_the_kernels_overflow(make, key):
    # found by the config fuzzer: lr = 1e39 on float32 weights was a RuntimeError ("value cannot be
    # converted to type float without overflow") at the first step, after the run folder was written
    with pytest.raises(GradwellError) as error:
        make([torch.nn.Parameter(torch.ones(2))])
    assert key in str(error.value) and "3.40282e+38" in str(error.value)
    make([torch.nn.Parameter(torch.ones(2, dtype=torch.float64))])  # float64 kernels take it


def test_sparse_gradients_are_refused():
    embedding = torch.nn.Embedding(10, 3, sparse=True)
    embedding(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(GradwellError, match="sparse"):
        Adam(embedding.parameters()).step()


# --- convergence ---


def rosenbrock(p):
    x, y = p[0].item(), p[1].item()
    loss = (1 - x) ** 2 + 100 * (y - x * x) ** 2
    return loss, torch.tensor([-2 * (1 - x) - 400 * x * (y - x * x), 200 * (y - x * x)], dtype=F64)


# name -> (lr, step budget) on Rosenbrock from (-1.2, 1) to a loss of 1e-2, then on a quadratic
# of condition number 100 to 1e-3 of the initial gap; budgets are about 1.5 times what it takes.
# AdamW runs with weight_decay 1e-5 on the quadratic: its default 0.004 pulls toward 0, off the
# quadratic's optimum, by more than the target gap.
CONVERGENCE = {
    "sgd": ((2e-3, 3000), (1.9, 300)),
    "momentum": ((1e-3, 500), (0.3, 150)),
    "nesterov": ((1e-3, 500), (0.3, 150)),
    "adagrad": ((1.0, 2600), (3.0, 1400)),
    "rmsprop": ((3e-3, 2500), (0.1, 1600)),
    "adam": ((0.1, 800), (0.3, 1000)),
    "adamax": ((0.5, 1500), (1.0, 500)),
    "nadam": ((0.03, 1600), (0.3, 1000)),
    "adamw": ((0.1, 900), (0.3, 1000)),
}


def steps_to(loss_and_grad, start, optimizer, target, budget):
    p = start.clone()
    optimizer = optimizer([p])
    for step in range(budget):
        loss, p.grad = loss_and_grad(p)
        if loss < target:
            return step
        optimizer.step()
    return None


@pytest.mark.parametrize("name", CONVERGENCE)
def test_each_optimizer_converges_within_its_budget(name, generator):
    (rosen_lr, rosen_budget), (quad_lr, quad_budget) = CONVERGENCE[name]
    start = torch.tensor([-1.2, 1.0], dtype=F64)
    assert steps_to(rosenbrock, start, lambda p: create(name, p, lr=rosen_lr), 1e-2, rosen_budget) is not None

    q, _ = torch.linalg.qr(torch.randn(10, 10, generator=generator, dtype=F64))
    a = q @ torch.diag(torch.logspace(-2, 0, 10, dtype=F64)) @ q.T
    b = torch.randn(10, generator=generator, dtype=F64)
    optimum = torch.linalg.solve(a, b)

    def gap_and_grad(p):
        return float(0.5 * (p - optimum) @ a @ (p - optimum)), a @ p - b

    start = torch.randn(10, generator=generator, dtype=F64)
    target = 1e-3 * gap_and_grad(start)[0]
    decay = {"weight_decay": 1e-5} if name == "adamw" else {}

    def optimizer(params):
        return create(name, params, lr=quad_lr, **decay)

    assert steps_to(gap_and_grad, start, optimizer, target, quad_budget) is not None


# elementwise updates: what the fused MLP step and seed-batched training rely on ----------------


class TrustRatioSGD(GradwellOptimizer):
    """SGD scaled per tensor by ||w|| / ||g|| (LARS, You et al., 2017): not elementwise."""

    elementwise = False

    def __init__(self, params, lr=0.01):
        super().__init__(params, {"lr": lr})

    def update(self, tensors, lr, group):
        for p, g in zip(tensors["params"], tensors["grads"], strict=True):
            p.sub_(g, alpha=lr * float(p.norm() / g.norm().clamp(min=1e-12)))


class SubclassedTorchSGD(torch.optim.SGD):
    """A subclass of torch's SGD may change the update: undeclared, it is not taken as elementwise."""


class DeclaredTorchSGD(torch.optim.SGD):
    elementwise = True


def test_optimizers_declare_whether_their_update_is_elementwise():
    from gradwell.optim import TORCH_ELEMENTWISE, is_elementwise

    params = [torch.nn.Parameter(torch.zeros(3))]
    assert all(is_elementwise(create(name, params)) for name in OPTIMIZERS)
    assert all(is_elementwise(cls) for cls in (SGD, AdaGrad, RMSProp, Adam, AdaMax, Nadam, AdamW))
    names = (
        "SGD",
        "Adam",
        "AdamW",
        "NAdam",
        "RAdam",
        "Adamax",
        "Adagrad",
        "Adadelta",
        "RMSprop",
        "Rprop",
        "ASGD",
    )
    assert {getattr(torch.optim, name) for name in names} == set(TORCH_ELEMENTWISE)
    assert is_elementwise(torch.optim.Adam(params, lr=0.1))
    assert not is_elementwise(torch.optim.LBFGS(params)) and not is_elementwise(torch.optim.SparseAdam)
    assert not is_elementwise(TrustRatioSGD(params, lr=0.1)) and not is_elementwise(TrustRatioSGD)
    assert not is_elementwise(SubclassedTorchSGD(params, lr=0.1)) and is_elementwise(DeclaredTorchSGD)


def elementwise_cases():
    from gradwell.optim import TORCH_ELEMENTWISE

    yield from ((name, lambda p, name=name: create(name, p, lr=0.01)) for name in OPTIMIZERS)
    yield from ((cls.__name__, lambda p, cls=cls: cls(p, lr=0.01)) for cls in TORCH_ELEMENTWISE)
    yield "TrustRatioSGD", TrustRatioSGD


@pytest.mark.parametrize(
    ("name", "factory"), list(elementwise_cases()), ids=lambda v: v if isinstance(v, str) else ""
)
def test_an_elementwise_update_of_one_flat_tensor_is_that_of_its_pieces_only(name, factory, generator):
    # what declaring elementwise promises: the fused step's one flat tensor trains as the pieces
    shapes = ((3, 2), (4,))
    pieces = [torch.nn.Parameter(torch.randn(s, generator=generator, dtype=F64)) for s in shapes]
    flat = torch.nn.Parameter(torch.cat([p.detach().reshape(-1) for p in pieces]))
    separate, together = factory(pieces), factory([flat])
    for _ in range(4):
        grads = [torch.randn(s, generator=generator, dtype=F64) for s in shapes]
        for p, g in zip(pieces, grads, strict=True):
            p.grad = g
        flat.grad = torch.cat([g.reshape(-1) for g in grads])
        separate.step()
        together.step()
    error = rel_error(flat.detach(), torch.cat([p.detach().reshape(-1) for p in pieces]))
    # a per-tensor rule is why an optimizer must declare it: one flat tensor trains differently
    assert error > 1e-3 if factory is TrustRatioSGD else error < 1e-12, name
