"""The literature's scenarios the doctor traces (residual MLPs, a Transformer, functional ReLUs):
each gives its verdict, its control does not, and the fixes are the papers' remedies.

Each scenario runs once per test process (`result`), in the one test that reads it where it is slow,
so that pytest-xdist's workers do not each run it."""

import dataclasses
import functools
import math

import pytest
import torch

from gradwell.cli import main
from gradwell.diagnose import SCENARIOS, Thresholds, diagnose, probe, run_scenario
from gradwell.diagnose.rules import activation_growth
from gradwell.diagnose.scenarios import (
    BATCH,
    ResidualMLP,
    ScenarioResult,
    build,
    digits,
    row_transformer,
    twice_he_normal_,
)
from gradwell.models import mlp

NEW = ("resnet-no-norm", "resnet-fixup", "post-ln-high-lr", "relu-dying-functional")
# the controls: pre-LN at post-LN's learning rate (Xiong et al.'s), the dying ReLU net at a sane one
CONTROLS = {
    "pre-ln-high-lr": dataclasses.replace(
        SCENARIOS["post-ln-high-lr"],
        name="pre-ln-high-lr",
        model=functools.partial(row_transformer, norm_first=True),
    ),
    "relu-sane-lr": dataclasses.replace(SCENARIOS["relu-dying-functional"], name="relu-sane-lr", lr=0.1),
}


@functools.cache
def result(name: str) -> ScenarioResult:
    """A scenario, or a control run by run_scenario under its own name, with the default seed."""
    with pytest.MonkeyPatch.context() as patch:
        if name in CONTROLS:
            patch.setitem(SCENARIOS, name, CONTROLS[name])
        return run_scenario(name)


def names(verdicts):
    return [v.name for v in verdicts]


def verdict(report, name):
    return next(v for v in report.verdicts if v.name == name)


def test_resnet_without_normalization_grows_its_activations_and_fixup_keeps_them():
    found, control = result("resnet-no-norm"), result("resnet-fixup")
    assert found.matches and control.matches
    report = found.report
    assert report.model.residual and not report.model.post_ln
    layers = [layer.name for layer in report.layers]
    assert "blocks.0.relu" in layers and "blocks.29.add" in layers  # the functional ReLU, the "+"
    growth = verdict(report, "exploding_activations")
    # Var triples per block: std sqrt(3)^30 = 1.4e7, measured 6.5e6 from the input layer to block 30
    assert growth.evidence["growth"] > 1e6 and growth.layers == ["input", "blocks.29.add"]
    assert any("Fixup" in fix and "zero_init_residual" in fix for fix in growth.fix_texts)
    assert "add normalization in each block (BatchNorm or LayerNorm)" in growth.fix_texts
    assert any("Fixup" in fix for fix in verdict(report, "exploding_gradients").fix_texts)
    # the control: each branch's last layer at zero, every block the identity at initialization
    assert names(control.report.verdicts) == ["healthy"]
    assert activation_growth(control.report) == pytest.approx(1.0)


def test_both_sides_of_the_activation_growth_threshold():
    report = result("resnet-no-norm").report
    growth = activation_growth(report)
    assert "exploding_activations" not in names(diagnose(report, Thresholds(activation_growth=growth * 1.01)))
    assert "exploding_activations" in names(diagnose(report, Thresholds(activation_growth=growth * 0.99)))


def test_the_activation_growth_threshold_sits_between_healthy_and_exploding_nets():
    # 30 He ReLU layers (relu-he-30's network) keep their std; with twice He's variance it doubles
    # per layer (exploding's network): 2^15 in std, measured 1.5e4
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(256, 64, generator=g), torch.randint(0, 10, (256,), generator=g)
    reports = {
        init: probe(
            mlp(64, 10, depth=30, width=100, init=init, generator=torch.Generator().manual_seed(0)), x, y
        )
        for init in ("he_normal", twice_he_normal_)
    }
    healthy, exploding = reports["he_normal"], reports[twice_he_normal_]
    assert names(healthy.verdicts) == ["healthy"]
    assert activation_growth(healthy) < Thresholds().activation_growth / 30
    assert healthy.verdicts[0].evidence["activation_growth"] == activation_growth(healthy)
    found = verdict(exploding, "exploding_activations")
    assert found.evidence["growth"] > 30 * Thresholds().activation_growth
    assert not exploding.model.residual and not any("Fixup" in fix for fix in found.fix_texts)
    assert any("use He initialization" in fix for fix in found.fix_texts)  # architecture_fixes'


