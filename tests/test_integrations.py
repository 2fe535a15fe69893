"""gradwell.integrations: the doctor as a callback of Lightning's and Hugging Face's trainers, on
real (tiny) training runs, since what matters is which of the trainers' hooks fire when."""

import ast
import logging
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset


def hooks_left(model: nn.Module) -> list[str]:
    """The hooks still on `model`: a callback must take all of the doctor's off at the end."""
    modules = [name for name, m in model.named_modules() if m._forward_hooks or m._forward_pre_hooks]
    params = [name for name, p in model.named_parameters() if getattr(p, "_post_accumulate_grad_hooks", None)]
    return modules + params


def test_only_the_adapters_import_the_frameworks():
    # importing gradwell (or gradwell.integrations) must not cost a framework's import, seconds
    frameworks = {"lightning", "pytorch_lightning", "transformers", "accelerate"}
    package = Path(__file__).resolve().parents[1] / "src" / "gradwell"
    adapters = {package / "integrations" / "lightning.py", package / "integrations" / "hf.py"}
    found = []
    for path in sorted(set(package.rglob("*.py")) - adapters):
        source = path.read_text()
        if not any(name in source for name in frameworks):
            continue  # no need to parse it
        for node in ast.walk(ast.parse(source)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else []
            )
            found += [f"{path.relative_to(package)}: {n}" for n in names if n.partition(".")[0] in frameworks]
    assert found == []


def test_a_run_with_nothing_sampled_ends_with_a_warning_not_an_error(caplog):
    from gradwell.diagnose import Doctor
    from gradwell.integrations.finish import finish

    doctor = Doctor(nn.Linear(2, 2), every=100, driven=True)  # never begun: no step divisible by 100
    with caplog.at_level(logging.WARNING, logger="gradwell.integrations"):
        assert finish(doctor, logging.getLogger("gradwell.integrations.lightning")) is None
    assert "no optimizer step divisible by every=100" in caplog.text


# Lightning


@pytest.fixture
def pl():
    return pytest.importorskip("lightning.pytorch")


def lightning_net(pl, bias: float = 0.0):
    """An MLP whose ReLU is a function called in a submodule's forward; `bias` on the first
    layer (a large negative one kills every unit). It keeps the losses Lightning saw, per step."""

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(8, 32)
            nn.init.constant_(self.linear.bias, bias)

        def forward(self, x):
            return F.relu(self.linear(x))

    class Net(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.block, self.head = Block(), nn.Linear(32, 2)
            self.losses: dict[int, list[float]] = {}

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = F.cross_entropy(self.head(self.block(x)), y)  # the submodules, not self(x)
            self.losses.setdefault(self.trainer.global_step, []).append(loss.item())
            return loss

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=0.01)

    return Net()


def fit_lightning(pl, net, callback, **options):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 8, generator=g)
    loader = DataLoader(TensorDataset(x, (x[:, 0] > 0).long()), batch_size=16)
    options = {"logger": False, **options}
    trainer = pl.Trainer(
        max_steps=12, accelerator="cpu", devices=1, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[callback], **options,
    )  # fmt: skip
    trainer.fit(net, loader)
    return trainer


def test_lightning_measures_every_4th_optimizer_step(pl):
    from gradwell.integrations.lightning import DoctorCallback

    torch.manual_seed(0)
    net, callback = lightning_net(pl), DoctorCallback(every=4)
    fit_lightning(pl, net, callback)
    report = callback.report
    history = report.history
    assert history.steps == [0, 4, 8]
    assert [(layer.name, layer.kind) for layer in report.layers] == [
        ("block.linear", "linear"), ("block.relu", "relu"), ("head", "linear"),
    ]  # fmt: skip
    relu = next(layer for layer in report.layers if layer.name == "block.relu")
    assert 0.0 <= relu.stats["dead"] <= 1.0
    assert history.loss == pytest.approx([net.losses[step][0] for step in history.steps], rel=1e-6)
    assert history.lr == [0.01] * 3 and history.optimizer == "AdamW"
    ratios = history.series("update_ratio")[:, [0, 2]]  # the two Linear layers
    assert ratios.shape == (3, 2) and (ratios > 0).all() and torch.isfinite(torch.from_numpy(ratios)).all()
    assert report.unseen == [] and "GradScaler" not in report.gradients
    assert hooks_left(net) == []


