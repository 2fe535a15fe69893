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


def test_a_model_too_deep_to_list_is_a_config_error():
    # found by the config fuzzer: depth = 2**40 ran out of memory listing the widths, and the
    # MemoryError's empty message was an IndexError in the handler meant to name it
    config = configs.from_dict({"data": {"name": "digits"}, "model": {"depth": 2**40, "width": 2}})
    with pytest.raises(ConfigError, match=r"the model of \[model\] .* cannot be built: out of memory"):
        build.prepare(config)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"optimizer": {"name": "sgd", "clipvalue": True}}, "optimizer.clipvalue = True has the wrong type"),
        ({"optimizer": {"name": "adam", "foreach": "no"}}, "optimizer.foreach = 'no' has the wrong type"),
        ({"optimizer": {"capturable": 1}}, "optimizer.capturable = 1 has the wrong type: expected bool"),
        ({"schedule": {"max_lr": 0.1}}, r"schedule.max_lr is set, but no schedule is named .*onecycle"),
        ({"schedule": {"name": "none", "s": 10}}, r"schedule.s is set, but no schedule is named"),
    ],
)
def test_mistyped_optimizer_options_and_options_of_no_schedule_are_refused(section, message):
    # found by the config fuzzer: clipvalue = true clipped at 1.0, foreach = "no" meant yes, and
    # the options of an unnamed schedule were silently unused
    config = configs.from_dict({"data": {"name": "no_such_data"}, **section})
    with pytest.raises(ConfigError, match=message):  # before any data is loaded
        build.prepare(config)


def test_early_stopping_without_validation_samples_is_refused_before_training():
    # found by the command-line fuzzer: data.val_fraction = 0 with train.early_stopping trained a
    # first epoch and wrote the run folder before EarlyStopping found no val_loss to watch
    config = configs.from_dict(
        {"data": {"name": "digits", "val_fraction": 0.0}, "train": {"early_stopping": 2}}
    )
    with pytest.raises(
        ConfigError, match=r"train.early_stopping = 2 .* no validation samples .*val_fraction = 0.0"
    ):
        build.prepare(config)


@pytest.mark.parametrize(
    ("model", "key"),
    [
        (
            {"activation": "elu", "pool_every": 2, "kind": "cnn", "activation_options": {"x": 2}},
            "activation_options",
        ),
        ({"hidden": [4, 0], "dropout": 0.0}, "hidden"),
        ({"depth": 3, "width": 4, "init": "xavier"}, "init"),
        ({"kind": "cnn", "channels": [4, 4, 4, 4], "kernel_size": 3}, None),  # no single key is to blame
    ],
)
def test_a_builder_error_is_put_on_the_key_that_holds_the_value(model, key):
    # found by the config fuzzer: bad activation_options {'x': 2} were put on model.pool_every = 2,
    # whose value the message happened to quote
    config = configs.from_dict({"data": {"name": "digits", "image": True}, "model": model})
    with pytest.raises(ConfigError) as error:
        build.prepare(config)
    assert str(error.value).startswith(f"model.{key}: " if key else "[model]: ")
