"""Transfer learning: clone, reuse, freeze / unfreeze, fine_tune, layerwise_lr, the case study."""

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import gradwell
from test_train import blobs as train_blobs
from torch import nn

from gradwell import models, optim
from gradwell.data import Dataset
from gradwell.errors import CheckpointError, GradwellError
from gradwell.experiment.transfer_study import load_study_config, study
from gradwell.norm import BatchNorm
from gradwell.train import Callback, fit
from gradwell.transfer import (
    clone,
    fine_tune,
    freeze,
    layerwise_lr,
    reuse,
    unfreeze,
)


def blobs(n=192, features=12, classes=3, seed=0) -> Dataset:
    """test_train's blobs with the centres 2 apart and 12 features, the data these tests were set for."""
    return train_blobs(n, features, classes, seed, spread=2.0)


def model_a(seed=0, **options):
    return models.mlp(12, 8, [16, 16, 16], generator=torch.Generator().manual_seed(seed), **options)


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def unchanged(before, module):
    after = module.state_dict()
    return all(torch.equal(before[k], after[k]) for k in before)


def train(model, data, epochs=2, lr=0.05, seed=0):
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = optim.create("momentum", params, lr=lr)
    return fit(model, data, optimizer=optimizer, epochs=epochs, batch_size=32, seed=seed, progress=False)


def warm_up_batchnorm(model, generator, steps=3):
    """Training-mode passes, so moving statistics differ from their (0, 1) start."""
    with torch.no_grad():
        for _ in range(steps):
            model.train()(torch.randn(32, 12, generator=generator) * 3 + 1)


def test_clone_copies_weights_and_training_it_leaves_the_original_bitwise_unchanged(generator):
    original = model_a(batchnorm="before")
    warm_up_batchnorm(original, generator)
    before = snapshot(original)
    copy = clone(original)
    x = torch.randn(20, 12, generator=generator)
    assert torch.equal(copy.eval()(x), original.eval()(x))
    original_storage = {t.untyped_storage().data_ptr() for t in original.state_dict().values()}
    assert not original_storage & {t.untyped_storage().data_ptr() for t in copy.state_dict().values()}
    train(copy, blobs(classes=8))
    assert unchanged(before, original)
    assert not unchanged(before, copy)  # weights and BatchNorm statistics moved


def test_clone_refuses_a_model_whose_lazy_layers_have_not_seen_a_batch():
    with pytest.raises(GradwellError, match="lazy"):
        clone(nn.Sequential(nn.LazyLinear(4), nn.ReLU()))


def test_reuse_keeps_the_lower_layers_weights_and_replaces_the_head(generator):
    original = model_a(batchnorm="after")
    warm_up_batchnorm(original, generator)
    before = snapshot(original)
    new = reuse(original, head=2, generator=generator)
    assert [name for name, _ in new.named_children()] == [name for name, _ in original.named_children()]
    assert (new.output.in_features, new.output.out_features) == (16, 2)
    kept = {k: v for k, v in new.state_dict().items() if not k.startswith("output")}
    assert kept and all(torch.equal(v, before[k]) for k, v in kept.items())
    x = torch.randn(20, 12, generator=generator)
    assert torch.equal(new[:-1].eval()(x), original[:-1].eval()(x))
    train(new, blobs(classes=2))
    assert unchanged(before, original)
    assert reuse(original).output.out_features == 8  # None: as many classes as A
    deeper = reuse(original, drop_top=2, head=5)
    assert list(deeper.named_children())[-2][0] == "hidden2" and deeper.output.in_features == 16
    head = nn.Sequential(nn.Linear(16, 4), nn.ReLU(), nn.Linear(4, 2))
    assert reuse(original, head=head).output is head


def test_reuse_stacks_a_head_on_a_model_without_output_layer(generator):
    stack = nn.Sequential(nn.Linear(12, 10), nn.Sigmoid(), nn.Linear(10, 6), nn.Sigmoid())
    new = reuse(stack, drop_top=0, head=3, generator=generator)
    assert len(new) == 5 and new.output.in_features == 6 and new(torch.randn(4, 12)).shape == (4, 3)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m: reuse(m, drop_top=5), "drop_top=5 is invalid: the model has 5 top-level layers"),
        (lambda m: reuse(m, drop_top=-1), "drop_top=-1"),
        (lambda m: reuse(m, head=nn.Linear(7, 2)), "takes 7 input features, but the reused layers output 16"),
        (lambda m: reuse(m, head=0), "head=0 is invalid"),
        (lambda m: reuse(m, drop_top=0), "pass head=K"),
        (lambda m: reuse(nn.ModuleList(m), head=2), "needs an nn.Sequential"),
        (lambda m: freeze([m, "hidden1"]), "takes modules"),
    ],
)
def test_bad_reuse_arguments_get_a_clear_error(call, message):
    model = models.mlp(12, 8, [16, 16, 16], input_batchnorm=True)
    with pytest.raises(GradwellError, match=message):
        call(model)


