"""Unsupervised pretraining: RBMs (float64 references), autoencoders, greedy stacks, auxiliary tasks."""

import itertools
import math

import numpy as np
import pytest
import torch
from conftest import rel_error
from torch import nn

from gradwell import models
from gradwell.data import Dataset, Split
from gradwell.errors import DataError, GradwellError
from gradwell.init import recommended_initializer
from gradwell.pretrain import (
    RBM,
    TiedLinear,
    autoencoder,
    auxiliary,
    cd_gradient,
    free_energy,
    greedy_layerwise,
)
from gradwell.pretrain.auxiliary import PairDiscrimination, masked_loss, random_shift
from gradwell.pretrain.rbm import hidden_probabilities, sample_h_given_v, sample_v_given_h, visible_mean
from gradwell.train import Callback
from gradwell.transfer import reuse


def rbm_parameters(generator, n_visible=5, n_hidden=4):
    """Random float64 (weight (H, V), visible bias, hidden bias), large enough to matter."""
    return (
        torch.randn(n_hidden, n_visible, generator=generator, dtype=torch.float64),
        torch.randn(n_visible, generator=generator, dtype=torch.float64) * 0.5,
        torch.randn(n_hidden, generator=generator, dtype=torch.float64) * 0.5,
    )


def energy(v, h, weight, b, c, visible):
    """E(v, h) written plainly, one configuration at a time."""
    interaction = h @ weight.numpy() @ v
    if visible == "bernoulli":
        return -b.numpy() @ v - c.numpy() @ h - interaction
    return 0.5 * np.sum((v - b.numpy()) ** 2) - c.numpy() @ h - interaction


def binary_states(n):
    return [np.array(bits, dtype=np.float64) for bits in itertools.product([0.0, 1.0], repeat=n)]


def visible_samples(generator, visible, n=6, n_visible=5):
    if visible == "bernoulli":
        return torch.bernoulli(torch.full((n, n_visible), 0.5, dtype=torch.float64), generator=generator)
    return torch.randn(n, n_visible, generator=generator, dtype=torch.float64)


@pytest.mark.parametrize("visible", ["bernoulli", "gaussian"])
def test_free_energy_is_minus_the_log_of_the_sum_over_hidden_states(generator, visible):
    weight, b, c = rbm_parameters(generator)
    v = visible_samples(generator, visible)
    expected = [
        -np.logaddexp.reduce([-energy(row, h, weight, b, c, visible) for h in binary_states(4)])
        for row in v.numpy()
    ]
    assert rel_error(free_energy(v, weight, b, c, visible), expected) < 1e-12


@pytest.mark.parametrize("visible", ["bernoulli", "gaussian"])
def test_hidden_conditional_is_the_energy_s_marginal(generator, visible):
    weight, b, c = rbm_parameters(generator)
    v = visible_samples(generator, visible)
    expected = []
    for row in v.numpy():
        weights = np.array([math.exp(-energy(row, h, weight, b, c, visible)) for h in binary_states(4)])
        states = np.array(binary_states(4))
        expected.append(weights @ states / weights.sum())  # p(h_j = 1 | v) for each j
    assert rel_error(hidden_probabilities(v, weight, c), np.array(expected)) < 1e-12


def test_bernoulli_visible_conditional_is_the_energy_s_marginal(generator):
    weight, b, c = rbm_parameters(generator)
    h = torch.bernoulli(torch.full((6, 4), 0.5, dtype=torch.float64), generator=generator)
    states = np.array(binary_states(5))
    expected = []
    for row in h.numpy():
        weights = np.array([math.exp(-energy(v, row, weight, b, c, "bernoulli")) for v in states])
        expected.append(weights @ states / weights.sum())
    assert rel_error(visible_mean(h, weight, b, "bernoulli"), np.array(expected)) < 1e-12


def test_samples_follow_their_conditionals(generator):
    weight, b, c = rbm_parameters(generator)
    v = visible_samples(generator, "bernoulli", n=1).expand(20000, 5)
    p, h = sample_h_given_v(v, weight, c, generator)
    assert set(h.unique().tolist()) <= {0.0, 1.0}
    assert (h.mean(0) - p[0]).abs().max() < 5 * 0.5 / math.sqrt(20000)
    mean, sample = sample_v_given_h(h[:1].expand(20000, 4), weight, b, "gaussian", generator)
    assert (sample.mean(0) - mean[0]).abs().max() < 5 / math.sqrt(20000)
    assert (sample.var(0) - 1).abs().max() < 5 * math.sqrt(2 / 20000)