def test_lightning_counts_optimizer_steps_under_gradient_accumulation(pl, tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    from gradwell.integrations.lightning import DoctorCallback

    torch.manual_seed(0)
    net, callback = lightning_net(pl), DoctorCallback(every=4)
    logger = CSVLogger(tmp_path, name="run", version=0)
    trainer = fit_lightning(pl, net, callback, accumulate_grad_batches=2, logger=logger, log_every_n_steps=1)
    history = callback.report.history
    assert trainer.global_step == 12 and history.steps == [0, 4, 8]
    # the loss the update came from: the mean of the step's two micro-batches
    means = [sum(net.losses[step]) / 2 for step in history.steps]
    assert all(len(net.losses[step]) == 2 for step in history.steps)
    assert history.loss == pytest.approx(means, rel=1e-6)
    assert "doctor/healthy" in (tmp_path / "run" / "version_0" / "metrics.csv").read_text()


def test_lightning_finds_dead_relu_units_and_logs_them(pl, caplog):
    from gradwell.integrations.lightning import DoctorCallback

    torch.manual_seed(0)
    net, callback = lightning_net(pl, bias=-10.0), DoctorCallback(every=4)
    with caplog.at_level(logging.INFO, logger="gradwell.integrations"):
        fit_lightning(pl, net, callback)
    report = callback.report
    assert "dead_units" in [verdict.name for verdict in report.verdicts]
    assert report.layers[1].stats["dead"] == 1.0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("dead_units" in message for message in warnings)
    assert any(
        "sampled steps [0, 4, 8]" in r.getMessage() for r in caplog.records if r.levelno == logging.INFO
    )


def test_lightning_gradients_are_unscaled_under_loss_scaling(pl):
    # "16-mixed" has a GradScaler on a GPU only; the plugin takes a CPU one here, to the same effect
    from lightning.pytorch.plugins import MixedPrecision

    from gradwell.integrations.lightning import DoctorCallback

    histories = []
    for plugins in ([], [MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))]):
        torch.manual_seed(0)
        callback = DoctorCallback(every=4)
        fit_lightning(pl, lightning_net(pl), callback, plugins=plugins)
        histories.append(callback.report.history)
    plain, scaled = histories  # the scale is 65536: unscaled, the two agree to float16's precision
    assert scaled.grad_norm[0] == pytest.approx(plain.grad_norm[0], rel=1e-2)
    norms = [h.series("weight_grad_norm")[0, [0, 2]] for h in histories]
    assert norms[1] == pytest.approx(norms[0], rel=1e-2)
    assert "GradScaler" in callback.report.gradients


def test_lightning_other_ranks_attach_nothing(pl):
    from gradwell.integrations.lightning import DoctorCallback

    net, callback = lightning_net(pl), DoctorCallback(every=1)
    trainer = SimpleNamespace(is_global_zero=False, global_step=0, logger=None)
    callback.on_fit_start(trainer, net)
    callback.on_train_batch_start(trainer, net, None, 0)
    trainer.global_step = 1
    callback.on_train_batch_end(trainer, net, {"loss": torch.tensor(1.0)}, None, 0)
    callback.on_fit_end(trainer, net)
    assert callback.doctor is None and callback.report is None and hooks_left(net) == []


def test_a_callback_refuses_a_bad_every(pl):
    from gradwell.errors import ConfigError
    from gradwell.integrations.lightning import DoctorCallback

    with pytest.raises(ConfigError, match="every must be a positive int; got 0"):
        DoctorCallback(every=0)


# Hugging Face


@pytest.fixture
def hf(monkeypatch):
    for name, value in {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }.items():
        monkeypatch.setenv(name, value)
    return pytest.importorskip("transformers")


class Tokens(Dataset):
    """Random token sequences, labelled by their first token."""

    def __init__(self, n: int = 64, length: int = 12) -> None:
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(1, 50, (n, length), generator=g)
        self.labels = (self.ids[:, 0] > 25).long()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {
            "input_ids": self.ids[i],
            "attention_mask": torch.ones_like(self.ids[i]),
            "labels": self.labels[i],
        }


def tiny_bert(hf):
    torch.manual_seed(0)
    config = hf.BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=16,
    )  # fmt: skip
    return hf.BertForSequenceClassification(config)


def test_hf_trainer_measures_a_bert(hf, tmp_path):
    from gradwell.integrations.hf import DoctorCallback

    model, callback = tiny_bert(hf), DoctorCallback(every=4)
    args = hf.TrainingArguments(
        output_dir=str(tmp_path), max_steps=8, per_device_train_batch_size=4, report_to=[],
        logging_strategy="no", save_strategy="no", use_cpu=True, disable_tqdm=True,
    )  # fmt: skip
    hf.Trainer(model, args, train_dataset=Tokens(), callbacks=[callback]).train()
    report = callback.report
    history = report.history
    assert history.steps == [0, 4]
    assert history.loss == [None, None]  # the Trainer hands its callbacks no loss
    assert history.lr == pytest.approx([5e-5, 2.5e-5])  # each step's, before the linear decay moves it
    assert history.optimizer == "AdamW"  # accelerate's wrapper looked through
    kinds = {layer.kind for layer in report.layers}
    assert {"embedding", "attention", "layernorm", "linear", "gelu", "residual"} <= kinds
    names = [layer.name for layer in report.layers]
    assert "bert.encoder.layer.0.intermediate.intermediate_act_fn.gelu" in names  # GELUActivation's F.gelu
    assert "bert.encoder.layer.1.attention.self.query" in names and "classifier" in names
    assert report.unseen == []  # every parameter belongs to a measured layer
    ratios = history.series("update_ratio")[:, names.index("classifier")]
    assert all(math.isfinite(r) and r > 0 for r in ratios)
    text = str(report)
    assert "stability doctor" in text and "embedding" in text
    assert hooks_left(model) == []


def test_hf_other_processes_attach_nothing(hf):
    from gradwell.integrations.hf import DoctorCallback

    model, callback = tiny_bert(hf), DoctorCallback(every=1)
    state, control = hf.TrainerState(is_world_process_zero=False), hf.TrainerControl()
    optimizer = torch.optim.AdamW(model.parameters())
    callback.on_train_begin(None, state, control, model=model, optimizer=optimizer)
    callback.on_step_begin(None, state, control)
    state.global_step = 1
    callback.on_step_end(None, state, control, optimizer=optimizer)
    callback.on_train_end(None, state, control)
    assert callback.doctor is None and callback.report is None and hooks_left(model) == []
