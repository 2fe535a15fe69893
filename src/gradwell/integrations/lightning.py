"""`DoctorCallback`: the stability doctor in Lightning's Trainer (the ``lightning`` package).

    callback = DoctorCallback(every=200)
    trainer = lightning.Trainer(..., callbacks=[callback])
    trainer.fit(module, loader)
    callback.report                      # a gradwell.diagnose.Report, or None if nothing was sampled

Steps are Lightning's optimizer steps (``trainer.global_step``): step 0 is measured, then every
`every`-th. A sampled step begins at the first batch whose ``global_step`` is a multiple of
`every` and ends at the batch end where ``global_step`` has moved past it, so with
``accumulate_grad_batches=k`` it spans its k micro-batches: the first one's forward and backward
pass is measured, the weight gradients are the accumulated ones, and the loss kept is the sum of
the micro-batches' losses as Lightning divides them by k (the loss the update came from). The
learning rate is read just before the optimizer step, before a scheduler changes it.

The doctor hooks every submodule, so a ``training_step`` that calls its submodules directly
(``self.encoder(x)``, not ``self(x)``) is measured; functions called in ``training_step`` itself,
outside any submodule's ``forward`` (an ``F.relu`` between two submodules), are not attributed to
a layer and not measured. With data parallelism only global rank 0 attaches a doctor and measures
its own micro-batches; the other ranks do nothing. Under ``precision="16-mixed"`` the gradients are
divided by the precision plugin's GradScaler scale. With automatic optimization the first optimizer
is the one whose learning rate and name are kept.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning.pytorch as pl
from torch import Tensor

from gradwell.diagnose.report import Report
from gradwell.diagnose.watch import Doctor
from gradwell.integrations.finish import Settings, finish, gradients

__all__ = ["DoctorCallback"]

log = logging.getLogger(__name__)


def batch_loss(outputs: Any) -> Tensor | None:
    """The loss in what ``training_step`` returned (a tensor, or a dict with "loss"), detached."""
    loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
    return loss.detach() if isinstance(loss, Tensor) else None


class DoctorCallback(Settings, pl.Callback):
    """Lightning callback: the doctor on `pl_module`, every `every`-th optimizer step measured;
    `layers` and `tensorboard` as ``gradwell.watch`` takes them. See the module docstring.

    >>> callback = DoctorCallback(every=50)
    >>> callback.doctor is None and callback.report is None
    True
    """

    sampled: int | None = None  # the optimizer step being measured
    loss: Tensor | None = None  # its micro-batches' losses, summed on the device
    lr: Any = None  # its learning rate, read before the optimizer steps

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return  # one doctor for the run: the other ranks train exactly as without it
        optimizers = trainer.optimizers
        scaler = getattr(trainer.precision_plugin, "scaler", None)  # "16-mixed" on a GPU has one
        self.doctor = Doctor(
            pl_module,
            every=self.every,
            layers=self.layers,
            tensorboard=self.tensorboard,
            scaler=scaler,
            driven=True,
            optimizer_name=type(optimizers[0]).__name__ if optimizers else "",
            gradients=gradients(scaler),
        )
        self.report, self.sampled = None, None

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if self.doctor is not None and self.sampled is None and step % self.every == 0:
            self.doctor.begin()
            self.sampled, self.loss, self.lr = step, None, None

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any
    ) -> None:
        if self.sampled is not None and self.lr is None:
            self.lr = optimizer.param_groups[0]["lr"]

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.sampled is None:
            return
        loss = batch_loss(outputs)
        if loss is not None:
            self.loss = loss if self.loss is None else self.loss + loss
        if trainer.global_step > self.sampled:  # the step's last micro-batch: the update is done
            self.doctor.end(self.sampled, self.loss, self.lr)
            self.sampled = None

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.doctor is None:
            return
        self.sampled = None
        self.report = finish(self.doctor, log)
        if self.report is not None and trainer.logger is not None:
            trainer.logger.log_metrics(metrics(self.report), step=trainer.global_step)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        """Training failed: take the hooks off the model (``.doctor`` still has what it measured)."""
        if self.doctor is not None:
            self.doctor.close()
            self.sampled = None


def metrics(report: Report) -> dict[str, float]:
    """A few of the report's numbers for Lightning's logger (its loggers take scalars only)."""
    found = {"doctor/healthy": float(report.healthy), "doctor/grad_norm": report.grad_norm}
    if report.gradient_ratio is not None:
        found["doctor/gradient_ratio"] = report.gradient_ratio
    return found
