"""Property: whatever a config holds, gradwell trains or raises its own documented error.

Never a bare exception from inside torch, numpy or the standard library: a config either passes
every check and trains, or fails with a GradwellError (ConfigError, DataError, ...) that names
the problem, before anything is written.
"""

import math

import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gradwell import build
from gradwell import config as configs
from gradwell.errors import GradwellError

junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 70),
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.text(max_size=8),
    st.lists(st.integers(-2, 40), max_size=3),
)
names = {
    "activation": st.sampled_from(
        ["relu", "selu", "swish", "gelu_sigmoid", "leaky_relu", "tanh", "rleu", ""]
    ),
    "init": st.sampled_from(["auto", "he_normal", "lecun_uniform", "torch", "xavier"]),
    "batchnorm": st.sampled_from([None, "before", "after", "middle"]),
    "name": st.sampled_from(
        ["sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "nadam", "adamw", "lion"]
    ),
    "schedule": st.sampled_from(
        ["none", "power", "exponential", "piecewise", "performance", "onecycle", "cosine"]
    ),
}


def section(known: dict[str, st.SearchStrategy]) -> st.SearchStrategy:
    """A config section: some known keys with plausible or junk values, maybe an unknown key."""
    keys = st.dictionaries(st.sampled_from(sorted(known)), st.none(), max_size=len(known))
    # mostly plausible values, sometimes junk, rarely an unknown key: most configs get to train
    values = {k: st.one_of(v, v, v, v, v, v, junk) for k, v in known.items()}
    plausible = keys.flatmap(lambda chosen: st.fixed_dictionaries({k: values[k] for k in chosen}))
    return st.one_of(*[plausible] * 9, st.fixed_dictionaries({"unknwon": junk}))


model = section({
    "hidden": st.lists(st.integers(1, 16), max_size=3), "activation": names["activation"],
    "init": names["init"], "batchnorm": names["batchnorm"], "dropout": st.floats(-0.5, 1.5),
    "depth": st.integers(0, 3), "width": st.integers(0, 16), "kind": st.sampled_from(["mlp", "cnn", "rnn"]),
})  # fmt: skip
optimizer = section({
    "name": names["name"], "lr": st.floats(-1, 1), "momentum": st.floats(-1, 2),
    "global_clipnorm": st.floats(-1, 5), "clipvalue": st.floats(0, 5), "rho": st.floats(-1, 2),
})  # fmt: skip
schedule = section({"name": names["schedule"], "s": st.integers(-5, 50), "max_lr": st.floats(0, 1)})
train = section({
    "epochs": st.integers(-1, 2), "batch_size": st.integers(-1, 300), "l1": st.floats(-1, 1),
    "l2": st.floats(-1, 1), "max_norm": st.floats(-1, 3),
    "loss": st.sampled_from(["cross_entropy", "mse", "hinge"]),
    "on_nonfinite": st.sampled_from(["stop", "skip", "ignore"]),
    "precision": st.sampled_from(["fp32", "bf16", "fp8"]),
    "device": st.sampled_from(["auto", "cpu", "auto", "cpu", "auto", "cuda:7", "meta", "mps"]),
    "early_stopping": st.integers(-1, 3), "fast": st.booleans(),
})  # fmt: skip
data = section(
    {"val_fraction": st.floats(-0.2, 1.2), "test_fraction": st.floats(-0.2, 1.2), "seed": st.integers(-1, 3)}
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model=model, optimizer=optimizer, schedule=schedule, train=train, data=data)
def test_a_config_trains_or_fails_with_a_gradwell_error(model, optimizer, schedule, train, data):
    raw = {
        "data": {"name": "digits", **data},
        "model": model,
        "optimizer": optimizer,
        "train": train,
        "schedule": {"name": "none"} if "name" not in schedule else schedule,
    }
    try:
        config = configs.from_dict(raw)
        prepared = build.prepare(config, epochs=1)
        history = prepared.fit(progress=False)
    except GradwellError as error:
        event(f"refused: {type(error).__name__}")
        assert str(error)
        return
    event("trained")
    assert len(history.epochs) == prepared.config.train.epochs
    assert all(math.isfinite(v) or k == "loss" for k, v in history.epochs[-1].items())
    assert torch.is_tensor(next(prepared.model.parameters()))