def test_post_ln_at_a_high_learning_rate_fails_and_pre_ln_trains():
    post, pre = result("post-ln-high-lr"), result("pre-ln-high-lr")
    assert post.matches and post.report.model.post_ln
    assert post.report.gradient_ratio < 1e-6  # measured 1.4e-9: the gradient vanishes toward the input
    assert post.training["loss_after"] > 0.9 * post.training["loss_before"]  # stays at chance, ln 10
    assert abs(post.training["loss_after"] - math.log(10)) < 0.1
    found = verdict(post.report, "vanishing_gradients")
    assert found.fix_texts[0].startswith(
        "warm the learning rate up over the first steps (Xiong et al., 2020)"
    )
    assert found.fix_texts[1].startswith("use pre-LN (norm_first=True)")
    assert not any("batch normalization" in fix for fix in found.fix_texts)  # it normalizes already
    # the control: pre-LN at the same rate, no warm-up, keeps its gradient and trains
    assert "vanishing_gradients" not in pre.observed
    assert 0.1 < pre.report.gradient_ratio < 10
    assert pre.training["loss_after"] < 0.5 * pre.training["loss_before"]
    assert not pre.matches  # as post-ln-high-lr demands: a run that fails


def test_functional_relus_die_at_a_large_learning_rate_and_not_at_a_sane_one():
    dying, sane = result("relu-dying-functional"), result("relu-sane-lr")
    assert dying.matches
    relus = [layer.name for layer in dying.report.layers if layer.kind == "relu"]
    assert relus == ["relu", "relu#2"]  # F.relu called in the model's own forward
    found = verdict(dying.report, "dead_units")
    assert found.layers == ["relu#2"] and found.evidence["dead"]["relu#2"] > 0.7
    # dead in the Monitor's samples from step 5 on, so the fix names the rate that killed them
    assert found.evidence["dead_since"] == 5
    assert any(fix.startswith("lower the learning rate (it was 1.5 at step 5)") for fix in found.fix_texts)
    assert names(sane.report.verdicts) == ["healthy"] and sane.report.verdicts[0].evidence["max_dead"] < 0.05
    assert sane.training["loss_after"] < 0.5 * sane.training["loss_before"]


def test_a_failing_scenario_matches_only_while_its_loss_does_not_halve():
    dying = result("relu-dying-functional")
    for after, matches in ((0.9 * dying.training["loss_before"], True), (math.nan, True), (0.1, False)):
        training = {**dying.training, "loss_after": after}
        assert ScenarioResult(dying.scenario, dying.report, training).matches is matches


def test_fixes_follow_the_model_facts():
    # verdicts forced by thresholds name the remedies of the model's structure: Fixup for a
    # residual net, warm-up and pre-LN for a post-LN Transformer (its facts set both ways)
    data = digits()
    x, y = data.train.x[:BATCH], data.train.y[:BATCH]
    g = torch.Generator().manual_seed(0)
    residual = probe(ResidualMLP(64, 10, depth=3, width=16, generator=g, zero_last=True), x, y)
    forced = diagnose(residual, Thresholds(exploding_ratio=0.0, activation_growth=0.5))
    assert names(forced)[:2] == ["exploding_gradients", "exploding_activations"]
    fixup = "initialize each residual branch's last layer at zero"
    assert all(any(fix.startswith(fixup) for fix in v.fix_texts) for v in forced[:2])
    transformer = probe(
        build(SCENARIOS["post-ln-high-lr"], data, torch.Generator().manual_seed(0), seed=0), x, y
    )
    for post_ln in (True, False):
        report = dataclasses.replace(
            transformer, model=dataclasses.replace(transformer.model, post_ln=post_ln)
        )
        found = diagnose(report, Thresholds(vanishing_ratio=1e3, uneven_ratio=1.0, exploding_ratio=1e-3))
        assert {"vanishing_gradients", "uneven_learning", "exploding_gradients"} <= set(names(found))
        for v in found:
            warm = any(fix.startswith("warm the learning rate up") for fix in v.fix_texts)
            pre_ln = any(fix.startswith("use pre-LN (norm_first=True)") for fix in v.fix_texts)
            assert warm is pre_ln is post_ln, (v.name, v.fix_texts)
        # pre-LN is residual and normalized already: Fixup's zero init, but no normalization to add
        exploding = next(v for v in found if v.name == "exploding_gradients").fix_texts
        assert any(fix.startswith(fixup) for fix in exploding) is not post_ln
        assert not any("add normalization" in fix or "batch normalization" in fix for fix in exploding)


def test_a_scenario_network_is_seeded_and_leaves_the_global_rng_alone():
    data, state = digits(), torch.get_rng_state()
    for name in NEW:
        a, b = (build(SCENARIOS[name], data, torch.Generator().manual_seed(0), seed=0) for _ in range(2))
        assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert torch.equal(torch.get_rng_state(), state)


def test_the_help_lists_every_scenario(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "1000")  # one line: argparse wraps long lines at hyphens
    with pytest.raises(SystemExit):
        main(["diagnose", "--help"])
    assert f"a built-in scenario: {', '.join(SCENARIOS)}, or all" in capsys.readouterr().out
