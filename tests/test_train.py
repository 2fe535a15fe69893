"""The training loop, callbacks and checkpoints."""

import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from gradwell import models, optim
from gradwell.data import Dataset, Split
from gradwell.errors import CheckpointError, ConfigError, NonFiniteError
from gradwell.train import Callback, EarlyStopping, evaluate, fit
from gradwell.train import checkpoint as ckpt
from gradwell.train.callbacks import MetricsLogger


def blobs(n=256, features=8, classes=3, seed=0, spread=3.0) -> Dataset:
    """Gaussian blobs around random centres `spread` apart: a small MLP learns them in a few epochs."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, features, generator=g) * spread

    def split(count):
        y = torch.randint(0, classes, (count,), generator=g)
        return Split(centers[y] + torch.randn(count, features, generator=g), y)

    return Dataset(split(n), split(n // 4), split(n // 4), classes, "blobs")


def small_model(seed=0, **options):
    return models.mlp(8, 3, hidden=[16, 16], generator=torch.Generator().manual_seed(seed), **options)


def train(data, seed=0, epochs=3, **kwargs):
    model = kwargs.pop("model", None) or small_model(seed, dropout=0.2, batchnorm="before")
    optimizer = kwargs.pop("optimizer", None) or optim.create("nadam", model.parameters(), lr=0.01)
    history = fit(
        model, data, optimizer=optimizer, epochs=epochs, batch_size=32, seed=seed, progress=False, **kwargs
    )
    return model, history


def weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_fit_learns_a_separable_problem():
    data = blobs()
    before = evaluate(small_model(), data.val.x, data.val.y)
    _, history = train(data, epochs=8)
    assert history.epochs[-1]["val_accuracy"] > 0.9 > before["accuracy"]
    assert history.epochs[-1]["loss"] < history.epochs[0]["loss"]
    assert [logs["epoch"] for logs in history.epochs] == list(range(1, 9))
    assert set(history.epochs[0]) >= {"loss", "accuracy", "val_loss", "val_accuracy", "lr", "time"}


def test_reported_metrics_equal_a_recomputation_in_eval_mode():
    data = blobs()
    model, history = train(data, epochs=2)
    again = evaluate(model, data.val.x, data.val.y)
    assert history.epochs[-1]["val_loss"] == pytest.approx(again["loss"], rel=1e-6)
    assert history.epochs[-1]["val_accuracy"] == again["accuracy"]


def test_training_loss_is_the_mean_over_the_epoch_of_the_data_loss():
    data = blobs(n=64)
    model = small_model()
    optimizer = optim.create("sgd", model.parameters(), lr=0.0)  # no update: every batch sees the same model
    history = fit(model, data, optimizer=optimizer, epochs=1, batch_size=10, l2=5.0, progress=False)
    model.train()
    with torch.no_grad():
        expected = nn.functional.cross_entropy(model(data.train.x), data.train.y)
    assert history.epochs[0]["loss"] == pytest.approx(float(expected), rel=1e-5)


def test_same_seed_same_run_and_different_seed_different_run():
    data = blobs()
    a, history_a = train(data, seed=3)
    b, history_b = train(data, seed=3)
    c, _ = train(data, seed=4)
    assert history_a.epochs == [
        dict(e, time=history_a.epochs[i]["time"]) for i, e in enumerate(history_b.epochs)
    ]
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert not all(torch.equal(a.state_dict()[k], c.state_dict()[k]) for k in a.state_dict())


def test_fit_leaves_the_global_rng_alone():
    state = torch.get_rng_state()
    train(blobs(), epochs=1)
    assert torch.equal(state, torch.get_rng_state())


def test_early_stopping_stops_and_restores_the_best_weights():
    data = blobs()
    model = small_model()
    optimizer = optim.create("sgd", model.parameters(), lr=2.0)  # too large: validation loss gets worse
    stopper = EarlyStopping(patience=2)
    seen = []

    class Record(Callback):
        def on_epoch_end(self, run, logs):
            seen.append(weights(run.model))

    history = fit(
        model,
        data,
        optimizer=optimizer,
        epochs=30,
        batch_size=32,
        callbacks=[Record(), stopper],
        progress=False,
    )
    assert len(history.epochs) < 30 and "did not improve" in history.stop_reason
    assert len(history.epochs) == stopper.best_epoch + 2
    best = seen[stopper.best_epoch - 1]
    assert all(torch.equal(model.state_dict()[k], best[k]) for k in best)
    assert min(history.metric("val_loss")) == pytest.approx(stopper.best)


def test_early_stopping_on_accuracy_maximizes():
    stopper = EarlyStopping(monitor="val_accuracy", patience=1)
    assert stopper.improved(0.5) and stopper.maximize


def test_early_stopping_names_a_missing_metric():
    data = Dataset(
        blobs().train, Split(torch.zeros(0, 8), torch.zeros(0, dtype=torch.int64)), blobs().test, 3, "no-val"
    )
    with pytest.raises(ConfigError, match=r"val_loss.*logged: epoch, loss, accuracy"):
        train(data, callbacks=[EarlyStopping()])


def test_schedules_step_per_optimizer_step_and_plateau_per_epoch():
    data = blobs(n=64)
    model = small_model()
    optimizer = optim.create("sgd", model.parameters(), lr=0.1)
    scheduler = optim.schedule("exponential", optimizer, s=4)
    history = fit(
        model, data, optimizer=optimizer, scheduler=scheduler, epochs=2, batch_size=16, progress=False
    )
    assert history.metric("lr") == pytest.approx([0.1 * 0.1 ** (4 / 4), 0.1 * 0.1 ** (8 / 4)])
    optimizer = optim.create("sgd", model.parameters(), lr=0.1)
    plateau = optim.schedule("performance", optimizer, patience=1, factor=0.5, min_delta=10.0)
    fit(model, data, optimizer=optimizer, scheduler=plateau, epochs=3, batch_size=16, progress=False)
    assert optimizer.param_groups[0]["lr"] < 0.1


def test_l1_l2_and_max_norm_are_applied():
    data = blobs()
    model, _ = train(data, epochs=3, max_norm=0.5)
    for module in model.modules():
        if isinstance(module, nn.Linear):
            assert module.weight.norm(dim=1).max() <= 0.5 + 1e-6
    plain, _ = train(data, epochs=3)
    shrunk, _ = train(data, epochs=3, l2=0.05)
    assert shrunk.output.weight.abs().sum() < plain.output.weight.abs().sum()


def test_non_finite_loss_stops_the_run_naming_the_step():
    data = blobs()
    model = small_model()
    optimizer = optim.create("sgd", model.parameters(), lr=1e30)
    with pytest.raises(NonFiniteError, match=r"non-finite at step \d+ \(epoch 1\)"):
        fit(model, data, optimizer=optimizer, epochs=2, batch_size=32, progress=False)


def test_callbacks_are_called_in_order():
    calls = []

    class Spy(Callback):
        def on_train_begin(self, run):
            calls.append("begin")

        def on_step_begin(self, run):
            calls.append("step")

        def on_epoch_end(self, run, logs):
            calls.append("epoch")

        def on_train_end(self, run):
            calls.append("end")

    train(blobs(n=64), epochs=2, callbacks=[Spy()])
    assert calls == ["begin", *["step"] * 2, "epoch", *["step"] * 2, "epoch", "end"]


def test_bad_arguments_are_named():
    data = blobs()
    model = small_model()
    optimizer = optim.create("sgd", model.parameters())
    with pytest.raises(ConfigError, match="epochs must be a positive int; got 0"):
        fit(model, data, optimizer=optimizer, epochs=0, progress=False)
    with pytest.raises(ConfigError, match="batch_size"):
        fit(model, data, optimizer=optimizer, epochs=1, batch_size=-1, progress=False)
    with pytest.raises(ConfigError, match="checkpoint_dir"):
        fit(model, data, optimizer=optimizer, epochs=1, resume=True, progress=False)
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        fit(model, data, optimizer=optimizer, epochs=1, loss="hinge", progress=False)


# --- checkpoints ------------------------------------------------------------------------------


def test_state_trees_round_trip():
    tree = {"a": torch.randn(3), 0: [1, 2.5, None, "x", (True, torch.arange(4))], "inf": float("inf")}
    skeleton, tensors = ckpt.flatten_state(tree)
    back = ckpt.unflatten_state(json.loads(json.dumps(skeleton)), tensors)
    assert torch.equal(back["a"], tree["a"]) and back["inf"] == float("inf")
    assert back[0][:4] == [1, 2.5, None, "x"] and back[0][4][0] is True
    assert torch.equal(back[0][4][1], torch.arange(4))
    with pytest.raises(CheckpointError, match="type object"):
        ckpt.flatten_state({"bad": object()})


def test_resume_ends_with_the_same_weights_as_an_uninterrupted_run(tmp_path):
    data = blobs()

    def run(epochs, directory, resume=False, seed=5):
        torch.manual_seed(0)
        model = small_model(seed, dropout=0.3, batchnorm="before")
        optimizer = optim.create("nadam", model.parameters(), lr=0.01)
        scheduler = optim.schedule("onecycle", optimizer, max_lr=0.02, total_steps=6 * 8)
        stopper = EarlyStopping(patience=50)
        history = fit(
            model,
            data,
            optimizer=optimizer,
            scheduler=scheduler,
            epochs=epochs,
            batch_size=32,
            seed=seed,
            callbacks=[stopper],
            checkpoint_dir=directory,
            resume=resume,
            progress=False,
        )
        return model, history

    whole, whole_history = run(6, tmp_path / "whole")
    run(2, tmp_path / "parts")
    run(4, tmp_path / "parts", resume=True)
    resumed, history = run(6, tmp_path / "parts", resume=True)
    assert all(torch.equal(whole.state_dict()[k], resumed.state_dict()[k]) for k in whole.state_dict())
    strip = [{k: v for k, v in e.items() if k != "time"} for e in history.epochs]
    assert strip == [{k: v for k, v in e.items() if k != "time"} for e in whole_history.epochs]
    assert ckpt.saved_steps(tmp_path / "parts") == [48, 40]


def test_a_corrupted_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
    train(blobs(), epochs=3, checkpoint_dir=tmp_path)
    newest = ckpt.checkpoint_path(tmp_path, 24)  # 3 epochs of 8 steps
    payload = bytearray(newest.read_bytes())
    payload[-5] ^= 0xFF
    newest.write_bytes(bytes(payload))
    with pytest.raises(CheckpointError, match="corrupted"):
        ckpt.load(newest)
    state = ckpt.latest(tmp_path)
    assert state["epoch"] == 2
    assert "step-000000024.safetensors is corrupted" in caplog.text
    # set aside, so that the checkpoints of the resumed run are the ones pruning keeps
    assert (tmp_path / "step-000000024.safetensors.corrupt").read_bytes() == bytes(payload)
    assert ckpt.saved_steps(tmp_path) == [16]
    train(blobs(), epochs=4, checkpoint_dir=tmp_path, resume=True)
    assert ckpt.saved_steps(tmp_path) == [32, 24] and ckpt.latest(tmp_path)["epoch"] == 4


def test_a_changed_step_or_history_in_the_metadata_is_detected(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    train(blobs(), epochs=2, checkpoint_dir=tmp_path)
    path = ckpt.checkpoint_path(tmp_path, 16)
    with safe_open(path, "pt") as file:
        metadata = file.metadata()
        tensors = {name: file.get_tensor(name) for name in file.keys()}  # noqa: SIM118
    assert '"step", 16' in metadata["state"]
    metadata["state"] = metadata["state"].replace('"step", 16', '"step", 96')
    save_file(tensors, path, metadata=metadata)  # the same tensors and checksum, another step
    with pytest.raises(CheckpointError, match="corrupted"):
        ckpt.load(path)


def test_a_truncated_or_foreign_file_is_refused(tmp_path):
    train(blobs(), epochs=1, checkpoint_dir=tmp_path)
    path = ckpt.checkpoint_path(tmp_path, 8)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="damaged"):
        ckpt.load(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        ckpt.load(tmp_path / "nothing.safetensors")


def test_checkpoint_weights_are_plain_safetensors(tmp_path):
    model, _ = train(blobs(), epochs=1, checkpoint_dir=tmp_path)
    tensors = load_file(ckpt.checkpoint_path(tmp_path, 8))
    assert torch.equal(tensors["state.model.output.weight"], model.state_dict()["output.weight"])


def test_loading_weights_names_every_mismatch():
    model = small_model()
    other = models.mlp(8, 3, hidden=[16, 32])
    with pytest.raises(
        CheckpointError, match=r"hidden2.linear.weight: \(32, 16\) in the checkpoint, \(16, 16\)"
    ):
        ckpt.load_weights(model, other.state_dict())
    with pytest.raises(CheckpointError, match=r"missing output\.bias"):
        ckpt.load_weights(model, {k: v for k, v in model.state_dict().items() if k != "output.bias"})


def test_metrics_logger_writes_one_line_per_epoch_and_rewrites_on_resume(tmp_path):
    data = blobs()
    log = tmp_path / "metrics.jsonl"
    train(data, epochs=2, callbacks=[MetricsLogger(log)], checkpoint_dir=tmp_path / "c")
    assert [json.loads(line)["epoch"] for line in log.read_text().splitlines()] == [1, 2]
    train(data, epochs=3, callbacks=[MetricsLogger(log)], checkpoint_dir=tmp_path / "c", resume=True)
    assert [json.loads(line)["epoch"] for line in log.read_text().splitlines()] == [1, 2, 3]


class HostReads:
    """Counts the ways a tensor's value reaches Python (each one a host-device synchronization)."""

    NAMES = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__")

    def __init__(self, monkeypatch):
        self.count = 0
        for name in self.NAMES:
            original = getattr(torch.Tensor, name)

            def counted(tensor, *args, _original=original):
                self.count += 1
                return _original(tensor, *args)

            monkeypatch.setattr(torch.Tensor, name, counted)


@pytest.mark.parametrize("batchnorm", [None, "before"])  # the fused CPU step, and the eager one
def test_no_step_reads_the_device_only_the_end_of_an_epoch_does(monkeypatch, batchnorm):
    def reads(n):
        model = small_model(batchnorm=batchnorm)
        # capturable: step counters on the parameters' device, as on a GPU (else they live on the
        # host, where reading them costs no synchronization, but here no read could be told apart)
        optimizer = optim.create("nadam", model.parameters(), global_clipnorm=1.0, capturable=True)
        scheduler = optim.schedule("exponential", optimizer, s=10)
        data = blobs(n=n)
        counter = HostReads(monkeypatch)
        history = fit(
            model, data, optimizer=optimizer, scheduler=scheduler, epochs=1, batch_size=8, progress=False
        )
        monkeypatch.undo()
        assert history.last["loss"] > 0
        return counter.count

    assert reads(32) == reads(256)  # 4 steps or 32: the same reads, all of them outside the steps