@pytest.mark.parametrize("visible", ["bernoulli", "gaussian"])
@pytest.mark.parametrize("chain_size", [None, 3])
def test_cd_gradient_is_minus_the_gradient_of_the_free_energy_gap(generator, visible, chain_size):
    weight, b, c = rbm_parameters(generator)
    data = visible_samples(generator, visible, n=7)
    chain = None if chain_size is None else visible_samples(generator, visible, n=chain_size)
    d_weight, d_b, d_c, v_k = cd_gradient(data, weight, b, c, visible, k=3, chain=chain, generator=generator)
    assert v_k.shape == (7 if chain is None else 3, 5)
    params = [t.clone().requires_grad_() for t in (weight, b, c)]
    gap = free_energy(data, *params, visible).mean() - free_energy(v_k, *params, visible).mean()
    grads = torch.autograd.grad(gap, params)
    for ours, reference in zip((d_weight, d_b, d_c), grads, strict=True):
        assert rel_error(ours, -reference) < 1e-12


def binary_patterns(generator, n=400, features=16, flip=0.05):
    """Noisy copies of four binary prototypes: structure an RBM can learn."""
    prototypes = torch.bernoulli(torch.full((4, features), 0.5), generator=generator)
    x = prototypes[torch.randint(0, 4, (n,), generator=generator)]
    flips = torch.bernoulli(torch.full(x.shape, flip), generator=generator)
    return (x + flips) % 2


@pytest.mark.parametrize("persistent", [False, True])
def test_contrastive_divergence_lowers_the_reconstruction_error_and_the_data_s_free_energy(
    generator, persistent
):
    x = binary_patterns(generator)
    noise = torch.bernoulli(torch.full(x.shape, 0.5), generator=generator)
    rbm = RBM(16, 8, generator=generator)
    before, gap_before = (
        rbm.reconstruction_error(x),
        rbm.free_energy(noise).mean() - rbm.free_energy(x).mean(),
    )
    rng = torch.get_rng_state()
    assert rbm.fit(x, epochs=15, k=1, persistent=persistent, seed=3) is rbm
    assert torch.equal(torch.get_rng_state(), rng)
    assert rbm.reconstruction_error(x) < 0.5 * before
    assert rbm.free_energy(noise).mean() - rbm.free_energy(x).mean() > gap_before + 5
    again = RBM(16, 8, generator=torch.Generator().manual_seed(1234)).fit(
        x, epochs=1, persistent=persistent, seed=3
    )
    same = RBM(16, 8, generator=torch.Generator().manual_seed(1234)).fit(
        x, epochs=1, persistent=persistent, seed=3
    )
    assert torch.equal(again.weight, same.weight)


@pytest.mark.parametrize("persistent", [False, True])
def test_fit_takes_the_cd_steps_of_the_formulas_and_keeps_the_persistent_chain(generator, persistent):
    x = binary_patterns(generator, n=12).double()
    rbm = RBM(16, 5, generator=generator).double()
    weight, b, c = (t.detach().clone() for t in (rbm.weight, rbm.visible_bias, rbm.hidden_bias))
    rbm.fit(x, epochs=1, k=2, persistent=persistent, lr=0.3, momentum=0.0, batch_size=5, seed=7)
    g = torch.Generator().manual_seed(7)
    order, chain = torch.randperm(12, generator=g), None
    for start in (0, 5, 10):  # batches of 5, 5 and 2
        batch = x[order[start : start + 5]]
        chain = batch if persistent and chain is None else chain
        d_weight, d_b, d_c, end = cd_gradient(batch, weight, b, c, "bernoulli", k=2, chain=chain, generator=g)
        chain = end if persistent else None
        weight, b, c = weight + 0.3 * d_weight, b + 0.3 * d_b, c + 0.3 * d_c
    for ours, expected in zip((rbm.weight, rbm.visible_bias, rbm.hidden_bias), (weight, b, c), strict=True):
        assert rel_error(ours, expected) < 1e-12


