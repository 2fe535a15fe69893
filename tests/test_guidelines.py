"""The chapter's guidelines as code: `recommend`, `gradwell init-config`, and the doctor's fixes
made as config changes from the same records, each applied to a config and checked on the model
and optimizer it builds."""

import tomllib
import warnings
from types import SimpleNamespace

import pytest
from torch import nn

from gradwell import build, guidelines
from gradwell import config as configs
from gradwell.cli import main
from gradwell.diagnose.rules import BATCHNORM_FIX, Fix, bounded_fix, guided, lower_lr
from gradwell.errors import GradwellError
from gradwell.guidelines import GUIDELINES, Scaled, changed, recommend, resolved
from gradwell.selfnorm import SelfNormalizationWarning

TINY = ["data.name=digits", "model.depth=2", "model.width=8", "train.epochs=1", "output.progress=false"]


def test_the_default_configuration_follows_depth_and_the_variant_is_self_normalizing():
    shallow, deep = recommend(guidelines.DEEP - 1).changes, recommend(guidelines.DEEP).changes
    assert (shallow["model.activation"], shallow["model.batchnorm"]) == ("elu", "none")
    assert (deep["model.activation"], deep["model.batchnorm"]) == ("swish", "before")
    for changes in (shallow, deep):
        assert changes["model.init"] == "he_normal" and changes["optimizer.name"] == "adamw"
        assert changes["optimizer.weight_decay"] > 0 and changes["train.early_stopping"] > 0
        assert (
            changes["schedule.name"] == "onecycle"
            and changes["schedule.max_lr"] == guidelines.PEAK_LR["adamw"]
        )
    selu = recommend(100, "self_normalizing").changes
    assert [
        selu[k] for k in ("model.init", "model.activation", "model.batchnorm", "model.alpha_dropout")
    ] == [
        "lecun_normal",
        "selu",
        "none",
        True,
    ]
    assert selu["optimizer.name"] == "nesterov" and selu["schedule.max_lr"] == guidelines.PEAK_LR["nesterov"]
    performance = recommend(3, optimizer="nadam", schedule="performance").changes
    assert performance["optimizer.name"] == "nadam" and "schedule.max_lr" not in performance


@pytest.mark.parametrize("depth, kind", [(3, "default"), (12, "default"), (30, "self_normalizing")])
def test_the_toml_reads_back_as_the_recommended_config_with_every_reason(depth, kind):
    recommendation = recommend(depth, kind)
    text = recommendation.to_toml()
    assert configs.from_dict(tomllib.loads(text)).to_dict() == recommendation.config().to_dict()
    build.check_sections(recommendation.config())
    comments = " ".join(line.lstrip("# ") for line in text.splitlines() if line.startswith("#"))
    assert all(reason in comments for reason in recommendation.reasons.values())
    assert set(recommendation.reasons) <= set(recommendation.changes)


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"depth": 0}, "depth must be a positive int; got 0"),
        ({"depth": 4, "kind": "selu"}, "kind"),
        ({"depth": 4, "optimizer": "adam"}, "optimizer"),
        ({"depth": 4, "schedule": "cosine"}, "schedule"),
    ],
)
def test_bad_choices_are_named(arguments, message):
    with pytest.raises(GradwellError, match=message):
        recommend(**arguments)


def test_init_config_writes_a_config_that_trains_and_never_overwrites_by_accident(tmp_path, capsys):
    out = tmp_path / "deep.toml"
    assert main(["init-config", "--depth", "2", "--width", "8", "--data", "digits", "--out", str(out)]) == 0
    written = out.read_text()
    assert written == recommend(2, width=8, data="digits").to_toml()
    assert main(["init-config", "--depth", "3", "--out", str(out)]) == 2
    assert out.read_text() == written and "exists" in capsys.readouterr().err
    assert (
        main(["train", str(out), "--set", "train.epochs=1", "--set", f"output.dir={tmp_path}", "--json"]) == 0
    )
    assert main(["init-config", "--kind", "self-normalizing", "--depth", "5"]) == 0
    assert 'activation = "selu"' in capsys.readouterr().out


def test_scaled_changes_resolve_against_the_config_or_the_default_they_stand_for():
    lower = GUIDELINES["lower_lr"].changes
    assert resolved(configs.load(None, ["optimizer.name=sgd", "schedule.name=none"]), lower) == {
        "optimizer.lr": 0.001  # SGD's default 0.01, tenfold lower
    }
    assert resolved(configs.load(None, ["schedule.max_lr=find"]), {"schedule.max_lr": Scaled(0.5)}) == {}
    no_name = configs.from_dict({"schedule": {"name": "none"}})  # the recipe's Nadam, at its default 0.001
    assert resolved(no_name, lower) == {"optimizer.lr": 0.0001}


def model_and_optimizer(changes):
    prepared = build.prepare(changed(configs.load(None, TINY), changes))
    return prepared.model, prepared.optimizer, prepared.scheduler


def test_each_fix_the_doctor_makes_changes_the_model_it_names():
    def kinds(changes):
        return {type(m).__name__ for m in model_and_optimizer(changes)[0].modules()}

    facts = SimpleNamespace(activation="sigmoid", init="N(0, 1)")
    assert "Swish" in kinds(bounded_fix(facts).changes) and "Sigmoid" not in kinds(bounded_fix(facts).changes)
    assert "BatchNorm" in kinds(guided(BATCHNORM_FIX, "batchnorm").changes)
    leaky = [
        m
        for m in model_and_optimizer(GUIDELINES["leaky_relu"].changes)[0].modules()
        if isinstance(m, nn.LeakyReLU)
    ]
    assert leaky and all(m.negative_slope == pytest.approx(0.2) for m in leaky)
    selu = {**GUIDELINES["selu"].changes, **GUIDELINES["no_batchnorm_selu"].changes, "model.dropout": 0.1}
    with pytest.warns(SelfNormalizationWarning, match="regular dropout"):
        assert "AlphaDropout" not in kinds({**selu, "model.alpha_dropout": False})
    with warnings.catch_warnings():
        warnings.simplefilter("error", SelfNormalizationWarning)
        assert "AlphaDropout" in kinds({**selu, **GUIDELINES["alpha_dropout"].changes})
    weight = model_and_optimizer(GUIDELINES["he_init"].changes)[0].hidden2.linear.weight
    assert weight.var().item() == pytest.approx(2 / weight.shape[1], rel=0.35)  # He: Var[w] = 2 / fan_in


def test_the_clipping_and_learning_rate_fixes_reach_the_optimizer_and_the_schedule():
    clip = Fix("clip", {"optimizer.global_clipnorm": 2.5})
    _, optimizer, _ = model_and_optimizer(clip.changes)
    assert optimizer.clip == ("global_clipnorm", 2.5)
    base = configs.load(None, TINY)
    report = SimpleNamespace(history=None)
    lowered = changed(base, lower_lr(report).changes)
    assert lowered.optimizer["lr"] == pytest.approx(base.optimizer["lr"] / 10)
    assert lowered.schedule["max_lr"] == pytest.approx(base.schedule["max_lr"] / 10)
    _, _, scheduler = model_and_optimizer(lower_lr(report).changes)
    assert scheduler.optimizer.param_groups[0]["max_lr"] == pytest.approx(base.schedule["max_lr"] / 10)
