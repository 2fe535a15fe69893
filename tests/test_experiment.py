"""The experiment runner and its report: every run recorded, the batched path equal to the single one."""

import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

import pytest
from conftest import rel_error

from gradwell import config as configs
from gradwell.cli import main
from gradwell.errors import GradwellError
from gradwell.experiment import Results, RunRecord, run, workers, write_report
from gradwell.experiment.execution import execute, train_single
from gradwell.experiment.records import metric_value
from gradwell.experiment.runner import config_problem, labelled, make_tasks, seed_chunks

TINY = {
    "data": {"name": "digits"},
    "model": {"kind": "mlp", "hidden": [16], "activation": "elu"},
    "optimizer": {"name": "adam", "lr": 0.01},
    "train": {"epochs": 2, "batch_size": 64, "device": "cpu"},
}


def tiny(**sections):
    return configs.from_dict({**TINY, **sections})


def test_every_config_and_seed_is_recorded_and_failures_are_kept():
    arms = {
        "elu": tiny(),
        "diverges": tiny(optimizer={"name": "sgd", "lr": 1e6}),
        "bad": tiny(model={"kind": "mlp", "activation": "relux"}),
        "wide": tiny(model={"kind": "mlp", "hidden": [8, 300, 300]}),
    }
    results = run(arms, seeds=[0, 1, 2], workers=0)
    assert [(r.label, r.seed) for r in results.records] == [(a, s) for a in arms for s in (0, 1, 2)]
    assert results.paths["elu"] == "batched" and results.paths["diverges"] == "batched"
    assert results.paths["wide"] == "single (a layer of 90000 weights (batching pays up to 65536))"
    assert all(r.ok and len(r.history) == 2 and 0.3 < r.test["accuracy"] <= 1 for r in results.runs("elu"))
    assert all(not r.ok and r.error.startswith("NonFiniteError") for r in results.runs("diverges"))
    assert all(not r.ok and "relux" in r.error for r in results.runs("bad"))
    assert results.values("diverges", "test_accuracy") == [None] * 3
    assert results.values("diverges", "test_accuracy", failed_value=0.1) == [0.1] * 3


def test_the_batched_path_gives_each_seed_its_single_run():
    config = tiny()
    batched = run({"a": config}, seeds=[4, 9], workers=0)
    for record in batched.records:
        single = train_single("a", config, record.seed, None)
        assert record.path == "batched" and single.path == "single"
        assert record.test["loss"] == pytest.approx(single.test["loss"], rel=1e-4)
        for mine, theirs in zip(record.history, single.history, strict=True):
            assert mine["val_loss"] == pytest.approx(theirs["val_loss"], rel=1e-4)


def test_an_rrelu_config_is_batched_and_each_seed_trains_as_it_would_alone():
    # the slopes, and the dropout masks drawn between them, from each seed's own stream
    config = tiny(model={"kind": "mlp", "hidden": [16], "activation": "rrelu", "dropout": 0.2})
    batched_weights, single_weights = [], []
    batched = run({"rrelu": config}, seeds=[4, 9], workers=0, evaluate=keeping(batched_weights))
    assert batched.paths == {"rrelu": "batched"}
    for record, weights in zip(batched.records, batched_weights, strict=True):
        single = train_single("rrelu", config, record.seed, keeping(single_weights))
        assert record.path == "batched" and single.path == "single"
        for mine, theirs in zip(record.history, single.history, strict=True):
            for key in ("loss", "val_loss"):
                assert mine[key] == pytest.approx(theirs[key], rel=1e-4), key
        for mine, theirs in zip(weights, single_weights[-1], strict=True):
            assert rel_error(mine, theirs) < 1e-4


def keeping(weights):
    """An evaluation hook that keeps each trained model's parameters in `weights`."""

    def keep(model, dataset):
        weights.append([p.detach().clone() for p in model.parameters()])
        return {}

    return keep


