"""Sweeps on Ray: the same records as the local process pool, and a clear message without Ray."""

import importlib.util
import sys

import pytest

from gradwell import config as configs
from gradwell import experiment
from gradwell.errors import GradwellError
from gradwell.experiment.cluster import RayExecutor

SMALL = ["data.name=digits", "model.hidden=[16]", "train.epochs=2", "output.progress=false"]


def arms():
    return {name: configs.load(None, [*SMALL, f"model.activation={name}"]) for name in ("elu", "tanh")}


def test_without_ray_the_message_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    with pytest.raises(GradwellError, match=r"pip install 'gradwell\[ray\]'"):
        RayExecutor()


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="Ray is not installed (gradwell[ray])")
def test_ray_tasks_give_the_same_results_as_the_local_process_pool():
    local = experiment.run(arms(), seeds=range(2), workers=2)
    with RayExecutor(num_cpus=2, include_dashboard=False) as executor:
        remote = experiment.run(arms(), seeds=range(2), workers=2, executor=executor)
    assert [(r.label, r.seed, r.ok) for r in remote.records] == [
        (r.label, r.seed, r.ok) for r in local.records
    ]
    for a, b in zip(local.records, remote.records, strict=True):
        strip = lambda logs: {k: v for k, v in logs.items() if k != "time"}  # noqa: E731
        assert strip(a.final) == strip(b.final) and a.test == b.test and a.path == b.path


def test_an_executor_that_knows_its_size_shapes_the_seed_split(monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

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


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="Ray is not installed (gradwell[ray])")
def test_a_ray_executor_counts_the_clusters_cpus():
    with RayExecutor(num_cpus=3, include_dashboard=False) as executor:
        assert executor.workers == 3
