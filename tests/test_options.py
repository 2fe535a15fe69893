"""gradwell.train.options: one frozen value that checks itself, shared by fit and a config's [train]."""

import dataclasses

import pytest
import torch
from test_train import blobs

from gradwell import config as configs
from gradwell.errors import ConfigError, GradwellError
from gradwell.train import TrainOptions, fit


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"epochs": 0}, "epochs must be a positive int; got 0"),
        ({"epochs": True}, "epochs must be a positive int; got True"),
        ({"batch_size": 2.5}, "batch_size must be a positive int; got 2.5"),
        ({"loss": "hinge"}, r"unknown loss 'hinge'"),
        ({"l1": -1}, r"l1 must be a finite number in \[0, inf\)"),
        ({"max_norm": 0}, r"max_norm must be a finite number in \(0, inf\)"),
        ({"precision": "fp16"}, r"unknown precision 'fp16'"),
        ({"on_nonfinite": "ignore"}, r"unknown on_nonfinite 'ignore'"),
    ],
)
def test_options_are_checked_when_made_and_when_replaced(change, message):
    with pytest.raises(GradwellError, match=message):
        TrainOptions(**{"epochs": 1, **change})
    with pytest.raises(GradwellError, match=message):
        TrainOptions(epochs=1).replace(**change)


def test_options_are_frozen_and_a_config_section_is_options_with_the_jobs_defaults():
    options = TrainOptions(epochs=2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.epochs = 3
    train = configs.load(None).train
    assert isinstance(train, TrainOptions) and (train.epochs, train.batch_size) == (15, 64)
    assert (options.batch_size, TrainOptions(epochs=2, batch_size=10).steps(95)) == (32, 20)


def test_fit_takes_options_whole_or_as_keywords_and_names_a_wrong_keyword():
    runs = []
    for call in (
        {"options": TrainOptions(epochs=2, batch_size=16, seed=3)},
        {"epochs": 2, "batch_size": 16, "seed": 3},
    ):
        model = torch.nn.Sequential(torch.nn.Linear(8, 3))
        torch.nn.init.zeros_(model[0].weight), torch.nn.init.zeros_(model[0].bias)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        runs.append(fit(model, blobs(n=64), optimizer=optimizer, progress=False, **call).metric("loss"))
    assert runs[0] == runs[1]
    model = torch.nn.Sequential(torch.nn.Linear(8, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(GradwellError, match=r"unknown training option 'epoch' \(did you mean 'epochs'\?\)"):
        fit(model, blobs(n=64), optimizer=optimizer, epoch=2)
    with pytest.raises(ConfigError, match="fit needs epochs"):
        fit(model, blobs(n=64), optimizer=optimizer)
