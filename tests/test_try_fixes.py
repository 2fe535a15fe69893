"""`gradwell diagnose --try-fixes`: each fix the doctor prescribes made as a config change and
tried over seeds against the original, paired, with intervals, verdicts and the best fix written
out as a config."""

import json
import math
import tomllib

import pytest

from gradwell import config as configs
from gradwell.cli import main
from gradwell.diagnose import SCENARIOS, run_scenario
from gradwell.diagnose.rules import Fix, Verdict, guided
from gradwell.experiment.records import Results, RunRecord
from gradwell.experiment.try_fixes import (
    HELPS,
    HURTS,
    ORIGINAL,
    Candidate,
    FixesTried,
    candidates,
    judge,
    try_fixes,
)
from gradwell.guidelines import GUIDELINES, changed

TINY = ["data.name=digits", "model.depth=2", "model.width=8", "train.epochs=1", "schedule.name=none"]


def test_he_initialization_helps_the_30_layer_relu_net_with_glorot_init():
    """The literature's scenario (He et al., 2015) at the smoke scale it affords: its own 10 epochs of
    SGD on the digits, 4 seeds per arm, and of the doctor's fixes only He initialization's (the
    command tries the batch normalization fix too; benchmarks/bench_try_fixes.py runs both)."""
    scenario = SCENARIOS["relu-glorot-30"]
    (vanishing,) = run_scenario(scenario.name).report.verdicts
    he_fix = next(fix for fix in vanishing.fixes if fix.changes == GUIDELINES["he_init"].changes)
    assert he_fix.text.startswith("ReLU with Glorot initialization: use He initialization")
    verdict = Verdict(vanishing.name, vanishing.summary, fixes=[he_fix])
    (he,) = try_fixes(scenario.config(), [verdict], classes=10, seeds=4, workers=0).trials
    assert he.verdict == HELPS and he.accuracy.ci[0] > 0 and he.accuracy.n == 4
    assert he.loss.mean_difference < 0  # and the validation loss falls


def test_fixes_are_tried_once_per_change_and_the_others_say_why_not():
    config = configs.load(None, TINY)
    he = guided("use He initialization", "he_init")
    verdicts = [
        Verdict("vanishing_gradients", "", fixes=[he, Fix("initialize residual branches at zero")]),
        Verdict(
            "uneven_learning", "", fixes=[guided("He, said again", "he_init"), guided("BN", "batchnorm")]
        ),
        Verdict("non_finite", "", fixes=[Fix("clip", {"optimizer.clipnorm": -1.0})]),
    ]
    found, untried = candidates(config, verdicts)
    assert [(c.label, c.fixes) for c in found] == [
        ("init=he_normal", ("use He initialization", "He, said again"))
    ]
    why = dict(untried)
    assert "not a change of a gradwell config" in why["initialize residual branches at zero"]
    assert why["BN"] == "the config has it already"  # the default config normalizes before each activation
    assert "the config refuses the change" in why["clip"] and "clipnorm" in why["clip"]


def synthetic(original, fixed, failed=()):
    """Results of two arms over seeds 0..n-1 with these validation accuracies (loss = 1 - accuracy);
    the seeds in `failed` failed in the original arm."""
    records = []
    for label, values in ((ORIGINAL, original), ("init=he_normal", fixed)):
        for seed, value in enumerate(values):
            if label == ORIGINAL and seed in failed:
                records.append(RunRecord(label, seed, "failed", "single", error="NonFiniteError: diverged"))
            else:
                history = [{"epoch": 1, "val_accuracy": value, "val_loss": 1 - value}]
                records.append(RunRecord(label, seed, "ok", "single", history))
    return Results([ORIGINAL, "init=he_normal"], list(range(len(original))), records, {})


def test_a_failed_run_scores_chance_and_the_verdict_follows_the_paired_interval():
    config = configs.load(None, TINY)
    fixed = changed(config, GUIDELINES["he_init"].changes)
    candidate = Candidate("init=he_normal", ("use He",), {"model.init": "he_normal"}, fixed)
    metrics = ("val_accuracy", "val_loss")
    results = synthetic([0.5, 0.6, 0.55, 0.0], [0.7, 0.8, 0.72, 0.75], failed=(3,))
    (trial,) = judge([candidate], results, metrics, classes=4)
    assert trial.verdict == HELPS and trial.accuracy.n == 4
    assert trial.accuracy.mean_difference == pytest.approx((0.2 + 0.2 + 0.17 + (0.75 - 0.25)) / 4)
    assert trial.loss.mean_difference == pytest.approx((-0.2 - 0.2 - 0.17 + (0.25 - math.log(4))) / 4)
    (worse,) = judge(
        [candidate], synthetic([0.7, 0.8, 0.72, 0.75], [0.5, 0.6, 0.55, 0.6]), metrics, classes=4
    )
    assert worse.verdict == HURTS
    tried = FixesTried(["vanishing_gradients"], [trial], [], results, metrics, config, 4)
    header, _, body = tried.best_config_toml().partition("\n\n")
    assert "# fix: use He" in header and "paired over 4 seeds" in header
    assert configs.from_dict(tomllib.loads(body)).to_dict() == fixed.to_dict()
    assert FixesTried([], [worse], [], results, metrics, config, 4).best_config_toml() is None


def test_the_command_writes_the_comparison_the_figure_and_the_best_fix(tmp_path, capsys):
    config = tmp_path / "sigmoid.toml"
    config.write_text(
        '[data]\nname = "digits"\n[model]\ndepth = 3\nwidth = 16\nactivation = "sigmoid"\n'
        'init = "standard_normal"\n[schedule]\nname = "none"\n[train]\nepochs = 2\n'
    )
    out = tmp_path / "tried"
    assert (
        main(
            [
                "diagnose",
                str(config),
                "--try-fixes",
                "--seeds",
                "2",
                "--workers",
                "0",
                "--out",
                str(out),
                "--json",
            ]
        )
        == 0
    )
    shown = json.loads(capsys.readouterr().out)
    assert shown["run_dir"] == str(out) and "saturation" in shown["verdicts"] and shown["seeds"] == [0, 1]
    labels = [t["label"] for t in shown["trials"]]
    assert "init=he_normal, activation=swish" in labels and "batchnorm=before" in labels
    assert json.loads((out / "fixes.json").read_text())["trials"] == shown["trials"]
    assert (out / "fixes.png").stat().st_size > 0 and Results.load(out / "results.json").labels[0] == ORIGINAL
    assert (out / "best-fix.toml").exists() == (shown["best"] is not None)


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--seeds", "3"], "--seeds only go with --try-fixes"),
        (["--try-fixes", "--seeds", "1"], "at least 2"),
        (["--scenario", "resnet-no-norm", "--try-fixes"], "builds a network or initializer of its own"),
        (["--scenario", "all", "--try-fixes"], "one scenario"),
    ],
)
def test_bad_try_fixes_options_are_refused_before_anything_trains(arguments, message, capsys):
    assert main(["diagnose", *arguments]) == 2
    assert message in capsys.readouterr().err


def test_a_folder_with_files_is_not_written_over(tmp_path, capsys):
    (tmp_path / "fixes.json").write_text("kept")
    assert main(["diagnose", "--try-fixes", "--out", str(tmp_path)]) == 2
    assert (
        "holds files already" in capsys.readouterr().err and (tmp_path / "fixes.json").read_text() == "kept"
    )
