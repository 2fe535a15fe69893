"""GAN pretraining: the losses, D's reusable lower layers, seeding, learning, the doctor, bad input."""

import math
import statistics

import pytest
import torch
from conftest import rel_error
from torch import nn

from gradwell import models
from gradwell.data import Dataset, Split
from gradwell.errors import DataError, GradwellError
from gradwell.pretrain import GANPretraining, autoencoder, gan
from gradwell.pretrain.gan import discriminator_loss, generator_loss
from gradwell.transfer import fine_tune, reuse


def clusters(generator, n=256, features=8):
    """Two Gaussian clusters, far apart, and which cluster each point came from."""
    y = torch.randint(0, 2, (n,), generator=generator)
    centers = 2 * torch.randn(2, features, generator=generator)
    return centers[y] + 0.5 * torch.randn(n, features, generator=generator), y


def blobs(generator, n=64, channels=1, size=28):
    """Images of one bright Gaussian blob each, at a random place: values in [0, 1]."""
    grid = torch.arange(size, dtype=torch.float32)
    centers = torch.rand(n, 2, generator=generator) * size
    dy = (grid[None, :] - centers[:, :1]) ** 2  # (n, size)
    dx = (grid[None, :] - centers[:, 1:]) ** 2
    image = torch.exp(-(dy[:, :, None] + dx[:, None, :]) / 8)  # (n, size, size)
    return image[:, None].expand(n, channels, size, size).contiguous()


def few_labels(x, y, n=32):
    return Dataset(Split(x[:n], y[:n]), Split(x[n:], y[n:]), Split(x[n:], y[n:]), 2, "clusters")


def test_losses_are_the_formulas():
    real, fake = torch.tensor([2.0, -1.0, 0.5]), torch.tensor([-3.0, 0.2, 1.0])
    sigmoid = torch.sigmoid
    expected = -(torch.log(sigmoid(real)).mean() + torch.log(1 - sigmoid(fake)).mean()) / 2
    assert rel_error(discriminator_loss(real, fake), expected) < 1e-6
    assert rel_error(generator_loss(fake), -torch.log(sigmoid(fake)).mean()) < 1e-6  # non-saturating


def test_vector_layers_map_inputs_to_features_and_plug_into_reuse_and_fine_tune(generator):
    x, y = clusters(generator)
    rng = torch.get_rng_state()
    result = gan(x, [16, 8], epochs=2, batch_size=32, seed=1)
    assert torch.equal(torch.get_rng_state(), rng)
    assert isinstance(result, GANPretraining) and result.reports == {}
    assert [name for name, _ in result.layers.named_children()] == ["hidden1", "hidden2"]
    assert isinstance(result.layers.hidden1.activation, nn.LeakyReLU)
    assert result.layers.hidden1.activation.negative_slope == 0.2
    assert result.layers(x).shape == (256, 8) and result.discriminator(x).shape == (256, 1)
    assert result.discriminator.layers is result.layers
    assert result.generator(torch.zeros(5, 32)).shape == (5, 8)
    model = reuse(result.layers, drop_top=0, head=2)  # as a greedy_layerwise stack
    history = fine_tune(model, few_labels(x, y), frozen_epochs=1, epochs=1, lr=1e-3)
    assert [logs["phase"] for logs in history.epochs] == [1, 2] and model(x).shape == (256, 2)
    assert all(p.requires_grad for p in model.parameters())


def test_a_module_of_layers_is_trained_in_place_as_autoencoder_takes_it(generator):
    x, y = clusters(generator)
    nets = [models.mlp(8, 2, [16, 8], activation="elu", generator=torch.Generator().manual_seed(0))]
    nets.append(models.mlp(8, 2, [16, 8], activation="elu", generator=torch.Generator().manual_seed(0)))
    before = nets[0].hidden1.linear.weight.clone()
    result = gan(x, nets[0][:-1], epochs=1, batch_size=32)
    autoencoder(nets[1][:-1], x, epochs=1)
    assert not torch.equal(nets[0].hidden1.linear.weight, before)
    assert result.layers.hidden1 is nets[0].hidden1
    assert [m.out_features for m in result.generator if isinstance(m, nn.Linear)] == [8, 16, 8]
    for net in nets:  # the same user code after either pretraining
        model = reuse(net, drop_top=1, head=2)
        fine_tune(model, few_labels(x, y), frozen_epochs=1, epochs=1, lr=1e-3)
        assert model(x).shape == (256, 2)


