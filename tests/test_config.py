"""Config files, overrides and the errors a user sees before anything trains."""

import pytest

from gradwell import build, job
from gradwell import config as configs
from gradwell.errors import ConfigError, GradwellError


def write(tmp_path, text):
    path = tmp_path / "run.toml"
    path.write_text(text)
    return path


def test_default_config_is_the_documented_run():
    config = configs.load()
    assert config.data["name"] == "mnist1d" and config.model["batchnorm"] == "before"
    assert config.train.epochs == 15 and config.optimizer["name"] == "nadam"


def test_overrides_parse_toml_literals():
    config = configs.load(
        None,
        [
            "train.epochs=3",
            "model.hidden=[8, 4]",
            "model.activation=selu",
            "optimizer.lr=1e-3",
            "train.max_norm=2",
        ],
    )
    assert config.train.epochs == 3 and config.model["hidden"] == [8, 4]
    assert config.model["activation"] == "selu" and config.optimizer["lr"] == 0.001
    assert config.train.max_norm == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[trian]\nepochs = 1", r"unknown section 'trian' \(did you mean 'train'\?\)"),
        ("[train]\nepoch = 1", r"unknown key train.epoch \(did you mean 'epochs'\?\); valid keys: epochs"),
        ('[train]\nepochs = "ten"', r"train.epochs = 'ten' has the wrong type: expected int"),
        ("[train]\nbatch_size = 3.5", "train.batch_size = 3.5 has the wrong type: expected int"),
        ("[train]\nl2 = true", "train.l2 = True has the wrong type"),
        ("[output]\nprogress = 1", "output.progress = 1 has the wrong type: expected bool"),
        ("[train\nepochs = 1", "is not valid TOML"),
        ("data = 3", r"\[data\] must be a table"),
    ],
)
def test_config_errors_name_the_key_value_and_valid_choices(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        configs.load(write(tmp_path, text))


def test_missing_file_and_bad_overrides():
    with pytest.raises(ConfigError, match="does not exist"):
        configs.load("no/such/config.toml")
    with pytest.raises(ConfigError, match=r"section\.key=value"):
        configs.load(None, ["epochs=3"])
    with pytest.raises(ConfigError, match=r"unknown section 'modle' \(did you mean 'model'\?\)"):
        configs.load(None, ["modle.depth=3"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.activaton=relu", r"unknown key model.activaton \(did you mean 'activation'\?\)"),
        ("model.activation=rleu", r"unknown activation 'rleu' \(did you mean 'relu'\?\)"),
        ("model.depth=ten", "model.depth = 'ten' has the wrong type: expected int"),
        (
            "model.activation=3",
            r"model.activation = 3 has the wrong type: expected str \| Module \| callable \| None$",
        ),
        ("model.kind=rnn", r"unknown model kind 'rnn' \(did you mean 'cnn'\?\); valid: mlp, cnn"),
        ("optimizer.name=nadamw", r"unknown optimizer 'nadamw' \(did you mean 'nadam'"),
        ("optimizer.momentum=1.5", "momentum"),
        ("schedule.name=cosine", "unknown schedule 'cosine'"),
        ("data.name=mnst1d", r"unknown dataset 'mnst1d' \(did you mean 'mnist1d'\?\)"),
        ("data.imag=true", r"dataset 'digits' takes no option 'imag' \(did you mean 'image'\?\)"),
        ("train.device=tpu", "train.device = 'tpu' is not a device"),
        ("train.device=meta", "train.device = 'meta': gradwell trains on cpu or cuda"),
        ("train.device=mps", "train.device = 'mps': gradwell trains on cpu or cuda"),
        ("model.init=xavier", "unknown init 'xavier'; valid: auto, torch, glorot_normal"),
        ("train.batch_size=0", "batch_size must be a positive int; got 0"),
        ("train.loss=cross_entropi", r"unknown loss 'cross_entropi' \(did you mean 'cross_entropy'\?\)"),
        ("train.on_nonfinite=sto", r"unknown on_nonfinite 'sto' \(did you mean 'stop'\?\)"),
        ("train.precision=fp16", r"unknown precision 'fp16' .*; valid: fp32, bf16"),
        ("train.early_stopping=0", "patience must be a positive int; got 0"),
        ("train.max_norm=-1", r"max_norm must be a finite number in \(0, inf\); got -1"),
        ("train.l2=-1", r"l2 must be a finite number in \[0, inf\); got -1"),
        ("train.loss=mse", r"loss 'mse' compares each output with a float target of the same shape"),
    ],
)
def test_errors_surface_in_prepare_before_any_training(tmp_path, override, message):
    with pytest.raises(GradwellError, match=message):  # [train] values already as the config is read
        job.run(configs.load(None, ["data.name=digits", f"output.dir={tmp_path}", override]))
    assert not any(tmp_path.iterdir())


def test_to_dict_round_trips_through_toml(tmp_path):
    import tomli_w

    config = configs.load(None, ["train.max_norm=1.5", "model.hidden=[4]"])
    path = write(tmp_path, tomli_w.dumps(config.to_dict()))
    assert configs.load(path) == config


def test_the_default_onecycle_ends_at_its_lowest_rate_not_below_zero():
    from gradwell.train import fit

    config = configs.load(None, ["data.name=digits", "model.depth=2", "model.width=16", "train.epochs=2"])
    prepared = build.prepare(config)
    history = fit(
        prepared.model,
        prepared.dataset,
        optimizer=prepared.optimizer,
        scheduler=prepared.scheduler,
        epochs=2,
        batch_size=config.train.batch_size,
        progress=False,
    )
    final = history.metric("lr")[-1]
    assert 0 < final <= config.schedule["max_lr"] / 10 / 1000 * 1.0001  # max_lr / div / final_div


@pytest.mark.parametrize("name", ["selu_100", "batchnorm", "clipped_rmsprop"])
def test_the_example_configs_are_valid(name):
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "examples" / f"{name}.toml"
    config = configs.load(path, ["data.num_samples=200"])
    prepared = build.prepare(config)
    assert sum(p.numel() for p in prepared.model.parameters()) > 0


def test_an_override_into_a_section_that_is_not_a_table_is_a_config_error(tmp_path):
    # found by the config fuzzer: `optimizer = 67` in the file and --set optimizer.lr=0.1 was a
    # TypeError ('int' object does not support item assignment)
    path = write(tmp_path, "optimizer = 67\n")
    for override in ("optimizer.lr=0.1", "optimizer.name=sgd"):
        with pytest.raises(ConfigError, match=r"\[optimizer\] in the config is 67, not a table of keys"):
            configs.load(path, [override])


@pytest.mark.parametrize("key", ["dir", "name"])
def test_an_output_path_with_a_nul_character_is_a_config_error(key):
    # found by the command-line fuzzer: output.name = "x\0y" was a ValueError from the first mkdir
    with pytest.raises(ConfigError, match=rf"output.{key} = 'x\\x00y' holds a NUL character"):
        configs.from_dict({"output": {key: "x\0y"}})


def test_an_override_of_hidden_replaces_depth_and_width_and_the_reverse():
    widths = configs.load(None, ["model.hidden=[16, 8]"]).model
    assert widths["hidden"] == [16, 8] and "depth" not in widths and "width" not in widths
    back = configs.load(None, ["model.hidden=[16, 8]", "model.depth=2", "model.width=4"]).model
    assert (back["depth"], back["width"]) == (2, 4) and "hidden" not in back
