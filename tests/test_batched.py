"""Seed-batched training equals training each seed alone with gradwell.train.fit (float64)."""

import re
from types import SimpleNamespace

import pytest
import torch
from conftest import rel_error

from gradwell import models, optim
from gradwell.errors import GradwellError, NonFiniteError
from gradwell.experiment.batched import fit_seeds, stack_problem
from gradwell.train import fit

SEEDS = [3, 5, 11]


@pytest.fixture
def data(generator):
    def split(n):
        x = torch.randn(n, 12, generator=generator, dtype=torch.float64)
        return SimpleNamespace(x=x, y=torch.randint(0, 4, (n,), generator=generator))

    return SimpleNamespace(train=split(107), val=split(40))  # 107 = 6 batches of 16 and one of 11


def build(seed, **options):
    generator = torch.Generator().manual_seed(seed)
    return models.mlp(12, 4, [16, 8], generator=generator, **options).double()


CASES = {
    "momentum": ("momentum", {"lr": 0.05}, {}, {}),
    "adam, BN before": ("adam", {"lr": 0.01}, {"batchnorm": "before"}, {}),
    "nadam, BN after, dropout, global clipping, l2": (
        "nadam",
        {"lr": 0.01, "global_clipnorm": 0.5},
        {"batchnorm": "after", "dropout": 0.3},
        {"l2": 1e-3},
    ),
    "rmsprop, SELU + alpha dropout, clipnorm, max-norm": (
        "rmsprop",
        {"lr": 0.01, "clipnorm": 0.1},
        {"activation": "selu", "dropout": 0.2},
        {"max_norm": 1.0},
    ),
    "nesterov, flatten of an image input, clipvalue": ("nesterov", {"lr": 0.02, "clipvalue": 0.01}, {}, {}),
    "adam, PReLU, one alpha per unit": ("adam", {"lr": 0.01}, {"activation": "prelu"}, {}),
    "momentum, RReLU after BN, dropout (slopes and masks from one stream)": (
        "momentum",
        {"lr": 0.05},
        {"activation": "rrelu", "batchnorm": "before", "dropout": 0.2},
        {},
    ),
    "adam, learnable Swish, BN before": (
        "adam",
        {"lr": 0.01},
        {"activation": "swish", "activation_options": {"learnable": True}, "batchnorm": "before"},
        {},
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_each_seed_trains_as_it_would_alone(case, data):
    name, options, model_options, fit_options = CASES[case]
    if "flatten" in case:  # a (3, 4) input: the models start with nn.Flatten
        data.train.x, data.val.x = data.train.x.view(-1, 3, 4), data.val.x.view(-1, 3, 4)
    shape = tuple(data.train.x.shape[1:])
    alone = []
    for seed in SEEDS:
        model = models.mlp(shape, 4, [16, 8], generator=torch.Generator().manual_seed(seed), **model_options)
        model = model.double()
        optimizer = optim.create(name, model.parameters(), **options)
        scheduler = optim.schedule("exponential", optimizer, s=20)
        history = fit(
            model,
            data,
            optimizer=optimizer,
            scheduler=scheduler,
            epochs=3,
            batch_size=16,
            seed=seed,
            progress=False,
            **fit_options,
        )
        alone.append((model, history))
    together = [
        models.mlp(shape, 4, [16, 8], generator=torch.Generator().manual_seed(s), **model_options).double()
        for s in SEEDS
    ]
    runs = fit_seeds(
        together,
        data,
        seeds=SEEDS,
        optimizer=lambda net: optim.create(name, net.parameters(), **options),
        schedule=lambda optimizer: optim.schedule("exponential", optimizer, s=20),
        epochs=3,
        batch_size=16,
        **fit_options,
    )
    for (model, history), batched, run in zip(alone, together, runs, strict=True):
        assert run.error is None and len(run.history.epochs) == 3
        for (key, expected), actual in zip(
            model.state_dict().items(), batched.state_dict().values(), strict=True
        ):
            assert rel_error(actual, expected) < 1e-10, key
        for expected, actual in zip(history.epochs, run.history.epochs, strict=True):
            for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
                assert actual[key] == pytest.approx(expected[key], rel=1e-10, abs=1e-12), key


def test_a_diverging_seed_fails_alone(data):
    together = [build(s) for s in SEEDS]
    with torch.no_grad():
        for p in together[1].parameters():
            p.mul_(1e160)  # this seed's logits overflow at once
    alone = build(SEEDS[2])
    optimizer = optim.create("sgd", alone.parameters(), lr=0.05)
    fit(alone, data, optimizer=optimizer, epochs=2, batch_size=16, seed=SEEDS[2], progress=False)
    runs = fit_seeds(
        together,
        data,
        seeds=SEEDS,
        optimizer=lambda net: optim.create("sgd", net.parameters(), lr=0.05),
        epochs=2,
        batch_size=16,
    )
    assert isinstance(runs[1].error, NonFiniteError) and runs[1].history.epochs == []
    assert "epoch 1" in str(runs[1].error)
    assert runs[0].error is None and runs[2].error is None
    for expected, actual in zip(alone.parameters(), together[2].parameters(), strict=True):
        assert rel_error(actual, expected) < 1e-10


def test_unsupported_models_and_options_are_named():
    assert stack_problem([build(s) for s in SEEDS]) is None
    assert stack_problem([build(0, activation="prelu")]) is None  # stacked, one alpha per seed
    assert stack_problem([build(0, activation="rrelu")]) is None  # slopes from each seed's generator
    assert "not supported" in stack_problem([models.cnn((12,), 4, channels=(4,))])
    assert "differ" in stack_problem([build(0), models.mlp(12, 4, [8, 8]).double()])
    data = SimpleNamespace(train=SimpleNamespace(x=torch.randn(8, 12), y=torch.zeros(8, dtype=torch.int64)))
    with pytest.raises(GradwellError, match="ReduceLROnPlateau"):
        fit_seeds(
            [models.mlp(12, 4, [8])],
            data,
            seeds=[0],
            optimizer=lambda net: optim.create("sgd", net.parameters()),
            schedule=lambda optimizer: optim.schedule("performance", optimizer),
            epochs=1,
        )
    with pytest.raises(GradwellError, match="loss named"):
        fit_seeds(
            [models.mlp(12, 4, [8])],
            data,
            seeds=[0],
            optimizer=lambda net: optim.create("sgd", net.parameters()),
            epochs=1,
            loss=torch.nn.functional.cross_entropy,
        )
    with pytest.raises(GradwellError, match="one model per seed"):
        fit_seeds([models.mlp(12, 4, [8])], data, seeds=[0, 1], optimizer=None, epochs=1)


class PerTensorSGD(optim.SGD):
    """Stands for LAMB or LARS, whose trust ratio is per tensor: declares it is not elementwise."""

    elementwise = False


def test_an_optimizer_without_an_elementwise_update_is_refused(data):
    reason = (
        "PerTensorSGD does not declare an elementwise update (gradwell.optim.is_elementwise): "
        "seed-batched training would apply it to the K seeds' stacked tensors at once"
    )
    together = [build(s) for s in SEEDS]
    assert stack_problem(together, optimizer=PerTensorSGD) == reason
    assert stack_problem(together, optimizer=PerTensorSGD(together[0].parameters(), lr=0.1)) == reason
    assert stack_problem(together, optimizer=torch.optim.Adam) is None
    with pytest.raises(GradwellError, match=re.escape(reason)):
        fit_seeds(
            together,
            data,
            seeds=SEEDS,
            optimizer=lambda net: PerTensorSGD(net.parameters(), lr=0.05),
            epochs=1,
            batch_size=16,
        )


def test_batching_is_refused_only_where_the_benchmark_found_it_slower():
    from gradwell.experiment.batched import too_large_to_pay

    def nets(**options):
        return [models.mlp(40, 10, generator=torch.Generator().manual_seed(s), **options) for s in range(2)]

    assert too_large_to_pay(nets(hidden=[100] * 10)) is None
    assert too_large_to_pay(nets(hidden=[100] * 30)) == (  # the output layer counts too
        "31 Linear layers that fit's fused MLP step trains about as fast one seed at a time "
        "(batching pays up to 11)"
    )
    assert too_large_to_pay(nets(hidden=[100] * 30, batchnorm="before", dropout=0.2)) is None  # 1.85x batched
    assert too_large_to_pay(nets(hidden=[512] * 3)) == "a layer of 262144 weights (batching pays up to 65536)"
