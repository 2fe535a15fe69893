"""Sweeps on Ray: the same records as the local process pool, and a clear message without Ray.

The tests share one local Ray instance, started and stopped here: its start-up takes seconds,
their tasks less. It sends no usage report, and its workers' output stays in their log files.
"""

import functools
import json
import logging
import os
import signal
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from gradwell import config as configs
from gradwell import experiment
from gradwell.cli import main
from gradwell.errors import GradwellError
from gradwell.experiment import Results, cluster
from gradwell.experiment.claims import SCALES, find
from gradwell.experiment.claims.catalogue import run_claim
from gradwell.experiment.cluster import RayExecutor

SMALL = ["data.name=digits", "model.depth=1", "model.width=16", "model.batchnorm=none", "train.epochs=1"]
TOML = '[data]\nname = "digits"\n[model]\nhidden = [16]\nactivation = "{}"\n[train]\nepochs = 1\n'


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_USAGE_STATS_ENABLED", "0")  # Ray's processes would report usage to ray.io
        # the tests' task functions live in this module, which Ray's workers cannot import
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
        options = {
            "address": "local",  # a new instance, even where RAY_ADDRESS names a cluster
            "num_cpus": 2,
            "include_dashboard": False,
            "log_to_driver": False,
            "logging_level": logging.WARNING,
            "object_store_memory": 100 * 2**20,  # the tasks pass configs and records, not tensors
        }
        try:
            with RayExecutor(**options) as executor:
                # conftest keeps Ray on the loopback address: nothing may reach beyond this machine
                assert {node["NodeManagerAddress"] for node in ray.nodes()} == {"127.0.0.1"}
                yield executor
        finally:
            ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def arms():
    return {name: configs.load(None, [*SMALL, f"model.activation={name}"]) for name in ("elu", "tanh")}


def outcome(results: Results) -> tuple[list, dict]:
    """What must not depend on where the runs ran: every record but its wall times, and the paths."""
    untimed = lambda logs: {k: v for k, v in logs.items() if k != "time"}  # noqa: E731
    records = [
        (r.label, r.seed, r.status, r.path, r.test, r.extra, [untimed(e) for e in r.history])
        for r in results.records
    ]
    return records, results.paths


def test_without_ray_the_message_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    with pytest.raises(GradwellError, match=r"pip install 'gradwell\[ray\]'"):
        RayExecutor()


def test_a_cluster_that_cannot_be_reached_is_named_in_the_message(monkeypatch):
    import ray

    def unreachable(address, **options):
        raise ConnectionError(f"no cluster at {address}")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", unreachable)
    with pytest.raises(GradwellError, match=r"cannot reach the Ray cluster at 'ray://nowhere:10001': no"):
        RayExecutor("ray://nowhere:10001")
    with pytest.raises(GradwellError, match=r"cannot reach Ray \(RAY_ADDRESS or a local instance\): no"):
        RayExecutor("")  # Ray's default, as --ray without an address asks


def test_an_executor_that_knows_its_size_shapes_the_seed_split(monkeypatch):
    from gradwell.experiment import runner, workers

    class Sized(ThreadPoolExecutor):
        workers = 3

    seen = []
    original = runner.make_tasks
    monkeypatch.setattr(runner, "make_tasks", lambda *a: seen.append(a[2]) or original(*a))
    monkeypatch.setattr(workers, "execute", lambda task: [])  # the split is what is tested, not training
    with Sized(1) as executor:
        experiment.run(arms(), seeds=range(5), executor=executor)
    assert seen == [3]


def test_compare_on_ray_keeps_rays_output_off_the_json(monkeypatch, tmp_path, capsys):
    class Chatty(ThreadPoolExecutor):  # as Ray's driver does: workers' output and deaths on stdout
        def __init__(self, address):
            super().__init__(1)

        def submit(self, fn, /, *args):
            sys.stdout.write("(raylet) A worker died or was killed while executing a task\n")
            return super().submit(fn, *args)

    monkeypatch.setattr(cluster, "RayExecutor", Chatty)
    for activation in ("elu", "tanh"):
        (tmp_path / f"{activation}.toml").write_text(TOML.format(activation))
    command = ["compare", "elu.toml", "tanh.toml", "--seeds", "2", "--ray", "--out", "ray", "--json"]
    monkeypatch.chdir(tmp_path)
    assert main(command) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["run_dir"] == "ray" and "(raylet) A worker died" in err