def test_custom_arms_and_evaluation_hooks_are_recorded():
    def trial(seed):
        if seed == 1:
            raise RuntimeError("no luck")
        return {"test": {"accuracy": 0.5 + seed / 10}, "extra": {"gain": seed}}

    results = run({"custom": trial}, seeds=[0, 1, 2], workers=0)
    assert results.paths == {"custom": "custom"}
    assert results.values("custom", "test_accuracy") == [0.5, None, 0.7]
    assert results.values("custom", "gain") == [0, None, 2]
    assert results.runs("custom")[1].error == "RuntimeError: no luck"
    hooked = run({"a": tiny()}, seeds=[0, 1], workers=0, evaluate=count_parameters)
    assert hooked.values("a", "parameters") == [64 * 16 + 16 + 16 * 10 + 10] * 2


def count_parameters(model, dataset):
    return {"parameters": sum(p.numel() for p in model.parameters())}


def test_metrics_by_name():
    history = [
        {"epoch": 1, "loss": 2.0, "val_loss": 1.5, "val_accuracy": 0.6},
        {"epoch": 2, "loss": 1.0, "val_loss": 1.7, "val_accuracy": 0.7},
    ]
    record = RunRecord("a", 0, "ok", "single", history, {"accuracy": 0.65}, {"gain": 0.1})
    assert metric_value(record, "test_accuracy") == 0.65
    assert metric_value(record, "loss") == 1.0 and metric_value(record, "loss@1") == 2.0
    assert metric_value(record, "best_val_loss") == 1.5 and metric_value(record, "best_val_accuracy") == 0.7
    assert metric_value(record, "gain") == 0.1 and metric_value(record, "loss@5") is None


def test_seeds_are_split_to_keep_every_worker_busy():
    seeds = tuple(range(10))
    assert seed_chunks(seeds, arms=2, workers=2) == [seeds]
    assert [len(c) for c in seed_chunks(seeds, arms=3, workers=2)] == [5, 5]
    assert [len(c) for c in seed_chunks(seeds, arms=1, workers=4)] == [3, 3, 3, 1]
    assert seed_chunks(seeds, arms=3, workers=1) == [seeds]
    arms = {"a": tiny(), "b": tiny(train={"early_stopping": 2})}
    arms["found"] = tiny(schedule={"name": "onecycle", "max_lr": "find"})
    tasks, paths = make_tasks(arms, seeds, 2, None)
    assert paths["b"].startswith("single (early stopping")
    assert sorted(len(t.seeds) for t in tasks if t.label == "b") == [1] * 10
    # each seed's lone run finds its own rate on its own model: batching would share seed 0's
    assert paths["found"] == f"single ({config_problem(arms['found'])})"
    assert "searches each seed's own rate" in config_problem(arms["found"])


def test_labels_come_from_names_stems_and_functions(tmp_path):
    path = tmp_path / "wide.toml"
    path.write_text('[model]\nkind = "mlp"\n')
    assert list(labelled([tiny(), str(path), path, test_metrics_by_name])) == [
        "config1",
        "wide",
        "wide-2",
        "test_metrics_by_name",
    ]
    with pytest.raises(GradwellError, match="Config, a TOML path"):
        labelled([42])


def test_a_task_that_fails_in_its_worker_still_returns_its_runs():
    tasks, _ = make_tasks({"a": tiny(data={"name": "nope"})}, (0, 1), 1, None)
    records = [r for task in tasks for r in execute(task)]
    assert [r.status for r in records] == ["failed", "failed"] and "nope" in records[0].error


def dies_on_seed_one(seed):
    if seed == 1:
        os._exit(1)  # as the out-of-memory killer would end it: no exception, no clean-up
    return {"test": {"accuracy": 0.5 + seed / 100}}


def test_a_worker_that_dies_fails_its_own_run_and_no_other(monkeypatch):
    fork = multiprocessing.get_context("fork")  # spawn would import torch afresh in every worker
    monkeypatch.setattr(workers, "pool", lambda count: ProcessPoolExecutor(count, mp_context=fork))
    results = run({"a": dies_on_seed_one}, seeds=[0, 1, 2, 3], workers=2)
    assert {r.seed: r.status for r in results.records} == {0: "ok", 1: "failed", 2: "ok", 3: "ok"}
    assert "BrokenProcessPool" in next(r.error for r in results.records if r.seed == 1)


