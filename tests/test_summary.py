"""The Keras-style summary of a model (gradwell.models.summary), with Keras as the oracle of its counts."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from gradwell.errors import GradwellError
from gradwell.models import cnn, mlp, summary


def keras_counts(layers):
    import keras

    model = keras.Sequential([keras.Input((28, 28)), *layers])
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    non_trainable = sum(int(np.prod(w.shape)) for w in model.non_trainable_weights)
    return trainable, non_trainable


def test_summary_counts_match_keras_for_the_chapters_batchnorm_model():
    import keras

    model = mlp((28, 28), 10, [300, 100], batchnorm="after", input_batchnorm=True)
    result = summary(model, (28, 28))
    expected = keras_counts(
        [
            keras.layers.Flatten(),
            keras.layers.BatchNormalization(),
            keras.layers.Dense(300, activation="relu"),
            keras.layers.BatchNormalization(),
            keras.layers.Dense(100, activation="relu"),
            keras.layers.BatchNormalization(),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    assert (result.trainable, result.non_trainable) == expected
    rows = {row.name: row for row in result.rows}
    assert (rows["input_norm"].trainable, rows["input_norm"].non_trainable) == (2 * 784, 2 * 784)
    assert rows["hidden1.linear"].trainable == 784 * 300 + 300
    assert rows["hidden1.norm"].output_shape == (None, 300) and rows["output"].output_shape == (None, 10)
    assert f"{result.total:,}" in str(result) and "hidden2.norm" in str(result)
    assert json.loads(json.dumps(result.to_dict()))["total"] == result.total


def test_summary_counts_without_bias_before_batchnorm_match_keras():
    import keras

    model = mlp((28, 28), 10, [300, 100], batchnorm="before")
    expected = keras_counts(
        [
            keras.layers.Flatten(),
            keras.layers.Dense(300, use_bias=False),
            keras.layers.BatchNormalization(),
            keras.layers.Activation("relu"),
            keras.layers.Dense(100, use_bias=False),
            keras.layers.BatchNormalization(),
            keras.layers.Activation("relu"),
            keras.layers.Dense(10),
        ]
    )
    result = summary(model)
    assert (result.trainable, result.non_trainable) == expected
    assert result.rows[0].output_shape == (None, 784) and result.rows[-1].output_shape == (None, 10)


def test_summary_counts_frozen_parameters_and_shared_ones_once():
    model = mlp(10, 4, [6])
    model.hidden1.linear.weight.requires_grad_(False)
    result = summary(model)
    assert (result.trainable, result.non_trainable) == (6 + 4 * 6 + 4, 60)
    tied = nn.Sequential(nn.Linear(5, 5), nn.Linear(5, 5))
    tied[1].weight = tied[0].weight
    assert summary(tied).total == 25 + 5 + 5


def test_summary_has_no_side_effects():
    model = mlp(12, 3, [8], batchnorm="after", dropout=0.5, input_batchnorm=True)
    model.train()
    model(torch.randn(32, 12))
    model.hidden1.eval()
    modes = {name: m.training for name, m in model.named_modules()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    example = torch.randn(4, 12)
    rng = torch.get_rng_state()
    summary(model, example)
    assert modes == {name: m.training for name, m in model.named_modules()}
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state())


def test_summary_of_a_lazy_model_needs_an_example():
    model = nn.Sequential(nn.LazyLinear(7), nn.ReLU())
    with pytest.raises(GradwellError, match="example"):
        summary(model)
    assert summary(model, (5,)).trainable == 5 * 7 + 7


def test_summary_uses_the_input_shape_the_builders_record():
    dense = mlp((4, 5), 3, [8], batchnorm="before")
    conv = cnn((2, 12), 3, channels=[4])
    assert dense.input_shape == (4, 5) and conv.input_shape == (2, 12)
    for model in (dense, conv):
        shown = summary(model)
        assert shown == summary(model, model.input_shape)
        assert shown.rows[-1].output_shape == (None, 3)