def test_a_ray_executor_counts_the_clusters_cpus(ray_cluster):
    assert ray_cluster.workers == 2


def test_where_ray_runs_in_this_process_an_executor_uses_it_and_leaves_it_running(ray_cluster, caplog):
    import ray

    with caplog.at_level(logging.WARNING), RayExecutor("ray://elsewhere:10001") as executor:
        assert executor.workers == 2
    assert ray.is_initialized() and "already initialized in this process" in caplog.text


def test_ray_tasks_give_the_same_results_as_a_local_run(ray_cluster):
    # in this process: the local pool gives the same records, and spawning it would take seconds
    local = experiment.run(arms(), seeds=range(2), workers=0)
    remote = experiment.run(arms(), seeds=range(2), executor=ray_cluster)  # 2 workers: 2 Ray CPUs
    assert outcome(remote) == outcome(local)
    assert all(r.ok for r in remote.records)


def test_compare_on_ray_gives_the_records_of_an_in_process_run(ray_cluster, monkeypatch, tmp_path, capsys):
    for activation in ("elu", "tanh"):
        (tmp_path / f"{activation}.toml").write_text(TOML.format(activation))
    monkeypatch.chdir(tmp_path)
    command = ["compare", "elu.toml", "tanh.toml", "--seeds", "2", "--json"]
    assert main([*command, "--workers", "0", "--out", "local"]) == 0
    capsys.readouterr()
    assert main([*command, "--ray", "--out", "ray"]) == 0  # joins the running instance
    shown = json.loads(capsys.readouterr().out)
    local, remote = (Results.load(tmp_path / name / "results.json") for name in ("local", "ray"))
    assert outcome(remote) == outcome(local) and remote.paths == {"elu": "batched", "tanh": "batched"}
    assert all(r.ok for r in remote.records) and shown["configs"]["elu"]["n"] == 2


def test_a_claim_on_ray_gets_the_verdict_and_numbers_of_a_local_run(ray_cluster):
    [(number, claim)] = find(["he-init"])
    local = run_claim(number, claim, SCALES["smoke"], workers=0)
    remote = run_claim(number, claim, SCALES["smoke"], ray_cluster.workers, executor=ray_cluster)
    untimed = lambda result: {k: v for k, v in result.to_dict().items() if k != "seconds"}  # noqa: E731
    assert untimed(remote) == untimed(local) and remote.verdict == local.verdict
    assert outcome(remote.results) == outcome(local.results)


def killed_on_seed_one(starts: str, seed: int) -> dict:
    if seed == 1:
        with open(starts, "a") as log:
            log.write(f"seed {seed}\n")
        os.kill(os.getpid(), signal.SIGKILL)  # as the out-of-memory killer would end it
    return {"test": {"accuracy": 0.5 + seed / 100}}


def test_a_worker_killed_mid_task_fails_its_own_run_once_and_no_other(ray_cluster, tmp_path):
    starts = tmp_path / "starts"
    task = functools.partial(killed_on_seed_one, str(starts))
    results = experiment.run({"a": task}, seeds=range(4), executor=ray_cluster)
    assert {r.seed: r.status for r in results.records} == {0: "ok", 1: "failed", 2: "ok", 3: "ok"}
    assert [r.test["accuracy"] for r in results.records if r.ok] == [0.5, 0.52, 0.53]
    error = next(r.error for r in results.records if r.seed == 1)
    assert error.startswith(
        "WorkerDiedError: the Ray worker process running this task died (WorkerCrashedError"
    )
    assert "not retried" in error
    assert starts.read_text() == "seed 1\n"  # it ran once: Ray did not retry it