def mixed_batchnorm_model(generator):
    """Both kinds of BatchNorm: torch's (needs a hook to stay frozen) and gradwell's (a flag)."""
    model = nn.Sequential(
        nn.Linear(12, 16),
        nn.BatchNorm1d(16),
        nn.ReLU(),
        nn.Linear(16, 16),
        BatchNorm(16),
        nn.ReLU(),
        nn.Linear(16, 3),
    )
    with torch.no_grad():
        for module in model:
            if isinstance(module, nn.Linear):
                module.weight.normal_(0, 0.5, generator=generator)
    warm_up_batchnorm(model, generator)
    return model


def test_frozen_weights_and_batchnorm_statistics_stay_put_in_training_mode(generator):
    model = mixed_batchnorm_model(generator)
    lower, top = model[:6], model[6]
    assert freeze(lower) is lower
    before_lower, before_top = snapshot(lower), snapshot(top)
    x = torch.randn(40, 12, generator=generator)
    expected = model.eval()(x)
    assert torch.equal(model.train()(x), expected)  # frozen BatchNorms normalize with their moving statistics
    train(model, blobs())
    assert unchanged(before_lower, lower) and not unchanged(before_top, top)
    assert all(not p.requires_grad for p in lower.parameters())

    copy = clone(model)  # the clone is frozen too, and unfreezes on its own
    unfreeze(copy)
    train(copy, blobs())
    assert unchanged(before_lower, lower)
    changed = copy.state_dict()
    assert not torch.equal(changed["1.running_mean"], before_lower["1.running_mean"])
    assert not torch.equal(changed["4.running_var"], before_lower["4.running_var"])
    assert not torch.equal(changed["0.weight"], before_lower["0.weight"])

    unfreeze(lower)
    train(model, blobs())
    assert not torch.equal(model[1].running_mean, before_lower["1.running_mean"])
    assert not torch.equal(model[3].weight, before_lower["3.weight"])


class Recorder(Callback):
    """What each fit of fine_tune starts with: its optimizer's groups and state, the weights."""

    def __init__(self):
        self.phases = []

    def on_train_begin(self, run):
        groups = run.optimizer.param_groups
        self.phases.append(
            {
                "lrs": [g["lr"] for g in groups],
                "params": {id(p) for g in groups for p in g["params"]},
                "state": len(run.optimizer.state),
                "weights": snapshot(run.model),
            }
        )


def test_fine_tune_trains_the_head_first_then_the_top_reused_layers_at_a_tenth_of_the_rate():
    source = model_a()
    train(source, blobs(classes=8, seed=1))
    model = reuse(source, head=3, generator=torch.Generator().manual_seed(0))
    recorder = Recorder()
    history = fine_tune(
        model,
        blobs(),
        frozen_epochs=2,
        epochs=3,
        lr=0.02,
        unfreeze_top=2,
        optimizer="momentum",
        callbacks=[recorder],
    )
    first, second = recorder.phases
    head = {id(p) for p in model.output.parameters()}
    top_two = head | {id(p) for layer in (model.hidden2, model.hidden3) for p in layer.parameters()}
    assert first["params"] == head and second["params"] == top_two
    assert first["lrs"] == [0.02] and second["lrs"] == [pytest.approx(0.002)]
    assert first["state"] == 0 and second["state"] == 0  # a fresh optimizer, no momentum carried over
    phase_two_start = second["weights"]
    assert all(
        torch.equal(first["weights"][k], v) for k, v in phase_two_start.items() if not k.startswith("output")
    )
    assert not torch.equal(first["weights"]["output.weight"], phase_two_start["output.weight"])
    final = model.state_dict()
    assert torch.equal(final["hidden1.linear.weight"], phase_two_start["hidden1.linear.weight"])
    assert not torch.equal(final["hidden2.linear.weight"], phase_two_start["hidden2.linear.weight"])
    assert [(e["epoch"], e["phase"]) for e in history.epochs] == [(1, 1), (2, 1), (3, 2), (4, 2), (5, 2)]
    assert [e["lr"] for e in history.epochs] == pytest.approx([0.02] * 2 + [0.002] * 3)
    assert history.last["val_accuracy"] > 0.8


def test_fine_tune_with_layer_decay_and_without_a_frozen_phase():
    model = reuse(model_a(), head=3)
    recorder = Recorder()
    history = fine_tune(
        model, blobs(), frozen_epochs=0, epochs=1, lr=0.1, layer_decay=0.5, callbacks=[recorder]
    )
    assert history.frozen.epochs == [] and len(recorder.phases) == 1
    assert recorder.phases[0]["lrs"] == pytest.approx([0.01, 0.005, 0.0025, 0.00125])