def test_rbm_layer_computes_the_hidden_probabilities(generator):
    x = torch.randn(50, 6, generator=generator)
    rbm = RBM(6, 3, "gaussian", generator=generator).fit(x, epochs=2)
    layer = rbm.as_layer()
    assert rel_error(layer(x), rbm.transform(x)) < 1e-6 and torch.equal(rbm(x), rbm.transform(x))
    assert layer.linear.weight is not rbm.weight


def test_building_layers_leaves_the_global_rng_alone_and_the_results_unchanged(generator):
    x = binary_patterns(generator, n=64)
    rbm = RBM(16, 5, generator=generator).fit(x, epochs=1)
    built = {}
    for global_seed in (0, 1):
        torch.manual_seed(global_seed)
        rng = torch.get_rng_state()
        layer = rbm.as_layer()
        stacks = [
            greedy_layerwise([6, 3], x, kind=kind, epochs_per_layer=1, batch_size=16, seed=4)
            for kind in ("rbm", "autoencoder")
        ]
        assert torch.equal(torch.get_rng_state(), rng)
        built[global_seed] = [layer, *stacks]
    assert torch.equal(layer.linear.weight, rbm.weight) and torch.equal(layer.linear.bias, rbm.hidden_bias)
    for ours, other in zip(built[0], built[1], strict=True):  # nothing hangs on the global RNG
        assert all(torch.equal(v, other.state_dict()[k]) for k, v in ours.state_dict().items())
    # the autoencoder's first layer as built before: torch's Linear, its default init overwritten
    act = nn.Sigmoid()
    linear = models.initialize(
        nn.Linear(16, 6), recommended_initializer(act), torch.Generator().manual_seed(5)
    )
    expected = autoencoder(nn.Sequential(linear, act), x, epochs=1, lr=1e-3, batch_size=16, seed=5)
    assert torch.equal(stacks[1].hidden1.linear.weight, expected[0].weight)
    assert torch.equal(stacks[1].hidden1.linear.bias, expected[0].bias)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: RBM(4, 2).fit(torch.randn(10, 4)), DataError, "Bernoulli visible units take values in"),
        (lambda: RBM(4, 2).fit(torch.rand(10, 5)), DataError, "4 visible units; the data have 5"),
        (lambda: RBM(4, 2, "gauss"), GradwellError, "did you mean 'gaussian'"),
        (lambda: RBM(4, 0), GradwellError, "n_hidden must be a positive int"),
        (lambda: RBM(4, 2).fit(torch.rand(10, 4), k=0), GradwellError, "k must be a positive int"),
        (lambda: RBM(4, 2).fit(torch.rand(10, 4), lr=-1), GradwellError, "RBM lr must be"),
        (lambda: RBM(4, 2).fit(torch.ones(10, 4).long()), DataError, "float tensor"),
    ],
)
def test_bad_rbm_input_is_named(call, error, message):
    with pytest.raises(error, match=message):
        call()


def low_rank(generator, n=512, features=12, rank=3):
    """Gaussian data on a rank-3 subspace plus a little noise: an autoencoder can compress it."""
    z = torch.randn(n, rank, generator=generator)
    mixing = torch.randn(rank, features, generator=generator)
    return z @ mixing + 0.05 * torch.randn(n, features, generator=generator)


class Reconstruction(Callback):
    """The whole autoencoder's reconstruction error before and after training."""

    def __init__(self, x):
        self.x, self.errors = x, []

    def measure(self, run):
        with torch.no_grad():
            self.errors.append(float(((run.model.eval()(self.x) - self.x.flatten(1)) ** 2).mean()))

    def on_train_begin(self, run):
        self.model = run.model
        self.measure(run)

    def on_train_end(self, run):
        self.measure(run)


@pytest.mark.parametrize("tied", [False, True])
def test_autoencoder_reconstruction_improves_and_the_encoder_is_returned(generator, tied):
    x = low_rank(generator)
    encoder = models.mlp(12, 1, [8, 4], activation="elu", generator=generator)[:-1]
    watch = Reconstruction(x)
    rng = torch.get_rng_state()
    assert autoencoder(encoder, x, epochs=20, tied=tied, lr=0.01, callbacks=[watch]) is encoder
    assert torch.equal(torch.get_rng_state(), rng)
    assert watch.errors[1] < 0.3 * watch.errors[0]
    decoder = watch.model.decoder
    expected = ["TiedLinear", "ELU", "TiedLinear"] if tied else ["Linear", "ELU", "Linear"]
    assert [type(m).__name__ for m in decoder] == expected
    if tied:
        assert decoder[0].weight is encoder.hidden2.linear.weight and isinstance(decoder[2], TiedLinear)
        assert decoder[2](torch.ones(1, 8)).shape == (1, 12)
    else:
        assert (decoder[0].in_features, decoder[0].out_features, decoder[2].out_features) == (4, 8, 12)