@pytest.mark.parametrize("channels, size", [(1, 28), (3, 32)])
def test_dcgan_layers_give_features_and_fakes_in_the_data_range(generator, channels, size):
    x = blobs(generator, channels=channels, size=size)
    result = gan(x, [8, 16], epochs=1, batch_size=32)
    assert [name for name, _ in result.layers.named_children()] == ["conv1", "conv2", "pool", "flatten"]
    assert result.layers.conv1.conv.stride == (2, 2) and isinstance(result.layers.conv2.norm, nn.BatchNorm2d)
    assert result.layers(x).shape == (64, 16)
    with torch.no_grad():
        fakes = result.generator.eval()(torch.randn(4, 32, generator=generator))
    assert fakes.shape == (4, channels, size, size)
    assert float(fakes.min()) >= float(x.min()) and float(fakes.max()) <= float(x.max())
    assert any(isinstance(m, nn.ConvTranspose2d) for m in result.generator.modules())
    model = reuse(result.layers, drop_top=0, head=3)
    assert model(x).shape == (64, 3)


def test_a_seed_gives_the_same_networks_and_another_seed_others(generator):
    x, _ = clusters(generator, n=64)
    runs = [gan(x, [8, 4], epochs=1, batch_size=16, seed=seed) for seed in (5, 5, 6)]
    states = [
        {**run.discriminator.state_dict(), **{f"g.{k}": v for k, v in run.generator.state_dict().items()}}
        for run in runs
    ]
    assert all(torch.equal(v, states[1][k]) for k, v in states[0].items())
    assert runs[0].history == runs[1].history
    weight = "layers.hidden1.linear.weight"
    assert not torch.equal(states[0][weight], states[2][weight])
    assert runs[0].history["d_loss"] != runs[2].history["d_loss"]


def test_the_discriminator_learns_to_tell_real_from_fake(generator):
    x, _ = clusters(generator)
    history = gan(x, [16, 8], epochs=4, batch_size=32, lr=1e-3, seed=3).history
    assert len(history["d_loss"]) == 32  # 8 batches a pass, one D and one G step each
    first, last = (statistics.mean(history["d_loss"][s]) for s in (slice(0, 8), slice(-8, None)))
    assert first > math.log(2) > last + 0.05  # from worse than guessing to telling them apart
    gap = statistics.mean(history["d_real"][-8:]) - statistics.mean(history["d_fake"][-8:])
    assert gap > 0.05


@pytest.mark.parametrize("images", [False, True])
def test_the_doctor_watches_both_networks(generator, images):
    x = blobs(generator, n=64, size=28) if images else clusters(generator, n=64)[0]
    result = gan(x, [4, 8], epochs=2, batch_size=16, watch_every=3)  # 8 steps of each
    assert set(result.reports) == {"generator", "discriminator"}
    for report in result.reports.values():
        assert report.history.steps == [0, 3, 6]
    layers = result.reports["discriminator"].history.layers
    assert layers[-1] == "output" and not any("#" in name for name in layers)  # one D pass per step


@pytest.mark.parametrize(
    "data, options, error, message",
    [
        (torch.randn(8, 3, 4), {}, DataError, r"vectors \(N, features\) or images"),
        (torch.randn(1, 4), {}, DataError, "at least 2 unlabeled inputs; got 1"),
        (torch.tensor([[0.0, math.nan], [1.0, 2.0]]), {}, DataError, "NaN or infinite"),
        (torch.ones(8, 4, dtype=torch.long), {}, DataError, "float tensor"),
        ("pixels", {}, DataError, "must be a tensor"),
        (torch.zeros(8, 1, 28, 28), {}, DataError, "images are constant"),
        (torch.rand(8, 1, 30, 30), {"layers": [4, 8]}, GradwellError, "divisible by 4"),
        (torch.randn(8, 4), {"layers": [4, 0]}, GradwellError, "positive ints"),
        (torch.randn(8, 4), {"epochs": 0}, GradwellError, "epochs must be a positive int"),
        (torch.randn(8, 4), {"beta1": 1.0}, GradwellError, "beta1"),
        (torch.randn(8, 4), {"layers": nn.Sequential(nn.Tanh())}, GradwellError, "these have none"),
    ],
)
def test_bad_input_is_named(data, options, error, message):
    with pytest.raises(error, match=message):
        gan(data, **{"epochs": 1, **options})