@pytest.mark.parametrize(
    "options, message",
    [
        ({"frozen_epochs": 0, "epochs": 0}, "both are 0"),
        ({"new_layers": 4}, "new_layers=4 is invalid"),
        ({"unfreeze_top": 4}, "unfreeze_top=4 is invalid"),
        ({"lr": -1.0}, "lr must be a finite number"),
        ({"layer_decay": 0.0}, "layer_decay must be a finite number in"),
        ({"optimizer": "nadma"}, "did you mean 'nadam'"),
    ],
)
def test_bad_fine_tune_arguments_are_named(options, message):
    model = reuse(model_a(), head=3)
    with pytest.raises(GradwellError, match=message):
        fine_tune(model, blobs(), **{"frozen_epochs": 1, "epochs": 1, "lr": 0.01, **options})


def test_fine_tune_refuses_a_head_of_the_wrong_size_before_training():
    model = reuse(model_a())  # 8 outputs, for 3 classes
    before = snapshot(model)
    with pytest.raises(GradwellError, match=r"outputs 8 logits, but blobs has 3 classes; .* head=3"):
        fine_tune(model, blobs(), frozen_epochs=1, epochs=1, lr=0.01)
    assert unchanged(before, model)


def test_layerwise_lr_decays_from_the_top_and_skips_frozen_parameters():
    model = models.mlp((3, 4), 5, [8, 8, 8], input_batchnorm=True)  # flatten, input_norm, 3 hidden, output
    freeze(model.hidden2)
    groups = layerwise_lr(model, 0.1, 0.5)
    assert [g["name"] for g in groups] == ["output", "hidden3", "hidden1", "input_norm"]
    assert [g["lr"] for g in groups] == pytest.approx([0.1, 0.05, 0.0125, 0.00625])
    assert sum(len(g["params"]) for g in groups) == len([p for p in model.parameters() if p.requires_grad])
    optimizer = optim.create("sgd", groups)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.1, 0.05, 0.0125, 0.00625])
    for decay in (0.0, 1.5, math.nan):
        with pytest.raises(GradwellError, match="decay must be a finite number in"):
            layerwise_lr(model, 0.1, decay)


TINY = """
[data]
name = "npz:blobs.npz"
[model]
kind = "mlp"
hidden = [32, 32]
[optimizer]
name = "nadam"
lr = 0.005
[train]
epochs = 3
[transfer]
classes_a = [0, 1, 2, 3, 4, 5, 6, 7]
limit_train = 50
frozen_epochs = 1
epochs = 1
lr = 0.01
"""


@pytest.fixture
def study_config(tmp_path):
    """TINY and the 10-class blobs it reads: no dataset library to import in the subprocess."""
    data = blobs(n=600, classes=10)
    np.savez(tmp_path / "blobs.npz", x=data.train.x.numpy(), y=data.train.y.numpy())
    path = tmp_path / "study.toml"
    path.write_text(TINY.replace("blobs.npz", (tmp_path / "blobs.npz").as_posix()))
    return path


def test_study_config_reads_the_transfer_section_and_overrides(study_config):
    config, options = load_study_config(study_config, ["transfer.limit_train=20", "train.epochs=2"])
    assert options.limit_train == 20 and options.classes_b is None and config.train.epochs == 2
    with pytest.raises(GradwellError, match=r"unknown key transfer\.frozen_epoch"):
        load_study_config(study_config, ["transfer.frozen_epoch=3"])
    with pytest.raises(GradwellError, match="drop_top=4 is invalid: the model has 3 top-level layers"):
        study(*load_study_config(study_config, ["transfer.drop_top=4", "train.epochs=1000"]))


def test_study_reuses_a_model_loaded_from_a_train_run_folder(tmp_path, study_config):
    from gradwell import job

    config, options = load_study_config(study_config, ["train.epochs=1", "transfer.epochs=1"])
    trained = job.run(
        replace(config, output=replace(config.output, dir=str(tmp_path / "runs"), progress=False))
    )
    result = study(config, replace(options, model_a=str(trained.run_dir)))
    assert set(result.runs[0]) == {"seed", "b_scratch", "b_on_a", "difference"}
    with pytest.raises(CheckpointError, match="is not a run folder of gradwell train"):
        study(config, replace(options, model_a=str(tmp_path)))


def test_the_transfer_command_runs_the_pipeline_over_seeds(tmp_path, study_config):
    done = gradwell("transfer", str(study_config), "--seeds", "2", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert [run["seed"] for run in result["runs"]] == [0, 1]
    for run in result["runs"]:
        assert all(0.0 <= run[k] <= 1.0 for k in ("a", "b_scratch", "b_on_a"))
        assert run["difference"] == pytest.approx(run["b_on_a"] - run["b_scratch"])
    on_a = result["summary"]["b_on_a"]
    values = [run["b_on_a"] for run in result["runs"]]
    assert on_a["mean"] == pytest.approx(np.mean(values)) and on_a["std"] == pytest.approx(
        np.std(values, ddof=1)
    )
    assert "classes 8, 9" in result["task_b"]