def test_autoencoder_takes_image_shaped_inputs_and_binary_cross_entropy(generator):
    x = torch.rand(64, 3, 4, generator=generator)
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.Sigmoid())
    watch = Reconstruction(x)
    autoencoder(
        encoder, Split(x, torch.zeros(64)), epochs=10, loss="binary_cross_entropy", lr=0.01, callbacks=[watch]
    )
    assert watch.errors[1] < watch.errors[0]


@pytest.mark.parametrize(
    "encoder, data, options, message",
    [
        (nn.Sequential(nn.Conv1d(1, 2, 3), nn.ReLU()), torch.randn(8, 1, 5), {}, "has a Conv1d"),
        (nn.Sequential(nn.Flatten(), nn.ReLU()), torch.randn(8, 5), {}, "no Linear layer"),
        (nn.Sequential(nn.Linear(6, 3)), torch.randn(8, 5), {}, "takes 6 features, but each input has 5"),
        (nn.Sequential(nn.Linear(5, 3)), torch.randn(8, 5), {"loss": "bce"}, "unknown autoencoder loss"),
        (
            nn.Sequential(nn.Linear(5, 3)),
            torch.randn(8, 5),
            {"loss": "binary_cross_entropy"},
            "in \\[0, 1\\]",
        ),
        (nn.Sequential(nn.Linear(5, 3)), torch.randn(0, 5), {}, "non-empty float tensor"),
        (nn.Sequential(nn.Linear(5, 3)), [[1.0] * 5], {}, "must be a tensor"),
    ],
)
def test_bad_autoencoder_input_is_named(encoder, data, options, message):
    with pytest.raises(GradwellError, match=message):
        autoencoder(encoder, data, epochs=1, **options)


def test_greedy_rbm_stack_trains_each_layer_on_the_probabilities_of_the_one_below(generator):
    x = binary_patterns(generator, n=200).reshape(200, 4, 4)
    stack = greedy_layerwise([8, 5], Dataset(Split(x, torch.zeros(200)), *[Split(x[:0], x[:0])] * 2, 2, "b"),
                             kind="rbm", epochs_per_layer=3, seed=10)  # fmt: skip
    assert [name for name, _ in stack.named_children()] == ["flatten", "hidden1", "hidden2"]
    flat = x.reshape(200, 16)
    first = RBM(16, 8, generator=torch.Generator().manual_seed(11)).fit(flat, epochs=3, seed=11)
    assert torch.equal(stack.hidden1.linear.weight, first.weight)
    second = RBM(8, 5, generator=torch.Generator().manual_seed(12)).fit(
        first.transform(flat), epochs=3, seed=12
    )
    assert torch.equal(stack.hidden2.linear.weight, second.weight)
    assert torch.equal(stack.hidden2.linear.bias, second.hidden_bias)
    model = reuse(stack, drop_top=0, head=3)
    assert model(x).shape == (200, 3) and all(p.requires_grad for p in model.parameters())


def test_greedy_autoencoder_stack_leaves_earlier_layers_alone_while_a_later_one_trains(generator):
    x = low_rank(generator, n=256)
    seen = []

    def on_layer(index, stack):
        seen.append(
            {
                name: {k: v.clone() for k, v in block.state_dict().items()}
                for name, block in stack.named_children()
            }
        )

    stack = greedy_layerwise(
        [8, 6, 4], x, kind="autoencoder", activation="elu", epochs_per_layer=3, on_layer=on_layer
    )
    assert [list(s) for s in seen] == [["hidden1"], ["hidden1", "hidden2"], ["hidden1", "hidden2", "hidden3"]]
    for i, snapshot in enumerate(seen):
        name = f"hidden{i + 1}"
        block = getattr(stack, name)
        assert all(torch.equal(v, block.state_dict()[k]) for k, v in snapshot[name].items())
        init, seed = recommended_initializer(block.activation), torch.Generator().manual_seed(i + 1)
        fresh = models.initialize(nn.Linear(block.linear.in_features, block.linear.out_features), init, seed)
        assert not torch.equal(block.linear.weight, fresh.weight)  # trained, not left at its initialization
    assert isinstance(stack.hidden3.activation, nn.ELU)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"kind": "dbn"}, "unknown pretraining kind 'dbn'"),
        ({"kind": "rbm", "activation": "relu"}, "RBM layers compute sigmoid"),
        ({"widths": []}, "widths must be a non-empty list"),
        ({"widths": [4, 0]}, "widths must be a non-empty list"),
    ],
)
def test_bad_greedy_input_is_named(generator, options, message):
    arguments = {
        "widths": [4],
        "unlabeled": torch.rand(20, 6, generator=generator),
        "epochs_per_layer": 1,
        **options,
    }
    with pytest.raises(GradwellError, match=message):
        greedy_layerwise(**arguments)


