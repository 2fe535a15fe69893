"""gradwell.build: one recipe from a config to a trained model, whoever asks for it."""

import dataclasses

import pytest
import torch

from gradwell import build
from gradwell import config as configs
from gradwell.errors import ConfigError

SMALL = ["data.name=digits", "model.depth=2", "model.width=16", "train.epochs=3", "output.progress=false"]


def test_prepare_sizes_the_schedule_for_the_epochs_it_is_given():
    config = configs.load(None, SMALL)  # the default 1cycle schedule
    samples = len(build.load_data(config).train)
    three, one = build.prepare(config), build.prepare(config, epochs=1)
    assert three.steps == 3 * -(-samples // 64) and three.scheduler.total_steps == three.steps
    assert one.steps == -(-samples // 64) and one.scheduler.total_steps == one.steps
    assert one.config.train == dataclasses.replace(config.train, epochs=1)


def test_fit_trains_the_prepared_run_and_refuses_to_change_its_length():
    prepared = build.prepare(configs.load(None, [*SMALL, "train.epochs=1", "train.early_stopping=1"]))
    with pytest.raises(ConfigError, match="epochs changes the run's step count"):
        prepared.fit(epochs=2)
    history = prepared.fit(seed=5)  # an option that leaves the step count alone
    assert len(history.epochs) == 1 and history.path.startswith("training path:")


def test_the_recipe_builds_each_seeds_model_as_a_run_of_that_seed_would():
    config = configs.load(None, SMALL)
    recipe = build.recipe(config)
    first, again, other = recipe.model(1), recipe.model(1), recipe.model(2)
    assert all(torch.equal(a, b) for a, b in zip(first.parameters(), again.parameters(), strict=True))
    assert not torch.equal(first[-1].weight, other[-1].weight)
    seeded = build.prepare(configs.load(None, [*SMALL, "train.seed=1"])).model
    assert all(torch.equal(a, b) for a, b in zip(first.parameters(), seeded.parameters(), strict=True))


def test_a_bad_train_value_given_to_prepare_is_a_config_error_before_anything_loads():
    config = configs.load(None, ["data.name=no_such_data"])  # loading would fail with another error
    with pytest.raises(ConfigError, match="epochs must be a positive int; got 0"):
        build.prepare(config, epochs=0)
    with pytest.raises(ConfigError, match="unknown training option 'epoch'"):
        build.prepare(config, epoch=2)