def test_the_batched_path_leaves_what_it_cannot_honour_to_the_single_path():
    skip = tiny(optimizer={"name": "sgd", "lr": 1e6}, train={"epochs": 1, "on_nonfinite": "skip"})
    results = run({"skip": skip}, seeds=[0, 1], workers=0)
    assert results.paths["skip"].startswith("single") and all(r.ok for r in results.records)
    mse = run({"mse": tiny(train={"epochs": 1, "loss": "mse"})}, seeds=[0, 1], workers=0)
    assert all("DataError" in r.error for r in mse.records)


def test_the_report_holds_every_run_and_the_pairs(tmp_path):
    results = run({"elu": tiny(), "diverges": tiny(optimizer={"name": "sgd", "lr": 1e6})}, [0, 1, 2], 0)
    comparison = write_report(results, tmp_path, "test_accuracy", failed_value=0.1)
    assert {p.name for p in tmp_path.iterdir()} == {
        "results.json",
        "report.md",
        "learning_curves.png",
        "final_metrics.png",
    }
    loaded = Results.load(tmp_path / "results.json")
    assert [(r.label, r.seed, r.status) for r in loaded.records] == [
        (r.label, r.seed, r.status) for r in results.records
    ]
    assert comparison.pairs[0].verdict == "elu better than diverges"
    report = (tmp_path / "report.md").read_text()
    assert "| elu | batched | 3 / 0 |" in report and "| diverges | batched | 0 / 3 |" in report
    assert "elu better than diverges" in report and "NonFiniteError" in report


def test_compare_data_runs_every_config_on_the_data_set_named(tmp_path, monkeypatch, capsys):
    mnist1d = '[data]\nname = "mnist1d"\nnum_samples = 123456\n[model]\nhidden = [8]\n'
    (tmp_path / "a.toml").write_text(mnist1d)
    command = ["compare", "a.toml", "a.toml", "--seeds", "2", "--workers", "0", "--set", "train.epochs=1"]
    monkeypatch.chdir(tmp_path)
    assert main([*command, "--data", "mnst1d", "--out", "bad"]) == 2
    assert "unknown dataset 'mnst1d'" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    assert main([*command, "--data", "digits", "--out", "cmp", "--json"]) == 0  # mnist1d's option dropped
    shown = json.loads(capsys.readouterr().out)
    assert shown["data"] == {"a-1": "digits", "a-2": "digits"} and shown["configs"]["a-1"]["n"] == 2
    assert Results.load(tmp_path / "cmp" / "results.json").data == shown["data"]
    assert "2 seeds (0, 1), " in (report := (tmp_path / "cmp" / "report.md").read_text())
    assert ", on digits." in report


def test_compare_command_with_worker_processes(tmp_path, monkeypatch, capfd):
    for name, activation in (("relu", "relu"), ("tanh", "tanh")):
        model = {**TINY["model"], "activation": activation}
        text = "".join(
            f"[{section}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())
            for section, values in {**TINY, "model": model}.items()
        )
        (tmp_path / f"{name}.toml").write_text(text)
    command = ["relu.toml", "tanh.toml", "--seeds", "3", "--workers", "2", "--out", "cmp", "--json"]
    monkeypatch.chdir(tmp_path)  # the command in this process, its workers spawned as a user's are
    status = main(["compare", *command])
    done = capfd.readouterr()  # the workers' file descriptors too: their output must not reach the JSON
    assert status == 0, done.err
    out = json.loads(done.out)
    assert out["seeds"] == [0, 1, 2] and set(out["configs"]) == {"relu", "tanh"}
    assert out["configs"]["relu"]["n"] == 3 and out["configs"]["relu"]["path"] == "batched"
    assert out["pairs"][0]["a"] == "relu" and out["pairs"][0]["n"] == 3
    assert (tmp_path / "cmp" / "report.md").is_file()