class Losses(Callback):
    def __init__(self):
        self.losses = []

    def on_epoch_end(self, run, logs):
        self.losses.append(logs["loss"])


def test_masked_loss_counts_only_the_masked_positions(generator):
    x = torch.randn(6, 5, generator=generator, dtype=torch.float64)
    predictions = torch.randn(6, 5, generator=generator, dtype=torch.float64)
    mask = torch.rand(6, 5, generator=generator) < 0.4
    expected = np.mean(
        [
            (p - t) ** 2
            for p, t, m in zip(predictions.flatten(), x.flatten(), mask.flatten(), strict=True)
            if m
        ]
    )
    assert rel_error(masked_loss((predictions, mask), x), expected) < 1e-12


def test_random_shift_rolls_each_sample_by_its_own_shift(generator):
    x = torch.randn(30, 2, 9, generator=generator)
    shifted = random_shift(x, 3, generator)
    for row, out in zip(x, shifted, strict=True):
        assert any(torch.equal(row.roll(s, -1), out) for s in range(-3, 4))
    assert len({int((row.roll(1, -1) == out).all()) for row, out in zip(x, shifted, strict=True)}) == 2


@pytest.mark.parametrize("n", [1, 2, 5])
def test_pairs_are_labeled_same_exactly_when_they_come_from_one_input(generator, n):
    # identical views and a head reading -sum |z1 - z2|: logit 0 for one input, below 0 for two
    model = PairDiscrimination(nn.Identity(), 3, 0.0, 0.0, 0, generator)
    with torch.no_grad():
        model.head.weight.copy_(torch.tensor([[-1.0, -1.0, -1.0, 0.0, 0.0, 0.0]]))
        model.head.bias.zero_()
    logits, labels = model(torch.randn(n, 3, generator=generator))
    assert torch.equal(labels == 1, logits == 0)
    assert int(labels.sum()) == n and len(labels) == (1 if n == 1 else 2 * n)


@pytest.mark.parametrize("task", ["masked", "pairs"])
def test_auxiliary_tasks_learn_without_labels_and_return_the_encoder(generator, task):
    x = low_rank(generator, n=512)
    x = (x - x.mean(0)) / x.std(0)
    encoder = models.mlp(12, 1, [32, 16], activation="elu", generator=generator)[:-1]
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    watch = Losses()
    rng = torch.get_rng_state()
    result = auxiliary(encoder, x, task=task, epochs=8, lr=0.005, callbacks=[watch], seed=1)
    assert result is encoder and torch.equal(torch.get_rng_state(), rng)
    assert watch.losses[-1] < 0.7 * watch.losses[0]
    if task == "pairs":
        assert watch.losses[-1] < 0.5 * math.log(2)  # far better than chance at telling pairs apart
    assert any(not torch.equal(v, encoder.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize(
    "options, message",
    [
        ({"task": "mask"}, "did you mean 'masked'"),
        ({"mask_fraction": 1.0}, "mask_fraction must be"),
        ({"mask_fraction": 0.0}, "needs mask_fraction above 0"),
        ({"task": "pairs", "max_shift": 6}, "max_shift must be an int in 0..5"),
    ],
)
def test_bad_auxiliary_input_is_named(generator, options, message):
    encoder = nn.Sequential(nn.Linear(6, 4), nn.ReLU())
    with pytest.raises(GradwellError, match=message):
        auxiliary(encoder, torch.randn(20, 6, generator=generator), epochs=1, **options)
