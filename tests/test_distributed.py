"""Data-parallel training: two CPU processes (gloo) against one with the same global batch."""

import os
import re

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_train import blobs

from gradwell import models, optim
from gradwell.errors import NonFiniteError
from gradwell.train import distributed as ddp
from gradwell.train import fit

EPOCHS = 4


def train(epochs, checkpoint_dir=None, resume=False):
    model = models.mlp(8, 3, hidden=[16, 16], batchnorm="before", generator=torch.Generator().manual_seed(0))
    optimizer = optim.create("nadam", model.parameters(), lr=0.01, global_clipnorm=1.0)
    scheduler = optim.schedule("exponential", optimizer, s=10)
    history = fit(
        model,
        blobs(n=256),
        optimizer=optimizer,
        scheduler=scheduler,
        epochs=epochs,
        batch_size=32,
        seed=7,
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        sync_batchnorm=True,
        progress=False,
    )
    return model.state_dict(), history


def worker(rank, world, folder):
    """Every distributed run the tests read, in one pair of processes: each start imports torch
    afresh, seconds a process."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world)
    try:
        weights, history = train(EPOCHS)
        train(2, checkpoint_dir=folder / "checkpoints")
        resumed, resumed_history = train(EPOCHS, checkpoint_dir=folder / "checkpoints", resume=True)
        torch.save(
            {
                "weights": weights,
                "resumed": resumed,
                "loss": history.metric("loss"),
                "resumed_loss": resumed_history.metric("loss"),
                "rank": ddp.rank(),
            },
            folder / f"rank{rank}.pt",
        )
        (folder / f"rank{rank}.txt").write_text(diverge())
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddp")
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    mp.spawn(worker, args=(2, folder), nprocs=2, join=True)
    return [torch.load(folder / f"rank{r}.pt", weights_only=True) for r in range(2)], folder


def test_two_processes_take_the_steps_of_one_with_the_same_global_batch(two_processes):
    results, _ = two_processes
    single, history = train(EPOCHS)
    for result in results:
        for key, value in single.items():
            assert torch.allclose(result["weights"][key].double(), value.double(), rtol=1e-4, atol=1e-5), key
        assert result["loss"] == pytest.approx(history.metric("loss"), rel=1e-4)
    assert [r["rank"] for r in results] == [0, 1]


def test_a_resumed_distributed_run_ends_where_the_uninterrupted_one_does(two_processes):
    results, folder = two_processes
    for result in results:
        assert all(torch.equal(result["resumed"][k], result["weights"][k]) for k in result["weights"])
        assert result["resumed_loss"] == result["loss"]
    assert len(list((folder / "checkpoints").glob("step-*.safetensors"))) == 2  # written once, by rank 0


def diverge():
    """The run of `train` at a learning rate where it goes non-finite; the error's message."""
    model = models.mlp(8, 3, hidden=[16, 16], batchnorm="before", generator=torch.Generator().manual_seed(0))
    optimizer = optim.create("sgd", model.parameters(), lr=1e8)
    with pytest.raises(NonFiniteError) as caught:
        fit(model, blobs(n=256), optimizer=optimizer, epochs=2, batch_size=32, seed=7, sync_batchnorm=True,
            progress=False)  # fmt: skip
    return str(caught.value)


def test_a_diverging_distributed_run_names_the_step_and_layer_as_one_process_does(two_processes):
    _, folder = two_processes  # the processes ran `diverge` after their other runs
    first, second = ((folder / f"rank{r}.txt").read_text() for r in range(2))
    assert first == second  # one verdict: every process replayed to the same step, one named the layer
    step = re.compile(r"non-finite at step (\d+) \(epoch \d\): the .* (of|at) hidden\d")
    assert step.search(first) and step.search(first)[1] == step.search(diverge())[1], first


def test_batch_size_must_split_evenly(monkeypatch):
    monkeypatch.setattr(ddp, "world_size", lambda: 3)
    with pytest.raises(ValueError, match="batch_size 32 does not split into 3 equal shards"):
        ddp.check_batch_size(32)
